"""Configs, runs and the default dataset: ``synthesize(config, out_dir, seed) -> run folders``.

A config has ``scopes`` (hardware, model, tp) and ``scenarios`` (workload + engine overrides); every scope
runs every scenario. Arrival rates are given as ``load`` = multiple of the scope's nominal capacity (estimated
from the same step-time oracle), so one scenario means the same pressure on a fast and a slow scope. Each run
gets its own random stream ``SeedSequence([seed, run index])``, so runs can execute in any process order and
the output is identical bit for bit.
"""

from __future__ import annotations

import copy
import json
import logging
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from molerd.specs import hardware as hardware_spec
from molerd.specs import model as model_spec
from molerd.synth.engine import Engine, EngineConfig, SimResult
from molerd.synth.kernels import kernel_dir_for, load_system
from molerd.synth.oracle import OracleParams, StepOracle, get_oracle
from molerd.synth.workloads import make_workload
from molerd.synth.writer import request_ids, write_traces

log = logging.getLogger(__name__)

ALPHA_REGIMES = ("low_load", "normal_load", "high_pressure", "preemption")
BETA_REGIMES = ("prefill_dominated", "decode_dominated", "mixed_balanced", "saturation")

_ENGINE_DEFAULTS = {
    "max_num_seqs": 256, "max_num_batched_tokens": 2048, "gpu_memory_utilization": 0.9, "num_gpu_blocks_override": None,
    "block_size": 16, "enable_prefix_caching": True, "cpu_offload": False, "max_model_len": 32768,
    "noise_sigma": 0.03, "sched_base_us": 300.0, "sched_per_req_us": 4.0, "sched_per_new_req_us": 40.0,
    "api_base_us": 800.0, "api_per_prompt_token_us": 0.05, "api_departure_us": 300.0, "abort_after_s": 0.0,
}

_SCOPES = [{"hardware": hw, "model": m, "tp": tp} for hw in ("H100", "H200", "A100-80")
           for m, tp in (("llama-3.1-8b-instruct", 1), ("llama-3.1-70b-instruct", 4), ("mixtral-8x7b-v0.1", 2))]

_SCENARIOS = [
    {"name": "light", "workload": {"arrival": "poisson", "load": 0.25, "num_requests": 300, "lengths": "azure_conv"}},
    {"name": "multiturn", "workload": {"arrival": "gamma", "cv": 2.0, "load": 0.8, "num_requests": 400,
                                       "prompt_mean": 300, "output_mean": 150, "sessions": {"turns": 4, "system_prompt": 768}}},
    {"name": "code_replay", "workload": {"arrival": "replay", "trace": "azure_code", "load": 1.2, "num_requests": 500}},
    {"name": "overload", "engine": {"max_num_seqs": 48, "abort_after_s": 30.0},
     "workload": {"arrival": "poisson", "load": 3.0, "num_requests": 500, "lengths": "azure_conv"}},
    {"name": "kv_pressure", "engine": {"num_gpu_blocks_override": 2500, "max_num_batched_tokens": 1024},
     "workload": {"arrival": "replay", "trace": "mooncake", "load": 1.5, "num_requests": 120}},
    {"name": "mixed", "engine": {"max_num_seqs": 64, "max_num_batched_tokens": 128},
     "workload": {"arrival": "poisson", "load": 2.0, "num_requests": 400, "prompt_mean": 400, "prompt_sigma": 0.5,
                  "output_mean": 300, "output_sigma": 0.5}},
    {"name": "saturation", "engine": {"num_gpu_blocks_override": 1800, "max_num_seqs": 64, "max_num_batched_tokens": 128},
     "workload": {"arrival": "poisson", "load": 2.0, "num_requests": 400, "prompt_mean": 400, "prompt_sigma": 0.5,
                  "output_mean": 300, "output_sigma": 0.5}},
    {"name": "offload", "engine": {"num_gpu_blocks_override": 900, "max_num_batched_tokens": 512, "cpu_offload": True},
     "workload": {"arrival": "gamma", "cv": 4.0, "load": 2.5, "num_requests": 400, "prompt_mean": 1500, "output_mean": 250}},
    {"name": "offload_long", "engine": {"num_gpu_blocks_override": 1500, "max_num_batched_tokens": 2048, "cpu_offload": True},
     "workload": {"arrival": "gamma", "cv": 4.0, "load": 2.5, "num_requests": 300, "prompt_mean": 3000, "prompt_sigma": 0.8,
                  "output_mean": 250}},
]


def default_config(preset: str = "default") -> dict:
    """The embedded default dataset (``default``: 3 GPUs × 3 models × 9 scenarios) or a fast ``small`` one."""
    if preset not in ("default", "small"):
        raise ValueError(f"unknown synth preset {preset!r}; choose 'default' or 'small'")
    cfg = {"sample_rate": 0.2, "recent_preemption_window_s": 1.0, "workers": 2, "replicates": 2,
           "load_sweep": [0.8, 1.25],
           "engine": dict(_ENGINE_DEFAULTS), "oracle": {}, "scopes": copy.deepcopy(_SCOPES),
           "scenarios": copy.deepcopy(_SCENARIOS)}
    if preset == "small":
        cfg["scopes"] = [{"hardware": "H100", "model": "llama-3.1-8b-instruct", "tp": 1}]
        cfg["sample_rate"] = 0.5
        for sc in cfg["scenarios"]:
            sc["workload"]["num_requests"] = max(60, sc["workload"]["num_requests"] // 3)
    return cfg


def label_alpha(waiting: np.ndarray, kv: np.ndarray, recent_preemptions: np.ndarray) -> np.ndarray:
    """The seed's alpha rule on requests (state when queued)."""
    return np.where(waiting <= 2, "low_load", np.where(kv > 0.85, "high_pressure",
                    np.where(recent_preemptions > 0, "preemption", "normal_load"))).astype(object)


def label_beta(prefill: np.ndarray, decode: np.ndarray, kv: np.ndarray) -> np.ndarray:
    """The seed's beta rule on steps."""
    ratio = prefill / (prefill + decode + 1e-6)
    return np.where(ratio > 0.7, "prefill_dominated", np.where(ratio < 0.3, "decode_dominated",
                    np.where(kv > 0.9, "saturation", "mixed_balanced"))).astype(object)


def kv_blocks(hardware: str, model: str, tp: int, eng: dict) -> int:
    """GPU KV blocks as vLLM sizes them: memory × utilization − weights/TP − activations − NCCL/other, per GPU."""
    if eng.get("num_gpu_blocks_override"):
        return int(eng["num_gpu_blocks_override"])
    hw, m = hardware_spec(hardware), model_spec(model)
    sysd = load_system(kernel_dir_for(hardware))
    misc = sysd.get("misc", {})
    nccl = float((misc.get("nccl_mem") or {}).get(tp, 0)) if tp > 1 else 0.0
    other = float(misc.get("other_mem", 0.0))
    act = eng["max_num_batched_tokens"] * (4 * m.hidden_size + 4 * m.intermediate_size * max(1, m.experts_per_token) / tp) * 2
    logits = eng["max_num_seqs"] * m.vocab_size / tp * 4
    free = hw.memory_gib * 2**30 * eng["gpu_memory_utilization"] - m.weight_bytes / tp - act - logits - nccl - other
    per_block = eng["block_size"] * m.kv_bytes_per_token / tp
    blocks = int(free // per_block)
    if blocks < 1:
        raise ValueError(f"{model} tp={tp} does not fit on {hardware} at gpu_memory_utilization="
                         f"{eng['gpu_memory_utilization']}: {free / 2**30:.1f} GiB left for the KV cache")
    return blocks


def nominal_capacity_rps(oracle: StepOracle, eng: dict, prompt_mean: float, output_mean: float) -> float:
    """Rough sustainable request rate: batched decode throughput plus the prefill work per request."""
    b = int(min(eng["max_num_seqs"], oracle.max_seqs))
    ctx = prompt_mean + output_mean / 2
    dec = float(oracle.decode_step_us(b, np.array([b * ctx]))[0]) + eng["sched_base_us"] + eng["sched_per_req_us"] * b
    chunk = min(int(prompt_mean), eng["max_num_batched_tokens"], oracle.max_tokens)
    pre = oracle.step_us(np.array([float(chunk)]), np.array([0.0]), 0, 0.0, 1) * max(prompt_mean, 1) / max(chunk, 1)
    per_req_us = output_mean * dec / b + pre
    return 1e6 / per_req_us


def _mean_lengths(w: dict) -> tuple[float, float]:
    from molerd.synth.workloads import load_trace

    src = w.get("trace") if w.get("arrival") == "replay" else (w.get("lengths") if w.get("lengths", "lognormal") != "lognormal" else None)
    if src:
        tr = load_trace(src)
        return float(tr["prompt_tokens"].mean()), float(tr["output_tokens"].mean())
    return float(w.get("prompt_mean", 512)), float(w.get("output_mean", 128))


def plan_runs(config: dict) -> list[dict]:
    """Expand scopes × scenarios × replicates into run specs (deterministic order; index = random stream).

    A scenario runs ``replicates`` times (its own key, else the config's, else 1); replicate k scales the
    workload's ``load`` (or ``rate``) by ``load_sweep[k mod len]``, so the replicates of a scenario are a small
    rate sweep around it, each its own run (``<scope>_<scenario>_r<k>``)."""
    runs = []
    for scope in config["scopes"]:
        for sc in config["scenarios"]:
            eng = {**_ENGINE_DEFAULTS, **config.get("engine", {}), **sc.get("engine", {})}
            name = f"{scope['hardware']}_{scope['model']}_tp{scope['tp']}_{sc['name']}".replace(".", "-")
            reps = int(sc.get("replicates", config.get("replicates", 1)))
            sweep = list(sc.get("load_sweep", config.get("load_sweep", [1.0]))) or [1.0]
            for k in range(reps):
                w = dict(sc["workload"])
                key = "load" if "load" in w else ("rate" if "rate" in w else None)
                if key is not None:
                    w[key] = float(w[key]) * float(sweep[k % len(sweep)])
                runs.append({"trace_id": name if reps == 1 else f"{name}_r{k}", **scope, "engine": eng,
                             "workload": w, "sample_rate": config.get("sample_rate", 0.2),
                             "oracle": config.get("oracle", {}),
                             "recent_preemption_window_s": config.get("recent_preemption_window_s", 1.0)})
    for i, r in enumerate(runs):
        r["index"] = i
    return runs


def simulate(run: dict, seed: int) -> tuple[SimResult, dict, StepOracle]:
    """Simulate one planned run; returns the result, its engine settings and the oracle."""
    eng = run["engine"]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(run["index"])]))
    oracle = get_oracle(run["hardware"], run["model"], int(run["tp"]), max_tokens=max(16384, eng["max_num_batched_tokens"]),
                        max_seqs=max(1024, eng["max_num_seqs"]), params=OracleParams(**run.get("oracle", {})))
    blocks = kv_blocks(run["hardware"], run["model"], run["tp"], eng)
    w = dict(run["workload"])
    if "load" in w:
        pm, om = _mean_lengths(w)
        w["rate"] = w.pop("load") * nominal_capacity_rps(oracle, eng, pm, om)
    max_len = int(min(eng["max_model_len"], blocks * eng["block_size"]))
    wl = make_workload(w, rng, max_len)
    m = model_spec(run["model"])
    sysd = load_system(kernel_dir_for(run["hardware"]))
    ecfg = EngineConfig(
        max_num_seqs=eng["max_num_seqs"], max_num_batched_tokens=eng["max_num_batched_tokens"], num_gpu_blocks=blocks,
        block_size=eng["block_size"], enable_prefix_caching=eng["enable_prefix_caching"], cpu_offload=eng["cpu_offload"],
        pcie_bytes_per_us=float(sysd.get("node", {}).get("pcie_bw", 32e9)) / 1e6, kv_bytes_per_token_gpu=m.kv_bytes_per_token / run["tp"],
        sched_base_us=eng["sched_base_us"], sched_per_req_us=eng["sched_per_req_us"], sched_per_new_req_us=eng["sched_per_new_req_us"],
        api_base_us=eng["api_base_us"], api_per_prompt_token_us=eng["api_per_prompt_token_us"],
        api_departure_us=eng["api_departure_us"], noise_sigma=eng["noise_sigma"], sample_rate=run["sample_rate"],
        abort_after_s=eng["abort_after_s"], preemption_window_us=run["recent_preemption_window_s"] * 1e6,
    )
    if eng["block_size"] != 16:
        raise ValueError(f"run {run['trace_id']}: block_size must be 16 (vLLM's default; the model assumes it), got {eng['block_size']}")
    res = Engine(ecfg, oracle, wl, rng).run()
    settings = {"trace_id": run["trace_id"], "hardware": run["hardware"], "model": run["model"], "tp": run["tp"],
                "max_num_seqs": eng["max_num_seqs"], "max_num_batched_tokens": eng["max_num_batched_tokens"],
                "num_gpu_blocks": blocks, "block_size": eng["block_size"], "enable_prefix_caching": eng["enable_prefix_caching"],
                "cpu_offload": eng["cpu_offload"]}
    return res, settings, oracle


def ground_truth(res: SimResult, settings: dict) -> pd.DataFrame:
    """Noiseless oracle time of every step and each request's true queueing delay, with regime labels."""
    st, rq = res.steps, res.req
    total = res.num_blocks
    kv = st["kv_used_blocks"] / total
    steps = pd.DataFrame({
        "record": "step", "trace_id": settings["trace_id"], "step_id": st["step_id"].astype(np.int64),
        "request_id": None, "oracle_step_us": st["oracle_us"], "step_duration_us": st["duration_us"],
        "cpu_overhead_us": st["cpu_us"], "has_duration": st["sampled"].astype(bool),
        "prefill_tokens": st["prefill_tokens"].astype(np.int64), "decode_tokens": st["decode_tokens"].astype(np.int64),
        "sum_decode_context": st["sum_decode_context"], "sum_prefill_attention": st["sum_prefill_attention"],
        "kv_usage_ratio": kv, "num_preempted": st["num_preempted"].astype(np.int64),
        "offload_transfer_us": st["offload_us"], "regime": label_beta(st["prefill_tokens"], st["decode_tokens"], kv),
    })
    _, eng_ids = request_ids(settings["trace_id"], rq["prompt"].size)
    delay = rq["scheduled"] - rq["queued"]
    reqs = pd.DataFrame({
        "record": "request", "trace_id": settings["trace_id"], "step_id": -1, "request_id": eng_ids,
        "queue_delay_us": delay, "api_overhead_us": rq["queued"] - rq["arrived"], "waiting_depth": rq["q_wait"],
        "running_depth": rq["q_run"], "kv_usage_ratio": rq["q_kv"], "recent_preemptions": rq["q_pre"],
        "prompt_tokens": rq["prompt"], "output_tokens": rq["out_done"], "num_preemptions": rq["num_preemptions"],
        "status": rq["status"].astype(str), "regime": label_alpha(rq["q_wait"], rq["q_kv"], rq["q_pre"]),
    })
    gt = pd.concat([steps, reqs], ignore_index=True)
    gt["request_id"] = gt["request_id"].astype("string")
    gt["regime"] = gt["regime"].astype("string")
    return gt


def run_one(run: dict, seed: int, out_dir: Path) -> Path:
    """Simulate and write one run folder (traces.json, engine_settings.json, ground_truth.parquet)."""
    res, settings, _ = simulate(run, seed)
    folder = Path(out_dir) / run["trace_id"]
    folder.mkdir(parents=True, exist_ok=True)
    write_traces(folder / "traces.json", res, run["trace_id"], {"api_departure_us": run["engine"]["api_departure_us"]})
    (folder / "engine_settings.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    ground_truth(res, settings).to_parquet(folder / "ground_truth.parquet", index=False)
    log.info("synth run %s: %d steps, %d requests", run["trace_id"], res.stats["steps"], res.req["prompt"].size)
    return folder


def _run_star(args):
    return run_one(*args)


def synthesize(config: dict, out_dir: Path, seed: int) -> list[Path]:
    """Simulate every run of ``config`` into ``out_dir``; returns the run folders (same order as planned)."""
    runs = plan_runs(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    workers = max(1, int(config.get("workers", 1)))
    jobs = [(r, seed, out_dir) for r in runs]
    if workers == 1 or len(jobs) == 1:
        return [run_one(*j) for j in jobs]
    with ProcessPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(_run_star, jobs, chunksize=1))


def config_from_section(section: dict | None, preset: str = "default") -> dict:
    """The preset (``section["preset"]`` if given), overridden by the ``synth`` section of params.yaml:
    ``engine`` and ``oracle`` key by key, every other key (``scopes``, ``scenarios``, ``sample_rate``, ...)
    replaces the preset's. An unknown key is an error that lists the known ones."""
    sec = dict(section or {})
    config = default_config(sec.pop("preset", None) or preset)
    sec.pop("seed", None)
    unknown = set(sec) - set(config)
    if unknown:
        raise ValueError(f"unknown synth keys {sorted(unknown)}; known: {sorted(set(config) | {'seed', 'preset'})}")
    for k, v in sec.items():
        config[k] = {**config[k], **(v or {})} if k in ("engine", "oracle") else v
    return config


def config_from_params(params_path: Path | None, preset: str = "default") -> tuple[dict, int]:
    """:func:`config_from_section` of the ``synth`` section of ``params_path``; plus the seed (``synth.seed``,
    else ``base.seed``, else 0)."""
    import yaml

    if params_path is None:
        return default_config(preset), 0
    path = Path(params_path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: params file not found")
    doc = yaml.safe_load(path.read_text()) or {}
    sec = doc.get("synth") or {}
    if not isinstance(sec, dict):
        raise ValueError(f"{path}: 'synth' must be a mapping, got {type(sec).__name__}")
    try:
        config = config_from_section(sec, preset)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return config, int(sec.get("seed", (doc.get("base") or {}).get("seed", 0)))
