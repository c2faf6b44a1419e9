"""Input adapters: every supported trace format -> the canonical ``steps``/``requests`` tables.

``read_input`` never raises for bad content: a file that cannot be read becomes one clear file-level error
(naming the file and the problem) in ``IngestResult.errors`` so a batch of inputs keeps going.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from molerd.ingest._common import IngestError, IngestResult

__all__ = ["FORMATS", "IngestError", "IngestResult", "detect_format", "iter_inputs", "read_input"]

FORMATS = ("otel", "vllm-stats", "canonical")


def _first_line(path: Path, limit: int = 1 << 20) -> bytes:
    with open(path, "rb") as fh:
        for raw in fh:
            if raw.strip():
                return raw[:limit]
            if fh.tell() > limit:
                break
    return b""


def detect_format(path: str | Path) -> str:
    """'otel', 'vllm-stats' or 'canonical', judged from content (first line / magic bytes / header).

    Raises IngestError naming the path when nothing matches (empty file, unknown content).
    """
    path = Path(path)
    if path.is_dir():
        if (path / "traces.json").exists():
            return "otel"
        if (path / "request_stats.jsonl").exists():
            return "vllm-stats"
        if any((path / f"{t}.{e}").exists() for t in ("steps", "requests") for e in ("parquet", "csv")):
            return "canonical"
        raise IngestError(f"{path}: folder holds no traces.json, request_stats.jsonl or steps/requests table")
    if not path.exists():
        raise IngestError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise IngestError(f"{path}: empty file")
    with open(path, "rb") as fh:
        if fh.read(4) == b"PAR1":
            return "canonical"
    head = _first_line(path)
    text = head.lstrip()
    if text.startswith(b"{"):
        if b'"resourceSpans"' in head:
            return "otel"
        try:
            obj = json.loads(head)
        except ValueError:
            obj = {}
        if isinstance(obj, dict) and ("queued_ts" in obj or "request_id" in obj):
            return "vllm-stats"
        if b'"resourceSpans"' not in head:
            raise IngestError(f"{path}: JSON content is neither OTLP (resourceSpans) nor vLLM request stats")
    header = head.decode("utf-8", errors="replace").strip().split(",")
    if {"step_id", "request_id", "queued_us", "step_duration_us"} & {h.strip().strip('"') for h in header}:
        return "canonical"
    raise IngestError(f"{path}: unknown format (not OTLP JSON lines, vLLM request stats, Parquet or canonical CSV)")


# Files that belong to a run folder without being trace inputs: read by the run's adapter, or (ground_truth)
# the synthesizer's answer key, which only tests look at.
SIDE_FILES = frozenset({"engine_settings.json", "metrics.jsonl", "ground_truth.parquet"})


def iter_inputs(paths: list[Path]) -> list[Path]:
    """Expand folders recursively into inputs: a run folder (traces.json or request_stats.jsonl) is one input;
    other files (tables, stray traces) are inputs on their own, except :data:`SIDE_FILES`. Sorted, so the row
    order is deterministic."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.is_dir():
            out.append(p)
            continue
        if (p / "traces.json").exists() or (p / "request_stats.jsonl").exists():
            out.append(p)
            # other files beside the trace (e.g. canonical tables) are still inputs
            for f in sorted(p.iterdir()):
                if f.is_file() and f.suffix in (".csv", ".parquet") and f.name not in SIDE_FILES:
                    out.append(f)
            for d in sorted(x for x in p.iterdir() if x.is_dir()):
                out += iter_inputs([d])
            continue
        for child in sorted(p.iterdir()):
            if child.name.startswith("."):
                continue
            if child.is_dir():
                out += iter_inputs([child])
            elif child.suffix in (".json", ".jsonl", ".csv", ".parquet") and child.name not in SIDE_FILES:
                out.append(child)
    return out


def read_input(path: str | Path, fmt: str | None = None) -> IngestResult:
    """Read one input (file or run folder) in the given or detected format; problems land in ``.errors``."""
    path = Path(path)
    try:
        if fmt is not None and fmt not in FORMATS:
            raise IngestError(f"{path}: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        fmt = fmt or detect_format(path)
        if fmt == "otel":
            from molerd.ingest.otel import ingest_otel

            traces = path / "traces.json" if path.is_dir() else path
            return ingest_otel(traces)
        if fmt == "vllm-stats":
            from molerd.ingest.vllm_stats import read_vllm_stats

            return read_vllm_stats(path if path.is_dir() else path.parent)
        from molerd.ingest.canonical import read_canonical

        if path.is_dir():
            res = IngestResult(source=str(path))
            for f in sorted(path.iterdir()):
                if f.suffix in (".csv", ".parquet"):
                    sub = read_input(f, "canonical")
                    res.errors += sub.errors
                    res.steps = pd.concat([res.steps, sub.steps]) if len(sub.steps) else res.steps
                    res.requests = pd.concat([res.requests, sub.requests]) if len(sub.requests) else res.requests
            return res
        kind, df = read_canonical(path)
        return IngestResult(**{kind: df}, source=str(path))
    except IngestError as exc:
        return IngestResult(source=str(path), errors=[_split_error(path, exc)])
    except (OSError, UnicodeError) as exc:
        return IngestResult(source=str(path), errors=[(str(path), f"cannot be read: {exc}")])


def _split_error(path: Path, exc: Exception) -> tuple[str, str]:
    """(file, message): the file the error names (e.g. traces.json inside a run folder), else the input."""
    head, sep, rest = str(exc).partition(": ")
    if sep and (head == str(path) or Path(head).exists()):
        return head, rest
    return str(path), str(exc)
