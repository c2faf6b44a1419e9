"""Bring rare regimes up in the TRAINING rows (reviewer B: "rare regimes may have insufficient data").

Saturation and preemption steps are a few percent of any realistic trace, so a mixture fitted on raw
counts spends almost all of its fit on the easy regimes. Two remedies, both applied to the training
frame only (the function never sees held-out rows, so the held-out MAPE stays honest):

* ``method="weights"`` -- every row of a thin regime gets the sample weight ``target / rows``,
  capped at ``max_weight`` (inverse frequency relative to the target, never below 1, so common
  regimes keep weight 1). Multiply it with any other weight (e.g. the 1/y² MAPE weight) before fitting.
* ``method="resample"`` -- rows of a thin regime are drawn with replacement from that regime's own
  training rows until it reaches the target, at most ``max_weight`` × its original size.

The target of a regime is ``max(min_rows, target_share × rows in its group)``. Regimes with zero rows
cannot be brought up by either method; they are reported as ``missing`` (see ``molerd.coverage`` for
the profiling run that would fill them). Same frame + params + seed → identical output.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "RebalanceError",
    "RebalanceReport",
    "RebalanceResult",
    "rebalance",
    "regime_counts",
]

METHODS = ("weights", "resample", "none")


class RebalanceError(ValueError):
    """Bad input to a rebalancing function (unknown regime labels, bad params, test rows passed in)."""


# --------------------------------------------------------------------------------------------- helpers
def _as_tuple(by: str | Sequence[str] | None) -> tuple[str, ...]:
    if by is None:
        return ()
    if isinstance(by, str):
        return (by,)
    return tuple(by)


def _require_columns(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise RebalanceError(
            f"{what}: column(s) {missing} not found; the frame has {list(df.columns)}. "
            "Label regimes first (molerd.regimes) or pass the right regime_col/by."
        )


def _require_group_values(df: pd.DataFrame, by: Sequence[str], what: str) -> None:
    """Group columns must be filled: a row without hardware would belong to no group and be lost."""
    for c in by:
        na = df[c].isna()
        if na.any():
            rows = list(df.index[na.to_numpy()][:5])
            raise RebalanceError(f"{what}: {int(na.sum())} row(s) have no value in group column {c!r} "
                                 f"(first index labels: {rows}); fill or drop them before grouping.")


def _resolve_regimes(df: pd.DataFrame, regime_col: str, regimes: Sequence[str] | None, what: str) -> list[str]:
    """The closed set of regime labels; labels outside it (or missing labels) are an error, never dropped."""
    labels = df[regime_col]
    if labels.isna().any():
        rows = list(df.index[labels.isna().to_numpy()][:5])
        raise RebalanceError(
            f"{what}: {int(labels.isna().sum())} row(s) have no regime label in column {regime_col!r} "
            f"(first index labels: {rows}). Every training row must be labelled before rebalancing."
        )
    present = sorted(pd.unique(labels.astype(str)))
    if regimes is None:
        return present
    allowed = list(dict.fromkeys(str(r) for r in regimes))
    unknown = [r for r in present if r not in allowed]
    if unknown:
        n_bad = int(labels.astype(str).isin(unknown).sum())
        raise RebalanceError(
            f"{what}: {n_bad} row(s) carry regime label(s) {unknown} in column {regime_col!r}, "
            f"which are not in the allowed set {allowed}. Fix the labelling or add the regime to the list."
        )
    return allowed


def _num(x: float | None) -> float | None:
    """JSON-safe float: non-finite values become None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v).replace("|", "\\|")

    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------- counts
def regime_counts(
    df: pd.DataFrame,
    regime_col: str = "regime",
    by: str | Sequence[str] | None = ("hardware",),
    regimes: Sequence[str] | None = None,
    count_col: str = "rows",
) -> pd.DataFrame:
    """Rows per regime within each group, including zero rows for regimes a group lacks.

    Parameters
    ----------
    df : DataFrame, shape (n_rows, ...)
        Labelled rows (steps or requests); must hold ``regime_col`` and the ``by`` columns.
    regime_col : str, default "regime"
        Column with the regime label of each row.
    by : str or sequence of str or None, default ("hardware",)
        Grouping columns (e.g. hardware, or hardware+model+tp). ``None``/``()`` counts the whole frame.
    regimes : sequence of str or None
        The closed set of regime names. Regimes without rows get a 0 row; labels outside the set
        raise :class:`RebalanceError`. ``None`` uses the labels present.
    count_col : str, default "rows"
        Name of the count column.

    Returns
    -------
    DataFrame
        Long table ``[*by, regime_col, count_col]``, groups sorted, regimes in the given order; one
        row per (group, regime). Groups are those present in ``df``.
    """
    by_t = _as_tuple(by)
    _require_columns(df, [regime_col, *by_t], "regime_counts")
    _require_group_values(df, by_t, "regime_counts")
    names = _resolve_regimes(df, regime_col, regimes, "regime_counts")
    labels = df[regime_col].astype(str)
    if by_t:
        grouped = df.assign(**{regime_col: labels}).groupby([*by_t, regime_col], sort=True, dropna=False).size()
        groups = df[list(by_t)].drop_duplicates().sort_values(list(by_t)).itertuples(index=False, name=None)
        groups = list(groups)
    else:
        grouped = labels.value_counts()
        groups = [()]
    records = []
    for g in groups:
        for r in names:
            key = (*g, r) if by_t else r
            n = int(grouped.get(key, 0))
            records.append({**dict(zip(by_t, g)), regime_col: r, count_col: n})
    return pd.DataFrame.from_records(records, columns=[*by_t, regime_col, count_col])


# --------------------------------------------------------------------------------------------- report
@dataclass
class RebalanceReport:
    """What :func:`rebalance` did, per (group, regime): rows before/after, target, weight, status."""

    method: str
    params: dict[str, Any]
    entries: list[dict[str, Any]] = field(default_factory=list)
    rows_in: int = 0
    rows_out: int = 0

    @property
    def missing(self) -> list[dict[str, Any]]:
        """Entries of regimes that had no training rows at all (nothing to up-weight or resample)."""
        return [e for e in self.entries if e["status"] == "missing"]

    @property
    def capped(self) -> list[dict[str, Any]]:
        """Entries that stayed below target because of ``max_weight``."""
        return [e for e in self.entries if e["status"] == "capped"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "params": dict(self.params),
            "rows_in": int(self.rows_in),
            "rows_out": int(self.rows_out),
            "entries": [{k: (_num(v) if isinstance(v, float) else v) for k, v in e.items()} for e in self.entries],
            "missing": [{**e["group"], "regime": e["regime"]} for e in self.missing],
            "capped": [{**e["group"], "regime": e["regime"]} for e in self.capped],
        }

    def to_markdown(self) -> str:
        lines = [
            f"### Rebalancing ({self.method})",
            "",
            f"Rows in: {self.rows_in}, rows out: {self.rows_out}. Params: "
            + ", ".join(f"`{k}={v}`" for k, v in self.params.items()),
            "",
        ]
        rows = []
        for e in self.entries:
            grp = ", ".join(f"{k}={v}" for k, v in e["group"].items()) or "all"
            rows.append(
                [grp, e["regime"], e["rows_before"], e["rows_after"], e["target_rows"], e["weight"],
                 e["effective_rows"], e["status"]]
            )
        lines.append(
            _md_table(["group", "regime", "rows before", "rows after", "target", "weight", "effective rows", "status"], rows)
        )
        if self.missing:
            lines += ["", "**No training rows** (cannot be rebalanced; see the coverage report): "
                      + "; ".join(f"{', '.join(map(str, e['group'].values())) or 'all'}/{e['regime']}" for e in self.missing)]
        if self.capped:
            lines += ["", f"**Capped at max_weight={self.params.get('max_weight')}** (still below target): "
                      + "; ".join(f"{', '.join(map(str, e['group'].values())) or 'all'}/{e['regime']}" for e in self.capped)]
        return "\n".join(lines) + "\n"


@dataclass
class RebalanceResult:
    """Output of :func:`rebalance`. Unpacks as ``frame, sample_weight = rebalance(...)``.

    Attributes
    ----------
    frame : DataFrame, shape (n_out, n_columns)
        Training rows (originals first, in input order, then resampled copies); fresh RangeIndex.
    sample_weight : ndarray of float, shape (n_out,)
        Weight per output row (1.0 for resampled/"none" output).
    source_row : ndarray of int, shape (n_out,)
        Position in the input frame each output row was copied from.
    report : RebalanceReport
    """

    frame: pd.DataFrame
    sample_weight: np.ndarray
    source_row: np.ndarray
    report: RebalanceReport

    def __iter__(self) -> Iterator[Any]:
        yield self.frame
        yield self.sample_weight


# --------------------------------------------------------------------------------------------- rebalance
def _check_params(method: str, target_share: float | None, min_rows: int | None, max_weight: float) -> None:
    if method not in METHODS:
        raise RebalanceError(f"rebalance: method must be one of {list(METHODS)}. Got {method!r} instead.")
    if target_share is not None and not (0.0 <= float(target_share) < 1.0):
        raise RebalanceError(f"rebalance: target_share must be in [0, 1). Got {target_share!r} instead.")
    if min_rows is not None and int(min_rows) < 0:
        raise RebalanceError(f"rebalance: min_rows must be >= 0. Got {min_rows!r} instead.")
    if not (float(max_weight) >= 1.0) or not math.isfinite(float(max_weight)):
        raise RebalanceError(f"rebalance: max_weight must be a finite number >= 1. Got {max_weight!r} instead.")
    if method != "none" and target_share is None and min_rows is None:
        raise RebalanceError(
            f"rebalance: method={method!r} needs a target: pass target_share (e.g. 0.05) and/or min_rows (e.g. 200)."
        )


def rebalance(
    train_df: pd.DataFrame,
    regime_col: str = "regime",
    *,
    method: str = "weights",
    target_share: float | None = None,
    min_rows: int | None = None,
    max_weight: float = 10.0,
    seed: int = 0,
    by: str | Sequence[str] | None = None,
    regimes: Sequence[str] | None = None,
    split_col: str | None = None,
    train_label: str = "train",
) -> RebalanceResult:
    """Up-weight or resample thin regimes of a TRAINING frame.

    Parameters
    ----------
    train_df : DataFrame, shape (n_rows, ...)
        Training rows only (never pass held-out rows). Must hold ``regime_col`` (and ``by`` columns).
    regime_col : str, default "regime"
        Regime label column.
    method : {"weights", "resample", "none"}, default "weights"
        ``weights``: sample weight ``clip(target/rows, 1, max_weight)`` per regime;
        ``resample``: draw ``min(target, max_weight*rows) - rows`` extra rows with replacement from the
        regime's own rows; ``none``: unchanged rows, weight 1 (still reports counts).
    target_share : float in [0, 1) or None
        Each regime should hold at least this share of its group's rows.
    min_rows : int >= 0 or None
        Each regime should hold at least this many rows (effective rows for weights).
        The target is the larger of the two; at least one is required unless ``method="none"``.
    max_weight : float >= 1, default 10
        Cap on the weight (or on the growth factor when resampling): one row never counts as more than
        ``max_weight`` rows, so a regime with 3 rows cannot dominate the fit.
    seed : int, default 0
        Seed of the local ``np.random.default_rng`` (resampling only).
    by : str or sequence of str or None
        Rebalance within each group (e.g. "hardware"); ``None`` treats the frame as one group.
    regimes : sequence of str or None
        Closed set of regime names (unlisted labels raise; listed ones without rows are reported missing).
    split_col : str or None
        If given, every row must have ``split_col == train_label``; anything else raises (leakage guard).

    Returns
    -------
    RebalanceResult
        ``frame``, ``sample_weight``, ``source_row`` and ``report``; unpacks as ``(frame, sample_weight)``.
    """
    _check_params(method, target_share, min_rows, max_weight)
    by_t = _as_tuple(by)
    _require_columns(train_df, [regime_col, *by_t], "rebalance")
    _require_group_values(train_df, by_t, "rebalance")
    if split_col is not None:
        _require_columns(train_df, [split_col], "rebalance")
        bad = train_df[split_col].astype(str) != str(train_label)
        if bad.any():
            raise RebalanceError(
                f"rebalance: {int(bad.sum())} row(s) have {split_col}!={train_label!r} "
                f"(values {sorted(pd.unique(train_df.loc[bad.to_numpy(), split_col].astype(str)))[:5]}). "
                "Rebalancing must only see training rows: split first, then pass the training frame."
            )
    names = _resolve_regimes(train_df, regime_col, regimes, "rebalance")
    n = len(train_df)
    labels = train_df[regime_col].astype(str).to_numpy()
    if by_t:
        group_keys = pd.MultiIndex.from_frame(train_df[list(by_t)]) if len(by_t) > 1 else pd.Index(train_df[by_t[0]])
        codes, uniques = pd.factorize(group_keys, sort=True)
        group_list = [((u,) if len(by_t) == 1 else tuple(u)) for u in uniques]
    else:
        codes = np.zeros(n, dtype=np.int64)
        group_list = [()]

    params = {"target_share": target_share, "min_rows": min_rows, "max_weight": float(max_weight),
              "seed": int(seed), "by": list(by_t), "regime_col": regime_col}
    report = RebalanceReport(method=method, params=params, rows_in=n)
    rng = np.random.default_rng(seed)
    weights = np.ones(n, dtype=np.float64)
    extra: list[np.ndarray] = []

    for gi, g in enumerate(group_list):
        in_group = codes == gi
        g_rows = int(in_group.sum())
        target = max(float(min_rows or 0), float(target_share or 0.0) * g_rows)
        target_rows = int(math.ceil(target)) if method != "none" else None
        for r in names:
            pos = np.flatnonzero(in_group & (labels == r))
            k = len(pos)
            entry: dict[str, Any] = {"group": dict(zip(by_t, (v.item() if hasattr(v, "item") else v for v in g))),
                                     "regime": r, "rows_before": k, "target_rows": target_rows}
            if k == 0:
                entry.update(rows_after=0, weight=None, effective_rows=0.0, status="missing")
            elif method == "none" or k >= target:
                entry.update(rows_after=k, weight=1.0, effective_rows=float(k), status="ok")
            elif method == "weights":
                w = min(target / k, float(max_weight))
                weights[pos] = w
                status = "capped" if w * k < target - 1e-9 else "upweighted"
                entry.update(rows_after=k, weight=float(w), effective_rows=float(w * k), status=status)
            else:  # resample
                want = min(target_rows, int(math.floor(max_weight * k)))
                n_extra = max(want - k, 0)
                if n_extra:
                    extra.append(pos[rng.integers(0, k, size=n_extra)])
                status = "capped" if k + n_extra < target_rows else "resampled"
                entry.update(rows_after=k + n_extra, weight=1.0, effective_rows=float(k + n_extra), status=status)
            report.entries.append(entry)

    source = np.concatenate([np.arange(n, dtype=np.int64), *extra]) if extra else np.arange(n, dtype=np.int64)
    frame = train_df.iloc[source].reset_index(drop=True)
    sample_weight = np.concatenate([weights, np.ones(len(source) - n)]) if len(source) > n else weights
    report.rows_out = len(frame)
    for e in report.missing:
        log.warning("rebalance: regime %r has no training rows in group %s; it cannot be rebalanced",
                    e["regime"], e["group"] or "all")
    for e in report.capped:
        log.info("rebalance: regime %r in group %s capped at max_weight=%s (%s effective rows < target %s)",
                 e["regime"], e["group"] or "all", max_weight, e["effective_rows"], e["target_rows"])
    return RebalanceResult(frame=frame, sample_weight=sample_weight, source_row=source, report=report)
