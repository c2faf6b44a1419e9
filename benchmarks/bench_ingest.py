"""Throughput of validation (rows/s on 1,000,000 generated step rows) and of OTEL ingestion (MB/s and peak
memory on a generated ~60 MB traces.json). Peak memory = growth of the resident-set high-water mark of a
fresh child process during ``ingest_otel``: VmHWM after minus VmRSS before (after imports, with the mark reset
to the current RSS), not tracemalloc. Not ``ru_maxrss``: Linux carries it across exec, so a child started by
``subprocess`` (vfork + exec) reports the parent's peak (here the 1M-row validation benchmark) as its own.

    python benchmarks/bench_ingest.py [--rows 1000000] [--otel-mb 60] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def make_steps(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pre = rng.integers(0, 2048, n)
    dec = rng.integers(0, 256, n)
    df = pd.DataFrame({
        "trace_id": "bench", "hardware": "H100", "model": "llama-3.1-8b-instruct", "tp": 1, "max_num_seqs": 256,
        "max_num_batched_tokens": 2400, "kv_blocks_total": 20000, "block_size": 16, "prefix_caching": True,
        "cpu_offload": False, "step_id": np.arange(n), "ts_start_us": np.arange(n) * 20000.0,
        "step_duration_us": rng.uniform(2000, 60000, n), "prefill_tokens": pre, "decode_tokens": dec,
        "num_prefill_reqs": np.minimum(pre, rng.integers(0, 4, n)), "num_decode_reqs": dec,
        "running_depth": np.minimum(dec + 4, 256), "waiting_depth": rng.integers(0, 50, n),
        "kv_usage_ratio": rng.uniform(0, 1, n), "kv_blocks_free": rng.integers(0, 20000, n),
        "num_preempted": rng.integers(0, 2, n), "num_finished": rng.integers(0, 4, n),
        "sum_decode_context": rng.uniform(0, 1e6, n), "sum_prefill_attention": rng.uniform(0, 1e7, n),
        "max_context": rng.uniform(0, 8192, n), "prefix_cache_hit_tokens": rng.uniform(0, 512, n),
    })  # fmt: skip
    bad = rng.random(n) < 0.01  # 1 % dirty rows so the quarantine path is exercised too
    df.loc[bad, "kv_usage_ratio"] = 1.7
    return df


def bench_validate(n: int, seed: int, repeats: int = 3) -> None:
    from molerd.validate import validate_tables

    df = make_steps(n, seed)
    validate_tables(df.head(100), None, "warm-up")  # first schema build imports pandera's extras: not per-row cost
    for engine in ("fast", "pandera"):
        times = []
        for _ in range(repeats):  # the first call also pays the kernel's first touch of the output memory
            t = time.perf_counter()
            vr = validate_tables(df, None, "bench", engine=engine)
            times.append(time.perf_counter() - t)
            del vr.steps
        c = vr.counts["steps"]
        first, best, med = times[0], min(times), float(np.median(times))
        print(f"validate[{engine}]: {n} step rows, {repeats} calls: first {n / first:,.0f} rows/s, best "
              f"{n / best:,.0f} rows/s, median {n / med:,.0f} rows/s (accepted {c['accepted']}, quarantined "
              f"{c['quarantined']}; target >= 1,000,000 rows/s on one core)")  # fmt: skip


def _iv(k, v):
    return {"key": k, "value": {"intValue": str(int(v))}}


def _dv(k, v):
    return {"key": k, "value": {"doubleValue": float(v)}}


def write_otel(path: Path, target_mb: float, seed: int) -> None:
    """A plausible instrumented-vLLM trace: every request prefills in one step and decodes 20 steps; 15 % of
    steps carry a BATCH_SUMMARY. Content volume, not scheduling realism, is what this measures."""
    rng = np.random.default_rng(seed)
    t0 = 1000.0
    settings = {"trace_id": "bench", "hardware": "H100", "model": "llama-3.1-8b-instruct", "tp": 1,
                "max_num_seqs": 256, "max_num_batched_tokens": 8192, "num_gpu_blocks": 20000, "block_size": 16,
                "enable_prefix_caching": True, "cpu_offload": False}  # fmt: skip
    (path.parent / "engine_settings.json").write_text(json.dumps(settings))
    size = 0
    step = 0
    req = 0
    with open(path, "w") as fh:
        while size < target_mb * 1e6:
            evs = []
            for _ in range(50):
                step += 1
                if rng.random() < 0.15:
                    ts = t0 + step * 0.02
                    evs.append({"name": "step.BATCH_SUMMARY", "timeUnixNano": str(int((ts + 1.7e9) * 1e9)),
                                "attributes": [_iv("step.id", step), _iv("step.ts_start_ns", ts * 1e9),
                                               _dv("step.duration_us", rng.uniform(2e3, 4e4)),
                                               _iv("queue.running_depth", 21), _iv("queue.waiting_depth", 0),
                                               _iv("batch.num_prefill_reqs", 1), _iv("batch.num_decode_reqs", 20),
                                               _iv("batch.prefill_tokens", 300), _iv("batch.decode_tokens", 20),
                                               _iv("batch.num_finished", 1), _iv("batch.num_preempted", 0),
                                               _dv("kv.usage_gpu_ratio", 0.3), _iv("kv.blocks_total_gpu", 20000),
                                               _iv("kv.blocks_free_gpu", 14000)]})  # fmt: skip
            spans = [{"name": f"scheduler_steps_{step}", "events": evs}]
            line = {"resourceSpans": [{"scopeSpans": [{"scope": {"name": "vllm.scheduler.step"}, "spans": spans}]}]}
            jspans, aspans = [], []
            for s in range(step - 49, step + 1):
                req += 1
                rid = f"cmpl-{req}-0-{req:08x}"
                ev = []
                for name, st, extra in (("QUEUED", s, []), ("SCHEDULED", s + 1, [{"key": "schedule.kind", "value": {"stringValue": "FIRST"}}]),
                                        ("FIRST_TOKEN", s + 1, []), ("FINISHED", s + 21, [{"key": "finish.status", "value": {"stringValue": "stop"}}])):  # noqa: E501
                    ts = t0 + st * 0.02 + 0.001
                    ev.append({"name": f"journey.{name}", "timeUnixNano": str(int((ts + 1.7e9) * 1e9)),
                               "attributes": [_dv("ts.monotonic", ts), _iv("ts.monotonic_ns", ts * 1e9),
                                              _iv("scheduler.step", st), _iv("prefill.done_tokens", 0),
                                              _iv("prefill.total_tokens", 300), _iv("decode.done_tokens", 0),
                                              _iv("decode.max_tokens", 21), _iv("num_preemptions", 0), *extra]})  # fmt: skip
                jspans.append({"name": "llm_core", "attributes": [{"key": "gen_ai.request.id", "value": {"stringValue": rid}}],
                               "events": ev})  # fmt: skip
                ta = t0 + s * 0.02
                aspans.append({"name": "llm_request", "attributes": [{"key": "gen_ai.request.id", "value": {"stringValue": f"cmpl-{req}"}}],
                               "events": [{"name": "api.ARRIVED", "timeUnixNano": str(int((ta + 1.7e9) * 1e9)),
                                           "attributes": [_dv("event.ts.monotonic", ta - 500)]}]})  # fmt: skip
            out = [line,
                   {"resourceSpans": [{"scopeSpans": [{"scope": {"name": "vllm.scheduler"}, "spans": jspans}]}]},
                   {"resourceSpans": [{"scopeSpans": [{"scope": {"name": "vllm.api"}, "spans": aspans}]}]}]  # fmt: skip
            text = "".join(json.dumps(o, separators=(",", ":")) + "\n" for o in out)
            fh.write(text)
            size += len(text)


def _status_kb(field: str) -> int:
    """A /proc/self/status memory field in kB (VmRSS = resident now, VmHWM = resident high-water mark)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} (Linux only)")


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS so transient import-time peaks are not counted (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # the mark then also covers import peaks: an over-estimate, never an under-estimate


def otel_child(path: str) -> None:
    from molerd.ingest.otel import ingest_otel

    _reset_peak()
    before = _status_kb("VmRSS")
    t = time.perf_counter()
    res = ingest_otel(path)
    dt = time.perf_counter() - t
    after = _status_kb("VmHWM")
    import tracemalloc

    tracemalloc.start()
    ingest_otel(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    mb = Path(path).stat().st_size / 1e6
    print(f"ingest otel (second run under tracemalloc): peak traced allocation {peak / 1e6:.0f} MB "
          f"= {peak / 1e6 / mb:.2f}x file size")
    print(f"ingest otel: {mb:.1f} MB in {dt:.2f} s = {mb / dt:.1f} MB/s; {len(res.steps)} steps, "
          f"{len(res.requests)} requests; peak RSS growth {(after - before) / 1e3:.0f} MB "
          f"= {(after - before) / 1e3 / mb:.2f}x file size (VmHWM after − VmRSS before)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--otel-mb", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--otel-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.otel_child:
        otel_child(args.otel_child)
        return
    bench_validate(args.rows, args.seed)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "traces.json"
        write_otel(path, args.otel_mb, args.seed)
        subprocess.run([sys.executable, __file__, "--otel-child", str(path)], check=True)


if __name__ == "__main__":
    main()
