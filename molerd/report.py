"""The release report: one static HTML page (plus a Markdown twin and PNGs) from the evaluate stage's files,
and the small CSV files ``dvc plots`` draws.

Why a separate module: the evaluate and gate stages decide; this one only shows what they decided, so a
reviewer can judge a promotion without running anything. Every number in a table is read from
``metrics.json`` / ``gate.json`` and printed with the same formatter (:func:`fmt`), so tests (and humans)
can check the page against the files. The page has no JavaScript and loads nothing from the network; images
are PNG files next to it, referenced by relative path.

Inputs (the evaluate stage's contract), searched in ``eval_dir`` and then ``eval_dir/eval``
(a release directory keeps ``metrics.json`` and ``gate.json`` at its root and the rest under ``eval/``):

- ``metrics.json`` (required): ``{target: {"overall": {model: stats}, "per_regime": {regime: {model: stats}},
  "per_scope": {"<hw>/<model>/tp<k>": {model: stats}}}}``, stats = ``mape``, ``median_ape``, ``p90_ape`` (%), ``n``.
- ``gate.json``: decision, reasons, candidate/champion MAPE, bootstrap CI of the MAPE difference, fraction of
  resamples improved, per-regime MAPEs, optionally ``thresholds``; may nest one such block per target.
- ``predictions.parquet``: ``target``, ``regime``, ``y_true`` (µs), ``pred_<model>`` (µs), state columns.
- ``coverage.json``: ``{"counts": [{hardware, target, regime, rows}], "missing": [...]}``.
- ``sweep.parquet``: ``target``, ``axis``, ``x``, ``pred_hard``, ``pred_soft`` (optional ``threshold``).
- ``thresholds.json``: ``{axis: [values]}`` or ``{target: {axis: [values]}}`` (if not in gate.json).

Only ``metrics.json`` is required; a missing or unusable optional file becomes a visible note in the report
(or an error with ``strict=True``).
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from molerd import plots
from molerd.paths import releases_dir

logger = logging.getLogger(__name__)

class ReportInputError(ValueError):
    """An evaluation file is missing or does not follow the contract; the message names file, key and rule."""


TARGETS = ("beta", "alpha")
STATS = ("mape", "median_ape", "p90_ape", "n")
STATE_AXES = ("kv_usage_ratio", "waiting_depth", "prefill_ratio")
MISSING = "—"
DEFAULT_TITLE = "MoLE-RD release report"

_INPUT_FILES = {
    "metrics": "metrics.json",
    "gate": "gate.json",
    "predictions": "predictions.parquet",
    "coverage": "coverage.json",
    "sweep": "sweep.parquet",
    "thresholds": "thresholds.json",
    "jumps": "gate_jumps.json",
    "model_notes": "model_notes.json",
}


# ----------------------------------------------------------------------------------------------- formatting
def _finite(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, a boolean, not a number, NaN or infinite)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt(value: Any, decimals: int = 2) -> str:
    """The one number format of the report: fixed ``decimals``; missing/non-finite values print as ``—``."""
    v = _finite(value)
    return MISSING if v is None else f"{v:.{decimals}f}"


def fmt_count(value: Any) -> str:
    """Counts (``n``, rows) as integers; missing prints as ``—``."""
    v = _finite(value)
    return MISSING if v is None else str(int(round(v)))


# ----------------------------------------------------------------------------------------------- reading
@dataclass
class EvalInputs:
    """Everything the report reads, with notes about what was missing or unusable."""

    metrics: dict[str, Any]
    gate: dict[str, Any] | None = None
    predictions: pd.DataFrame | None = None
    coverage: dict[str, Any] | None = None
    sweep: pd.DataFrame | None = None
    jumps: list[dict[str, Any]] | None = None
    model_notes: list[dict[str, Any]] | None = None
    thresholds: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # input name -> path relative to eval_dir
    notes: list[str] = field(default_factory=list)


def locate_eval_files(eval_dir: Path) -> dict[str, Path | None]:
    """Where each input lives: ``eval_dir`` first, then ``eval_dir/eval`` (release layout), else ``None``.
    ``gate.json`` is also looked for in the sibling ``gate/`` folder (the pipeline writes ``data/gate/gate.json``
    beside ``data/eval``)."""
    eval_dir = Path(eval_dir)
    search = [eval_dir, eval_dir / "eval"]
    if eval_dir.name == "eval":
        search.append(eval_dir.parent)
    found: dict[str, Path | None] = {}
    for key, name in _INPUT_FILES.items():
        dirs = search + ([eval_dir.parent / "gate"] if key == "gate" else [])  # pipeline layout: data/gate
        found[key] = next((d / name for d in dirs if (d / name).is_file()), None)
    return found


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportInputError(f"{path.name}: not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from exc


def _is_number_or_null(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def validate_metrics(metrics: Any, source: str = "metrics.json") -> dict[str, Any]:
    """Check the metrics contract; every problem is listed with its key path, e.g. ``beta.per_regime.x.mape``."""
    errors: list[str] = []
    if not isinstance(metrics, dict) or not metrics:
        raise ReportInputError(f"{source}: must be a non-empty JSON object keyed by target (beta, alpha), "
                               f"got {type(metrics).__name__}")
    for target, tblock in metrics.items():
        if not isinstance(tblock, dict):
            errors.append(f"{target}: must be an object with 'overall', 'per_regime', 'per_scope'")
            continue
        if "overall" not in tblock:
            errors.append(f"{target}.overall: missing (required: {{model: {{mape, median_ape, p90_ape, n}}}})")
        for section in ("overall", "per_regime", "per_scope"):
            sec = tblock.get(section)
            if sec is None:
                continue
            groups = {"": sec} if section == "overall" else sec
            if not isinstance(groups, dict):
                errors.append(f"{target}.{section}: must be an object, got {type(groups).__name__}")
                continue
            for gname, models in groups.items():
                where = f"{target}.{section}" + (f".{gname}" if gname else "")
                if not isinstance(models, dict):
                    errors.append(f"{where}: must map model -> stats, got {type(models).__name__}")
                    continue
                for model, stats in models.items():
                    if not isinstance(stats, dict):
                        errors.append(f"{where}.{model}: must be an object of stats, got {type(stats).__name__}")
                        continue
                    for stat in STATS:
                        if stat in stats and not _is_number_or_null(stats[stat]):
                            errors.append(f"{where}.{model}.{stat}: must be a number or null, got {stats[stat]!r}")
    if errors:
        shown = "; ".join(errors[:20]) + (f"; ... and {len(errors) - 20} more" if len(errors) > 20 else "")
        raise ReportInputError(f"{source}: {len(errors)} contract violation(s): {shown}")
    return metrics


def validate_predictions(df: pd.DataFrame, source: str = "predictions.parquet") -> pd.DataFrame:
    """Check required columns and numeric prediction columns; returns a copy with ``regime``/``target`` as str."""
    required = {"target", "regime", "y_true"}
    missing = sorted(required - set(df.columns))
    if missing:
        raise ReportInputError(f"{source}: missing required column(s) {missing}; have {sorted(df.columns)}")
    preds = [c for c in df.columns if c.startswith("pred_")]
    if not preds:
        raise ReportInputError(f"{source}: no prediction column; expected at least one 'pred_<model>' column")
    out = df.copy()
    for c in ["y_true", *preds, *[a for a in STATE_AXES if a in out.columns]]:
        try:
            out[c] = pd.to_numeric(out[c], errors="raise").astype("float64")
        except (TypeError, ValueError) as exc:
            bad = pd.to_numeric(out[c], errors="coerce").isna() & out[c].notna()
            row = int(np.flatnonzero(bad.to_numpy())[0]) if bad.any() else -1
            raise ReportInputError(f"{source}: column {c!r} must be numeric; row {row} has {out[c].iloc[row]!r}") from exc
    out["target"] = out["target"].astype(str)
    out["regime"] = out["regime"].astype(str)
    return out.reset_index(drop=True)


def validate_sweep(df: pd.DataFrame, source: str = "sweep.parquet") -> pd.DataFrame:
    """Check the sweep table's columns; returns a copy with numeric ``x``/``pred_*`` and str ``target``/``axis``."""
    required = ["target", "axis", "x", "pred_hard", "pred_soft"]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ReportInputError(f"{source}: missing required column(s) {missing}; have {sorted(df.columns)}")
    out = df.copy()
    for c in ("x", "pred_hard", "pred_soft"):
        try:
            out[c] = pd.to_numeric(out[c], errors="raise").astype("float64")
        except (TypeError, ValueError) as exc:
            raise ReportInputError(f"{source}: column {c!r} must be numeric") from exc
    out["target"] = out["target"].astype(str)
    out["axis"] = out["axis"].astype(str)
    return out.reset_index(drop=True)


def validate_coverage(cov: Any, source: str = "coverage.json") -> dict[str, Any]:
    """Check ``counts`` rows (hardware, target, regime, rows >= 0); the first bad row is named with its index."""
    if not isinstance(cov, dict) or not isinstance(cov.get("counts"), list):
        raise ReportInputError(f"{source}: must be an object with a 'counts' list (and optional 'missing' list)")
    for i, row in enumerate(cov["counts"]):
        if not isinstance(row, dict):
            raise ReportInputError(f"{source}: counts[{i}] must be an object, got {type(row).__name__}")
        lacking = [k for k in ("hardware", "target", "regime", "rows") if k not in row]
        if lacking:
            raise ReportInputError(f"{source}: counts[{i}] lacks {lacking}")
        r = row["rows"]
        if not (isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) and r >= 0):
            raise ReportInputError(f"{source}: counts[{i}].rows must be a count >= 0, got {r!r}")
    missing = cov.get("missing", [])
    if not isinstance(missing, list):
        raise ReportInputError(f"{source}: 'missing' must be a list, got {type(missing).__name__}")
    return cov


def normalize_thresholds(obj: Any, targets: Sequence[str] = TARGETS) -> dict[str, dict[str, list[float]]]:
    """Thresholds as ``{target: {axis: sorted floats}}`` from either ``{axis: v|[v..]}`` (all targets) or
    ``{target: {axis: ...}}``. Non-numeric entries raise, naming the key."""
    out: dict[str, dict[str, list[float]]] = {}
    if not obj:
        return out
    if not isinstance(obj, dict):
        raise ReportInputError(f"thresholds: must be an object {{axis: [values]}}, got {type(obj).__name__}")

    def values(key: str, v: Any) -> list[float]:
        items = v if isinstance(v, (list, tuple)) else [v]
        vals = []
        for item in items:
            if not _is_number_or_null(item) or item is None or not math.isfinite(float(item)):
                raise ReportInputError(f"thresholds.{key}: values must be finite numbers, got {item!r}")
            vals.append(float(item))
        return sorted(vals)

    per_target = all(isinstance(v, dict) for v in obj.values())
    if per_target:
        for t, axes in obj.items():
            named = _named_threshold_axes(str(t))
            for a, v in axes.items():
                axis = named.get(str(a), str(a))
                out.setdefault(str(t), {}).setdefault(axis, [])
                out[str(t)][axis] = sorted(out[str(t)][axis] + values(f"{t}.{a}", v))
    else:
        shared = {str(a): values(str(a), v) for a, v in obj.items()}
        for t in targets:
            out[str(t)] = dict(shared)
    return out


#: The state columns of predictions.parquet that the detector's inputs are plotted against.
_AXIS_OF_INPUT = {"queue_depth": "waiting_depth"}


def _named_threshold_axes(target: str) -> dict[str, str]:
    """Threshold name -> plotted axis, from the detector's rule table (``params.yaml label`` names such as
    ``saturation_kv`` -> ``kv_usage_ratio``), so ``gate.json`` can carry thresholds in the detector's terms."""
    try:
        from molerd.regimes import SEED_RULES
    except ImportError:  # pragma: no cover - the detector module is part of the package
        return {}
    return {rule[3]: _AXIS_OF_INPUT.get(rule[1], rule[1]) for rule in SEED_RULES.get(target, [])}


def _merge_thresholds(*sources: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, list[float]]]:
    """Earlier sources win per (target, axis)."""
    out: dict[str, dict[str, list[float]]] = {}
    for src in sources:
        for t, axes in src.items():
            for a, v in axes.items():
                out.setdefault(t, {}).setdefault(a, list(v))
    return out


def load_eval_inputs(eval_dir: Path, *, thresholds: Any = None, strict: bool = False,
                     gate_path: Path | None = None) -> EvalInputs:
    """Read and check every input the report uses.

    ``metrics.json`` must exist and follow the contract (else :class:`ReportInputError`). Optional files that
    are missing or break their contract become notes (``strict=True`` raises instead). Thresholds come from
    the ``thresholds`` argument, else ``gate.json["thresholds"]``, else ``thresholds.json``, plus any
    ``threshold`` column of the sweep.
    """
    eval_dir = Path(eval_dir)
    if not eval_dir.is_dir():
        raise ReportInputError(f"evaluation directory {eval_dir} does not exist")
    paths = locate_eval_files(eval_dir)
    if gate_path is not None:
        if not Path(gate_path).is_file():
            raise ReportInputError(f"gate file {gate_path} does not exist")
        paths["gate"] = Path(gate_path)
    if paths["metrics"] is None:
        raise ReportInputError(
            f"metrics.json not found in {eval_dir} or {eval_dir / 'eval'}; run the evaluate stage first")
    files = {k: Path(os.path.relpath(p, eval_dir)).as_posix() for k, p in paths.items() if p is not None}
    inputs = EvalInputs(metrics=validate_metrics(_read_json(paths["metrics"]), files["metrics"]), files=files)

    def optional(key: str, reader):
        path = paths[key]
        if path is None:
            if key not in ("thresholds", "jumps", "model_notes"):
                inputs.notes.append(f"{_INPUT_FILES[key]} not found: the sections that need it are left out.")
            return None
        try:
            return reader(path)
        except (ReportInputError, OSError, ValueError) as exc:
            if strict:
                raise
            msg = f"{files[key]} could not be used: {exc}"
            logger.warning(msg)
            inputs.notes.append(msg)
            return None

    inputs.gate = optional("gate", lambda p: _as_object(_read_json(p), p.name))
    inputs.predictions = optional("predictions", lambda p: validate_predictions(pd.read_parquet(p), files["predictions"]))
    inputs.coverage = optional("coverage", lambda p: validate_coverage(_read_json(p), files["coverage"]))
    inputs.sweep = optional("sweep", lambda p: validate_sweep(pd.read_parquet(p), files["sweep"]))
    file_thr = optional("thresholds", lambda p: normalize_thresholds(_read_json(p))) or {}
    inputs.jumps = optional("jumps", lambda p: _as_list(_read_json(p), files["jumps"]))
    inputs.model_notes = optional("model_notes", lambda p: _as_list(_read_json(p), files["model_notes"]))

    targets = sorted(set(TARGETS) | set(inputs.metrics))
    arg_thr = normalize_thresholds(thresholds, targets) if thresholds else {}
    gate_thr: dict[str, dict[str, list[float]]] = {}
    if inputs.gate and inputs.gate.get("thresholds"):
        try:
            gate_thr = normalize_thresholds(inputs.gate["thresholds"], targets)
        except ReportInputError as exc:
            if strict:
                raise
            inputs.notes.append(f"gate.json thresholds could not be used: {exc}")
    sweep_thr: dict[str, dict[str, list[float]]] = {}
    if inputs.sweep is not None:
        col = next((c for c in ("threshold", "thresholds") if c in inputs.sweep.columns), None)
        if col is not None:
            vals = inputs.sweep[["target", "axis", col]].copy()
            vals[col] = pd.to_numeric(vals[col], errors="coerce")
            for (t, a), part in vals.dropna().groupby(["target", "axis"], sort=True):
                sweep_thr.setdefault(str(t), {})[str(a)] = sorted(set(part[col].astype(float)))
    inputs.thresholds = _merge_thresholds(arg_thr, gate_thr, file_thr, sweep_thr)
    if not inputs.thresholds:
        inputs.notes.append("No regime thresholds given (argument, gate.json 'thresholds' or thresholds.json): "
                            "residual plots are drawn without threshold lines.")
    return inputs


def _as_list(obj: Any, source: str) -> list[dict[str, Any]]:
    if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
        raise ReportInputError(f"{source}: must be a JSON list of objects, got {type(obj).__name__}")
    return obj


def _as_object(obj: Any, source: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ReportInputError(f"{source}: must be a JSON object, got {type(obj).__name__}")
    return obj


# ----------------------------------------------------------------------------------------------- tables
def metric_models(metrics: Mapping[str, Any], target: str) -> list[str]:
    """Every model named anywhere in a target's metrics, in the report's model order."""
    t = metrics.get(target, {})
    names = set(t.get("overall", {}))
    for section in ("per_regime", "per_scope"):
        for models in (t.get(section) or {}).values():
            names |= set(models)
    return plots.order_models(sorted(names))


def metrics_frame(metrics: Mapping[str, Any], target: str, section: str, stat: str = "mape") -> pd.DataFrame:
    """A (group × model) float table of one stat from ``metrics.json``; missing entries are NaN."""
    t = metrics.get(target, {})
    groups = t.get(section) or {}
    models = metric_models(metrics, target)
    names = list(groups)
    if section == "per_regime":
        names = plots.order_regimes(names)
    else:
        names = sorted(names)
    data = [[_stat(groups.get(g, {}).get(m), stat) for m in models] for g in names]
    return pd.DataFrame(data, index=pd.Index(names, name=section), columns=models, dtype="float64")


def _stat(stats: Any, stat: str) -> float:
    if isinstance(stats, dict):
        v = stats.get(stat)
        return float(v) if _is_number_or_null(v) and v is not None else float("nan")
    return float("nan")


# ----------------------------------------------------------------------------------------------- document
@dataclass
class _Table:
    id: str
    header: list[str]
    keys: list[str]  # machine key per column (model names, stat names), for tests and scripts
    rows: list[list[str]]


@dataclass
class _Doc:
    """A tiny document model rendered twice (HTML and Markdown) so the two never disagree."""

    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def h(self, level: int, text: str, anchor: str | None = None) -> None:
        self.blocks.append(("h", (level, text, anchor)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def ul(self, items: Sequence[str]) -> None:
        self.blocks.append(("ul", list(items)))

    def table(self, t: _Table) -> None:
        self.blocks.append(("table", t))

    def img(self, src: str, alt: str) -> None:
        self.blocks.append(("img", (src, alt)))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.2em 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
thead th{background:#f2f2f2}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}
.note{background:#fff8e1;border-left:4px solid #f0ad4e;padding:0.4em 0.8em}
pre{background:#f6f6f6;padding:0.6em;overflow:auto;font-size:0.85em}
""".strip()


def _render_html(doc: _Doc, title: str) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{e(title)}</title>", f"<style>\n{_CSS}\n</style>", "</head>", "<body>", f"<h1>{e(title)}</h1>"]
    for kind, payload in doc.blocks:
        if kind == "h":
            level, text, anchor = payload
            aid = f' id="{e(anchor)}"' if anchor else ""
            out.append(f"<h{level}{aid}>{e(text)}</h{level}>")
        elif kind == "p":
            out.append(f"<p>{e(payload)}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in payload) + "</ul>")
        elif kind == "table":
            t: _Table = payload
            head = "".join(f'<th data-key="{e(k)}">{e(h)}</th>' for h, k in zip(t.header, t.keys, strict=True))
            body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in t.rows)
            out.append(f'<table id="{e(t.id)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')
        elif kind == "img":
            src, alt = payload
            out.append(f'<p><img src="{e(src)}" alt="{e(alt)}"></p>')
        elif kind == "code":
            out.append(f"<details><summary>full content</summary><pre>{e(payload)}</pre></details>")
        elif kind == "notes":
            out.append('<div class="note"><ul>' + "".join(f"<li>{e(i)}</li>" for i in payload) + "</ul></div>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _render_markdown(doc: _Doc, title: str) -> str:
    out = [f"# {title}", ""]
    for kind, payload in doc.blocks:
        if kind == "h":
            level, text, anchor = payload
            out += [f"{'#' * level} {text}", ""]
        elif kind == "p":
            out += [payload, ""]
        elif kind == "ul":
            out += [f"- {i}" for i in payload] + [""]
        elif kind == "table":
            t: _Table = payload
            out.append(f"<!-- table: {t.id} keys: {','.join(t.keys)} -->")
            out.append("| " + " | ".join(_md_cell(h) for h in t.header) + " |")
            out.append("|" + "|".join(["---"] + ["---:"] * (len(t.header) - 1)) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
            out.append("")
        elif kind == "img":
            src, alt = payload
            out += [f"![{alt}]({src})", ""]
        elif kind == "code":
            out += ["```json", payload, "```", ""]
        elif kind == "notes":
            out += [f"> - {i}" for i in payload] + [""]
    return "\n".join(out).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------- sampling
def subsample(df: pd.DataFrame, max_rows: int, seed: int = 0, by: str | Sequence[str] = "regime") -> pd.DataFrame:
    """At most ``max_rows`` rows, shared as evenly as possible between the ``by`` groups (rare regimes keep
    all their rows), chosen with ``default_rng(seed)``; the original row order is kept. Deterministic."""
    if len(df) <= max_rows:
        return df
    cols = [by] if isinstance(by, str) else list(by)
    inverse = df.groupby(cols, sort=True, dropna=False).ngroup().to_numpy()
    names = np.unique(inverse)
    sizes = np.bincount(inverse, minlength=len(names))
    quota = np.zeros(len(names), dtype=int)
    remaining = max_rows
    order = np.argsort(sizes, kind="stable")
    for i, g in enumerate(order):
        quota[g] = min(int(sizes[g]), remaining // (len(order) - i))
        remaining -= quota[g]
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(inverse == g), size=quota[g], replace=False) for g in range(len(names))]
    return df.iloc[np.sort(np.concatenate(picked))]


def _plottable(pred: pd.DataFrame, target: str) -> tuple[pd.DataFrame, int]:
    """Rows of one target with a finite, positive measurement (log axes); also how many were left out."""
    part = pred[pred["target"] == target]
    ok = np.isfinite(part["y_true"].to_numpy(dtype=float)) & (part["y_true"].to_numpy(dtype=float) > 0)
    return part[ok], int((~ok).sum())


def _pred_models(df: pd.DataFrame) -> list[str]:
    """Models with at least one finite prediction in ``df``."""
    names = [c[len("pred_"):] for c in df.columns if c.startswith("pred_")
             and np.isfinite(df[c].to_numpy(dtype=float)).any()]
    return plots.order_models(names)


def _max_jump_pct(x: np.ndarray, p: np.ndarray) -> float:
    """Largest change between neighbouring sweep points, in % of the larger of the two predictions."""
    o = np.argsort(x, kind="stable")
    p = p[o]
    if p.size < 2:
        return float("nan")
    denom = np.maximum(np.abs(p[1:]), np.abs(p[:-1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(denom > 0, np.abs(np.diff(p)) / denom, 0.0)
    rel = rel[np.isfinite(rel)]
    return float(rel.max() * 100) if rel.size else float("nan")


# ----------------------------------------------------------------------------------------------- gate
_GATE_SCALARS = {
    "candidate_mape": ("candidate_mape", "mape_candidate"),
    "champion_mape": ("champion_mape", "mape_champion"),
    "diff": ("mape_diff", "diff", "delta_mape", "mape_delta"),
    "ci": ("bootstrap_ci", "ci", "mape_diff_ci", "diff_ci", "ci_mape_diff", "mape_diff_ci95"),
    "frac": ("frac_improved", "fraction_improved", "p_improved", "improved_fraction", "fraction_resamples_improved"),
}


def _gate_lookup(block: Mapping[str, Any], names: Sequence[str]) -> Any:
    for name in names:
        if name in block:
            return block[name]
    boot = block.get("bootstrap")
    if isinstance(boot, dict):
        for name in names:
            if name in boot:
                return boot[name]
    return None


def _gate_model_mape(block: Mapping[str, Any], model: str) -> Any:
    v = _gate_lookup(block, _GATE_SCALARS[f"{model}_mape"])
    if v is None:
        for container in ("overall_mape", "overall", "mape"):
            c = block.get(container)
            if isinstance(c, dict) and model in c:
                v = c[model]
                break
    return v.get("mape") if isinstance(v, dict) else v


def _is_gate_block(d: Any) -> bool:
    return isinstance(d, dict) and ("decision" in d or _gate_lookup(d, _GATE_SCALARS["ci"]) is not None)


#: Keys of gate.json whose sub-objects are gate blocks but whose name adds nothing to a block's label
#: (``{"combined": {...}, "parts": {"beta": {...}}}`` gives the blocks "overall" and "beta").
_GATE_CONTAINERS = ("combined", "parts", "reports", "per_target", "targets", "per_hardware")
_GATE_SKIP = ("thresholds", "per_regime", "per_regime_mape", "bootstrap", "params", "checks", "regimes")


def gate_blocks(gate: Mapping[str, Any]) -> list[tuple[str, dict]]:
    """The gate decisions found in ``gate.json``: the top-level one and any nested per target/hardware.

    Blocks reached under the same label (the top level and its ``combined`` summary; ``parts/beta`` and
    ``combined/reports/beta``) are merged, the first one found winning per key, so each decision shows once.
    """
    found: dict[str, dict] = {}

    def walk(node: Mapping[str, Any], label: str, depth: int) -> None:
        if _is_gate_block(node):
            merged = found.setdefault(label, {})
            for k, v in node.items():
                merged.setdefault(k, v)
        if depth >= 4:
            return
        for k in sorted(node, key=str):
            v = node[k]
            if k in _GATE_SKIP or not isinstance(v, dict):
                continue
            if k in _GATE_CONTAINERS:
                sub = label
            else:
                sub = str(k) if label == "overall" else f"{label}/{k}"
            walk(v, sub, depth + 1)

    walk(gate, "overall", 0)
    return list(found.items())


def _gate_summary(block: Mapping[str, Any]) -> dict[str, Any]:
    ci = _gate_lookup(block, _GATE_SCALARS["ci"])
    lo = hi = None
    if isinstance(ci, dict):
        lo, hi = ci.get("lo", ci.get("low")), ci.get("hi", ci.get("high"))
    elif isinstance(ci, (list, tuple)) and len(ci) == 2:
        lo, hi = ci
    cand, champ = _gate_model_mape(block, "candidate"), _gate_model_mape(block, "champion")
    diff = _gate_lookup(block, _GATE_SCALARS["diff"])
    if not _is_number_or_null(diff) or diff is None:
        diff = (float(cand) - float(champ)) if _is_number_or_null(cand) and _is_number_or_null(champ) \
            and cand is not None and champ is not None else None
    reasons = block.get("reasons") or []
    if isinstance(reasons, str):
        reasons = [reasons]
    return {"decision": block.get("decision"), "reasons": [str(r) for r in reasons], "candidate": cand,
            "champion": champ, "diff": diff, "lo": lo, "hi": hi, "frac": _gate_lookup(block, _GATE_SCALARS["frac"]),
            "per_regime": block.get("per_regime", block.get("per_regime_mape"))}


# ----------------------------------------------------------------------------------------------- report
def build_report(
    eval_dir: Path,
    out_dir: Path,
    title: str = DEFAULT_TITLE,
    *,
    thresholds: Any = None,
    max_points: int = 4000,
    seed: int = 0,
    strict: bool = False,
    gate_path: Path | None = None,
) -> Path:
    """Write ``out_dir/index.html``, its Markdown twin ``out_dir/report.md`` and PNGs under ``out_dir/img/``.

    Parameters
    ----------
    eval_dir : Path
        The evaluate stage's output (or a release directory with an ``eval/`` subfolder).
    out_dir : Path
        Where the report goes; previous PNGs in ``out_dir/img`` are replaced, nothing else is touched.
    title : str
        Page title.
    thresholds : dict, optional
        ``{axis: [values]}`` or ``{target: {axis: [values]}}``; overrides gate.json / thresholds.json.
    max_points : int, default 4000
        Cap on scatter points per target (stratified by regime, seeded), so big evaluations stay light.
    seed : int, default 0
        Seed of the subsampling; same inputs and seed give identical files.
    strict : bool, default False
        Raise on an unusable optional input instead of noting it in the report.
    gate_path : Path, optional
        The gate decision to show, when it is not in ``eval_dir`` (or its sibling ``gate/``).

    Returns
    -------
    Path
        ``out_dir/index.html``.
    """
    inputs = load_eval_inputs(eval_dir, thresholds=thresholds, strict=strict, gate_path=gate_path)
    out_dir = Path(out_dir)
    img_dir = out_dir / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    for old in sorted(img_dir.glob("*.png")):
        old.unlink()

    doc = _Doc()
    targets = [t for t in TARGETS if t in inputs.metrics] + sorted(set(inputs.metrics) - set(TARGETS))
    notes = list(inputs.notes)

    all_models = plots.order_models(sorted({m for t in targets for m in metric_models(inputs.metrics, t)}))
    doc.h(2, "Inputs", "inputs")
    doc.ul([f"{k}: {v}" for k, v in sorted(inputs.files.items())])
    floors = {t: inputs.metrics[t].get("ape_floor_us") for t in targets if isinstance(inputs.metrics[t], dict)}
    floor_text = "".join(f" APE denominator floor for {t}: {fmt(v, 0)} µs." for t, v in floors.items() if v is not None)
    doc.p("Units: microseconds (µs). MAPE, median and p90 absolute percentage error in percent, each row's "
          "error taken against max(measured, floor)." + floor_text + " "
          "beta = one engine step's duration; alpha = the seed's queueing delay (scheduled − queued). "
          "Models: " + "; ".join(f"{m} = {plots.model_label(m)}" for m in all_models) + ". Before the first "
          "release the champion is the BLIS blackbox baseline.")
    notes_at = len(doc.blocks)  # notes are inserted here at the end, once every section has added its own

    _gate_section(doc, inputs, img_dir)
    for target in targets:
        _metrics_section(doc, inputs.metrics, target, img_dir)
    _scatter_sections(doc, inputs, targets, img_dir, max_points, seed, notes)
    _sweep_section(doc, inputs, img_dir)
    _coverage_section(doc, inputs, img_dir)
    _model_notes_section(doc, inputs)

    if notes:
        doc.blocks[notes_at:notes_at] = [("h", (2, "Notes", "notes")), ("notes", notes)]
    (out_dir / "index.html").write_text(_render_html(doc, title), encoding="utf-8")
    (out_dir / "report.md").write_text(_render_markdown(doc, title), encoding="utf-8")
    logger.info("report written to %s (%d notes)", out_dir, len(notes))
    return out_dir / "index.html"


def _img(doc: _Doc, img_dir: Path, name: str, alt: str) -> None:
    doc.img(f"{img_dir.name}/{name}", alt)


def _gate_section(doc: _Doc, inputs: EvalInputs, img_dir: Path) -> None:
    doc.h(2, "Gate decision", "gate")
    if inputs.gate is None:
        doc.p("No gate decision available (gate.json missing or unusable).")
        return
    blocks = gate_blocks(inputs.gate)
    if not blocks:
        doc.p("gate.json holds no recognisable decision block; its full content follows.")
    rows, ci_rows = [], []
    if blocks:
        doc.p("Decision: " + "; ".join(f"{label}: {_gate_summary(b)['decision'] or MISSING}" for label, b in blocks)
              + ".")
    for label, block in blocks:
        s = _gate_summary(block)
        rows.append([label, str(s["decision"] or MISSING), fmt(s["candidate"]), fmt(s["champion"]), fmt(s["diff"]),
                     fmt(s["lo"]), fmt(s["hi"]), fmt(s["frac"])])
        if _is_number_or_null(s["lo"]) and _is_number_or_null(s["hi"]) and s["lo"] is not None and s["hi"] is not None:
            ci_rows.append({"label": label, "lo": s["lo"], "hi": s["hi"],
                            "point": s["diff"] if _is_number_or_null(s["diff"]) else None})
    if rows:
        doc.table(_Table("gate-summary",
                         ["gate", "decision", "candidate MAPE", "champion MAPE", "difference (pp)", "CI low",
                          "CI high", "fraction improved"],
                         ["gate", "decision", "candidate_mape", "champion_mape", "diff", "ci_lo", "ci_hi",
                          "frac_improved"], rows))
        doc.p("Difference = MAPE(candidate) − MAPE(champion) in percentage points; negative is better. CI = the "
              "bootstrap interval of that difference; fraction improved = share of bootstrap resamples in which "
              "the candidate's MAPE was lower.")
    for label, block in blocks:
        s = _gate_summary(block)
        if s["reasons"]:
            doc.h(3, f"Reasons ({label}: {s['decision'] or MISSING})")
            doc.ul(s["reasons"])
        per = _flatten_gate_regimes(s["per_regime"])
        if per:
            models = plots.order_models(sorted({m for v in per.values() if isinstance(v, dict) for m in v}))
            trows = []
            for regime in (plots.order_regimes(list(per)) if not any("/" in k for k in per) else list(per)):
                v = per[regime]
                vals = [(v.get(m).get("mape") if isinstance(v.get(m), dict) else v.get(m)) if isinstance(v, dict)
                        else None for m in models]
                trows.append([regime, *[fmt(x) for x in vals]])
            doc.h(3, f"Per-regime MAPE in the gate ({label})")
            doc.table(_Table(f"gate-per-regime-{_slug(label)}", ["regime", *[plots.model_label(m) for m in models]],
                             ["regime", *models], trows))
    if ci_rows:
        name = "gate_interval.png"
        plots.gate_interval(ci_rows, img_dir / name, title="Gate: bootstrap interval of the MAPE difference")
        _img(doc, img_dir, name, "bootstrap interval of the MAPE difference")
    doc.h(3, "gate.json")
    doc.code(json.dumps(inputs.gate, indent=2, sort_keys=True, default=str))


def _flatten_gate_regimes(per: Any) -> dict[str, dict[str, Any]]:
    """``{regime: {model: mape | {mape: ..}}}``, also accepting one more level keyed by target
    (``{target: {regime: {...}}}`` becomes ``{"target/regime": {...}}``)."""
    if not isinstance(per, dict):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for key, v in per.items():
        if not isinstance(v, dict):
            continue
        nested = v and all(isinstance(x, dict) and not ({"mape"} & set(x)) for x in v.values())
        if nested:
            for regime, models in v.items():
                out[f"{key}/{regime}"] = models
        else:
            out[str(key)] = v
    return out


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in str(text)).strip("-").lower() or "x"


def _metrics_section(doc: _Doc, metrics: Mapping[str, Any], target: str, img_dir: Path) -> None:
    label = plots.TARGET_LABELS.get(target, target)
    doc.h(2, f"Held-out error: {label}", f"metrics-{target}")
    t = metrics[target]
    models = metric_models(metrics, target)
    overall = t.get("overall", {})
    rows = [[plots.model_label(m), *[fmt_count(overall.get(m, {}).get(s)) if s == "n"
                                     else fmt(overall.get(m, {}).get(s)) for s in STATS]] for m in models]
    doc.h(3, "Overall")
    doc.table(_Table(f"{target}-overall", ["model", "MAPE", "median APE", "p90 APE", "n"], ["model", *STATS], rows))
    for section, what in (("per_regime", "regime"), ("per_scope", "hardware/model/tp")):
        frame = metrics_frame(metrics, target, section)
        doc.h(3, f"MAPE per {what}")
        if frame.empty:
            doc.p(f"metrics.json has no {target}.{section}.")
            continue
        groups = t[section]
        rows = []
        for g in frame.index:
            n_model = next((m for m in models if isinstance(groups.get(g, {}).get(m), dict)), None)
            n = groups.get(g, {}).get(n_model, {}).get("n") if n_model else None
            rows.append([str(g), *[fmt(v) for v in frame.loc[g]], fmt_count(n)])
        doc.table(_Table(f"{target}-{section.replace('_', '-')}", [what, *[plots.model_label(m) for m in models], "n"],
                         [section, *models, "n"], rows))
        doc.p("n = held-out rows of the first model listed with an entry (the candidate when present).")
        name = f"{target}_mape_{section}.png"
        plots.bar_chart(frame.dropna(axis=1, how="all"), img_dir / name, title=f"{label}: held-out MAPE per {what}")
        _img(doc, img_dir, name, f"{target} MAPE per {what}")


def _scatter_sections(doc: _Doc, inputs: EvalInputs, targets: Sequence[str], img_dir: Path, max_points: int,
                      seed: int, notes: list[str]) -> None:
    doc.h(2, "Predicted vs measured", "pred-vs-actual")
    pred = inputs.predictions
    if pred is None:
        doc.p("predictions.parquet not available: scatter and residual plots are left out.")
        return
    residual_blocks = []
    for target in [*targets, *sorted(set(pred["target"]) - set(targets))]:
        part, dropped = _plottable(pred, target)
        if dropped:
            notes.append(f"predictions.parquet: {dropped} {target} row(s) with a missing, zero or negative y_true "
                         "are left out of the log-scale plots (they still count in metrics.json as the evaluate "
                         "stage computed it).")
        if part.empty:
            continue
        models = _pred_models(part)
        shown = subsample(part, max_points, seed)
        label = plots.TARGET_LABELS.get(target, target)
        name = f"{target}_pred_vs_actual.png"
        plots.pred_vs_actual(shown, models, img_dir / name, title=f"{label}: predicted vs measured")
        doc.h(3, label)
        doc.p(f"{len(shown)} of {len(part)} held-out rows shown (stratified by regime, seed {seed}); "
              "diagonal = exact, dotted = ±25 %.")
        _img(doc, img_dir, name, f"{target} predicted vs measured")
        residual_blocks.append((target, label, shown, models))

    doc.h(2, "Residuals against engine state", "residuals")
    for target, label, shown, models in residual_blocks:
        axes = [a for a in STATE_AXES if a in shown.columns and shown[a].notna().any()]  # alpha: no prefill ratio
        res_models = [m for m in ("candidate", "champion") if m in models] or models[:1]
        if not axes:
            doc.p(f"{label}: predictions.parquet has none of the state columns {list(STATE_AXES)}.")
            continue
        thr = inputs.thresholds.get(target, {})
        name = f"{target}_residuals.png"
        plots.residuals(shown, res_models, axes, thr, img_dir / name, title=f"{label}: relative error vs state")
        doc.h(3, label)
        drawn = "; ".join(f"{a} at {', '.join(fmt(v) for v in thr[a])}" for a in axes if thr.get(a))
        doc.p("Points: " + plots.model_label(res_models[0]) + "; lines: binned median per model. Thresholds drawn: "
              + (drawn or "none given") + ".")
        _img(doc, img_dir, name, f"{target} residuals vs state")


def _sweep_section(doc: _Doc, inputs: EvalInputs, img_dir: Path) -> None:
    doc.h(2, "Gate transition zones", "sweep")
    sweep = inputs.sweep
    if sweep is None or sweep.empty:
        doc.p("sweep.parquet not available: the hard-vs-soft gate comparison is left out.")
        return
    scope_cols = [c for c in ("scope", "hardware", "model", "tp") if c in sweep.columns]
    sweep = sweep.assign(_scope=sweep[scope_cols].astype(str).agg("/".join, axis=1) if scope_cols else "all")
    rows = []
    for (sc, t, a), part in sweep.groupby(["_scope", "target", "axis"], sort=True):
        x = part["x"].to_numpy(dtype=float)
        rows.append([str(sc), str(t), str(a), fmt_count(len(part)),
                     fmt(_max_jump_pct(x, part["pred_hard"].to_numpy(dtype=float))),
                     fmt(_max_jump_pct(x, part["pred_soft"].to_numpy(dtype=float))),
                     ", ".join(fmt(v) for v in inputs.thresholds.get(str(t), {}).get(str(a), [])) or MISSING])
    doc.table(_Table("sweep-jumps", ["scope", "target", "axis", "points", "largest step, hard gate (%)",
                                     "largest step, soft gate (%)", "thresholds"],
                     ["scope", "target", "axis", "points", "max_jump_hard_pct", "max_jump_soft_pct", "thresholds"],
                     rows))
    doc.p("Each sweep moves one gate input of a held-out row of the scope across its range, all else fixed. "
          "Largest step = biggest change between neighbouring sweep points, in % of the prediction. A hard gate "
          "jumps where the regime switches; the soft gate should not.")
    if inputs.jumps:
        doc.h(3, "Jump across each gate boundary, hard vs soft", "boundary-jumps")
        jrows = [[str(j.get("scope")), str(j.get("target")), str(j.get("regime")), str(j.get("input")),
                  fmt(j.get("threshold")), fmt(j.get("width")), fmt(j.get("max_jump_hard_pct")),
                  fmt(j.get("max_jump_soft_pct"))] for j in inputs.jumps]
        doc.table(_Table("boundary-jumps", ["scope", "target", "regime", "gate input", "threshold", "width",
                                            "largest jump, hard (%)", "largest jump, soft (%)"],
                         ["scope", "target", "regime", "input", "threshold", "width", "max_jump_hard_pct",
                          "max_jump_soft_pct"], jrows))
        doc.p("Each gate input swept over threshold ± 2 widths on 201 points for up to 25 held-out rows of the "
              "scope, the same fitted experts under the hard (zero-width) and the soft gate; largest change "
              "between neighbouring points in % of the row's mean prediction.")
    first = sorted(sweep["_scope"].unique())[0]
    if sweep["_scope"].nunique() > 1:
        doc.p(f"Plotted: scope {first} ({int((sweep['_scope'] == first).sum())} of {len(sweep)} sweep rows).")
    sweep = sweep[sweep["_scope"] == first]
    name = "gate_sweep.png"
    plots.sweep_panels(sweep, inputs.thresholds, img_dir / name, title="Prediction along the sweep: hard vs soft gate")
    _img(doc, img_dir, name, "hard vs soft gate along the sweep")


def _model_notes_section(doc: _Doc, inputs: EvalInputs) -> None:
    if inputs.model_notes is None:
        return
    doc.h(2, "Warnings from training", "model-notes")
    if not inputs.model_notes:
        doc.p("Every regime of every scope has its own expert; no feature was dropped; no row was left out.")
        return
    rows = [[str(n.get("scope")), str(n.get("target")), str(n.get("kind")), str(n.get("detail"))]
            for n in inputs.model_notes]
    doc.table(_Table("model-notes", ["scope", "target", "what", "why"], ["scope", "target", "kind", "detail"], rows))
    doc.p("A regime with too few training rows predicts with the global expert (or one shrunk toward it); a "
          "feature whose inputs the traces do not carry is left out of the experts, never filled in.")


def coverage_frame(coverage: Mapping[str, Any], target: str) -> pd.DataFrame:
    """Rows per (hardware × regime) for one target from ``coverage.json``; absent combinations are 0."""
    counts = pd.DataFrame(coverage.get("counts", []), columns=["hardware", "target", "regime", "rows"])
    part = counts[counts["target"].astype(str) == target]
    if part.empty:
        return pd.DataFrame(dtype="float64")
    table = part.pivot_table(index="hardware", columns="regime", values="rows", aggfunc="sum", fill_value=0)
    table = table.reindex(columns=plots.order_regimes(list(table.columns)), fill_value=0).sort_index()
    return table.astype("int64")


def _coverage_section(doc: _Doc, inputs: EvalInputs, img_dir: Path) -> None:
    doc.h(2, "Regime coverage per hardware", "coverage")
    cov = inputs.coverage
    if cov is None:
        doc.p("coverage.json not available: coverage tables are left out.")
        return
    targets = sorted({str(r["target"]) for r in cov["counts"]},
                     key=lambda t: (TARGETS.index(t) if t in TARGETS else len(TARGETS), t))
    for target in targets:
        table = coverage_frame(cov, target)
        label = plots.TARGET_LABELS.get(target, target)
        doc.h(3, label)
        rows = [[str(hw), *[fmt_count(v) for v in table.loc[hw]]] for hw in table.index]
        doc.table(_Table(f"coverage-{target}", ["hardware", *map(str, table.columns)], ["hardware", *map(str, table.columns)],
                         rows))
        name = f"{target}_coverage.png"
        plots.coverage_heatmap(table, img_dir / name, title=f"{label}: rows per hardware × regime")
        _img(doc, img_dir, name, f"{target} regime coverage")
    missing = cov.get("missing") or []
    doc.h(3, "Missing regimes")
    if missing:
        doc.ul([", ".join(f"{k}={v}" for k, v in m.items()) if isinstance(m, dict) else str(m) for m in missing])
    else:
        doc.p("None: every (hardware, target, regime) the evaluate stage expected has rows.")


# ----------------------------------------------------------------------------------------------- DVC plots
def write_dvc_plots(eval_dir: Path, plots_dir: Path, *, max_points: int = 2000, seed: int = 0) -> dict[str, Path]:
    """Small CSVs for ``dvc plots``: ``per_regime_mape.csv`` (target, regime, model, mape, regime_model),
    ``per_scope_mape.csv`` (target, scope, model, mape, scope_model), ``pred_vs_actual.csv`` (target, regime, y_true and one
    column per model, subsampled per target and regime) and ``gate_sweep.csv`` when a sweep exists.
    Files are rewritten completely; returns name -> path of what was written."""
    inputs = load_eval_inputs(eval_dir)
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for section, col in (("per_regime", "regime"), ("per_scope", "scope")):
        records = []
        for target in inputs.metrics:
            frame = metrics_frame(inputs.metrics, target, section)
            for g in frame.index:
                for m in frame.columns:
                    records.append({"target": target, col: str(g), "model": m, "mape": frame.loc[g, m],
                                    f"{col}_model": f"{target}:{g}:{m}"})
        path = plots_dir / f"{section}_mape.csv"
        pd.DataFrame(records, columns=["target", col, "model", "mape", f"{col}_model"]).to_csv(path, index=False)
        written[path.stem] = path
    if inputs.predictions is not None:
        pred = inputs.predictions
        keep = [c for c in ("target", "hardware", "model", "tp", "regime") if c in pred.columns]
        parts = []
        for target in sorted(set(pred["target"]), key=lambda t: (t not in TARGETS, t)):
            part, _ = _plottable(pred, target)
            if part.empty:
                continue
            models = _pred_models(part)
            part = subsample(part, max_points, seed)
            frame = part[keep + ["y_true"]].copy()
            for m in models:
                frame[m] = part[f"pred_{m}"]
            parts.append(frame)
        if parts:
            path = plots_dir / "pred_vs_actual.csv"
            table = pd.concat(parts, ignore_index=True)
            models = plots.order_models([c for c in table.columns if c not in keep and c != "y_true"])
            table[keep + ["y_true", *models]].to_csv(path, index=False)
            written[path.stem] = path
    if inputs.sweep is not None:
        path = plots_dir / "gate_sweep.csv"
        inputs.sweep.sort_values(["target", "axis", "x"], kind="stable").to_csv(path, index=False)
        written[path.stem] = path
    return written


#: The ``plots:`` stanza for dvc.yaml matching :func:`write_dvc_plots` writing to ``plots/``.
DVC_PLOTS_STANZA = """\
plots:
  - plots/per_regime_mape.csv:
      template: bar_horizontal
      x: mape
      y: regime_model
      title: Held-out MAPE per target:regime:model (%)
  - plots/pred_vs_actual.csv:
      template: scatter
      x: y_true
      y: [candidate, champion]
      title: Predicted vs measured (µs)
"""


# ----------------------------------------------------------------------------------------------- releases
def release_dir(version: str, releases_root: Path | None = None) -> Path:
    """``data/releases/<version>``; a missing release raises with the versions that do exist."""
    root = Path(releases_root) if releases_root is not None else releases_dir()
    path = root / version
    if not path.is_dir():
        have = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise ReportInputError(f"release {version!r} not found under {root}; available: {have or 'none'}")
    return path


def build_release_report(version: str, out_dir: Path | None = None, releases_root: Path | None = None,
                         **kwargs: Any) -> Path:
    """Report of a release from what it stores (``eval/``, ``gate.json``), written to ``out_dir`` (default
    ``data/reports/<version>``). A published release is immutable: the copy inside it
    (``data/releases/<version>/report/``) is written once, when the pipeline publishes it."""
    rdir = release_dir(version, releases_root)
    kwargs.setdefault("title", f"MoLE-RD release {version}")
    out = Path(out_dir) if out_dir is not None else Path("data") / "reports" / version
    return build_report(rdir, out, **kwargs)
