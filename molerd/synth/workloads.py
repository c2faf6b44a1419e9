"""Request workloads: arrival processes, length distributions, shared prefixes, real-trace replay.

A workload is a :class:`Workload` of per-request arrays (API arrival µs, prompt and output tokens) plus, for
prefix caching, each request's *shared* prompt blocks as int64 keys (16-token blocks; a key equals another
request's key exactly when the two prompts are identical up to the end of that block). Unshared blocks need
no key: nobody can hit them. Real traces ship compacted in ``data/workloads`` (see NOTICE.md there).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from molerd.paths import data_dir

BLOCK = 16
MOONCAKE_BLOCK = 512  # tokens per Mooncake hash id
TRACES = {"azure_code": "azure_code.parquet", "azure_conv": "azure_conv.parquet", "mooncake": "mooncake_conversation.parquet"}
_NS_SESSION = 1 << 44  # key namespaces, so keys of different origins never collide
_NS_SYSTEM = 2 << 44
_NS_MOONCAKE = 3 << 44


@dataclass
class Workload:
    arrival_us: np.ndarray  # float64, API arrival, sorted
    prompt: np.ndarray  # int64 ≥ 1
    output: np.ndarray  # int64 ≥ 1
    keys: list  # list[np.ndarray[int64]] shared prompt-block keys per request (may be empty)

    def __len__(self) -> int:
        return int(self.prompt.size)


def compact_workloads(src: Path, dst: Path) -> list[Path]:
    """Compact the public traces into ``dst`` (seconds from trace start, token counts, Mooncake hash ids)."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for name, fname in (("azure_code", "AzureLLMInferenceTrace_code.csv"), ("azure_conv", "AzureLLMInferenceTrace_conv.csv")):
        d = pd.read_csv(Path(src) / "azure-llm-2023" / fname)
        t = pd.to_datetime(d["TIMESTAMP"])
        df = pd.DataFrame({
            "t_s": ((t - t.iloc[0]).dt.total_seconds()).astype("float64"),
            "prompt_tokens": d["ContextTokens"].astype("int32"),
            "output_tokens": d["GeneratedTokens"].astype("int32"),
        })
        path = dst / TRACES[name]
        df.to_parquet(path, index=False, compression="zstd")
        out.append(path)
    m = pd.read_json(Path(src) / "mooncake-fast25" / "conversation_trace.jsonl", lines=True)
    df = pd.DataFrame({
        "t_s": m["timestamp"].astype("float64") / 1000.0,
        "prompt_tokens": m["input_length"].astype("int32"),
        "output_tokens": m["output_length"].astype("int32"),
        "hash_ids": m["hash_ids"].map(lambda h: np.asarray(h, dtype=np.int32)),
    })
    path = dst / TRACES["mooncake"]
    df.to_parquet(path, index=False, compression="zstd")
    out.append(path)
    return out


@lru_cache(maxsize=None)
def load_trace(name: str) -> pd.DataFrame:
    """A shipped trace (cached; treat as read-only): t_s, prompt_tokens, output_tokens[, hash_ids]."""
    if name not in TRACES:
        raise KeyError(f"unknown trace {name!r}; known: {', '.join(sorted(TRACES))}")
    path = data_dir() / "workloads" / TRACES[name]
    if not path.exists():
        raise FileNotFoundError(f"{path}: shipped trace missing; rebuild with molerd.synth.workloads.compact_workloads")
    return pd.read_parquet(path)


def _interarrivals(rng: np.random.Generator, n: int, rate: float, cv: float) -> np.ndarray:
    """Poisson (cv = 1) or bursty gamma inter-arrival times with mean 1/rate seconds."""
    if rate <= 0:
        raise ValueError(f"arrival rate must be > 0 req/s, got {rate}")
    if cv <= 0:
        raise ValueError(f"arrival cv must be > 0, got {cv}")
    if abs(cv - 1.0) < 1e-12:
        return rng.exponential(1.0 / rate, n)
    shape = 1.0 / cv**2
    return rng.gamma(shape, 1.0 / (rate * shape), n)


def _lognormal_int(rng: np.random.Generator, n: int, mean: float, sigma: float, lo: int, hi: int) -> np.ndarray:
    mu = np.log(max(mean, 1.0)) - sigma**2 / 2
    return np.clip(np.rint(rng.lognormal(mu, sigma, n)), lo, hi).astype(np.int64)


def make_workload(spec: dict, rng: np.random.Generator, max_model_len: int) -> Workload:
    """Build one workload from its config ``spec`` (see ``default_config`` for the keys)."""
    n = int(spec["num_requests"])
    if n < 1:
        raise ValueError(f"workload.num_requests must be >= 1, got {n}")
    kind = spec.get("arrival", "poisson")
    rate = float(spec["rate"])
    source = spec.get("trace")
    keys: list = [np.empty(0, np.int64)] * n
    if kind == "replay":
        tr = load_trace(source)
        start = int(rng.integers(0, max(1, len(tr) - n)))
        w = tr.iloc[start:start + n]
        if len(w) < n:
            raise ValueError(f"trace {source!r} has {len(tr)} requests, fewer than num_requests={n}")
        t = w["t_s"].to_numpy(np.float64)
        t = t - t[0]
        native = (n - 1) / max(t[-1], 1e-9)
        arrival_s = t * native / rate  # time-scaled so the mean rate equals the target
        prompt = w["prompt_tokens"].to_numpy(np.int64)
        output = w["output_tokens"].to_numpy(np.int64)
        if "hash_ids" in w.columns:
            keys = []
            for p, h in zip(prompt, w["hash_ids"]):
                nb = int(min(p, max_model_len)) // BLOCK
                idx = np.arange(nb, dtype=np.int64)
                h = np.asarray(h, np.int64)
                idx = idx[idx // (MOONCAKE_BLOCK // BLOCK) < h.size]
                keys.append(_NS_MOONCAKE + h[idx // (MOONCAKE_BLOCK // BLOCK)] * (MOONCAKE_BLOCK // BLOCK) + idx % (MOONCAKE_BLOCK // BLOCK))
    else:
        arrival_s = np.cumsum(_interarrivals(rng, n, rate, float(spec.get("cv", 1.0 if kind == "poisson" else 2.0))))
        arrival_s -= arrival_s[0]
        if spec.get("lengths", "lognormal") == "lognormal":
            prompt = _lognormal_int(rng, n, spec.get("prompt_mean", 512), spec.get("prompt_sigma", 0.8), 1, max_model_len)
            output = _lognormal_int(rng, n, spec.get("output_mean", 128), spec.get("output_sigma", 0.8), 1, max_model_len)
        else:  # empirical lengths of a real trace
            tr = load_trace(spec["lengths"])
            pick = rng.integers(0, len(tr), n)
            prompt = tr["prompt_tokens"].to_numpy(np.int64)[pick]
            output = tr["output_tokens"].to_numpy(np.int64)[pick]
        sess = spec.get("sessions")
        if sess:
            prompt, keys, arrival_s = _multi_turn(rng, sess, prompt, output, arrival_s, max_model_len)
    prompt = np.clip(prompt, 1, max_model_len - 1)
    output = np.clip(output, 1, np.maximum(1, max_model_len - prompt))
    order = np.argsort(arrival_s, kind="stable")
    keys = [keys[i] for i in order]
    return Workload(arrival_us=arrival_s[order] * 1e6, prompt=prompt[order], output=output[order], keys=keys)


def _multi_turn(rng, sess: dict, prompt, output, arrival_s, max_model_len):
    """Group requests into multi-turn sessions sharing a system prompt and their conversation history.

    Turn t's prompt = system prompt + all earlier turns' user text + outputs + new user text. Only the
    earlier *prompt* blocks are keyed (vLLM also caches generated blocks; the oracle departs here).
    """
    n = prompt.size
    turns = max(1, int(sess.get("turns", 4)))
    sys_len = int(sess.get("system_prompt", 512))
    groups = max(1, int(sess.get("system_groups", 4)))
    think = float(sess.get("think_s", 5.0))
    keys = [np.empty(0, np.int64)] * n
    newp = prompt.copy()
    arr = arrival_s.copy()
    for s0 in range(0, n, turns):
        sid = s0 // turns
        g = int(rng.integers(0, groups))
        hist = sys_len
        for t, i in enumerate(range(s0, min(n, s0 + turns))):
            user = int(prompt[i])
            total = min(hist + user, max_model_len - 1)
            newp[i] = total
            nb_sys = min(sys_len, total) // BLOCK
            nb_hist = min(hist, total) // BLOCK
            k = np.empty(nb_hist, np.int64)
            k[:nb_sys] = _NS_SYSTEM + g * (1 << 20) + np.arange(nb_sys)
            k[nb_sys:] = _NS_SESSION + sid * (1 << 20) + np.arange(nb_sys, nb_hist)
            keys[i] = k
            if t > 0:
                arr[i] = arr[i - 1] + rng.exponential(think)
            hist = total + int(output[i])
    return newp, keys, arr
