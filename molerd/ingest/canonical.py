"""The canonical tables themselves, as Parquet or CSV (``steps.*``, ``requests.*``, or any file whose columns
identify the table). Rows are returned as read (no coercion): validation judges them, so a bad cell ends up
in the quarantine with its rule instead of failing the whole read."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from molerd.ingest._common import IngestError

# A column only one table has identifies it.
_STEP_MARKERS = {"step_id", "step_duration_us"}
_REQUEST_MARKERS = {"request_id", "queued_us"}


def _read_frame(path: Path) -> pd.DataFrame:
    if path.stat().st_size == 0:
        raise IngestError(f"{path}: empty file (expected a canonical steps/requests table)")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    try:
        if magic == b"PAR1":
            return pd.read_parquet(path)
        # Read as text; empty strings are missing values, everything else is judged by validation.
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError as exc:
        raise IngestError(f"{path}: empty file (no header row)") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise IngestError(f"{path}: cannot be parsed as {'Parquet' if magic == b'PAR1' else 'CSV'}: {exc}") from exc


def table_kind(path: Path, columns) -> str:
    """'steps' or 'requests' from the file name, else from the columns; IngestError if neither fits."""
    stem = path.name.split(".")[0].lower()
    cols = set(columns)
    if stem in ("steps", "requests"):
        return stem
    if cols & _STEP_MARKERS and not cols & _REQUEST_MARKERS:
        return "steps"
    if cols & _REQUEST_MARKERS and not cols & _STEP_MARKERS:
        return "requests"
    raise IngestError(
        f"{path}: cannot tell which canonical table this is: expected a step_id/step_duration_us column "
        f"(steps) or request_id/queued_us (requests); found columns {sorted(cols)[:12]}"
    )


def read_canonical(path: str | Path) -> tuple[str, pd.DataFrame]:
    """Read one canonical table file -> (table name, frame as read). Raises IngestError if unreadable."""
    path = Path(path)
    df = _read_frame(path)
    kind = table_kind(path, df.columns)
    if len(df) == 0:
        raise IngestError(f"{path}: header only, no data rows (columns: {', '.join(map(str, df.columns[:8]))}...)")
    return kind, df
