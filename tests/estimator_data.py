"""Builders of small, realistic canonical tables with a KNOWN piecewise-linear truth (estimator tests).

``make_steps``/``make_requests`` return ``(table, truth)`` where ``truth`` holds the per-regime coefficients
(feature name → coefficient, plus "intercept") used to generate the target, regimes labelled by the seed's
hard rules. Noise is multiplicative log-normal with ``noise`` σ (0 = exact).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from molerd import features as F
from molerd.regimes import RuleDetector

BETA_TRUTH = {
    "prefill_dominated": {"intercept": 900.0, "t_prefill_compute_us": 1.8, "t_prefill_attention_us": 2.5,
                          "t_decode_kv_us": 1.5, "num_prefill_reqs": 40.0},
    "decode_dominated": {"intercept": 1200.0, "t_decode_kv_us": 1.3, "t_decode_compute_us": 3.0,
                         "t_prefill_compute_us": 1.0, "batch_reqs": 6.0},
    "mixed_balanced": {"intercept": 1500.0, "t_prefill_compute_us": 1.5, "t_prefill_attention_us": 2.0,
                       "t_decode_compute_us": 2.0, "t_decode_kv_us": 1.2, "batch_reqs": 4.0},
    "saturation": {"intercept": 2500.0, "t_prefill_compute_us": 2.0, "t_prefill_attention_us": 2.0,
                   "t_decode_compute_us": 2.5, "t_decode_kv_us": 1.6, "kv_pressure": 60.0},
}

ALPHA_TRUTH = {
    "low_load": {"intercept": 400.0, "prompt_ktokens": 300.0},
    "normal_load": {"intercept": 800.0, "littles_law_us": 0.9, "queue_depth": 150.0},
    "high_pressure": {"intercept": 2000.0, "littles_law_us": 1.2, "kv_pressure": 900.0},
    "preemption": {"intercept": 1500.0, "littles_law_us": 1.0, "preemption_delay_us": 0.4},
}


def _scope(n, hardware, model, tp, trace_id, max_num_seqs=256, budget=8192, blocks=20000):
    return {"trace_id": [trace_id] * n, "hardware": [hardware] * n, "model": [model] * n, "tp": np.full(n, tp),
            "max_num_seqs": np.full(n, max_num_seqs), "max_num_batched_tokens": np.full(n, budget),
            "kv_blocks_total": np.full(n, blocks), "block_size": np.full(n, 16),
            "prefix_caching": np.full(n, True), "cpu_offload": np.full(n, False)}


def _truth_target(df, truth, target, rng, noise, thresholds=None):
    det = RuleDetector(target, thresholds, 0.0).fit()
    labels = det.predict(F.gate_inputs(df, target))
    y = np.empty(len(df))
    for regime, coefs in truth.items():
        sel = labels == regime
        if not sel.any():
            continue
        names = [k for k in coefs if k != "intercept"]
        X, _, _ = F.feature_matrix(df.loc[sel], names, drop_unavailable=False)
        y[sel] = coefs["intercept"] + X @ np.array([coefs[k] for k in names])
    if noise > 0:
        y = y * np.exp(rng.normal(0.0, noise, len(y)))
    return y, labels


def make_steps(n_runs=6, steps_per_run=250, seed=0, hardware="H100", model="llama-3.1-8b-instruct", tp=1,
               noise=0.05, truth=None, thresholds=None):
    """Canonical ``steps`` table (StepsSchema columns) and the truth used for ``step_duration_us``."""
    rng = np.random.default_rng(seed)
    truth = truth or BETA_TRUTH
    parts = []
    for run in range(n_runs):
        n = steps_per_run
        mode = rng.choice(4, size=n, p=[0.3, 0.35, 0.2, 0.15])  # prefill-heavy, decode, mixed, saturated
        n_dec = np.where(mode == 0, rng.integers(0, 8, n), rng.integers(4, 200, n))
        pf_reqs = np.where(mode == 1, rng.integers(0, 2, n), rng.integers(1, 5, n))
        pf_tok = np.where(pf_reqs > 0, rng.integers(64, 2048, n) * pf_reqs, 0)
        pf_tok = np.where(mode == 1, np.minimum(pf_tok, n_dec // 4), pf_tok)
        pf_reqs = np.where(pf_tok > 0, pf_reqs, 0)
        ratio = rng.uniform(0.32, 0.68, n)
        mixed = (mode >= 2)
        pf_tok = np.where(mixed, np.round(n_dec * ratio / (1 - ratio)).astype(int), pf_tok)
        pf_reqs = np.where(mixed, np.maximum(1, pf_reqs), pf_reqs)
        pf_tok = np.minimum(pf_tok, 8192 - n_dec)
        kv = np.where(mode == 3, rng.uniform(0.9, 0.99, n), rng.uniform(0.05, 0.88, n))
        ctx_mean = rng.uniform(200, 3000, n)
        prior = rng.uniform(0, 1, n) * np.where(rng.uniform(size=n) < 0.3, 2000, 0)
        chunk = pf_tok / np.maximum(pf_reqs, 1)
        waiting = rng.poisson(np.where(kv > 0.85, 20, 3))
        preempted = np.where(kv > 0.92, rng.poisson(0.5, n), 0)
        running = np.minimum(n_dec + pf_reqs + rng.integers(0, 3, n), 256)
        dur_placeholder = np.ones(n)
        d = _scope(n, hardware, model, tp, f"{hardware}-{model}-run{run}")
        d.update({
            "step_id": np.arange(n), "ts_start_us": np.cumsum(np.full(n, 20000.0)),
            "step_duration_us": dur_placeholder,
            "prefill_tokens": pf_tok, "decode_tokens": n_dec, "num_prefill_reqs": pf_reqs, "num_decode_reqs": n_dec,
            "running_depth": running, "waiting_depth": waiting, "kv_usage_ratio": kv,
            "kv_blocks_free": np.round((1 - kv) * 20000).astype(int), "num_preempted": preempted,
            "num_finished": rng.integers(0, 3, n),
            "sum_decode_context": n_dec * ctx_mean,
            "sum_prefill_attention": pf_reqs * chunk * (prior + chunk / 2),
            "max_context": np.maximum(ctx_mean * 1.5, prior + chunk),
            "prefix_cache_hit_tokens": np.zeros(n),
        })
        parts.append(pd.DataFrame(d))
    df = pd.concat(parts, ignore_index=True)
    y, labels = _truth_target(df, truth, "beta", rng, noise, thresholds)
    df["step_duration_us"] = y
    return df, {"coef": truth, "labels": labels}


def make_requests(n_runs=6, reqs_per_run=250, seed=0, hardware="H100", model="llama-3.1-8b-instruct", tp=1,
                  noise=0.05, truth=None):
    """Canonical ``requests`` table (RequestsSchema columns); scheduled_us − queued_us follows ``truth``."""
    rng = np.random.default_rng(seed)
    truth = truth or ALPHA_TRUTH
    parts = []
    for run in range(n_runs):
        n = reqs_per_run
        load = rng.choice(4, size=n, p=[0.3, 0.35, 0.2, 0.15])
        waiting = np.where(load == 0, rng.integers(0, 3, n), rng.integers(3, 60, n))
        kv = np.where(load == 2, rng.uniform(0.86, 0.99, n), rng.uniform(0.05, 0.84, n))
        recent = np.where(load == 3, rng.integers(1, 6, n), 0)
        running = rng.integers(1, 128, n)
        svc = rng.uniform(2e5, 2e6, n)
        prompt = rng.integers(16, 4096, n)
        cached = np.floor(prompt * rng.uniform(0, 0.5, n) / 16) * 16
        arrived = np.cumsum(rng.exponential(5e4, n))
        d = _scope(n, hardware, model, tp, f"{hardware}-{model}-req{run}")
        d.update({
            "request_id": [f"r{run}-{i}" for i in range(n)], "arrived_us": arrived,
            "queued_us": arrived + 1500 + 0.3 * prompt, "scheduled_us": np.nan, "first_token_us": np.nan,
            "finished_us": np.nan, "departed_us": np.nan, "prompt_tokens": prompt,
            "output_tokens": rng.integers(1, 512, n), "cached_prompt_tokens": cached,
            "num_preemptions": np.zeros(n, dtype=int), "status": ["finished"] * n,
            "waiting_depth": waiting.astype(float), "running_depth": running.astype(float),
            "kv_usage_ratio": kv, "recent_preemptions": recent.astype(float), "avg_service_time_us": svc,
        })
        parts.append(pd.DataFrame(d))
    df = pd.concat(parts, ignore_index=True)
    delay, labels = _truth_target(df, truth, "alpha", rng, noise)
    df["scheduled_us"] = df["queued_us"] + delay
    df["first_token_us"] = df["scheduled_us"] + 3e4
    df["finished_us"] = df["first_token_us"] + 1e5
    df["departed_us"] = df["finished_us"] + 500
    return df, {"coef": truth, "labels": labels}
