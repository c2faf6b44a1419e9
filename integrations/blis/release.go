// Package blisbackend evaluates a MoLE-RD release (release.json, schema_version 1) exactly like the Python
// reference predictor molerd.release, so a BLIS latency backend can use it. Standard library only.
package blisbackend

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"sort"
)

// SchemaVersion is the newest release schema this package reads.
const SchemaVersion = 1

// OrderedFloats/OrderedExprs keep JSON object key order (the classifier gate's inputs are ordered).
type OrderedExprs struct {
	Keys   []string
	Values map[string]string
}

func (o *OrderedExprs) UnmarshalJSON(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return fmt.Errorf("expected an object of formulas")
	}
	o.Values = map[string]string{}
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return err
		}
		var v string
		if err := dec.Decode(&v); err != nil {
			return fmt.Errorf("gate input %v: %w", kt, err)
		}
		k := kt.(string)
		o.Keys = append(o.Keys, k)
		o.Values[k] = v
	}
	_, err := dec.Token()
	return err
}

type Release struct {
	SchemaVersion   int             `json:"schema_version"`
	Format          string          `json:"format"`
	Version         string          `json:"version"`
	CreatedUTC      *string         `json:"created_utc"`
	Provenance      json.RawMessage `json:"provenance"`
	Metrics         json.RawMessage `json:"metrics"`
	PreviousRelease json.RawMessage `json:"previous_release"`
	Notes           json.RawMessage `json:"notes"`
	Scopes          []Scope         `json:"scopes"`
}

type Scope struct {
	Hardware string          `json:"hardware"`
	Model    string          `json:"model"`
	TP       int             `json:"tp"`
	Beta     *MoleSpec       `json:"beta"`
	Alpha    *MoleSpec       `json:"alpha"`
	Blis     *BlisBlock      `json:"blis"`
	Metrics  json.RawMessage `json:"metrics"`
}

type Rule struct {
	Regime    string   `json:"regime"`
	Input     string   `json:"input"`
	Op        string   `json:"op"`
	Threshold float64  `json:"threshold"`
	Width     float64  `json:"width"`
	Center    float64  `json:"center"`
	Slope     *float64 `json:"slope"`
	Direction float64  `json:"direction"`
}

type Gate struct {
	Kind            string          `json:"kind"`
	Inputs          OrderedExprs    `json:"inputs"`
	DefaultRegime   string          `json:"default_regime"`
	Rules           []Rule          `json:"rules"`
	RuleOrder       []string        `json:"rule_order"`
	Thresholds      json.RawMessage `json:"thresholds"`
	Learned         json.RawMessage `json:"learned"`
	Model           string          `json:"model"`
	Median          []float64       `json:"median"`
	Mean            []float64       `json:"mean"`
	Scale           []float64       `json:"scale"`
	Classes         []string        `json:"classes"`
	Coef            [][]float64     `json:"coef"`
	Intercept       []float64       `json:"intercept"`
	HeldoutAccuracy *float64        `json:"heldout_accuracy"`
}

type Expert struct {
	Features         []string  `json:"features"`
	Coef             []float64 `json:"coef"`
	Intercept        float64   `json:"intercept"`
	RidgeAlpha       *float64  `json:"ridge_alpha"`
	ConstantFeatures []string  `json:"constant_features"`
	Source           string    `json:"source"`
	NRows            int       `json:"n_rows"`
	Note             string    `json:"note"`
}

type StateFree struct {
	StateInputs []string           `json:"state_inputs"`
	Assume      map[string]float64 `json:"assume"`
	Regime      string             `json:"regime"`
	Rule        string             `json:"rule"`
}

type Feature struct {
	Expression  string   `json:"expression"`
	Unit        string   `json:"unit"`
	Description string   `json:"description"`
	Columns     []string `json:"columns"`
	Constants   []string `json:"constants"`
}

// MoleSpec is MoLERegressor.to_spec() (format molerd.mole/v1).
type MoleSpec struct {
	Format            string                        `json:"format"`
	Target            string                        `json:"target"`
	TargetSemantics   string                        `json:"target_semantics"`
	Units             string                        `json:"units"`
	FeatureSet        string                        `json:"feature_set"`
	Loss              string                        `json:"loss"`
	Params            json.RawMessage               `json:"params"`
	PredictionFloorUs float64                       `json:"prediction_floor_us"`
	Regimes           []string                      `json:"regimes"`
	Gate              Gate                          `json:"gate"`
	Experts           map[string]Expert             `json:"experts"`
	GlobalExpert      Expert                        `json:"global_expert"`
	BackupExpert      *Expert                       `json:"backup_expert"`
	ConstantUs        *float64                      `json:"constant_us"`
	StateFree         StateFree                     `json:"state_free"`
	FeatureCatalog    map[string]Feature            `json:"feature_catalog"`
	RawInputs         []string                      `json:"raw_inputs"`
	ScopeConstants    map[string]map[string]float64 `json:"scope_constants"`
	DroppedFeatures   json.RawMessage               `json:"dropped_features"`
	NDroppedRows      int                           `json:"n_dropped_rows"`

	constants map[string]float64
	features  map[string]Node
	gateIn    map[string]Node
	raw       map[string]bool
}

type LegacyBlackbox struct {
	BetaTerms              []string  `json:"beta_terms"`
	BetaCoeffs             []float64 `json:"beta_coeffs"`
	AlphaTerms             []string  `json:"alpha_terms"`
	AlphaCoeffs            []float64 `json:"alpha_coeffs"`
	Alpha2UsPerOutputToken float64   `json:"alpha2_us_per_output_token"`
}

// BlisBlock is BLIS's trained-physics coefficient block (alpha triple + 7..11 betas).
type BlisBlock struct {
	BlisVersion    string          `json:"blis_version"`
	AlphaTerms     []string        `json:"alpha_terms"`
	AlphaCoeffs    []float64       `json:"alpha_coeffs"`
	BetaTerms      []string        `json:"beta_terms"`
	BetaCoeffs     []float64       `json:"beta_coeffs"`
	LegacyBlackbox LegacyBlackbox  `json:"legacy_blackbox"`
	FitReport      json.RawMessage `json:"fit_report"`
}

// Load reads and checks release.json strictly (unknown keys are errors) and parses every formula.
func Load(path string) (*Release, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var probe struct {
		SchemaVersion int `json:"schema_version"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return nil, fmt.Errorf("%s: not valid JSON: %w", path, err)
	}
	if probe.SchemaVersion > SchemaVersion {
		return nil, fmt.Errorf("%s: schema_version %d is newer than this reader's %d; upgrade the evaluator", path, probe.SchemaVersion, SchemaVersion)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var r Release
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if r.Format != "molerd-release" {
		return nil, fmt.Errorf("%s: format %q is not molerd-release", path, r.Format)
	}
	for i := range r.Scopes {
		sc := &r.Scopes[i]
		for _, s := range []*MoleSpec{sc.Beta, sc.Alpha} {
			if s == nil {
				continue
			}
			if err := s.prepare(sc); err != nil {
				return nil, fmt.Errorf("%s: scope %s/%s/tp%d %s: %w", path, sc.Hardware, sc.Model, sc.TP, s.Target, err)
			}
		}
		if sc.Blis != nil {
			if len(sc.Blis.AlphaCoeffs) != 3 || len(sc.Blis.BetaCoeffs) < 7 || len(sc.Blis.BetaCoeffs) > 11 {
				return nil, fmt.Errorf("%s: scope %s/%s/tp%d: BLIS block needs 3 alphas and 7-11 betas", path, sc.Hardware, sc.Model, sc.TP)
			}
			for _, v := range append(append([]float64{}, sc.Blis.AlphaCoeffs...), sc.Blis.BetaCoeffs...) {
				if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
					return nil, fmt.Errorf("%s: BLIS coefficients must be finite and >= 0, got %v", path, v)
				}
			}
		}
	}
	return &r, nil
}

func (s *MoleSpec) prepare(sc *Scope) error {
	if s.Format != "molerd.mole/v1" {
		return fmt.Errorf("spec format %q is not molerd.mole/v1", s.Format)
	}
	sid := fmt.Sprintf("%s|%s|%d", sc.Hardware, sc.Model, sc.TP)
	c, ok := s.ScopeConstants[sid]
	if !ok {
		return fmt.Errorf("scope_constants has no entry %q", sid)
	}
	s.constants = c
	s.raw = map[string]bool{}
	for _, k := range s.RawInputs {
		s.raw[k] = true
	}
	s.features = map[string]Node{}
	for k, f := range s.FeatureCatalog {
		n, err := Parse(f.Expression)
		if err != nil {
			return fmt.Errorf("feature %s: %w", k, err)
		}
		s.features[k] = n
	}
	s.gateIn = map[string]Node{}
	for _, k := range s.Gate.Inputs.Keys {
		n, err := Parse(s.Gate.Inputs.Values[k])
		if err != nil {
			return fmt.Errorf("gate input %s: %w", k, err)
		}
		s.gateIn[k] = n
	}
	for _, r := range s.Regimes {
		if _, ok := s.Experts[r]; !ok {
			return fmt.Errorf("regime %q has no expert", r)
		}
	}
	return nil
}

// Scope finds a scope by hardware, model and TP.
func (r *Release) Scope(hardware, model string, tp int) (*Scope, error) {
	for i := range r.Scopes {
		s := &r.Scopes[i]
		if s.Hardware == hardware && s.Model == model && s.TP == tp {
			return s, nil
		}
	}
	var names []string
	for _, s := range r.Scopes {
		names = append(names, fmt.Sprintf("%s/%s/tp%d", s.Hardware, s.Model, s.TP))
	}
	sort.Strings(names)
	return nil, fmt.Errorf("release %s has no scope %s/%s/tp%d (has %v)", r.Version, hardware, model, tp, names)
}
