package blisbackend

// A parser and evaluator for the release's formula language: the Python expression subset that
// molerd/release.py accepts (numbers, names, + - * / **, unary minus, one comparison, "a if c else b",
// min/max/abs/exp/log/sqrt). Semantics are IEEE float64 like numpy: x/0 is ±Inf or NaN, a comparison
// is 1 or 0 (false with NaN), and "a if c else b" takes a when c != 0 (NaN counts as true, as in numpy).

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode"
)

// Node is a parsed formula.
type Node interface {
	Eval(lookup func(string) (float64, error)) (float64, error)
	Names(out map[string]bool)
}

type numNode struct{ v float64 }
type varNode struct{ name string }
type negNode struct{ x Node }
type binNode struct {
	op   string
	a, b Node
}
type ifNode struct{ cond, a, b Node }
type callNode struct {
	fn   string
	args []Node
}

func (n numNode) Eval(func(string) (float64, error)) (float64, error)   { return n.v, nil }
func (n numNode) Names(map[string]bool)                                 {}
func (n varNode) Eval(l func(string) (float64, error)) (float64, error) { return l(n.name) }
func (n varNode) Names(out map[string]bool)                             { out[n.name] = true }
func (n negNode) Eval(l func(string) (float64, error)) (float64, error) {
	x, err := n.x.Eval(l)
	return -x, err
}
func (n negNode) Names(out map[string]bool) { n.x.Names(out) }
func (n binNode) Names(out map[string]bool) { n.a.Names(out); n.b.Names(out) }
func (n ifNode) Names(out map[string]bool)  { n.cond.Names(out); n.a.Names(out); n.b.Names(out) }
func (n callNode) Names(out map[string]bool) {
	for _, a := range n.args {
		a.Names(out)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (n binNode) Eval(l func(string) (float64, error)) (float64, error) {
	a, err := n.a.Eval(l)
	if err != nil {
		return 0, err
	}
	b, err := n.b.Eval(l)
	if err != nil {
		return 0, err
	}
	// float64() conversions forbid fused multiply-add, keeping results bit-identical to numpy.
	switch n.op {
	case "+":
		return float64(a + b), nil
	case "-":
		return float64(a - b), nil
	case "*":
		return float64(a * b), nil
	case "/":
		return float64(a / b), nil
	case "**":
		return math.Pow(a, b), nil
	case ">":
		return b2f(a > b), nil
	case ">=":
		return b2f(a >= b), nil
	case "<":
		return b2f(a < b), nil
	case "<=":
		return b2f(a <= b), nil
	case "==":
		return b2f(a == b), nil
	case "!=":
		return b2f(a != b), nil
	}
	return 0, fmt.Errorf("unknown operator %q", n.op)
}

func (n ifNode) Eval(l func(string) (float64, error)) (float64, error) {
	c, err := n.cond.Eval(l)
	if err != nil {
		return 0, err
	}
	if c != 0 {
		return n.a.Eval(l)
	}
	return n.b.Eval(l)
}

func (n callNode) Eval(l func(string) (float64, error)) (float64, error) {
	vals := make([]float64, len(n.args))
	for i, a := range n.args {
		v, err := a.Eval(l)
		if err != nil {
			return 0, err
		}
		vals[i] = v
	}
	switch n.fn {
	case "min":
		if math.IsNaN(vals[0]) || math.IsNaN(vals[1]) {
			return math.NaN(), nil
		}
		return math.Min(vals[0], vals[1]), nil
	case "max":
		if math.IsNaN(vals[0]) || math.IsNaN(vals[1]) {
			return math.NaN(), nil
		}
		return math.Max(vals[0], vals[1]), nil
	case "abs":
		return math.Abs(vals[0]), nil
	case "exp":
		return math.Exp(vals[0]), nil
	case "log":
		return math.Log(vals[0]), nil
	case "sqrt":
		return math.Sqrt(vals[0]), nil
	}
	return 0, fmt.Errorf("unknown function %q", n.fn)
}

var arity = map[string]int{"min": 2, "max": 2, "abs": 1, "exp": 1, "log": 1, "sqrt": 1}

type parser struct {
	toks []string
	pos  int
	src  string
}

func tokenize(s string) ([]string, error) {
	var toks []string
	i := 0
	for i < len(s) {
		c := rune(s[i])
		switch {
		case unicode.IsSpace(c):
			i++
		case unicode.IsDigit(c) || (c == '.' && i+1 < len(s) && unicode.IsDigit(rune(s[i+1]))):
			j := i
			for j < len(s) && (unicode.IsDigit(rune(s[j])) || s[j] == '.' || s[j] == '_') {
				j++
			}
			if j < len(s) && (s[j] == 'e' || s[j] == 'E') {
				j++
				if j < len(s) && (s[j] == '+' || s[j] == '-') {
					j++
				}
				for j < len(s) && unicode.IsDigit(rune(s[j])) {
					j++
				}
			}
			toks = append(toks, s[i:j])
			i = j
		case unicode.IsLetter(c) || c == '_':
			j := i
			for j < len(s) && (unicode.IsLetter(rune(s[j])) || unicode.IsDigit(rune(s[j])) || s[j] == '_') {
				j++
			}
			toks = append(toks, s[i:j])
			i = j
		default:
			two := ""
			if i+1 < len(s) {
				two = s[i : i+2]
			}
			if two == "**" || two == ">=" || two == "<=" || two == "==" || two == "!=" {
				toks = append(toks, two)
				i += 2
			} else if strings.ContainsRune("+-*/()<>,", c) {
				toks = append(toks, string(c))
				i++
			} else {
				return nil, fmt.Errorf("formula %q: unexpected character %q", s, c)
			}
		}
	}
	return toks, nil
}

// Parse parses one formula.
func Parse(src string) (Node, error) {
	toks, err := tokenize(src)
	if err != nil {
		return nil, err
	}
	p := &parser{toks: toks, src: src}
	n, err := p.ifExpr()
	if err != nil {
		return nil, err
	}
	if p.pos != len(p.toks) {
		return nil, fmt.Errorf("formula %q: unexpected %q", src, p.toks[p.pos])
	}
	return n, nil
}

func (p *parser) peek() string {
	if p.pos < len(p.toks) {
		return p.toks[p.pos]
	}
	return ""
}

func (p *parser) next() string { t := p.peek(); p.pos++; return t }

func (p *parser) ifExpr() (Node, error) {
	body, err := p.comparison()
	if err != nil {
		return nil, err
	}
	if p.peek() != "if" {
		return body, nil
	}
	p.next()
	cond, err := p.comparison()
	if err != nil {
		return nil, err
	}
	if p.next() != "else" {
		return nil, fmt.Errorf("formula %q: 'if' without 'else'", p.src)
	}
	orelse, err := p.ifExpr()
	if err != nil {
		return nil, err
	}
	return ifNode{cond, body, orelse}, nil
}

func (p *parser) comparison() (Node, error) {
	a, err := p.arith()
	if err != nil {
		return nil, err
	}
	switch op := p.peek(); op {
	case ">", ">=", "<", "<=", "==", "!=":
		p.next()
		b, err := p.arith()
		if err != nil {
			return nil, err
		}
		return binNode{op, a, b}, nil
	}
	return a, nil
}

func (p *parser) arith() (Node, error) {
	a, err := p.term()
	if err != nil {
		return nil, err
	}
	for p.peek() == "+" || p.peek() == "-" {
		op := p.next()
		b, err := p.term()
		if err != nil {
			return nil, err
		}
		a = binNode{op, a, b}
	}
	return a, nil
}

func (p *parser) term() (Node, error) {
	a, err := p.unary()
	if err != nil {
		return nil, err
	}
	for p.peek() == "*" || p.peek() == "/" {
		op := p.next()
		b, err := p.unary()
		if err != nil {
			return nil, err
		}
		a = binNode{op, a, b}
	}
	return a, nil
}

func (p *parser) unary() (Node, error) {
	switch p.peek() {
	case "-":
		p.next()
		x, err := p.unary()
		if err != nil {
			return nil, err
		}
		return negNode{x}, nil
	case "+":
		p.next()
		return p.unary()
	}
	return p.power()
}

func (p *parser) power() (Node, error) {
	a, err := p.atom()
	if err != nil {
		return nil, err
	}
	if p.peek() == "**" { // right-associative; the exponent may carry a sign, as in Python
		p.next()
		b, err := p.unary()
		if err != nil {
			return nil, err
		}
		return binNode{"**", a, b}, nil
	}
	return a, nil
}

func (p *parser) atom() (Node, error) {
	t := p.next()
	switch {
	case t == "":
		return nil, fmt.Errorf("formula %q: unexpected end", p.src)
	case t == "(":
		n, err := p.ifExpr()
		if err != nil {
			return nil, err
		}
		if p.next() != ")" {
			return nil, fmt.Errorf("formula %q: missing ')'", p.src)
		}
		return n, nil
	case unicode.IsDigit(rune(t[0])) || t[0] == '.':
		v, err := strconv.ParseFloat(strings.ReplaceAll(t, "_", ""), 64)
		if err != nil {
			return nil, fmt.Errorf("formula %q: bad number %q", p.src, t)
		}
		return numNode{v}, nil
	case unicode.IsLetter(rune(t[0])) || t[0] == '_':
		if t == "if" || t == "else" {
			return nil, fmt.Errorf("formula %q: unexpected %q", p.src, t)
		}
		if p.peek() == "(" {
			want, ok := arity[t]
			if !ok {
				return nil, fmt.Errorf("formula %q: function %q is not allowed", p.src, t)
			}
			p.next()
			var args []Node
			for {
				a, err := p.ifExpr()
				if err != nil {
					return nil, err
				}
				args = append(args, a)
				if p.peek() == "," {
					p.next()
					continue
				}
				break
			}
			if p.next() != ")" {
				return nil, fmt.Errorf("formula %q: missing ')' after %s(", p.src, t)
			}
			if len(args) != want {
				return nil, fmt.Errorf("formula %q: %s() takes %d argument(s)", p.src, t, want)
			}
			return callNode{t, args}, nil
		}
		return varNode{t}, nil
	}
	return nil, fmt.Errorf("formula %q: unexpected %q", p.src, t)
}
