package blisbackend

// Backend adapts one scope of a release to BLIS's LatencyModel methods (all in microseconds):
// StepTime(batch), QueueingTime(req), OutputTokenProcessingTime(), PostDecodeFixedOverhead().
// BLIS's own types live in its repository; wire them to these plain structs in a few lines.

import "fmt"

// BatchRequest is one request scheduled in a step, as BLIS's StepTime sees it.
type BatchRequest struct {
	Prefill       bool // prefilling this step (else decoding)
	NewTokens     int  // tokens scheduled this step (a prefill chunk, or 1 for a decode)
	ContextTokens int  // tokens already in its KV cache before this step (progress)
}

// SimState is the optional simulator state the state-dependent regimes use (nil: state-free default).
type SimState struct {
	RunningDepth, WaitingDepth float64
	KVUsageRatio               float64
	NumPreempted               float64 // preemptions in this step (beta) / recent window (alpha)
	AvgServiceTimeUs           float64
}

// Backend evaluates one (hardware, model, TP) scope.
type Backend struct {
	Scope *Scope
	State *SimState // set by a BLIS hook when available; nil = state-free default regime behaviour
}

// NewBackend picks a scope from a loaded release.
func NewBackend(r *Release, hardware, model string, tp int) (*Backend, error) {
	s, err := r.Scope(hardware, model, tp)
	if err != nil {
		return nil, err
	}
	if s.Beta == nil {
		return nil, fmt.Errorf("scope %s/%s/tp%d has no MoLE-RD beta model", hardware, model, tp)
	}
	return &Backend{Scope: s}, nil
}

// BatchRow turns a batch into the canonical step inputs (Σ chunk·(ctx + chunk/2) for prefill attention).
func BatchRow(batch []BatchRequest) map[string]float64 {
	row := map[string]float64{"prefill_tokens": 0, "decode_tokens": 0, "num_prefill_reqs": 0, "num_decode_reqs": 0,
		"sum_decode_context": 0, "sum_prefill_attention": 0}
	for _, r := range batch {
		n, ctx := float64(r.NewTokens), float64(r.ContextTokens)
		if r.Prefill {
			row["prefill_tokens"] += n
			row["num_prefill_reqs"]++
			row["sum_prefill_attention"] += n * (ctx + n/2)
		} else {
			row["decode_tokens"] += n
			row["num_decode_reqs"]++
			row["sum_decode_context"] += ctx
		}
	}
	return row
}

func (b *Backend) withState(row map[string]float64) {
	if b.State == nil {
		return
	}
	row["running_depth"] = b.State.RunningDepth
	row["waiting_depth"] = b.State.WaitingDepth
	row["kv_usage_ratio"] = b.State.KVUsageRatio
	row["num_preempted"] = b.State.NumPreempted
	row["recent_preemptions"] = b.State.NumPreempted
	row["avg_service_time_us"] = b.State.AvgServiceTimeUs
}

// StepTime is the MoLE-RD step latency in µs.
func (b *Backend) StepTime(batch []BatchRequest) (float64, error) {
	row := BatchRow(batch)
	b.withState(row)
	res, err := b.Scope.Beta.Predict(row, b.State == nil)
	return res.Value, err
}

// QueueingTime is BLIS's alpha0 (API overhead, queued − arrived): BLIS simulates the engine queue itself,
// so the MoLE-RD alpha (scheduled − queued) must NOT be added here, or queueing is counted twice.
func (b *Backend) QueueingTime() float64 { return b.alpha(0) }

// PostDecodeFixedOverhead is BLIS alpha1 (departed − finished), µs.
func (b *Backend) PostDecodeFixedOverhead() float64 { return b.alpha(1) }

// OutputTokenProcessingTime is BLIS alpha2, µs per output token.
func (b *Backend) OutputTokenProcessingTime() float64 { return b.alpha(2) }

func (b *Backend) alpha(i int) float64 {
	if b.Scope.Blis == nil {
		panic(fmt.Sprintf("scope %s/%s/tp%d has no BLIS block: alpha coefficients missing", b.Scope.Hardware, b.Scope.Model, b.Scope.TP))
	}
	return b.Scope.Blis.AlphaCoeffs[i]
}

// EngineQueueDelay is the MoLE-RD alpha (the seed's scheduled − queued delay, µs) for a simulator that does
// not simulate its own waiting queue.
func (b *Backend) EngineQueueDelay(request map[string]float64) (float64, error) {
	if b.Scope.Alpha == nil {
		return 0, fmt.Errorf("scope has no MoLE-RD alpha model")
	}
	row := map[string]float64{}
	for k, v := range request {
		row[k] = v
	}
	b.withState(row)
	res, err := b.Scope.Alpha.Predict(row, b.State == nil)
	return res.Value, err
}
