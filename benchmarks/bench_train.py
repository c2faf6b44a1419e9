"""MoLERegressor training time and peak memory vs rows for one hardware (H100, llama-3.1-8b-instruct, tp 1).

Rows come from a realistic step generator: four batch mixes (prefill-heavy, decode-heavy, mixed, KV-saturated)
with consistent counts (tokens within the budget, requests within max_num_seqs, context sums from per-request
context lengths) and a roofline-like step time (weight streaming + prefill/attention compute + KV reads +
per-request overhead, ×1.3 under KV saturation) with 3 % log-normal noise; rows are split into 20 traces.

Each size runs in a fresh child process, so memory is measured cleanly:
peak memory = ru_maxrss (resident-set high-water mark, Linux KiB) of that child, reported both in total and as
growth over the RSS just before ``fit`` (data already generated); NOT tracemalloc (which would miss nothing
here but slows pandas down several-fold). Times are wall clock (time.perf_counter).

    python benchmarks/bench_train.py                 # 10k, 100k, 1M rows
    python benchmarks/bench_train.py --max-rows 100000   # quick
Targets (2 cores): 1M rows ≤ 60 s, peak memory ≤ 2 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings

import numpy as np
import pandas as pd

SIZES = (10_000, 100_000, 1_000_000)
TARGET_S, TARGET_MB = 60.0, 2048.0


def make_steps(n: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """n canonical step rows for one scope and their step_duration_us (µs)."""
    rng = np.random.default_rng(seed)
    budget, max_seqs = 8192, 256
    mode = rng.choice(4, size=n, p=[0.25, 0.4, 0.2, 0.15])
    n_dec = np.where(mode == 0, rng.integers(0, 8, n), rng.integers(1, 200, n))
    n_pf = np.where(mode == 1, rng.integers(0, 2, n), rng.integers(1, 4, n))
    chunk = rng.integers(32, 2048, n)
    pf_tok = np.minimum(n_pf * chunk, budget - n_dec)
    ratio = rng.uniform(0.32, 0.68, n)
    mixed = mode >= 2
    pf_tok = np.where(mixed, np.minimum(np.round(n_dec * ratio / (1 - ratio)), budget - n_dec), pf_tok).astype(int)
    pf_tok = np.where(mode == 1, np.minimum(pf_tok, n_dec // 4), pf_tok)
    n_pf = np.where(pf_tok > 0, np.maximum(n_pf, 1), 0)
    kv = np.where(mode == 3, rng.uniform(0.9, 0.995, n), rng.uniform(0.02, 0.88, n))
    ctx = rng.lognormal(np.log(900), 0.8, n)
    sum_ctx = n_dec * ctx
    prior = np.where(rng.random(n) < 0.3, rng.uniform(0, 4000, n), 0.0)
    c = pf_tok / np.maximum(n_pf, 1)
    attn = n_pf * c * (prior + c / 2)
    running = np.minimum(n_dec + n_pf + rng.integers(0, 3, n), max_seqs)
    total_blocks = 20000
    df = pd.DataFrame({
        "trace_id": np.char.add("bench-run", (np.arange(n) * 20 // n).astype(str)),
        "hardware": "H100", "model": "llama-3.1-8b-instruct", "tp": 1, "max_num_seqs": max_seqs,
        "max_num_batched_tokens": budget, "kv_blocks_total": total_blocks, "block_size": 16, "prefix_caching": True,
        "cpu_offload": False, "step_id": np.arange(n), "ts_start_us": np.arange(n) * 15000.0,
        "prefill_tokens": pf_tok, "decode_tokens": n_dec, "num_prefill_reqs": n_pf, "num_decode_reqs": n_dec,
        "running_depth": running, "waiting_depth": rng.poisson(np.where(kv > 0.85, 20, 3)),
        "kv_usage_ratio": kv, "kv_blocks_free": np.round((1 - kv) * total_blocks).astype(int),
        "num_preempted": np.where(kv > 0.92, rng.poisson(0.4, n), 0), "num_finished": rng.integers(0, 3, n),
        "sum_decode_context": sum_ctx, "sum_prefill_attention": attn,
        "max_context": np.maximum(ctx * 1.5, prior + c), "prefix_cache_hit_tokens": prior * (n_pf > 0),
        "kv_fragmentation_ratio": rng.uniform(0, 0.15, n), "num_evictions": np.zeros(n), "offload_transfer_us": 0.0,
    })  # fmt: skip
    # roofline-like µs: 16 GB of weights at ~3 TB/s, 2·8e9 FLOP/token at ~600 TFLOP/s, attention, KV reads
    y = (1800 + 5300 * (pf_tok + n_dec > 0) + 0.027 * (pf_tok + n_dec) + 4.5e-5 * attn + 0.0042 * sum_ctx
         + 9.0 * (n_pf + n_dec))
    y = y * np.where(kv > 0.9, 1.3, 1.0) * rng.lognormal(0.0, 0.03, n)
    df["step_duration_us"] = y
    return df, y


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_one(n: int, seed: int) -> dict:
    """Generate n rows, fit once, predict once; the numbers of this process."""
    from molerd.mixture import MoLERegressor, mape

    t0 = time.perf_counter()
    X, y = make_steps(n, seed)
    t_gen = time.perf_counter() - t0
    rss_before = _rss_mb()
    m = MoLERegressor()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.fit(X, y)
    t_fit = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    pred = m.predict(X)
    t_pred = time.perf_counter() - t0
    return {"rows": n, "gen_s": t_gen, "fit_s": t_fit, "predict_s": t_pred, "rss_before_fit_mb": rss_before,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_after_fit_mb": peak,
            "train_mape": mape(y, pred), "regimes": m.regime_report_.set_index("regime")["n_rows"].to_dict()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-rows", type=int, default=max(SIZES), help="largest size to run (quick: 100000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child mode: run one size, print JSON
    a = ap.parse_args(argv)
    if a.one:
        print(json.dumps(run_one(a.one, a.seed)))
        return 0
    sizes = [s for s in SIZES if s <= a.max_rows] or [a.max_rows]
    print("MoLERegressor.fit, H100 / llama-3.1-8b-instruct / tp1, default params (rules gate, relative loss)")
    print("memory = ru_maxrss of a fresh child process per size (MB); growth = peak - RSS just before fit")
    print(f"{'rows':>9} {'fit s':>8} {'rows/s':>10} {'predict s':>9} {'peak MB':>8} {'growth MB':>9} {'train MAPE':>10}")
    results = []
    for n in sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--seed", str(a.seed)], check=True,
                             capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"{n:>9,} {r['fit_s']:>8.2f} {n / r['fit_s']:>10,.0f} {r['predict_s']:>9.2f} {r['peak_rss_mb']:>8.0f} "
              f"{r['peak_rss_mb'] - r['rss_before_fit_mb']:>9.0f} {r['train_mape']:>10.4f}", flush=True)
    for a_, b_ in zip(results, results[1:]):
        print(f"growth {a_['rows']:,} -> {b_['rows']:,} rows (x{b_['rows'] / a_['rows']:.0f}): fit time "
              f"x{b_['fit_s'] / a_['fit_s']:.1f}, peak memory x{b_['peak_rss_mb'] / a_['peak_rss_mb']:.1f}")
    big = results[-1]
    if big["rows"] >= 1_000_000:
        ok_t, ok_m = big["fit_s"] <= TARGET_S, big["peak_rss_mb"] <= TARGET_MB
        print(f"target 1M rows: fit {big['fit_s']:.1f} s <= {TARGET_S:.0f} s: {'PASS' if ok_t else 'FAIL'}; "
              f"peak {big['peak_rss_mb']:.0f} MB <= {TARGET_MB:.0f} MB: {'PASS' if ok_m else 'FAIL'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
