"""Step-time oracle: one engine step's GPU forward time, composed from REAL kernel measurements.

Per layer, with n scheduled tokens: GEMMs qkv/o_proj/gate_up/down (or the fused-MoE kernel plus the router
GEMM), two all-reduces of n·hidden bf16 values when TP>1, context attention for every prefill chunk and
generation attention for the decode batch; times the layers; plus the lm_head GEMM on the sampled sequences.
Every kernel time is *interpolated* in the measured tables (piecewise-linear in m / tokens / context, bilinear
in (n, k)); nothing is a fitted line. On top come costs the isolated-kernel tables leave out: CUDA-graph
padding of batches of up to ``max_capture`` tokens to the captured sizes (1, 2, 4, then multiples of 8),
launch gaps between kernels, element-wise kernels (norms, rotary, activation: a memory-bound pass over the
activations at the GPU's bandwidth) and the sampler (a memory-bound pass over the fp32 logits).

Where this departs from real vLLM (documented, deliberate):
- a chunk with prior context p and c new tokens costs table(isl=p+c)·c(2p+c)/(p+c)² (the table has no
  prior-context axis), at least table(isl=c);
- a decode batch of B sequences costs table(batch=B, kv=mean context) (the table has uniform contexts);
- models whose KV-head count per GPU is outside the generation table (Llama-2-7B: 32 MHA heads) scale the
  above-launch-floor part of the nearest measured KV-head count linearly with the KV bytes;
- GEMM m beyond the table scales linearly (compute-bound), n beyond it scales linearly (lm_head of 128k vocab).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from molerd.specs import hardware as hardware_spec
from molerd.specs import model as model_spec
from molerd.synth.kernels import kernel_dir_for, load_kernel_table, load_system

MS_TO_US = 1000.0


def capture_sizes(max_capture: int) -> np.ndarray:
    """vLLM's CUDA-graph batch sizes: 1, 2, 4, then multiples of 8 up to ``max_capture``."""
    sizes = [s for s in (1, 2, 4) if s <= max_capture] + list(range(8, max_capture + 1, 8))
    return np.array(sorted(set(sizes)), dtype=np.int64)


def _interp_extrap_linear(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Piecewise-linear in the table range; beyond the last point, proportional to x (throughput-bound)."""
    y = np.interp(x, xp, fp)
    hi = x > xp[-1]
    if np.any(hi):
        y = np.where(hi, fp[-1] * x / xp[-1], y)
    return y


class _Gemm:
    """GEMM latency (ms) over m for a fixed (n, k): bilinear between the measured (n, k) neighbours."""

    def __init__(self, table: pd.DataFrame):
        self._curves = {
            (int(n), int(k)): (g["m"].to_numpy(np.float64), g["latency"].to_numpy(np.float64))
            for (n, k), g in table.sort_values("m").groupby(["n", "k"])
        }
        self._ns = np.array(sorted({n for n, _ in self._curves}), dtype=np.float64)
        self._ks = np.array(sorted({k for _, k in self._curves}), dtype=np.float64)

    def _curve(self, n: float, k: float, m: np.ndarray) -> np.ndarray:
        key = (int(n), int(k))
        if key not in self._curves:  # ragged table: nearest measured shape, scaled by n·k
            best = min(self._curves, key=lambda c: abs(np.log(c[0] * c[1] / (n * k))) + 0.01 * abs(np.log(c[0] / n)))
            xp, fp = self._curves[best]
            return _interp_extrap_linear(m, xp, fp) * (n * k) / (best[0] * best[1])
        xp, fp = self._curves[key]
        return _interp_extrap_linear(m, xp, fp)

    @staticmethod
    def _bracket(grid: np.ndarray, v: float) -> tuple[float, float, float, float]:
        """(lo, hi, weight of hi, scale) with scale>1 when v lies beyond the grid (latency ∝ v there)."""
        if v >= grid[-1]:
            return grid[-1], grid[-1], 0.0, v / grid[-1]
        if v <= grid[0]:
            return grid[0], grid[0], 0.0, 1.0
        i = int(np.searchsorted(grid, v))
        lo, hi = grid[i - 1], grid[i]
        return lo, hi, (v - lo) / (hi - lo), 1.0

    def ms(self, m: np.ndarray, n: float, k: float) -> np.ndarray:
        n0, n1, wn, sn = self._bracket(self._ns, n)
        k0, k1, wk, sk = self._bracket(self._ks, k)
        out = (
            (1 - wn) * (1 - wk) * self._curve(n0, k0, m)
            + wn * (1 - wk) * self._curve(n1, k0, m)
            + (1 - wn) * wk * self._curve(n0, k1, m)
            + wn * wk * self._curve(n1, k1, m)
        )
        return out * sn * sk


@dataclass(frozen=True)
class OracleParams:
    """Overheads the isolated-kernel tables leave out (µs unless named otherwise)."""

    max_capture: int = 512  # largest CUDA-graph captured token count
    graph_gap_us: float = 1.5  # gap per piecewise-graph boundary (two per layer around attention)
    launch_gap_us: float = 1.0  # gap per eagerly launched kernel (steps above max_capture)
    kernels_per_layer: int = 14  # eager kernels per layer (norms, GEMMs, rotary, attention, act, all-reduce)
    elementwise_passes: float = 10.0  # bf16 read+write passes over n·hidden per layer (norms, rotary, residual)
    bw_efficiency: float = 0.8  # achievable fraction of peak HBM bandwidth for streaming kernels
    sampler_base_us: float = 25.0  # sampler kernels' fixed cost
    logits_passes: float = 3.0  # fp32 passes over the logits (softmax, top-k/p, sampling)
    moe_distribution: str = "balanced"


@lru_cache(maxsize=16)
def get_oracle(hardware: str, model: str, tp: int, max_tokens: int = 16384, max_seqs: int = 1024,
               params: "OracleParams | None" = None) -> "StepOracle":
    """A shared, read-only oracle per scope (building the grids costs ~0.1 s; runs of a scope reuse it)."""
    return StepOracle(hardware, model, tp, max_tokens=max_tokens, max_seqs=max_seqs, params=params)


class StepOracle:
    """Noiseless GPU forward time of a step for one (hardware, model, tp), from precomputed grids.

    Parameters
    ----------
    hardware, model : str
        BLIS hardware name and model folder name.
    tp : int
        Tensor-parallel degree (≥ 1).
    max_tokens : int
        Largest token count per step the grids cover.
    max_seqs : int
        Largest number of sequences per step the grids cover.
    """

    def __init__(self, hardware: str, model: str, tp: int, max_tokens: int = 16384, max_seqs: int = 1024, max_context: int = 32768,
                 params: OracleParams | None = None):
        self.hardware, self.model, self.tp = hardware, model, int(tp)
        self._roof = None
        self.params = p = params or OracleParams()
        self.hw = hardware_spec(hardware)
        self.spec = m = model_spec(model)
        gpu = kernel_dir_for(hardware)
        self.system = load_system(gpu)
        if m.num_heads % tp or m.num_kv_heads % tp and m.num_kv_heads > tp:
            raise ValueError(f"model {model!r}: {m.num_heads} heads / {m.num_kv_heads} KV heads do not split over tp={tp}")
        self.heads_tp = m.num_heads // tp
        self.kv_tp = max(1, m.num_kv_heads // tp)
        L, h, d = m.num_layers, m.hidden_size, m.head_dim
        self.max_tokens, self.max_seqs = int(max_tokens), int(max_seqs)

        # --- token-proportional part: GEMMs, MoE, all-reduce, element-wise (per step, all layers) ---
        gemm = _Gemm(load_kernel_table(gpu, "gemm"))
        n_arr = np.arange(self.max_tokens + 1, dtype=np.float64)
        mm = np.maximum(n_arr, 1.0)
        qkv_n = (self.heads_tp + 2 * self.kv_tp) * d
        per_layer = gemm.ms(mm, qkv_n, h) + gemm.ms(mm, h, self.heads_tp * d)
        if m.is_moe:
            per_layer = per_layer + gemm.ms(mm, m.num_experts, h) + self._moe_ms(gpu, mm)
        else:
            inter = m.intermediate_size // tp
            per_layer = per_layer + gemm.ms(mm, 2 * inter, h) + gemm.ms(mm, h, inter)
        bw = self.hw.bytes_per_us * p.bw_efficiency
        elementwise_us = p.elementwise_passes * mm * h * 2 / bw
        lin = L * (per_layer * MS_TO_US + elementwise_us)
        if tp > 1:
            lin = lin + 2 * L * self._allreduce_us(gpu, mm * h * 2)
        lin[0] = 0.0
        caps = capture_sizes(p.max_capture)
        pad = np.arange(self.max_tokens + 1)
        small = (pad >= 1) & (pad <= caps[-1])
        pad[small] = caps[np.searchsorted(caps, pad[small])]
        self.padded_tokens = pad
        gaps = np.where(pad <= caps[-1], 2 * L * p.graph_gap_us, L * p.kernels_per_layer * p.launch_gap_us)
        self.linear_us = lin[pad] + gaps
        self.linear_us[0] = 0.0

        # --- per-sequence part: lm_head GEMM + sampler over fp32 logits ---
        s_arr = np.maximum(np.arange(self.max_seqs + 1, dtype=np.float64), 1.0)
        vocab_tp = m.vocab_size / tp
        self.head_us = gemm.ms(s_arr, vocab_tp, h) * MS_TO_US + p.sampler_base_us + p.logits_passes * s_arr * m.vocab_size * 4 / bw
        self.head_us[0] = 0.0

        # --- attention grids (per step, all layers) ---
        self._build_context_attention(gpu)
        self._ctx_dense_build(max_context)
        self._linear_list = self.linear_us.tolist()
        self._head_list = self.head_us.tolist()
        self._build_generation_attention(gpu)

    # ------------------------------------------------------------------ tables
    def _moe_ms(self, gpu: str, tokens: np.ndarray) -> np.ndarray:
        m, t = self.spec, load_kernel_table(gpu, "moe")
        sel = t[(t["hidden_size"] == m.hidden_size) & (t["inter_size"] == m.intermediate_size) & (t["topk"] == m.experts_per_token)
                & (t["num_experts"] == m.num_experts) & (t["moe_tp_size"] == self.tp)]
        if sel.empty:
            raise KeyError(f"{gpu}: no fused-MoE measurement for {m.name} (hidden {m.hidden_size}, inter {m.intermediate_size}, "
                           f"top-{m.experts_per_token} of {m.num_experts}, tp {self.tp})")
        dists = sel["distribution"].unique().tolist()
        dist = self.params.moe_distribution if self.params.moe_distribution in dists else sorted(dists)[0]
        sel = sel[sel["distribution"] == dist].sort_values("num_tokens")
        return _interp_extrap_linear(tokens, sel["num_tokens"].to_numpy(np.float64), sel["latency"].to_numpy(np.float64))

    def _allreduce_us(self, gpu: str, nbytes: np.ndarray) -> np.ndarray:
        t = load_kernel_table(gpu, "allreduce")
        out = np.empty_like(nbytes)
        caps = self.params.max_capture * self.spec.hidden_size * 2
        for backend, mask in (("vllm_graph", nbytes <= caps), ("vllm_eager", nbytes > caps)):
            sel = t[(t["backend"] == backend) & (t["num_gpus"] == self.tp)].sort_values("message_size")
            if sel.empty:
                raise KeyError(f"{gpu}: no all-reduce measurement for {self.tp} GPUs ({backend})")
            xp = np.log2(sel["message_size"].to_numpy(np.float64))
            out[mask] = np.interp(np.log2(nbytes[mask]), xp, sel["latency"].to_numpy(np.float64)) * MS_TO_US
        return out

    def _attn_rows(self, t: pd.DataFrame) -> tuple[pd.DataFrame, float]:
        """Rows for this model's heads per GPU; a KV-byte scale when the KV-head count was not measured."""
        d = self.spec.head_dim
        t = t[(t["head_dim"] == d) & (t["num_heads"] == self.heads_tp)]
        kvs = sorted(t["num_key_value_heads"].unique().tolist())
        if not kvs:
            raise KeyError(f"no attention measurement for {self.heads_tp} heads of dim {d}")
        kv = self.kv_tp if self.kv_tp in kvs else min(kvs, key=lambda k: abs(np.log(k / self.kv_tp)))
        return t[t["num_key_value_heads"] == kv], self.kv_tp / kv

    def _build_context_attention(self, gpu: str) -> None:
        t, scale = self._attn_rows(load_kernel_table(gpu, "context_attention"))
        t = t[t["batch_size"] == t["batch_size"].min()].sort_values("isl")
        self._ctx_isl = t["isl"].to_numpy(np.float64)
        self._ctx_us = t["latency"].to_numpy(np.float64) * MS_TO_US * self.spec.num_layers / t["batch_size"].min()
        if scale != 1.0:  # context attention is compute-bound: heads, not KV heads, set the cost
            pass

    def _ctx_dense_build(self, max_len: int) -> None:
        x = np.arange(max_len + 1, dtype=np.float64)
        xp, fp = self._ctx_isl, self._ctx_us
        y = np.interp(x, xp, fp)
        self._ctx_dense = np.where(x > xp[-1], fp[-1] * (x / xp[-1]) ** 2, y).tolist()

    def context_attention_scalar(self, chunk: int, prior: int) -> float:
        """:meth:`context_attention_us` for one chunk, from a dense per-token grid (hot path)."""
        total = chunk + prior
        dense = self._ctx_dense
        if total >= len(dense):
            return float(self.context_attention_us(np.array([chunk]), np.array([prior]))[0])
        return max(dense[total] * chunk * (2 * total - chunk) / (total * total), dense[chunk])

    def context_attention_us(self, chunk: np.ndarray, prior: np.ndarray) -> np.ndarray:
        """Attention time of prefill chunks (tokens) with ``prior`` already-computed context tokens."""
        chunk = np.asarray(chunk, np.float64)
        total = chunk + np.asarray(prior, np.float64)
        xp, fp = self._ctx_isl, self._ctx_us

        def f(x):
            y = np.interp(x, xp, fp)
            return np.where(x > xp[-1], fp[-1] * (x / xp[-1]) ** 2, y)

        frac = chunk * (2 * total - chunk) / np.maximum(total, 1.0) ** 2
        return np.maximum(f(total) * frac, f(chunk))

    def _build_generation_attention(self, gpu: str) -> None:
        t, scale = self._attn_rows(load_kernel_table(gpu, "generation_attention"))
        piv = t.pivot_table(index="batch_size", columns="step", values="latency", aggfunc="first").sort_index()
        piv = piv.sort_index(axis=1)
        batches = piv.index.to_numpy(np.float64)
        self._gen_ctx = piv.columns.to_numpy(np.float64) + 1.0  # step = kv length already cached; +1 new token
        grid = piv.to_numpy(np.float64) * MS_TO_US * self.spec.num_layers
        # Large batch × long context was not measured (it exceeds GPU memory in the benchmark); there the
        # kernel is bandwidth-bound, so extend each row in proportion to the KV read from its last measurement.
        for i in range(grid.shape[0]):
            ok = np.flatnonzero(~np.isnan(grid[i]))
            if ok.size == 0:
                raise KeyError(f"{gpu}: generation attention has no measurement for batch {batches[i]}")
            first, last = ok[0], ok[-1]
            grid[i, :first] = grid[i, first]
            grid[i, last + 1:] = grid[i, last] * self._gen_ctx[last + 1:] / self._gen_ctx[last]
            holes = np.isnan(grid[i])
            if holes.any():
                grid[i, holes] = np.interp(self._gen_ctx[holes], self._gen_ctx[~holes], grid[i, ~holes])
        if scale != 1.0:
            floor = grid[:, :1]
            grid = floor + (grid - floor) * scale
        b = np.arange(self.max_seqs + 1, dtype=np.float64)
        rows = np.empty((b.size, grid.shape[1]))
        for j in range(grid.shape[1]):
            rows[:, j] = _interp_extrap_linear(np.maximum(b, 1.0), batches, grid[:, j])
        rows[0] = 0.0
        self._gen_rows = rows
        self._gen_rows_list = rows.tolist()  # per-step hot path: plain floats, no numpy call per step
        self._gen_ctx_list = self._gen_ctx.tolist()

    def _gen_attention_scalar(self, batch: int, x: float) -> float:
        """:meth:`generation_attention_us` for one mean context: ``np.interp``'s arithmetic on plain floats
        (same operations in the same order, so the same bits) without numpy's per-call overhead."""
        xp, fp = self._gen_ctx_list, self._gen_rows_list[batch]
        if x > xp[-1]:
            return fp[-1] * x / xp[-1]
        j = bisect_right(xp, x) - 1  # xp[j] <= x < xp[j + 1]
        if j < 0:
            return fp[0]
        if j == len(xp) - 1 or xp[j] == x:
            return fp[j]
        slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j])
        y = slope * (x - xp[j]) + fp[j]
        if y != y:  # NaN: numpy retries from the right end, then falls back to a flat segment
            y = slope * (x - xp[j + 1]) + fp[j + 1]
            if y != y and fp[j] == fp[j + 1]:
                y = fp[j]
        return y

    def generation_attention_us(self, batch: int, mean_context: np.ndarray) -> np.ndarray:
        """Decode attention of ``batch`` sequences whose mean context is ``mean_context`` tokens."""
        if batch <= 0:
            return np.zeros_like(np.asarray(mean_context, np.float64))
        row, xp = self._gen_rows[batch], self._gen_ctx
        x = np.asarray(mean_context, np.float64)
        y = np.interp(x, xp, row)
        return np.where(x > xp[-1], row[-1] * x / xp[-1], y)

    # ------------------------------------------------------------------ composition
    def decode_step_us(self, batch: int, sum_context: np.ndarray) -> np.ndarray:
        """Pure-decode steps of ``batch`` sequences (vectorised over Σ context)."""
        sc = np.asarray(sum_context, np.float64)
        return self.linear_us[batch] + self.head_us[batch] + self.generation_attention_us(batch, sc / max(batch, 1))

    def decode_step_scalar(self, batch: int, sum_context: float) -> float:
        """:meth:`decode_step_us` for one step (hot path of the decode segments; same arithmetic and bits)."""
        attn = self._gen_attention_scalar(batch, sum_context / batch) if batch > 0 else 0.0
        return self._linear_list[batch] + self._head_list[batch] + attn

    def step_us(self, prefill_chunks, prefill_prior, num_decode: int, sum_decode_context: float, num_sampled: int) -> float:
        """One general step: prefill chunks (tokens, with prior context) plus ``num_decode`` decoding sequences."""
        chunks = [int(x) for x in prefill_chunks]
        priors = [int(x) for x in prefill_prior]
        n = sum(chunks) + num_decode
        t = self._linear_list[n] + self._head_list[num_sampled]
        for ch, pr in zip(chunks, priors):
            t += self.context_attention_scalar(ch, pr)
        if num_decode:
            t += self._gen_attention_scalar(num_decode, sum_decode_context / num_decode)
        return float(t)

    def roofline_scalar(self, tokens: int, sum_decode_context: float, num_seqs: int) -> float:
        """Scalar :meth:`roofline_us` (the per-step hot path)."""
        if self._roof is None:
            m, tp = self.spec, self.tp
            self._roof = (m.is_moe, m.num_experts, m.experts_per_token,
                          m.num_layers * m.params_attention_per_layer + 2 * m.vocab_size * m.hidden_size,
                          m.num_layers * m.params_mlp_per_expert, m.total_params, m.kv_bytes_per_token, tp,
                          2 * (m.active_params - m.vocab_size * m.hidden_size), 2 * m.vocab_size * m.hidden_size,
                          self.hw.bytes_per_us, self.hw.flops_per_us)
        moe, ne, k, base, per_exp, total, kvb, tp, f_tok, f_seq, bw, fl = self._roof
        params = base + min(ne, max(tokens, 1) * k) * per_exp if moe else total
        nbytes = (params * 2 + sum_decode_context * kvb) / tp
        flops = (tokens * f_tok + num_seqs * f_seq) / tp
        return max(nbytes / bw, flops / fl)

    def roofline_us(self, tokens: np.ndarray, sum_decode_context: np.ndarray, num_seqs: np.ndarray) -> np.ndarray:
        """Lower bound no real step can beat: max(bytes / peak BW, FLOPs / peak FLOP/s), per GPU.

        Bytes = weights actually touched (for MoE only the experts the tokens can reach) + KV read by decodes.
        """
        m, hw, tp = self.spec, self.hw, self.tp
        tokens = np.asarray(tokens, np.float64)
        if m.is_moe:
            experts = np.minimum(m.num_experts, np.maximum(tokens, 1) * m.experts_per_token)
            params = (m.num_layers * (m.params_attention_per_layer + experts * m.params_mlp_per_expert)
                      + 2 * m.vocab_size * m.hidden_size)
        else:
            params = np.full_like(tokens, m.total_params, dtype=np.float64)
        nbytes = (params * 2 + np.asarray(sum_decode_context, np.float64) * m.kv_bytes_per_token) / tp
        flops = (tokens * 2 * (m.active_params - m.vocab_size * m.hidden_size)
                 + np.asarray(num_seqs, np.float64) * 2 * m.vocab_size * m.hidden_size) / tp
        return np.maximum(nbytes / hw.bytes_per_us, flops / hw.flops_per_us)
