"""The synthesizer's sanity figures against real numbers: the values the tests bound, printed.

    python benchmarks/synth_sanity.py

* step times of the oracle (batch-1 decode of Llama-3.1-8B on H100; a 2,048-token prefill of Llama-2-7B on
  H100; decode vs Σ context; prefill vs tokens);
* the smallest ratio of an oracle step to an independent roofline (bytes / peak bandwidth, FLOPs / peak
  FLOP/s, from data/hardware_config.json and the HuggingFace config; the tests' own implementation);
* throughput and mean queueing delay of one scope at 0.2x, 1x and 4x its nominal capacity;
* where preemptions happen: KV-cache use in the step before each preempting step.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_synth_engine import _preemption_runs, _throughput_and_delay  # noqa: E402
from test_synth_oracle import SCOPES, _roofline_us  # noqa: E402

from molerd.synth.oracle import get_oracle  # noqa: E402


def main() -> None:
    o8 = get_oracle("H100", "llama-3.1-8b-instruct", 1)
    print(f"batch-1 decode, llama-3.1-8b, H100, 1,024-token context: {float(o8.decode_step_us(1, np.array([1024.0]))[0]) / 1e3:.2f} ms "
          "(real vLLM: 5-15 ms)")
    o7 = get_oracle("H100", "llama-2-7b-hf", 1)
    print(f"2,048-token prefill, llama-2-7b, H100: {o7.step_us([2048], [0], 0, 0.0, 1) / 1e3:.2f} ms (real: 25-120 ms)")
    ctx = np.array([64, 256, 1024, 4096, 16384], dtype=float)
    dec = o8.decode_step_us(32, 32 * ctx) / 1e3
    print("decode, batch 32, llama-3.1-8b, H100, context per sequence " +
          ", ".join(f"{int(c)}: {t:.2f} ms" for c, t in zip(ctx, dec)))
    print("prefill, llama-3.1-8b, H100, tokens " +
          ", ".join(f"{n}: {o8.step_us([n], [0], 0, 0.0, 1) / 1e3:.2f} ms" for n in (128, 512, 2048, 8192)))
    worst = (np.inf, None)
    for hw, model, tp in SCOPES:
        o = get_oracle(hw, model, tp)
        for b in (1, 8, 64, 256):
            for c in (128, 2048, 16384):
                r = float(o.decode_step_us(b, np.array([b * c]))[0]) / _roofline_us(hw, model, tp, b, b * c, b)
                worst = min(worst, (r, f"{hw} {model} decode batch {b} context {c}"))
        for n in (16, 512, 2048, 8192):
            r = o.step_us([n], [0], 0, 0.0, 1) / _roofline_us(hw, model, tp, n, 0, 1)
            worst = min(worst, (r, f"{hw} {model} prefill {n}"))
    print(f"smallest oracle / roofline ratio over {len(SCOPES)} scopes: {worst[0]:.2f} ({worst[1]}); < 1 would be "
          "faster than the hardware allows")
    for load in (0.2, 1.0, 4.0):
        thr, delay = _throughput_and_delay(load)
        print(f"load {load:.1f}x nominal: throughput {thr:,.0f} tokens/s (prompt + output), mean queueing delay "
              f"{delay / 1e3:.1f} ms")
    res, settings = _preemption_runs(600)
    st = res.steps
    pre = np.flatnonzero(st["num_preempted"] > 0)
    pre = pre[pre > 0]
    used = st["kv_used_blocks"][pre - 1] / settings["num_gpu_blocks"]
    big, _ = _preemption_runs(200_000)
    print(f"preempting steps in a 600-block run at 3x load: {pre.size}; KV use the step before: median "
          f"{np.median(used):.3f}, min {used.min():.3f}; with 200,000 blocks: {int(big.steps['num_preempted'].sum())} "
          "preemptions")


if __name__ == "__main__":
    main()
