package blisbackend

import (
	"fmt"
	"math"
)

// Result is one evaluated row: the prediction (µs), each regime's gate weight, and the heaviest regime.
type Result struct {
	Value   float64
	Weights map[string]float64
	Regime  string
}

// Predict evaluates the spec on one row of raw inputs (names as in raw_inputs; a missing one is NaN, i.e.
// unknown). stateFree=true means the caller has no simulator state (BLIS StepTime): the gate inputs listed
// in state_free.state_inputs take state_free.assume, exactly like the Python reference predictor.
func (s *MoleSpec) Predict(row map[string]float64, stateFree bool) (Result, error) {
	raw := func(k string) float64 {
		if v, ok := row[k]; ok {
			return v
		}
		return math.NaN()
	}
	feats := map[string]float64{}
	visiting := map[string]bool{}
	var lookup func(string) (float64, error)
	lookup = func(name string) (float64, error) {
		// raw inputs and scope constants shadow catalogued features of the same name
		if s.raw[name] {
			return raw(name), nil
		}
		if c, ok := s.constants[name]; ok {
			return c, nil
		}
		if v, ok := feats[name]; ok {
			return v, nil
		}
		n, ok := s.features[name]
		if !ok {
			return 0, fmt.Errorf("formula name %q is neither a raw input, a constant nor a feature", name)
		}
		if visiting[name] {
			return 0, fmt.Errorf("feature %q depends on itself", name)
		}
		visiting[name] = true
		v, err := n.Eval(lookup)
		visiting[name] = false
		if err != nil {
			return 0, err
		}
		feats[name] = v
		return v, nil
	}
	rawOnly := func(name string) (float64, error) {
		if s.raw[name] {
			return raw(name), nil
		}
		return 0, fmt.Errorf("gate formula name %q is not a raw input", name)
	}
	g := map[string]float64{}
	for _, k := range s.Gate.Inputs.Keys {
		v, err := s.gateIn[k].Eval(rawOnly)
		if err != nil {
			return Result{}, err
		}
		g[k] = v
	}
	if stateFree {
		for k, v := range s.StateFree.Assume {
			g[k] = v
		}
	}
	w, err := s.gateWeights(g)
	if err != nil {
		return Result{}, err
	}
	expert := func(e Expert) (float64, error) {
		sum := 0.0
		for i, f := range e.Features {
			x, err := lookup(f)
			if err != nil {
				return 0, err
			}
			sum = float64(sum + float64(e.Coef[i]*x))
		}
		return float64(e.Intercept + sum), nil
	}
	num, tot := 0.0, 0.0
	for j, r := range s.Regimes {
		p, err := expert(s.Experts[r])
		if err != nil {
			return Result{}, err
		}
		if math.IsNaN(p) || math.IsInf(p, 0) {
			continue // an expert with a non-finite output drops out; the rest are renormalised
		}
		num += float64(w[j] * p)
		tot += w[j]
	}
	var pred float64
	if tot > 0 {
		pred = num / tot
	} else {
		pred = math.NaN()
	}
	if math.IsNaN(pred) || math.IsInf(pred, 0) {
		if pred, err = expert(s.GlobalExpert); err != nil {
			return Result{}, err
		}
	}
	if (math.IsNaN(pred) || math.IsInf(pred, 0)) && s.BackupExpert != nil {
		if pred, err = expert(*s.BackupExpert); err != nil {
			return Result{}, err
		}
	}
	if (math.IsNaN(pred) || math.IsInf(pred, 0)) && s.ConstantUs != nil {
		pred = *s.ConstantUs
	}
	if math.IsNaN(pred) || math.IsInf(pred, 0) {
		return Result{}, fmt.Errorf("every expert and the global expert are non-finite for this row (missing raw inputs?)")
	}
	pred = math.Max(pred, s.PredictionFloorUs)
	res := Result{Value: pred, Weights: map[string]float64{}}
	best := -1.0
	for j, r := range s.Regimes {
		res.Weights[r] = w[j]
		if w[j] > best {
			best, res.Regime = w[j], r
		}
	}
	return res, nil
}

func (s *MoleSpec) gateWeights(g map[string]float64) ([]float64, error) {
	w := make([]float64, len(s.Regimes))
	idx := map[string]int{}
	for j, r := range s.Regimes {
		idx[r] = j
	}
	gate := s.Gate
	switch gate.Kind {
	case "rules":
		remaining := 1.0
		for _, r := range gate.Rules {
			x := g[r.Input]
			var fire float64
			if math.IsNaN(x) {
				fire = 0 // NaN input: the rule does not fire
			} else if r.Width <= 0 {
				switch r.Op {
				case ">":
					fire = b2f(x > r.Threshold)
				case ">=":
					fire = b2f(x >= r.Threshold)
				case "<":
					fire = b2f(x < r.Threshold)
				case "<=":
					fire = b2f(x <= r.Threshold)
				default:
					return nil, fmt.Errorf("unknown rule op %q", r.Op)
				}
			} else {
				z := float64(float64(r.Direction**r.Slope) * float64(x-r.Center))
				fire = 0.5 * (1.0 + math.Tanh(0.5*z))
			}
			w[idx[r.Regime]] += remaining * fire
			remaining = remaining * (1.0 - fire)
		}
		w[idx[gate.DefaultRegime]] += remaining
	case "classifier":
		z := make([]float64, len(gate.Inputs.Keys))
		for i, k := range gate.Inputs.Keys {
			x := g[k]
			if math.IsNaN(x) {
				x = gate.Median[i]
			}
			z[i] = (x - gate.Mean[i]) / gate.Scale[i]
		}
		dot := func(c []float64) float64 {
			s := 0.0
			for i := range c {
				s = float64(s + float64(c[i]*z[i]))
			}
			return s
		}
		switch len(gate.Classes) {
		case 1:
			w[idx[gate.Classes[0]]] = 1
		case 2:
			p1 := 1.0 / (1.0 + math.Exp(-(dot(gate.Coef[0]) + gate.Intercept[0])))
			w[idx[gate.Classes[0]]] = 1 - p1
			w[idx[gate.Classes[1]]] = p1
		default:
			l := make([]float64, len(gate.Classes))
			mx := math.Inf(-1)
			for c := range gate.Classes {
				l[c] = dot(gate.Coef[c]) + gate.Intercept[c]
				mx = math.Max(mx, l[c])
			}
			sum := 0.0
			for c := range l {
				l[c] = math.Exp(l[c] - mx)
				sum += l[c]
			}
			for c, name := range gate.Classes {
				w[idx[name]] = l[c] / sum
			}
		}
	default:
		return nil, fmt.Errorf("unknown gate kind %q", gate.Kind)
	}
	return w, nil
}
