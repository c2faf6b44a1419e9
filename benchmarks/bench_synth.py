"""Benchmark the synthesizer: simulated steps/s on one core, then the default dataset's regime histogram
and wall time (``python benchmarks/bench_synth.py [--preset default|small] [--out DIR]``)."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from molerd.synth import ALPHA_REGIMES, BETA_REGIMES, default_config, plan_runs, simulate, synthesize


def steps_per_second(preset: str) -> None:
    """Simulation only (no file writing), one process, every run of the preset's first scope."""
    cfg = default_config(preset)
    runs = [r for r in plan_runs(cfg) if (r["hardware"], r["model"]) == (cfg["scopes"][0]["hardware"], cfg["scopes"][0]["model"])]
    simulate(runs[0], 0)  # warm the oracle / kernel-table caches
    tot_steps, tot_s = 0, 0.0
    for r in runs:
        t = time.perf_counter()
        res, _, _ = simulate(r, 0)
        dt = time.perf_counter() - t
        n = res.stats["steps"]
        tot_steps += n
        tot_s += dt
        print(f"  {r['trace_id']:<55s} {n:>8d} steps {dt:6.2f} s {n / dt:>9.0f} steps/s "
              f"({res.stats['segment_steps'] / max(n, 1):.0%} in vectorised decode segments)")
    print(f"simulated steps/s (one core, simulation only): {tot_steps / tot_s:,.0f}  ({tot_steps} steps in {tot_s:.1f} s)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="default")
    ap.add_argument("--out", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"== steps/s ({args.preset} preset, first scope)")
    steps_per_second(args.preset)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="molerd-synth-"))
    print(f"== full {args.preset} dataset -> {out}")
    t = time.perf_counter()
    folders = synthesize(default_config(args.preset), out, args.seed)
    wall = time.perf_counter() - t
    gt = pd.concat([pd.read_parquet(f / "ground_truth.parquet") for f in folders], ignore_index=True)
    steps = gt[gt["record"] == "step"]
    sampled = steps[steps["has_duration"]]
    reqs = gt[gt["record"] == "request"]
    print(f"runs: {len(folders)}  steps simulated: {len(steps)}  steps with a duration: {len(sampled)}  requests: {len(reqs)}")
    print("beta regimes (steps with a duration):")
    for r in BETA_REGIMES:
        print(f"  {r:<20s} {int((sampled['regime'] == r).sum()):>8d}")
    print("alpha regimes (requests, state when queued):")
    for r in ALPHA_REGIMES:
        print(f"  {r:<20s} {int((reqs['regime'] == r).sum()):>8d}")
    size = sum(p.stat().st_size for f in folders for p in f.iterdir())
    print(f"wall time: {wall:.1f} s  (workers={default_config(args.preset)['workers']}), output {size / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
