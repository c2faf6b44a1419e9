"""Helpers shared by the input adapters: the result container, engine settings -> scope columns,
ingest-time quarantine records and the "engine state when this request was queued" join."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from molerd.schemas import StepsSchema

#: Columns of every quarantine table (ingest-time and validation-time rejects share one layout).
QUARANTINE_COLUMNS = ["source", "table", "row", "line", "failed_checks", "values"]

#: engine_settings.json key -> canonical scope column.
SETTINGS_KEYS = {
    "trace_id": "trace_id",
    "hardware": "hardware",
    "model": "model",
    "tp": "tp",
    "max_num_seqs": "max_num_seqs",
    "max_num_batched_tokens": "max_num_batched_tokens",
    "num_gpu_blocks": "kv_blocks_total",
    "kv_blocks_total": "kv_blocks_total",
    "block_size": "block_size",
    "enable_prefix_caching": "prefix_caching",
    "prefix_caching": "prefix_caching",
    "cpu_offload": "cpu_offload",
}
SCOPE_COLUMNS = [
    "trace_id", "hardware", "model", "tp", "max_num_seqs", "max_num_batched_tokens",
    "kv_blocks_total", "block_size", "prefix_caching", "cpu_offload",
]  # fmt: skip


class IngestError(ValueError):
    """A whole input file cannot be read; the message names the file and what is wrong."""


@dataclass
class IngestResult:
    """What one input (file or run folder) yielded.

    ``steps``/``requests`` are canonical (unvalidated) tables, possibly empty. ``rejected`` holds rows
    the adapter could not even decode (wrong OTLP value type, truncated last line), in the quarantine
    layout, so they are counted, never dropped. ``errors`` are file-level problems as (file, message).
    """

    steps: pd.DataFrame = field(default_factory=pd.DataFrame)
    requests: pd.DataFrame = field(default_factory=pd.DataFrame)
    source: str = ""
    errors: list[tuple[str, str]] = field(default_factory=list)
    rejected: pd.DataFrame = field(default_factory=lambda: empty_quarantine())


def empty_quarantine() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source": pd.Series([], dtype="string"),
            "table": pd.Series([], dtype="string"),
            "row": pd.Series([], dtype="Int64"),
            "line": pd.Series([], dtype="Int64"),
            "failed_checks": pd.Series([], dtype="string"),
            "values": pd.Series([], dtype="string"),
        }
    )


def quarantine_frame(records: list[dict] | dict) -> pd.DataFrame:
    """Build a quarantine table from dict records, or from columns (a list per column, or one value for every
    row), keys = QUARANTINE_COLUMNS. Columns are typed directly: no intermediate object-dtype frame."""
    if not records:
        return empty_quarantine()
    if isinstance(records, dict):
        cols = {c: records.get(c) for c in QUARANTINE_COLUMNS}
        n = max(len(v) for v in cols.values() if isinstance(v, list))
        cols = {c: v if isinstance(v, list) else [v] * n for c, v in cols.items()}
    else:
        cols = {c: [r.get(c) for r in records] for c in QUARANTINE_COLUMNS}
    dtypes = empty_quarantine().dtypes
    return pd.DataFrame({c: pd.Series(v, dtype=dtypes[c]) for c, v in cols.items()})


def json_values(values: dict) -> str:
    """The original values of a rejected row as a JSON string (NaN/inf become null/strings, never lost)."""

    def clean(v):
        if isinstance(v, (np.generic,)):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            return None if math.isnan(v) else str(v)
        if v is pd.NA or v is pd.NaT:
            return None
        return v

    return json.dumps({str(k): clean(v) for k, v in values.items()}, sort_keys=True, default=str)


def load_settings(run_dir: Path) -> dict:
    """Read ``engine_settings.json`` beside a trace; missing file -> {} (scope columns then stay NaN and
    validation quarantines the rows with the rule they break, instead of guessing)."""
    path = run_dir / "engine_settings.json"
    if not path.exists():
        return {}
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise IngestError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} col {exc.colno})") from exc
    if not isinstance(obj, dict):
        raise IngestError(f"{path}: expected a JSON object of engine settings, got {type(obj).__name__}")
    return obj


def scope_from_settings(settings: dict, default_trace_id: str, overrides: dict | None = None) -> dict:
    """Engine settings (vLLM key names) -> canonical scope columns; ``overrides`` win (canonical or vLLM names)."""
    scope: dict = {c: None for c in SCOPE_COLUMNS}
    for src in (settings or {}), (overrides or {}):
        for key, value in src.items():
            col = SETTINGS_KEYS.get(key)
            if col is not None and value is not None:
                scope[col] = value
    if scope["trace_id"] is None:
        scope["trace_id"] = default_trace_id
    if scope["cpu_offload"] is None:
        scope["cpu_offload"] = False
    return scope


def add_scope(df: pd.DataFrame, scope: dict) -> pd.DataFrame:
    """Put the scope columns first (constant per run); None stays missing so validation can name it."""
    n = len(df)
    cols = {}
    for c in SCOPE_COLUMNS:
        v = scope.get(c)
        if v is None:
            cols[c] = pd.Series([pd.NA] * n, dtype="object")
        else:
            cols[c] = pd.Series([v] * n, dtype="object" if isinstance(v, (str, bool)) else None)
    head = pd.DataFrame(cols, index=df.index)
    out = pd.concat([head, df], axis=1)
    out.attrs = dict(df.attrs)  # the adapter's notes (e.g. how much batch membership could be rebuilt)
    return out


def join_engine_state(
    queued_us: np.ndarray,
    steps: pd.DataFrame,
    preempt_ts_us: np.ndarray,
    scheduled_us: np.ndarray,
    finished_us: np.ndarray,
    preemption_window_us: float,
    service_window_us: float,
) -> dict[str, np.ndarray]:
    """Engine state when each request was queued.

    waiting/running depth and KV usage come from the latest step at or before ``queued_us`` (NaN if none);
    ``recent_preemptions`` counts preemption events in ``(queued - preemption_window_us, queued]`` (NaN if the
    trace has no preemption information, i.e. ``preempt_ts_us`` is None); ``avg_service_time_us`` is the mean
    ``finished - scheduled`` of requests that finished in ``(queued - service_window_us, queued]`` (NaN if none).
    """
    n = len(queued_us)
    out = {k: np.full(n, np.nan) for k in ["waiting_depth", "running_depth", "kv_usage_ratio",
                                          "recent_preemptions", "avg_service_time_us"]}  # fmt: skip
    q = np.asarray(queued_us, dtype="float64")
    if len(steps):
        ts = steps["ts"].to_numpy(dtype="float64")
        order = np.argsort(ts, kind="stable")
        ts = ts[order]
        idx = np.searchsorted(ts, q, side="right") - 1
        ok = (idx >= 0) & ~np.isnan(q)
        for col in ["waiting_depth", "running_depth", "kv_usage_ratio"]:
            vals = steps[col].to_numpy(dtype="float64", na_value=np.nan)[order]
            out[col][ok] = vals[idx[ok]]
    if preempt_ts_us is not None:
        p = np.sort(np.asarray(preempt_ts_us, dtype="float64"))
        hi = np.searchsorted(p, q, side="right")
        lo = np.searchsorted(p, q - preemption_window_us, side="right")
        out["recent_preemptions"] = np.where(np.isnan(q), np.nan, (hi - lo).astype("float64"))
    done = ~np.isnan(finished_us) & ~np.isnan(scheduled_us)
    f = np.asarray(finished_us, dtype="float64")[done]
    svc = (f - np.asarray(scheduled_us, dtype="float64")[done])
    order = np.argsort(f, kind="stable")
    f, svc = f[order], svc[order]
    csum = np.concatenate([[0.0], np.cumsum(svc)])
    hi = np.searchsorted(f, q, side="right")
    lo = np.searchsorted(f, q - service_window_us, side="right")
    cnt = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        avg = (csum[hi] - csum[lo]) / cnt
    out["avg_service_time_us"] = np.where((cnt > 0) & ~np.isnan(q), avg, np.nan)
    return out


def step_columns() -> list[str]:
    """Canonical step columns in schema order (optional ones included). Read from the model's fields, not
    ``to_schema()``: pandera's first schema build imports every dataframe backend installed (dask: ~1.4 s and
    ~50 MB), a fixed cost an ingest-only (e.g. worker) process need not pay."""
    return [field.name for _, field in StepsSchema.__fields__.values()]
