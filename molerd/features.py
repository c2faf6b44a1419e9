"""Per-regime feature vectors: the ONE feature catalog shared by training and the reference predictor.

Every feature is a closed-form expression over raw canonical-table columns (``RAW_INPUTS``) and per-scope
constants (``SCOPE_CONSTANTS``: hardware peak FLOP/s and bandwidth, model FLOPs/bytes per token, TP, ...),
so an independent consumer (Python reference predictor, Go) can recompute it from its ``expression`` text.
This module does no fitting (no scikit-learn): ``molerd.release`` imports it.

Two catalogs, by name:

* ``seed``    — the idea document's four alpha and four beta vectors exactly as written (``hardware_tflops``
  is read as peak FLOP/µs and ``hardware_bandwidth`` as peak bytes/µs, so the time-like terms come out in µs).
* ``physics`` — corrected where the seed is physically wrong: attention is Σ chunk·(ctx + chunk/2)
  (``sum_prefill_attention``), not prefill_tokens²; decode KV reads are Σ context × kv bytes, not
  decode_tokens; a weight-read term is the decode floor; everything is normalised to µs by the model and the
  hardware, and divided by TP. The per-step overhead floor is each expert's intercept. Alpha experts get the
  Little's-law estimate (waiting × mean service time ÷ running).

Units: µs and tokens. A feature whose inputs are missing or all-NaN is dropped with a note
(:func:`feature_matrix`), never filled with a made-up value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from molerd.specs import BYTES_PER_PARAM, hardware, model

TARGETS = ("beta", "alpha")
FEATURE_SETS = ("physics", "seed")
ALPHA_TARGET_KINDS = ("scheduled_minus_queued", "queued_minus_arrived")

BETA_REGIMES = ("prefill_dominated", "decode_dominated", "saturation", "mixed_balanced")
ALPHA_REGIMES = ("low_load", "high_pressure", "preemption", "normal_load")
REGIMES = {"beta": BETA_REGIMES, "alpha": ALPHA_REGIMES}

SCOPE_KEY = ("hardware", "model", "tp")

# Per-scope constants (one value per (hardware, model, tp)); names are what `expression` strings use.
SCOPE_CONSTANTS: dict[str, str] = {
    "tp": "tensor-parallel degree",
    "flops_per_us": "hardware peak dense bf16 FLOP per µs (TFlopsPeak × 1e6)",
    "bytes_per_us": "hardware peak HBM bytes per µs (BwPeakTBs × 1e6)",
    "link_bytes_per_us": "intra-node link bytes per µs (IntraNodeBwGBs × 1e3; NVLink or PCIe)",
    "flops_per_token": "dense matmul FLOPs per token, 2 × active params",
    "attention_flops_per_context_token": "FLOPs per (query, context) token pair over all layers",
    "kv_bytes_per_token": "K+V cache bytes per token over all layers (bf16)",
    "weight_bytes": "all weight bytes (bf16)",
    "expert_weight_bytes": "bytes of all MoE expert MLP weights (0 for dense models)",
    "num_layers": "transformer layers",
    "num_experts": "MoE experts per layer (1 for dense)",
    "experts_per_token": "MoE experts per token (1 for dense)",
    "is_moe": "1 for MoE models, else 0",
}

# Raw canonical-table columns each target's features and gate may read.
RAW_INPUTS: dict[str, tuple[str, ...]] = {
    "beta": (
        "prefill_tokens", "decode_tokens", "num_prefill_reqs", "num_decode_reqs", "running_depth",
        "waiting_depth", "kv_usage_ratio", "num_preempted", "sum_decode_context", "sum_prefill_attention",
        "block_size", "cpu_offload", "kv_fragmentation_ratio", "num_evictions", "offload_transfer_us",
    ),
    "alpha": (
        "prompt_tokens", "cached_prompt_tokens", "num_preemptions", "waiting_depth", "running_depth",
        "kv_usage_ratio", "recent_preemptions", "avg_service_time_us", "max_num_seqs", "max_num_batched_tokens",
    ),
}


@dataclass(frozen=True)
class Feature:
    """One catalog entry: ``fn(raw, const) -> ndarray`` implements ``expression`` exactly."""

    name: str
    unit: str
    description: str
    expression: str
    columns: tuple[str, ...]
    constants: tuple[str, ...]
    fn: Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray]], np.ndarray]

    def describe(self) -> dict:
        return {"unit": self.unit, "description": self.description, "expression": self.expression,
                "columns": list(self.columns), "constants": list(self.constants)}


CATALOG: dict[str, Feature] = {}


def _reg(name, unit, description, expression, columns, constants, fn) -> None:
    CATALOG[name] = Feature(name, unit, description, expression, tuple(columns), tuple(constants), fn)


def _safe_div(a, b):
    b = np.asarray(b, dtype="float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, np.asarray(a, dtype="float64") / np.where(b > 0, b, 1.0), 0.0)


# ----------------------------------------------------------------------------------------- beta, seed
_reg("seed_prefill_compute", "µs", "prefill matmul time (seed: prefill_tokens·flops_per_token/hardware_tflops)",
     "prefill_tokens * flops_per_token / flops_per_us", ["prefill_tokens"], ["flops_per_token", "flops_per_us"],
     lambda r, c: r["prefill_tokens"] * c["flops_per_token"] / c["flops_per_us"])
_reg("seed_prefill_attention_sq", "token²·µs/FLOP", "seed attention proxy prefill_tokens²/(tp·hardware_tflops)",
     "prefill_tokens ** 2 / (tp * flops_per_us)", ["prefill_tokens"], ["tp", "flops_per_us"],
     lambda r, c: r["prefill_tokens"] ** 2 / (c["tp"] * c["flops_per_us"]))
_reg("num_prefill_reqs", "requests", "requests prefilling this step (per-request overhead)",
     "num_prefill_reqs", ["num_prefill_reqs"], [], lambda r, c: r["num_prefill_reqs"] * 1.0)
_reg("seed_moe_prefill", "token·µs/FLOP", "seed MoE compute moe_active_experts·prefill_tokens/hardware_tflops (0 dense)",
     "is_moe * experts_per_token * prefill_tokens / flops_per_us", ["prefill_tokens"],
     ["is_moe", "experts_per_token", "flops_per_us"],
     lambda r, c: c["is_moe"] * c["experts_per_token"] * r["prefill_tokens"] / c["flops_per_us"])
_reg("seed_decode_kv", "µs", "seed KV read decode_tokens·kv_bytes_per_token/hardware_bandwidth",
     "decode_tokens * kv_bytes_per_token / bytes_per_us", ["decode_tokens"], ["kv_bytes_per_token", "bytes_per_us"],
     lambda r, c: r["decode_tokens"] * c["kv_bytes_per_token"] / c["bytes_per_us"])
_reg("seed_decode_x_running", "token·requests", "seed decode_tokens·running_depth",
     "decode_tokens * running_depth", ["decode_tokens", "running_depth"], [],
     lambda r, c: r["decode_tokens"] * r["running_depth"])
_reg("seed_moe_decode", "token·µs/byte", "seed MoE memory decode_tokens·moe_expert_count/hardware_bandwidth (0 dense)",
     "is_moe * num_experts * decode_tokens / bytes_per_us", ["decode_tokens"], ["is_moe", "num_experts", "bytes_per_us"],
     lambda r, c: c["is_moe"] * c["num_experts"] * r["decode_tokens"] / c["bytes_per_us"])
_reg("offload_us", "µs", "CPU offload transfer time when offload is on (seed cpu_offload·offload_transfer_time)",
     "cpu_offload * offload_transfer_us", ["cpu_offload", "offload_transfer_us"], [],
     lambda r, c: r["cpu_offload"] * r["offload_transfer_us"])
_reg("seed_prefill_per_flops", "token·µs/FLOP", "seed prefill_tokens/hardware_tflops",
     "prefill_tokens / flops_per_us", ["prefill_tokens"], ["flops_per_us"],
     lambda r, c: r["prefill_tokens"] / c["flops_per_us"])
_reg("seed_decode_per_bw", "token·µs/byte", "seed decode_tokens/hardware_bandwidth",
     "decode_tokens / bytes_per_us", ["decode_tokens"], ["bytes_per_us"],
     lambda r, c: r["decode_tokens"] / c["bytes_per_us"])
_reg("seed_competition", "1", "seed prefill_tokens·decode_tokens/batch_tokens² (0 for an empty batch)",
     "prefill_tokens * decode_tokens / (prefill_tokens + decode_tokens) ** 2 if prefill_tokens + decode_tokens > 0 else 0",
     ["prefill_tokens", "decode_tokens"], [],
     lambda r, c: _safe_div(r["prefill_tokens"] * r["decode_tokens"], (r["prefill_tokens"] + r["decode_tokens"]) ** 2))
_reg("seed_running_x_kv", "requests", "seed running_depth·kv_usage_ratio",
     "running_depth * kv_usage_ratio", ["running_depth", "kv_usage_ratio"], [],
     lambda r, c: r["running_depth"] * r["kv_usage_ratio"])
_reg("seed_batch_per_bw", "token·µs/byte", "seed batch_tokens/hardware_bandwidth",
     "(prefill_tokens + decode_tokens) / bytes_per_us", ["prefill_tokens", "decode_tokens"], ["bytes_per_us"],
     lambda r, c: (r["prefill_tokens"] + r["decode_tokens"]) / c["bytes_per_us"])
_reg("seed_fragmentation", "tokens", "seed kv_fragmentation_ratio·batch_tokens",
     "kv_fragmentation_ratio * (prefill_tokens + decode_tokens)",
     ["kv_fragmentation_ratio", "prefill_tokens", "decode_tokens"], [],
     lambda r, c: r["kv_fragmentation_ratio"] * (r["prefill_tokens"] + r["decode_tokens"]))
_reg("evict_us", "µs", "KV blocks evicted × one block's transfer time over the link (seed num_evictions·block_transfer_time)",
     "num_evictions * block_size * kv_bytes_per_token / (tp * link_bytes_per_us)",
     ["num_evictions", "block_size"], ["kv_bytes_per_token", "tp", "link_bytes_per_us"],
     lambda r, c: r["num_evictions"] * r["block_size"] * c["kv_bytes_per_token"] / (c["tp"] * c["link_bytes_per_us"]))
_reg("kv_pressure", "1", "divergent KV pressure 1/(1 − kv_usage_ratio + 0.01)",
     "1 / (1 - kv_usage_ratio + 0.01)", ["kv_usage_ratio"], [],
     lambda r, c: 1.0 / (1.0 - r["kv_usage_ratio"] + 0.01))

# -------------------------------------------------------------------------------------- beta, physics
_reg("t_prefill_compute_us", "µs", "prefill matmul roofline time per GPU",
     "prefill_tokens * flops_per_token / (tp * flops_per_us)", ["prefill_tokens"],
     ["flops_per_token", "tp", "flops_per_us"],
     lambda r, c: r["prefill_tokens"] * c["flops_per_token"] / (c["tp"] * c["flops_per_us"]))
_reg("t_prefill_attention_us", "µs", "prefill attention roofline time: Σ chunk·(ctx+chunk/2) pairs × FLOPs per pair",
     "sum_prefill_attention * attention_flops_per_context_token / (tp * flops_per_us)", ["sum_prefill_attention"],
     ["attention_flops_per_context_token", "tp", "flops_per_us"],
     lambda r, c: r["sum_prefill_attention"] * c["attention_flops_per_context_token"] / (c["tp"] * c["flops_per_us"]))
_reg("t_decode_compute_us", "µs", "decode matmul roofline time per GPU",
     "decode_tokens * flops_per_token / (tp * flops_per_us)", ["decode_tokens"],
     ["flops_per_token", "tp", "flops_per_us"],
     lambda r, c: r["decode_tokens"] * c["flops_per_token"] / (c["tp"] * c["flops_per_us"]))
_reg("t_decode_kv_us", "µs", "decode KV-cache read time: Σ decode context × KV bytes per token",
     "sum_decode_context * kv_bytes_per_token / (tp * bytes_per_us)", ["sum_decode_context"],
     ["kv_bytes_per_token", "tp", "bytes_per_us"],
     lambda r, c: r["sum_decode_context"] * c["kv_bytes_per_token"] / (c["tp"] * c["bytes_per_us"]))


def _moe_touched_fraction(tokens, num_experts, experts_per_token):
    """Expected fraction of a layer's experts hit by ``tokens`` tokens routed uniformly at random (1 for dense)."""
    e = np.asarray(num_experts, dtype="float64")
    k = np.asarray(experts_per_token, dtype="float64")
    return 1.0 - (1.0 - k / e) ** np.asarray(tokens, dtype="float64")


_reg("t_weight_us", "µs", "weight read time per GPU (decode floor); MoE reads only the experts the batch touches",
     "(weight_bytes - expert_weight_bytes * (1 - (1 - (1 - experts_per_token / num_experts) ** (prefill_tokens + decode_tokens)))) / (tp * bytes_per_us)",
     ["prefill_tokens", "decode_tokens"],
     ["weight_bytes", "expert_weight_bytes", "experts_per_token", "num_experts", "tp", "bytes_per_us"],
     lambda r, c: (c["weight_bytes"] - c["expert_weight_bytes"]
                   * (1.0 - _moe_touched_fraction(r["prefill_tokens"] + r["decode_tokens"], c["num_experts"],
                                                  c["experts_per_token"]))) / (c["tp"] * c["bytes_per_us"]))
_reg("t_expert_balanced_us", "µs",
     "MoE expert weights read when the batch's tokens spread evenly over the experts (the fused-MoE kernel's "
     "balanced routing): min(1, tokens·k/E) of all expert bytes; 0 for dense models. Beside t_weight_us "
     "(random routing) the fit can weigh the two hypotheses",
     "expert_weight_bytes * min(1, (prefill_tokens + decode_tokens) * experts_per_token / num_experts) / (tp * bytes_per_us)",
     ["prefill_tokens", "decode_tokens"], ["expert_weight_bytes", "experts_per_token", "num_experts", "tp", "bytes_per_us"],
     lambda r, c: c["expert_weight_bytes"] * np.minimum(
         1.0, (r["prefill_tokens"] + r["decode_tokens"]) * c["experts_per_token"] / c["num_experts"])
     / (c["tp"] * c["bytes_per_us"]))
_reg("t_roofline_us", "µs", "whole-step roofline max(compute time, memory time): the compute/memory crossover",
     "max((prefill_tokens + decode_tokens) * flops_per_token / (tp * flops_per_us) + t_prefill_attention_us, "
     "t_weight_us + t_decode_kv_us)",
     ["prefill_tokens", "decode_tokens", "sum_prefill_attention", "sum_decode_context"],
     ["flops_per_token", "attention_flops_per_context_token", "kv_bytes_per_token", "weight_bytes",
      "expert_weight_bytes", "experts_per_token", "num_experts", "tp", "flops_per_us", "bytes_per_us"],
     lambda r, c: np.maximum(
         (r["prefill_tokens"] + r["decode_tokens"]) * c["flops_per_token"] / (c["tp"] * c["flops_per_us"])
         + CATALOG["t_prefill_attention_us"].fn(r, c),
         CATALOG["t_weight_us"].fn(r, c) + CATALOG["t_decode_kv_us"].fn(r, c)))
_reg("batch_reqs", "requests", "requests in the batch (per-request scheduling/launch overhead)",
     "num_prefill_reqs + num_decode_reqs", ["num_prefill_reqs", "num_decode_reqs"], [],
     lambda r, c: (r["num_prefill_reqs"] + r["num_decode_reqs"]) * 1.0)

# ---------------------------------------------------------------------------------------- alpha, seed
_reg("prompt_ktokens", "ktokens", "prompt length / 1000 (tokenization overhead)",
     "prompt_tokens / 1000", ["prompt_tokens"], [], lambda r, c: r["prompt_tokens"] / 1000.0)
_reg("prefix_cache_miss_ratio", "1", "fraction of the prompt not served by the prefix cache",
     "1 - cached_prompt_tokens / prompt_tokens", ["cached_prompt_tokens", "prompt_tokens"], [],
     lambda r, c: 1.0 - _safe_div(r["cached_prompt_tokens"], r["prompt_tokens"]))
_reg("queue_depth", "requests", "waiting requests (queue depth) when this request was queued",
     "waiting_depth", ["waiting_depth"], [], lambda r, c: r["waiting_depth"] * 1.0)
_reg("seed_queue_x_service", "request·µs", "seed queue_depth·avg_service_time",
     "waiting_depth * avg_service_time_us", ["waiting_depth", "avg_service_time_us"], [],
     lambda r, c: r["waiting_depth"] * r["avg_service_time_us"])
_reg("seed_prompt_over_budget", "1", "seed prompt_tokens/max_batch_tokens",
     "prompt_tokens / max_num_batched_tokens", ["prompt_tokens", "max_num_batched_tokens"], [],
     lambda r, c: r["prompt_tokens"] / r["max_num_batched_tokens"])
_reg("seed_running_over_max", "1", "seed running_depth/max_num_seqs",
     "running_depth / max_num_seqs", ["running_depth", "max_num_seqs"], [],
     lambda r, c: r["running_depth"] / r["max_num_seqs"])
_reg("seed_queue_x_kv", "requests", "seed queue_depth·kv_usage_ratio",
     "waiting_depth * kv_usage_ratio", ["waiting_depth", "kv_usage_ratio"], [],
     lambda r, c: r["waiting_depth"] * r["kv_usage_ratio"])
_reg("seed_prompt_x_kv", "tokens", "seed prompt_tokens·kv_usage_ratio",
     "prompt_tokens * kv_usage_ratio", ["prompt_tokens", "kv_usage_ratio"], [],
     lambda r, c: r["prompt_tokens"] * r["kv_usage_ratio"])
_reg("num_preemptions", "preemptions", "times this request was preempted (seed num_preemptions)",
     "num_preemptions", ["num_preemptions"], [], lambda r, c: r["num_preemptions"] * 1.0)
_reg("seed_preempted_ktokens", "ktokens", "seed preempted_tokens/1000, read as num_preemptions·prompt_tokens/1000 "
     "(recomputed prompt per preemption; the canonical table has no wasted-token count)",
     "num_preemptions * prompt_tokens / 1000", ["num_preemptions", "prompt_tokens"], [],
     lambda r, c: r["num_preemptions"] * r["prompt_tokens"] / 1000.0)
_reg("kv_usage_ratio", "1", "KV-cache usage fraction", "kv_usage_ratio", ["kv_usage_ratio"], [],
     lambda r, c: r["kv_usage_ratio"] * 1.0)

# ------------------------------------------------------------------------------------- alpha, physics
_reg("littles_law_us", "µs", "Little's-law queueing estimate: waiting × mean service time ÷ max(running, 1)",
     "waiting_depth * avg_service_time_us / max(running_depth, 1)",
     ["waiting_depth", "avg_service_time_us", "running_depth"], [],
     lambda r, c: r["waiting_depth"] * r["avg_service_time_us"] / np.maximum(r["running_depth"], 1.0))
_reg("cache_miss_ktokens", "ktokens", "prompt tokens to prefill after the prefix cache, / 1000",
     "(prompt_tokens - cached_prompt_tokens) / 1000", ["prompt_tokens", "cached_prompt_tokens"], [],
     lambda r, c: (r["prompt_tokens"] - r["cached_prompt_tokens"]) / 1000.0)
_reg("preemption_delay_us", "µs", "recent preemptions × mean service time (work the scheduler must redo)",
     "recent_preemptions * avg_service_time_us", ["recent_preemptions", "avg_service_time_us"], [],
     lambda r, c: r["recent_preemptions"] * r["avg_service_time_us"])
_reg("recent_preemptions", "preemptions", "preemptions in the window before queueing",
     "recent_preemptions", ["recent_preemptions"], [], lambda r, c: r["recent_preemptions"] * 1.0)

# Per-regime vectors. Each expert also has an intercept: the per-step (or per-request) overhead floor.
REGIME_FEATURES: dict[str, dict[str, dict[str, list[str]]]] = {
    "beta": {
        "seed": {
            "prefill_dominated": ["seed_prefill_compute", "seed_prefill_attention_sq", "num_prefill_reqs", "seed_moe_prefill"],
            "decode_dominated": ["seed_decode_kv", "seed_decode_x_running", "seed_moe_decode", "offload_us"],
            "mixed_balanced": ["seed_prefill_per_flops", "seed_decode_per_bw", "seed_competition", "seed_running_x_kv"],
            "saturation": ["seed_batch_per_bw", "seed_fragmentation", "evict_us", "kv_pressure"],
        },
        "physics": {
            "prefill_dominated": ["t_prefill_compute_us", "t_prefill_attention_us", "t_decode_kv_us", "t_weight_us",
                                  "t_roofline_us", "num_prefill_reqs"],
            "decode_dominated": ["t_weight_us", "t_expert_balanced_us", "t_decode_kv_us", "t_decode_compute_us",
                                 "t_prefill_compute_us", "batch_reqs", "offload_us"],
            "mixed_balanced": ["t_prefill_compute_us", "t_prefill_attention_us", "t_decode_compute_us", "t_decode_kv_us",
                               "t_weight_us", "t_expert_balanced_us", "batch_reqs"],
            "saturation": ["t_prefill_compute_us", "t_prefill_attention_us", "t_decode_compute_us", "t_decode_kv_us",
                           "t_weight_us", "kv_pressure", "evict_us", "offload_us"],
        },
    },
    "alpha": {
        "seed": {
            "low_load": ["prompt_ktokens", "prefix_cache_miss_ratio"],
            "normal_load": ["queue_depth", "seed_queue_x_service", "seed_prompt_over_budget", "seed_running_over_max"],
            "high_pressure": ["kv_pressure", "seed_queue_x_kv", "seed_prompt_x_kv"],
            "preemption": ["queue_depth", "num_preemptions", "seed_preempted_ktokens", "kv_usage_ratio"],
        },
        "physics": {
            "low_load": ["prompt_ktokens", "cache_miss_ktokens", "littles_law_us"],
            "normal_load": ["littles_law_us", "queue_depth", "seed_prompt_over_budget", "seed_running_over_max"],
            "high_pressure": ["littles_law_us", "kv_pressure", "seed_queue_x_kv", "seed_prompt_x_kv"],
            "preemption": ["littles_law_us", "preemption_delay_us", "queue_depth", "kv_usage_ratio"],
        },
    },
}


def regime_features(target: str, feature_set: str) -> dict[str, list[str]]:
    """Feature names per regime, in order, for ``target`` ("beta"/"alpha") and ``feature_set`` ("physics"/"seed")."""
    if target not in REGIME_FEATURES:
        raise ValueError(f"unknown target {target!r}; valid: {', '.join(TARGETS)}")
    if feature_set not in REGIME_FEATURES[target]:
        raise ValueError(f"unknown feature_set {feature_set!r}; valid: {', '.join(FEATURE_SETS)}")
    return {k: list(v) for k, v in REGIME_FEATURES[target][feature_set].items()}


def union_features(target: str, feature_set: str = "physics") -> list[str]:
    """All features of every regime of ``target`` in first-seen order (the global expert's vector)."""
    out: list[str] = []
    for names in regime_features(target, feature_set).values():
        out += [n for n in names if n not in out]
    return out


# ----------------------------------------------------------------------------------- scope constants
def scope_constants(hardware_name: str, model_name: str, tp: int) -> dict[str, float]:
    """The constants every feature may use for one (hardware, model, tp) scope (plain floats, JSON-safe)."""
    if int(tp) < 1:
        raise ValueError(f"tp must be >= 1 for scope ({hardware_name}, {model_name}), got {tp}")
    hw, m = hardware(hardware_name), model(model_name)
    expert_bytes = float(m.num_layers * m.num_experts * m.params_mlp_per_expert * BYTES_PER_PARAM) if m.is_moe else 0.0
    return {
        "tp": float(tp),
        "flops_per_us": hw.flops_per_us,
        "bytes_per_us": hw.bytes_per_us,
        "link_bytes_per_us": hw.intra_node_bw_gbs * 1e3,
        "flops_per_token": float(m.flops_per_token),
        "attention_flops_per_context_token": float(m.attention_flops_per_context_token),
        "kv_bytes_per_token": float(m.kv_bytes_per_token),
        "weight_bytes": float(m.weight_bytes),
        "expert_weight_bytes": expert_bytes,
        "num_layers": float(m.num_layers),
        "num_experts": float(m.num_experts),
        "experts_per_token": float(m.experts_per_token),
        "is_moe": 1.0 if m.is_moe else 0.0,
    }


def scope_id(hardware_name: str, model_name: str, tp: int) -> str:
    """Stable text key of a scope, as used in specs: ``"H100|llama-3.1-8b-instruct|1"``."""
    return f"{hardware_name}|{model_name}|{int(tp)}"


def table_scope_constants(df: pd.DataFrame) -> tuple[dict[str, np.ndarray], dict[str, dict[str, float]]]:
    """Per-row constant arrays for a canonical table, plus the per-scope constants used (keyed by scope_id)."""
    missing = [c for c in SCOPE_KEY if c not in df.columns]
    if missing:
        raise KeyError(f"canonical table lacks scope column(s) {missing}; need {list(SCOPE_KEY)}")
    n = len(df)
    out = {k: np.empty(n) for k in SCOPE_CONSTANTS}
    used: dict[str, dict[str, float]] = {}
    keys = df[list(SCOPE_KEY)].astype({"hardware": object, "model": object}).to_numpy()
    hw_arr, model_arr = keys[:, 0].astype(str), keys[:, 1].astype(str)
    tp_arr = np.asarray(df["tp"], dtype="int64")
    codes, uniq = pd.factorize(pd.Series([scope_id(h, m, t) for h, m, t in zip(hw_arr, model_arr, tp_arr)]))
    for i, sid in enumerate(uniq):
        h, m, t = sid.split("|")
        try:
            const = scope_constants(h, m, int(t))
        except KeyError as exc:
            rows = np.flatnonzero(codes == i)[:5].tolist()
            raise KeyError(f"scope {sid!r} (rows {rows}...): {exc.args[0]}") from exc
        used[sid] = const
        sel = codes == i
        for k, v in const.items():
            out[k][sel] = v
    return out, used


# ------------------------------------------------------------------------------------ computing features
def _raw_arrays(raw: Mapping | pd.DataFrame, columns: Sequence[str], n: int | None = None) -> dict[str, np.ndarray]:
    out = {}
    for col in columns:
        if col not in raw:
            continue
        v = raw[col]
        arr = v.to_numpy(dtype="float64", na_value=np.nan) if isinstance(v, pd.Series) else np.asarray(v, dtype="float64")
        if arr.ndim == 0 and n is not None:
            arr = np.full(n, float(arr))
        out[col] = arr
    return out


def compute_features(names: Sequence[str], raw: Mapping | pd.DataFrame, constants: Mapping) -> np.ndarray:
    """Feature matrix ``(n_rows, len(names))`` from raw column values and scope constants.

    This is what a reference predictor calls: ``raw`` maps raw column names to arrays (or a DataFrame),
    ``constants`` maps constant names to scalars or per-row arrays. A missing input raises ``KeyError``
    naming the feature and the column; NaN inputs propagate to NaN features.
    """
    unknown = [n for n in names if n not in CATALOG]
    if unknown:
        raise KeyError(f"unknown feature(s) {unknown}; known: {sorted(CATALOG)}")
    cols = sorted({c for n in names for c in CATALOG[n].columns})
    lengths = [len(raw[c]) for c in cols if c in raw and np.ndim(raw[c]) > 0]
    n = len(raw) if isinstance(raw, pd.DataFrame) else (lengths[0] if lengths else 1)
    r = _raw_arrays(raw, cols, n)
    c = {k: np.asarray(v, dtype="float64") for k, v in constants.items()}
    X = np.empty((n, len(names)))
    for j, name in enumerate(names):
        f = CATALOG[name]
        for col in f.columns:
            if col not in r:
                raise KeyError(f"feature {name!r} needs raw column {col!r}, which the input lacks")
        for k in f.constants:
            if k not in c:
                raise KeyError(f"feature {name!r} needs scope constant {k!r}, which was not given")
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            X[:, j] = np.broadcast_to(f.fn(r, c), (n,))
    return X


def feature_matrix(df: pd.DataFrame, names: Sequence[str], drop_unavailable: bool = True
                   ) -> tuple[np.ndarray, list[str], dict[str, str]]:
    """Features of a canonical table: ``(X, kept_names, notes)``.

    With ``drop_unavailable`` a feature whose input columns are absent or all-NaN is dropped and
    ``notes[name]`` says why (never imputed). Without it such a feature raises ``KeyError``.
    """
    const, _ = table_scope_constants(df)
    kept, notes = [], {}
    for name in names:
        f = CATALOG[name]
        bad = [col for col in f.columns if col not in df.columns]
        allnan = [col for col in f.columns if col in df.columns and df[col].isna().all()]
        if bad or allnan:
            why = (f"column(s) {bad} missing" if bad else "") + ("; " if bad and allnan else "") + \
                  (f"column(s) {allnan} all-NaN" if allnan else "")
            if not drop_unavailable:
                raise KeyError(f"feature {name!r} unavailable: {why}")
            notes[name] = f"dropped: {why} in the training data"
            continue
        kept.append(name)
    X = compute_features(kept, df, const) if kept else np.empty((len(df), 0))
    return X, kept, notes


def raw_inputs(df: pd.DataFrame, target: str) -> pd.DataFrame:
    """The raw per-row inputs a consumer needs for ``target`` (golden vectors): scope key + RAW_INPUTS present."""
    if target not in RAW_INPUTS:
        raise ValueError(f"unknown target {target!r}; valid: {', '.join(TARGETS)}")
    cols = [c for c in (*SCOPE_KEY, *RAW_INPUTS[target]) if c in df.columns]
    out = df[cols].copy()
    for c in RAW_INPUTS[target]:
        if c in out.columns:
            out[c] = out[c].to_numpy(dtype="float64", na_value=np.nan)
    return out.reset_index(drop=True)


# ------------------------------------------------------------------------------------------- gate inputs
GATE_INPUTS: dict[str, dict[str, str]] = {
    "beta": {
        "prefill_ratio": "prefill_tokens / (prefill_tokens + decode_tokens + 1e-6)",
        "kv_usage_ratio": "kv_usage_ratio",
        "queue_depth": "waiting_depth",
        "recent_preemptions": "num_preempted",
    },
    "alpha": {
        "queue_depth": "waiting_depth",
        "kv_usage_ratio": "kv_usage_ratio",
        "recent_preemptions": "recent_preemptions",
    },
}


def gate_inputs(df: Mapping | pd.DataFrame, target: str) -> pd.DataFrame:
    """Detector inputs (named as in ``GATE_INPUTS``) from raw columns; a missing column gives NaN."""
    if target not in GATE_INPUTS:
        raise ValueError(f"unknown target {target!r}; valid: {', '.join(TARGETS)}")
    def col(name):
        if name not in df:
            n = len(next(iter(df.values()))) if isinstance(df, Mapping) else len(df)
            return np.full(n, np.nan)
        v = df[name]
        return v.to_numpy(dtype="float64", na_value=np.nan) if isinstance(v, pd.Series) else np.asarray(v, dtype="float64")
    out = {}
    if target == "beta":
        p, d = col("prefill_tokens"), col("decode_tokens")
        out["prefill_ratio"] = p / (p + d + 1e-6)
        out["kv_usage_ratio"] = col("kv_usage_ratio")
        out["queue_depth"] = col("waiting_depth")
        out["recent_preemptions"] = col("num_preempted")
    else:
        out["queue_depth"] = col("waiting_depth")
        out["kv_usage_ratio"] = col("kv_usage_ratio")
        out["recent_preemptions"] = col("recent_preemptions")
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------------------------- targets
def alpha_target(requests: pd.DataFrame, kind: str = "scheduled_minus_queued") -> pd.Series:
    """Alpha target in µs. ``scheduled_minus_queued`` = the seed's queueing delay (scheduled_us − queued_us);
    ``queued_minus_arrived`` = BLIS α0, API overhead before the engine queue (queued_us − arrived_us).
    NaN where a timestamp is missing (aborted while waiting, no API events): callers drop and count those."""
    if kind == "scheduled_minus_queued":
        a, b = "scheduled_us", "queued_us"
    elif kind == "queued_minus_arrived":
        a, b = "queued_us", "arrived_us"
    else:
        raise ValueError(f"unknown alpha target kind {kind!r}; valid: {', '.join(ALPHA_TARGET_KINDS)}")
    for col in (a, b):
        if col not in requests.columns:
            raise KeyError(f"alpha target {kind!r} needs column {col!r}, which the requests table lacks")
    y = requests[a].to_numpy(dtype="float64", na_value=np.nan) - requests[b].to_numpy(dtype="float64", na_value=np.nan)
    return pd.Series(y, index=requests.index, name=f"alpha_{kind}_us")


def beta_target(steps: pd.DataFrame) -> pd.Series:
    """Beta target: one step's GPU forward time, µs."""
    return pd.Series(steps["step_duration_us"].to_numpy(dtype="float64"), index=steps.index, name="beta_step_us")


def catalog_spec(names: Sequence[str]) -> dict[str, dict]:
    """JSON-safe descriptions (unit, expression, columns, constants) of the named features."""
    return {n: CATALOG[n].describe() for n in names}
