"""Validate canonical tables against the pandera contract and split them into accepted rows and a quarantine.

The pandera ``DataFrameModel``s in :mod:`molerd.schemas` are the single definition of every rule. Two engines
evaluate them:

* ``engine="pandera"``: ``Schema.validate(df, lazy=True)`` and ``SchemaErrors.failure_cases``.
* ``engine="fast"`` (default): the same schema object, evaluated column by column — dtype coercion, nullability
  and each registered ``Check`` object called directly on the coerced frame — without pandera's per-failure
  bookkeeping (which dominates on large, dirty inputs). Check names are identical, and a test asserts both
  engines quarantine the same rows for the same reasons.

Invariant, always and per table: rows in = rows accepted + rows quarantined. A schema-level failure (a
missing required column, a column none of whose values can be coerced) is a file-level error and every row
of that file goes to the quarantine with that reason.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa

from molerd.ingest import IngestResult, read_input, iter_inputs
from molerd.ingest._common import QUARANTINE_COLUMNS, empty_quarantine, json_values, quarantine_frame
from molerd.schemas import SCHEMAS

log = logging.getLogger(__name__)

_TRUE = {"true", "1", "yes", "t", "y"}
_FALSE = {"false", "0", "no", "f", "n"}


@dataclass
class ValidationResult:
    """Accepted rows per table (schema dtypes), one quarantine row per rejected row, counts, file errors."""

    steps: pd.DataFrame
    requests: pd.DataFrame
    quarantine: pd.DataFrame
    counts: dict = field(default_factory=dict)
    errors: list[tuple[str, str]] = field(default_factory=list)


def _constant(value: str, n: int) -> np.ndarray:
    """``n`` times one object as a read-only view; ``np.full(n, value, dtype=object)`` costs ~70 ms per
    million rows (numpy 2.x), which the per-row source column would pay for every good row."""
    return np.broadcast_to(np.array(value, dtype=object), n)


def _check_label(check) -> str:
    return str(check.error) if check.error else str(check.name)


def _coerce(s: pd.Series, dtype: str) -> tuple[pd.Series, np.ndarray]:
    """Coerce to the schema dtype; returns (values with NaN/NA where impossible, cell-failed mask)."""
    if dtype in ("int64", "float64") and (pd.api.types.is_integer_dtype(s) and s.dtype != bool):
        return s, np.zeros(len(s), dtype=bool)  # already integral: nothing to coerce
    if dtype == "float64" and pd.api.types.is_float_dtype(s):
        return s, np.zeros(len(s), dtype=bool)
    present = s.notna().to_numpy()
    if dtype in ("int64", "float64"):
        if s.dtype == bool:
            s = s.astype("int64")
        x = pd.to_numeric(s, errors="coerce") if not pd.api.types.is_numeric_dtype(s) else s
        x = x.astype("float64")
        bad = present & x.isna().to_numpy()
        if dtype == "int64":
            v = x.to_numpy()
            # beyond int64 (|v| >= 2**63) a whole number would wrap on astype(int64): a coercion failure too
            frac = ~np.isnan(v) & (np.isinf(v) | (np.mod(np.where(np.isinf(v), 0, v), 1) != 0) | (np.abs(v) >= 2.0**63))
            bad |= frac
            x = x.mask(frac)
        return x, bad
    if dtype == "bool":
        if s.dtype == bool:
            return s, np.zeros(len(s), dtype=bool)
        low = s.astype("string").str.strip().str.lower()
        out = pd.Series(pd.NA, index=s.index, dtype="boolean")
        out[low.isin(_TRUE).fillna(False).to_numpy()] = True
        out[low.isin(_FALSE).fillna(False).to_numpy()] = False
        return out, present & out.isna().to_numpy()
    # strings; a cell that is not valid Unicode (a lone surrogate from a "\ud800" JSON escape) cannot be
    # stored: it fails coercion, so its row goes to the quarantine (JSON-escaped there) instead of crashing
    try:
        return s.astype("string"), np.zeros(len(s), dtype=bool)
    except UnicodeEncodeError:
        bad = s.map(lambda v: isinstance(v, str) and not _encodable(v)).to_numpy(dtype=bool)
        return s.mask(bad).astype("string"), bad


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _fast_failures(df: pd.DataFrame, schema) -> tuple[dict[str, np.ndarray], list[str], pd.DataFrame]:
    """Evaluate the schema's rules vectorised: ({label: failed-row mask}, schema-level errors, coerced frame)."""
    n = len(df)
    fails: dict[str, np.ndarray] = {}
    schema_errors: list[str] = []
    coerced = {}
    for name, col in schema.columns.items():
        if name not in df.columns:
            if col.required:
                schema_errors.append(f"column '{name}' missing (required by the {schema.name} schema)")
            continue
        dtype = str(col.dtype)
        dtype = "string" if "string" in dtype or dtype == "str" else dtype
        x, bad = _coerce(df[name], dtype)
        if bad.any():
            fails[f"{name}:coerce_dtype('{dtype}')"] = bad
            if bad.sum() == df[name].notna().sum():
                schema_errors.append(f"column '{name}' cannot be coerced to {dtype} (no value is valid)")
        isna = x.isna().to_numpy()
        if not col.nullable:
            miss = isna & ~bad
            if miss.any():
                fails[f"{name}:not_nullable"] = miss
        for chk in col.checks:
            out = chk(x).check_output  # pandera may drop nulls from the output: align on the index
            out = out.reindex(x.index, fill_value=True) if len(out) != len(x) else out
            f = ~out.to_numpy(dtype=bool, na_value=False) & ~isna
            if f.any():
                fails[f"{name}:{_check_label(chk)}"] = f
        coerced[name] = x
    # Reuse the input's blocks; only columns that coercion changed are replaced (avoids a full re-stack).
    cdf = df[[c for c in schema.columns if c in coerced]].copy(deep=False)
    for name, x in coerced.items():
        if x is not df[name]:
            cdf[name] = x
    if not schema_errors:
        for chk in schema.checks:
            out = chk(cdf).check_output
            f = ~np.asarray(out.to_numpy(dtype=bool, na_value=False), bool)
            if f.any():
                fails[_check_label(chk)] = f
    return fails, schema_errors, cdf


def _pandera_failures(df: pd.DataFrame, schema) -> tuple[dict[str, np.ndarray], list[str], pd.DataFrame]:
    """Reference engine: pandera lazy validation, failure_cases mapped back to row positions."""
    n = len(df)
    work = df.reset_index(drop=True)
    try:
        schema.validate(work, lazy=True)
        return {}, [], work
    except pa.errors.SchemaErrors as exc:
        fc = exc.failure_cases
    fails: dict[str, np.ndarray] = {}
    schema_errors = []
    for rec in fc.itertuples(index=False):
        if rec.index is None or (isinstance(rec.index, float) and np.isnan(rec.index)):
            schema_errors.append(f"{rec.check}: {rec.failure_case}")
            continue
        label = rec.check if rec.schema_context == "DataFrameSchema" else f"{rec.column}:{rec.check}"
        fails.setdefault(label, np.zeros(n, dtype=bool))[int(rec.index)] = True
    return fails, schema_errors, work


def _split(df: pd.DataFrame, table: str, sources: np.ndarray, rows: np.ndarray, engine: str):
    """Accepted frame (schema dtypes) + quarantine records + file-level errors for one table."""
    schema = SCHEMAS[table].to_schema()
    n = len(df)
    df = df.reset_index(drop=True)
    errors: list[tuple[str, str]] = []
    if n == 0:
        return _typed(df.iloc[0:0], schema), empty_quarantine(), errors
    # A schema-level failure (e.g. a missing required column) rejects every row of the table with one reason.
    reject_reason = None
    missing = [c for c, col in schema.columns.items() if col.required and c not in df.columns]
    if missing:
        msg = f"{table}: missing required column(s) {', '.join(missing)}"
        errors += [(str(src), msg) for src in pd.unique(sources)]
        reject_reason = f"schema:{msg}"
    fails, schema_errors, cdf = (_fast_failures if engine == "fast" else _pandera_failures)(df, schema)
    if schema_errors and not missing:
        for src in pd.unique(sources):
            for e in schema_errors:
                errors.append((str(src), f"{table}: {e}"))
        reject_reason = "schema:" + "; ".join(schema_errors)
    labels = sorted(fails)
    failed = np.full(n, reject_reason is not None)
    for k in labels:
        failed |= fails[k]
    qidx = np.flatnonzero(failed)
    quarantine = _quarantine(df, qidx, fails, labels, reject_reason, table, sources, rows)
    accepted = cdf.loc[~failed] if not schema_errors else cdf.iloc[0:0]
    return _typed(accepted, schema), quarantine, errors


def _quarantine(df, qidx, fails, labels, reject_reason, table, sources, rows) -> pd.DataFrame:
    """One quarantine row per rejected row (positions ``qidx``), reasons in label order. Work is per rejected
    row and per failure, never per input row: good rows cost nothing here."""
    if not len(qidx):
        return empty_quarantine()
    reasons: list[list[str]] = [[reject_reason] if reject_reason is not None else [] for _ in qidx]
    for k in labels:
        for j in np.flatnonzero(fails[k][qidx]):
            reasons[j].append(k)
    # one C-level JSON encoding for all rejected rows (NaN -> null), split into one string per row
    rejected = df.iloc[qidx]
    try:
        orig = rejected.to_json(orient="records", lines=True, double_precision=15).splitlines()
    except UnicodeEncodeError:  # a cell that is not valid Unicode: Python's JSON escapes it (\\udXXXX)
        orig = [json_values(r) for r in rejected.to_dict("records")]
    return quarantine_frame({
        "source": [str(x) for x in sources[qidx]], "table": table, "row": [int(x) for x in rows[qidx]],
        "line": None, "failed_checks": ["; ".join(r) for r in reasons], "values": orig,
    })  # fmt: skip


def _typed(df: pd.DataFrame, schema) -> pd.DataFrame:
    """Accepted rows in schema column order and dtypes (optional columns only if present)."""
    out = {}
    for name, col in schema.columns.items():
        if name not in df.columns:
            if col.required:
                out[name] = pd.Series([], dtype="float64") if len(df) == 0 else None
            continue
        dtype = str(col.dtype)
        s = df[name]
        if dtype == "int64":
            out[name] = s.astype("int64")
        elif dtype == "float64":
            out[name] = s.astype("float64")
        elif dtype == "bool":
            out[name] = s.astype("bool")
        else:
            out[name] = s.astype("string")
    out = {k: v for k, v in out.items() if v is not None}
    # copy=False: the columns are already fresh (the row selection copied them); re-stacking them into
    # consolidated blocks would be a second full copy of the accepted rows
    return pd.DataFrame(out, copy=False).reset_index(drop=True)


def validate_tables(
    steps: pd.DataFrame | None,
    requests: pd.DataFrame | None,
    source: str | np.ndarray | list,
    *,
    engine: str = "fast",
) -> ValidationResult:
    """Split canonical tables into accepted rows and a quarantine (one row per rejected row, all failed checks).

    Parameters
    ----------
    steps, requests : canonical tables (unvalidated; any dtypes), may be None or empty.
    source : a file name for every row, or one name for all rows (recorded in the quarantine).
    engine : {"fast", "pandera"}
        How the pandera contract is evaluated (see module docstring); both give the same result.
    """
    if engine not in ("fast", "pandera"):
        raise ValueError(f"The 'engine' parameter of validate_tables must be 'fast' or 'pandera'. Got {engine!r}.")
    out = {}
    quarantine = [empty_quarantine()]
    errors: list[tuple[str, str]] = []
    counts = {}
    for table, df in (("steps", steps), ("requests", requests)):
        df = pd.DataFrame() if df is None else df
        n = len(df)
        if isinstance(source, (str, Path)):
            srcs = _constant(str(source), n)
        else:
            srcs = np.asarray(source[table] if isinstance(source, dict) else source, dtype=object)
        rows = df["_row"].to_numpy() if "_row" in df.columns else np.arange(n)
        acc, q, errs = _split(df.drop(columns=["_row"], errors="ignore"), table, srcs, rows, engine)
        out[table] = acc
        quarantine.append(q)
        errors += errs
        counts[table] = {"total": n, "accepted": len(acc), "quarantined": len(q)}
        if len(acc) + len(q) != n:  # the invariant is a bug if broken, never a data problem
            raise RuntimeError(f"{table}: {n} rows in but {len(acc)} accepted + {len(q)} quarantined")
    q = pd.concat(quarantine, ignore_index=True)
    return ValidationResult(out["steps"], out["requests"], q, counts, errors)


def _read_one(args: tuple[Path, str | None]) -> IngestResult:
    return read_input(*args)


def read_inputs(inputs: list[Path], fmt: str | None = None, workers: int = 1, progress: bool = False) -> list[IngestResult]:
    """Ingest every input, in ``workers`` processes when there are several inputs; results keep input order,
    so the output does not depend on the number of workers."""
    it: Any
    if workers > 1 and len(inputs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        ex = ProcessPoolExecutor(max_workers=workers)
        it = ex.map(_read_one, [(p, fmt) for p in inputs])
    else:
        ex, it = None, (read_input(p, fmt) for p in inputs)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=len(inputs), desc="ingest", unit="input")
    try:
        return list(it)
    finally:
        if ex is not None:
            ex.shutdown()


def validate_inputs(
    paths: list[Path], out_dir: Path, fmt: str | None = None, *, engine: str = "fast", progress: bool = False,
    workers: int = 1,
) -> dict:
    """Read every input (files or folders, recursively; run folders grouped), validate, write the outputs.

    Writes ``out_dir/steps.parquet``, ``requests.parquet``, ``quarantine.parquet`` and
    ``validation_report.json``; returns the report dict: per table ``total``/``accepted``/``quarantined``
    (ingest-time rejects included), ``file_errors`` as [{"file", "message"}], ``inputs`` read.
    """
    out_dir = Path(out_dir)
    inputs = iter_inputs([Path(p) for p in paths])
    results = read_inputs(inputs, fmt, workers, progress)
    steps_parts, req_parts, step_src, req_src = [], [], [], []
    rejected = [empty_quarantine()]
    file_errors: list[tuple[str, str]] = []
    for res in results:
        file_errors += res.errors
        rejected.append(res.rejected)
        for df, parts, srcs in ((res.steps, steps_parts, step_src), (res.requests, req_parts, req_src)):
            if df is not None and len(df):
                d = df.copy()
                d["_row"] = np.arange(len(d))
                parts.append(d)
                srcs.append(_constant(res.source, len(d)))
    # Each source's missing columns are checked before concatenation (concat would fill them with NA).
    vr_parts = []
    for table, parts, srcs in (("steps", steps_parts, step_src), ("requests", req_parts, req_src)):
        keep_p, keep_s = [], []
        for d, s in zip(parts, srcs):
            schema = SCHEMAS[table].to_schema()
            missing = [c for c, col in schema.columns.items() if col.required and c not in d.columns]
            if missing:
                msg = f"{table}: missing required column(s) {', '.join(missing)}; all {len(d)} rows quarantined"
                file_errors.append((str(s[0]), msg))
                recs = [{"source": str(s[0]), "table": table, "row": int(r), "line": None,
                         "failed_checks": f"schema:{msg}", "values": json_values(v)}
                        for r, v in zip(d["_row"], d.drop(columns=["_row"]).to_dict("records"))]  # fmt: skip
                vr_parts.append((table, quarantine_frame(recs)))
            else:
                keep_p.append(d)
                keep_s.append(s)
        if table == "steps":
            steps_all = pd.concat(keep_p, ignore_index=True) if keep_p else None
            steps_src = np.concatenate(keep_s) if keep_s else np.zeros(0, dtype=object)
        else:
            req_all = pd.concat(keep_p, ignore_index=True) if keep_p else None
            req_src = np.concatenate(keep_s) if keep_s else np.zeros(0, dtype=object)
    vr = validate_tables(steps_all, req_all, {"steps": steps_src, "requests": req_src}, engine=engine)
    file_errors += vr.errors
    q = pd.concat([*rejected, *(p for _, p in vr_parts), vr.quarantine], ignore_index=True)[QUARANTINE_COLUMNS]
    counts = {}
    for table in sorted(set(q["table"].dropna()) | {"steps", "requests"}):
        acc = len(getattr(vr, table)) if table in ("steps", "requests") else 0
        nq = int((q["table"] == table).sum())
        counts[table] = {"total": acc + nq, "accepted": acc, "quarantined": nq}
    out_dir.mkdir(parents=True, exist_ok=True)
    vr.steps.to_parquet(out_dir / "steps.parquet", index=False)
    vr.requests.to_parquet(out_dir / "requests.parquet", index=False)
    q.to_parquet(out_dir / "quarantine.parquet", index=False)
    report = {
        "tables": counts,
        "file_errors": [{"file": f, "message": m} for f, m in file_errors],
        "inputs": [r.source for r in results],
        # what each adapter noted about an input (batch membership rebuilt or not, which clock arrivals use)
        "notes": {r.source: {k: v for t in (r.steps, r.requests) if t is not None for k, v in t.attrs.items()}
                  for r in results if any(t is not None and t.attrs for t in (r.steps, r.requests))},
        "engine": engine,
    }
    (out_dir / "validation_report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report
