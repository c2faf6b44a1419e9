"""Stock vLLM request statistics -> canonical ``requests`` (no steps: this format has no per-step durations).

Inputs in one folder: ``request_stats.jsonl`` (per request: request_id, prompt/output token counts,
``arrival_time`` on the client's epoch clock in s, and ``queued_ts``/``scheduled_ts``/``first_token_ts``/
``last_token_ts`` on the engine's monotonic clock in s), ``metrics.jsonl`` (periodic ``t`` on the engine
monotonic clock in s, ``running``, ``waiting``, ``kv_cache_usage`` in percent, throughputs) and
``engine_settings.json``.

Clock alignment for arrival: the client and the engine share no clock and the format carries no common
stamp. Unless a ``clock_offset_s`` is given (argument or engine_settings key: engine = client + offset),
the offset is chosen so that the smallest ``queued − arrival`` gap over the run is zero, i.e. the least
delayed request is assumed to have reached the engine instantly; every other request's API overhead
(α0 in BLIS terms) is then measured relative to it, a lower bound. The chosen offset is in ``attrs``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from molerd.ingest._common import (
    IngestError,
    IngestResult,
    add_scope,
    join_engine_state,
    json_values,
    load_settings,
    quarantine_frame,
    scope_from_settings,
)

_ALIASES = {
    "prompt_tokens": ["prompt_tokens", "num_prompt_tokens", "input_tokens", "num_input_tokens"],
    "output_tokens": ["output_tokens", "num_generation_tokens", "num_output_tokens", "generation_tokens"],
    "status": ["finish_reason", "status", "finish_status"],
    "cached_prompt_tokens": ["num_cached_tokens", "cached_prompt_tokens", "prefix_cache_hit_tokens"],
    "num_preemptions": ["num_preemptions", "preemptions"],
    "kv_cache_usage": ["kv_cache_usage", "kv_cache_usage_perc", "gpu_cache_usage_perc"],
}
_STATUS = {"stop": "stop", "length": "length", "abort": "aborted", "aborted": "aborted", "finished": "finished"}
_NUMERIC = ["arrival_time", "queued_ts", "scheduled_ts", "first_token_ts", "last_token_ts"]


def _read_jsonl(path: Path) -> tuple[list[dict], list[dict]]:
    """Rows of a JSON-lines file + quarantine records for lines that are not a JSON object."""
    if not path.exists():
        raise IngestError(f"{path}: file not found")
    rows, bad = [], []
    with open(path, "rb") as fh:
        lines = fh.readlines()
    if not any(x.strip() for x in lines):
        raise IngestError(f"{path}: empty file (expected JSON lines)")
    last = max(i for i, x in enumerate(lines) if x.strip())
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict):
                raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
        except ValueError as exc:
            if i != last:
                raise IngestError(f"{path}: line {i + 1}: malformed JSON ({exc}); only a truncated last line "
                                  "can be recovered") from exc  # fmt: skip
            bad.append({"source": str(path), "table": "requests", "row": None, "line": i + 1,
                        "failed_checks": f"truncated_line: line {i + 1} is not complete JSON ({exc})",
                        "values": json_values({"line": i + 1})})  # fmt: skip
            continue
        obj["_line"] = i + 1
        rows.append(obj)
    return rows, bad


def _pick(df: pd.DataFrame, name: str) -> pd.Series:
    for c in _ALIASES.get(name, [name]):
        if c in df.columns:
            return df[c]
    return pd.Series(np.nan, index=df.index)


def read_vllm_stats(
    run_dir: str | Path,
    settings: dict | None = None,
    *,
    clock_offset_s: float | None = None,
    service_window_us: float = 10_000_000.0,
) -> IngestResult:
    """Read a stock-vLLM run folder into a canonical ``requests`` table (steps stay empty)."""
    run_dir = Path(run_dir)
    stats_path = run_dir / "request_stats.jsonl"
    rows, bad = _read_jsonl(stats_path)
    file_settings = load_settings(run_dir)
    scope = scope_from_settings(file_settings, run_dir.name, settings)
    df = pd.DataFrame.from_records(rows)
    if "request_id" not in df.columns or "queued_ts" not in df.columns:
        raise IngestError(f"{stats_path}: missing required field(s) "
                          f"{[c for c in ('request_id', 'queued_ts') if c not in df.columns]} in request stats")  # fmt: skip
    for c in _NUMERIC:
        df[c] = pd.to_numeric(df[c], errors="coerce") if c in df.columns else np.nan
    us = {c: df[c].to_numpy(dtype="float64") * 1e6 for c in _NUMERIC}
    offset = clock_offset_s if clock_offset_s is not None else (settings or {}).get(
        "clock_offset_s", file_settings.get("clock_offset_s"))  # fmt: skip
    if offset is None:
        gaps = us["queued_ts"] - us["arrival_time"]
        offset_us = float(np.nanmin(gaps)) if np.any(~np.isnan(gaps)) else 0.0
        note = f"arrival: client clock shifted {offset_us:.1f} us so min(queued - arrived) = 0"
    else:
        offset_us = float(offset) * 1e6
        note = f"arrival: client clock shifted by given clock_offset_s = {offset}"
    status = _pick(df, "status").astype("string").str.lower().map(lambda s: _STATUS.get(s, s), na_action="ignore")
    status = status.fillna("unknown")
    metrics_path = run_dir / "metrics.jsonl"
    state_steps = pd.DataFrame({"ts": [], "waiting_depth": [], "running_depth": [], "kv_usage_ratio": []})
    errors: list[tuple[str, str]] = []
    if metrics_path.exists():
        try:
            mrows, mbad = _read_jsonl(metrics_path)
            bad += [dict(b, table="metrics") for b in mbad]
            m = pd.DataFrame.from_records(mrows)
            state_steps = pd.DataFrame({
                "ts": pd.to_numeric(m.get("t"), errors="coerce") * 1e6,
                "waiting_depth": pd.to_numeric(m.get("waiting"), errors="coerce"),
                "running_depth": pd.to_numeric(m.get("running"), errors="coerce"),
                "kv_usage_ratio": pd.to_numeric(_pick(m, "kv_cache_usage"), errors="coerce") / 100.0,
            }).dropna(subset=["ts"])  # fmt: skip
        except IngestError as exc:
            errors.append((str(metrics_path), str(exc)))
    state = join_engine_state(us["queued_ts"], state_steps, None, us["scheduled_ts"], us["last_token_ts"],
                              0.0, service_window_us)  # fmt: skip
    req = pd.DataFrame({
        "request_id": df["request_id"].astype("string"),
        "arrived_us": us["arrival_time"] + offset_us,
        "queued_us": us["queued_ts"], "scheduled_us": us["scheduled_ts"], "first_token_us": us["first_token_ts"],
        "finished_us": us["last_token_ts"], "departed_us": np.nan,
        "prompt_tokens": _pick(df, "prompt_tokens"), "output_tokens": _pick(df, "output_tokens"),
        "cached_prompt_tokens": _pick(df, "cached_prompt_tokens"),
        "num_preemptions": _pick(df, "num_preemptions").fillna(0) if any(
            c in df.columns for c in _ALIASES["num_preemptions"]) else 0,
        "status": status, **state,
    })  # fmt: skip
    req = add_scope(req, scope)
    req.attrs["arrival_clock"] = note
    return IngestResult(steps=pd.DataFrame(), requests=req, source=str(run_dir), errors=errors,
                        rejected=quarantine_frame(bad))  # fmt: skip
