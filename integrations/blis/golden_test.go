package blisbackend

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type goldenCase struct {
	Scope struct {
		Hardware string `json:"hardware"`
		Model    string `json:"model"`
		TP       int    `json:"tp"`
	} `json:"scope"`
	Target    string              `json:"target"`
	Kind      string              `json:"kind"`
	Row       map[string]*float64 `json:"row"`
	StateFree bool                `json:"state_free"`
	Expected  float64             `json:"expected"`
	Regime    string              `json:"regime"`
	Weights   map[string]float64  `json:"weights"`
}

type goldenFile struct {
	SchemaVersion  int          `json:"schema_version"`
	Format         string       `json:"format"`
	ReleaseVersion string       `json:"release_version"`
	ToleranceRel   float64      `json:"tolerance_rel"`
	Cases          []goldenCase `json:"cases"`
}

// releaseDir: $MOLERD_RELEASE_DIR, else the directory named in testdata/release_dir.txt (written by
// tests/test_go_evaluator.py); it must hold release.json and golden.json.
func releaseDir(t *testing.T) string {
	if d := os.Getenv("MOLERD_RELEASE_DIR"); d != "" {
		return d
	}
	b, err := os.ReadFile(filepath.Join("testdata", "release_dir.txt"))
	if err != nil {
		t.Skip("no release: set MOLERD_RELEASE_DIR or write testdata/release_dir.txt")
	}
	return strings.TrimSpace(string(b))
}

func TestGolden(t *testing.T) {
	dir := releaseDir(t)
	rel, err := Load(filepath.Join(dir, "release.json"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g goldenFile
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	if g.ReleaseVersion != rel.Version || len(g.Cases) == 0 {
		t.Fatalf("golden file is for release %q with %d cases; release is %q", g.ReleaseVersion, len(g.Cases), rel.Version)
	}
	for i, c := range g.Cases {
		sc, err := rel.Scope(c.Scope.Hardware, c.Scope.Model, c.Scope.TP)
		if err != nil {
			t.Fatal(err)
		}
		spec := sc.Beta
		if c.Target == "alpha" {
			spec = sc.Alpha
		}
		row := map[string]float64{}
		for k, v := range c.Row {
			if v == nil {
				row[k] = math.NaN()
			} else {
				row[k] = *v
			}
		}
		res, err := spec.Predict(row, c.StateFree)
		if err != nil {
			t.Fatalf("case %d (%s): %v", i, c.Kind, err)
		}
		if math.Abs(res.Value-c.Expected) > g.ToleranceRel*math.Abs(c.Expected) {
			t.Errorf("case %d (%s %s): got %.17g, want %.17g", i, c.Target, c.Kind, res.Value, c.Expected)
		}
		for r, w := range c.Weights {
			if math.Abs(res.Weights[r]-w) > 1e-9 {
				t.Errorf("case %d (%s): weight[%s] got %.17g, want %.17g", i, c.Kind, r, res.Weights[r], w)
			}
		}
		if res.Regime != c.Regime && math.Abs(res.Weights[res.Regime]-res.Weights[c.Regime]) > 1e-9 {
			t.Errorf("case %d (%s): regime got %s, want %s", i, c.Kind, res.Regime, c.Regime)
		}
	}
	t.Logf("%d golden cases agree with release %s", len(g.Cases), rel.Version)
}

func TestParseMatchesPythonPrecedence(t *testing.T) {
	cases := map[string]float64{
		"2 ** 3 ** 2":             512,
		"-2 ** 2":                 -4,
		"1 - 6 / 3 * 2":           -3,
		"3 if 1 > 2 else 4":       4,
		"max(1, 2) + min(5, 3)":   5,
		"1e-6 * 1000000":          1,
		"(1 + 2) * 3 if 0 else 7": 7,
	}
	for src, want := range cases {
		n, err := Parse(src)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := n.Eval(func(string) (float64, error) { return 0, nil })
		if math.Abs(got-want) > 1e-12 {
			t.Errorf("%s = %v, want %v", src, got, want)
		}
	}
	if _, err := Parse("__import__('os')"); err == nil {
		t.Error("a call to an unknown function must be rejected")
	}
}

func TestBackendStateFreeAndBlis(t *testing.T) {
	dir := releaseDir(t)
	rel, err := Load(filepath.Join(dir, "release.json"))
	if err != nil {
		t.Fatal(err)
	}
	sc := rel.Scopes[0]
	b, err := NewBackend(rel, sc.Hardware, sc.Model, sc.TP)
	if err != nil {
		t.Fatal(err)
	}
	st, err := b.StepTime([]BatchRequest{{Prefill: false, NewTokens: 1, ContextTokens: 500}, {Prefill: true, NewTokens: 256, ContextTokens: 0}})
	if err != nil || !(st > 0) {
		t.Fatalf("StepTime = %v, %v", st, err)
	}
	if sc.Blis != nil && b.QueueingTime() != sc.Blis.AlphaCoeffs[0] {
		t.Error("QueueingTime must be BLIS alpha0")
	}
}
