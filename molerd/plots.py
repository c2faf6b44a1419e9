"""Figures for the release report, drawn with matplotlib's Agg canvas and written as reproducible PNGs.

Every function takes plain tables, draws one figure and writes it to ``path``. Nothing touches pyplot's
global state (figures are built on ``matplotlib.figure.Figure`` + ``FigureCanvasAgg``), styles are reset to
matplotlib's defaults for each figure, and PNG metadata is stripped, so the same input gives the same bytes
whatever the user's matplotlibrc says and whichever thread draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import matplotlib.patches
import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

DPI = 100

#: Regimes named in the spec, drawn in this order with fixed colours; other labels follow alphabetically.
KNOWN_REGIMES = (
    "low_load",
    "normal_load",
    "high_pressure",
    "preemption",
    "prefill_dominated",
    "decode_dominated",
    "mixed_balanced",
    "saturation",
)
#: The models compared in the report, in display order, with their labels.
MODEL_LABELS = {
    "candidate": "MoLE-RD (candidate)",
    "champion": "champion (current release)",
    "blis_block": "BLIS block (trained-physics betas)",
    "blackbox": "BLIS blackbox (3 betas / 2 alphas)",
    "union_ridge": "single ridge on all features",
    "gbm": "GBM ceiling (non-linear)",
    "littles_law": "Little's law",
    "detector_learned": "MoLE-RD, learned thresholds",
    "detector_classifier": "MoLE-RD, classifier gate",
}
TARGET_LABELS = {
    "beta": "step time (beta)",
    "alpha": "queueing delay (alpha)",
}

_PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
]


def model_label(name: str) -> str:
    """Human label of a prediction column's model name (unknown names are shown as they are)."""
    return MODEL_LABELS.get(name, name)


def order_models(names: Sequence[str]) -> list[str]:
    """Known models first in the report's fixed order, then the rest alphabetically."""
    known = [m for m in MODEL_LABELS if m in names]
    return known + sorted(set(names) - set(known))


def order_regimes(names: Sequence[str]) -> list[str]:
    """Spec regimes first in their fixed order, then any other label alphabetically."""
    names = [str(n) for n in names]
    known = [r for r in KNOWN_REGIMES if r in names]
    return known + sorted(set(names) - set(known))


#: Fixed regime colours; alpha and beta regimes never share a figure, so they reuse the same four hues.
_REGIME_COLORS = {
    "low_load": "#1f77b4", "normal_load": "#2ca02c", "high_pressure": "#ff7f0e", "preemption": "#d62728",
    "prefill_dominated": "#1f77b4", "decode_dominated": "#2ca02c", "mixed_balanced": "#9467bd",
    "saturation": "#d62728",
}


def regime_colors(regimes: Sequence[str]) -> dict[str, str]:
    """A stable colour per regime: spec regimes keep their colour in every figure and every report."""
    colors: dict[str, str] = {}
    spare = [c for c in _PALETTE if c not in _REGIME_COLORS.values()]
    extra = 0
    for r in order_regimes(regimes):
        if r in _REGIME_COLORS:
            colors[r] = _REGIME_COLORS[r]
        else:
            colors[r] = spare[extra % len(spare)]
            extra += 1
    return colors


def model_colors(models: Sequence[str]) -> dict[str, str]:
    """A stable colour per model, independent of which other models are present."""
    fixed = list(MODEL_LABELS)
    out = {}
    extra = 0
    for m in order_models(models):
        if m in fixed:
            out[m] = _PALETTE[fixed.index(m)]
        else:
            out[m] = _PALETTE[(len(fixed) + extra) % len(_PALETTE)]
            extra += 1
    return out


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _fixed_margins(fig: Figure, left: float = 0.7, right: float = 0.15, bottom: float = 0.5,
                   top: float = 0.75, wspace: float = 0.4, hspace: float = 0.55) -> None:
    """Margins in inches instead of ``tight_layout`` (which draws the whole figure once more just to measure)."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h,
                        wspace=wspace, hspace=hspace)


def _plain_log_axis(axis) -> None:
    """Log axis with plain-number decade labels (1000, 1e+04) and no minor ticks: mathtext labels and the
    dozens of minor tick artists cost most of a log figure's drawing time and add nothing for µs values."""
    axis.set_major_locator(LogLocator(base=10, numticks=8))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_locator(NullLocator())


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG with no metadata (no software/version stamp), so the bytes are reproducible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    return path


class _DefaultStyle:
    """Context manager: matplotlib's default rcParams for one figure (ignores the user's matplotlibrc)."""

    def __enter__(self):
        self._ctx = matplotlib.style.context("default")
        self._ctx.__enter__()
        self._rc = matplotlib.rc_context({"font.size": 8, "axes.titlesize": 9, "legend.fontsize": 7})
        self._rc.__enter__()
        return self

    def __exit__(self, *exc):
        self._rc.__exit__(*exc)
        self._ctx.__exit__(*exc)
        return False


def bar_chart(table: pd.DataFrame, path: Path, *, title: str, ylabel: str = "MAPE (%)") -> Path:
    """Grouped bars: one group per row of ``table`` (regime or scope), one bar per column (model).

    ``table`` holds MAPE in percent; NaN cells draw no bar. A log axis is used when values span more
    than two decades so that a 5 % candidate and a 400 % blackbox are both readable.
    """
    models = list(table.columns)
    groups = [str(g) for g in table.index]
    colors = model_colors(models)
    with _DefaultStyle():
        longest = max((len(g) for g in groups), default=4)
        horizontal = len(groups) > 6 or longest > 18  # long scope names read better on the y axis
        n_bars = max(len(models), 1)
        if horizontal:
            fig = _new_figure(9, max(3.0, 0.25 * len(groups) * n_bars + 1.0))
        else:
            fig = _new_figure(max(7.0, 0.9 * len(groups) * n_bars / 3 + 4.5), 3.6)
        ax = fig.add_subplot(1, 1, 1)
        width = 0.8 / n_bars
        pos = np.arange(len(groups), dtype=float)
        vals = table.to_numpy(dtype=float, na_value=np.nan) if len(groups) else np.zeros((0, n_bars))
        finite = vals[np.isfinite(vals) & (vals > 0)]
        use_log = finite.size > 0 and finite.max() / finite.min() > 100
        for j, m in enumerate(models):
            offs = pos - 0.4 + width * (j + 0.5)
            v = np.where(np.isfinite(vals[:, j]), vals[:, j], 0.0) if len(groups) else []
            if horizontal:
                ax.barh(offs, v, height=width, color=colors[m], label=model_label(m))
            else:
                ax.bar(offs, v, width=width, color=colors[m], label=model_label(m))
        if horizontal:
            ax.set_yticks(pos, groups)
            ax.invert_yaxis()
            ax.set_xlabel(ylabel)
            if use_log:
                ax.set_xscale("log")
                _plain_log_axis(ax.xaxis)
        else:
            ax.set_xticks(pos, groups, rotation=20, ha="right")
            ax.set_ylabel(ylabel)
            if use_log:
                ax.set_yscale("log")
                _plain_log_axis(ax.yaxis)
        ax.set_title(title)
        if models:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        ax.grid(True, axis="x" if horizontal else "y", alpha=0.3)
        if horizontal:
            _fixed_margins(fig, left=0.3 + 0.065 * longest, right=1.6, bottom=0.5, top=0.35)
        else:
            _fixed_margins(fig, left=0.6, right=1.6, bottom=0.35 + 0.03 * longest, top=0.35)
        return save_figure(fig, path)


def pred_vs_actual(
    df: pd.DataFrame, models: Sequence[str], path: Path, *, title: str, unit: str = "µs"
) -> Path:
    """Log-log predicted-vs-measured scatter, one panel per model, points coloured by regime.

    ``df`` has ``y_true``, ``regime`` and ``pred_<model>`` columns, already filtered to positive values
    and subsampled by the caller. The diagonal is perfect prediction; dotted lines are ±25 %.
    """
    models = list(models)
    regimes = order_regimes(df["regime"].unique()) if len(df) else []
    colors = regime_colors(regimes)
    ncols = min(3, max(len(models), 1))
    nrows = int(np.ceil(max(len(models), 1) / ncols))
    with _DefaultStyle():
        fig = _new_figure(3.4 * ncols + 0.4, 3.2 * nrows + 0.4)
        y = df["y_true"].to_numpy(dtype=float)
        for i, m in enumerate(models):
            ax = fig.add_subplot(nrows, ncols, i + 1)
            p = df[f"pred_{m}"].to_numpy(dtype=float)
            ok = np.isfinite(p) & (p > 0)
            _scatter_by_regime(ax, y, p, ok, df["regime"].to_numpy(), colors)
            both = np.concatenate([y[ok], p[ok]]) if ok.any() else np.array([1.0, 10.0])
            lo, hi = float(both.min()) / 1.5, float(both.max()) * 1.5
            line = np.array([lo, hi])
            ax.plot(line, line, color="black", lw=0.8)
            ax.plot(line, line * 1.25, color="gray", lw=0.6, ls=":")
            ax.plot(line, line * 0.75, color="gray", lw=0.6, ls=":")
            ax.set_xscale("log")
            ax.set_yscale("log")
            _plain_log_axis(ax.xaxis)
            _plain_log_axis(ax.yaxis)
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            ax.set_xlabel(f"measured ({unit})")
            ax.set_ylabel(f"predicted ({unit})")
            ax.set_title(f"{model_label(m)} (n={int(ok.sum())})")
            if i == 0 and regimes:
                ax.legend(handles=_regime_handles(regimes, colors), loc="upper left")
        fig.suptitle(title)
        _fixed_margins(fig)
        return save_figure(fig, path)


def residuals(
    df: pd.DataFrame,
    models: Sequence[str],
    axes: Sequence[str],
    thresholds: Mapping[str, Sequence[float]],
    path: Path,
    *,
    title: str,
) -> Path:
    """Relative error of the first model against each state axis, coloured by regime, thresholds drawn.

    ``df`` has ``y_true``, ``regime``, the ``axes`` columns and ``pred_<model>``. The first model's points
    are scattered; every model gets a binned-median line so a regime-dependent bias shows up as a step.
    Thresholds are dashed vertical lines at the detector's boundaries.
    """
    models = list(models)
    regimes = order_regimes(df["regime"].unique()) if len(df) else []
    colors = regime_colors(regimes)
    mcolors = model_colors(models)
    with _DefaultStyle():
        fig = _new_figure(3.6 * max(len(axes), 1) + 0.4, 3.4)
        y = df["y_true"].to_numpy(dtype=float)
        rel = {m: df[f"pred_{m}"].to_numpy(dtype=float) / y - 1.0 for m in models}
        all_rel = np.concatenate([v[np.isfinite(v)] for v in rel.values()]) if rel else np.array([])
        if all_rel.size:
            ylo, yhi = np.percentile(all_rel, [1, 99])
            pad = 0.1 * max(yhi - ylo, 0.1)
            ylim = (float(ylo - pad), float(yhi + pad))
        else:
            ylim = (-1.0, 1.0)
        for i, axis in enumerate(axes):
            ax = fig.add_subplot(1, max(len(axes), 1), i + 1)
            x = df[axis].to_numpy(dtype=float) if axis in df else np.full(len(df), np.nan)
            if models:
                first = rel[models[0]]
                _scatter_by_regime(ax, x, first, np.isfinite(x) & np.isfinite(first), df["regime"].to_numpy(),
                                   colors, alpha=0.6)
                for m in models:
                    bx, by = _binned_median(x, rel[m])
                    if bx.size:
                        ax.plot(bx, by, color=mcolors[m], lw=1.5, label=f"median {model_label(m)}")
            for t in thresholds.get(axis, ()):
                ax.axvline(float(t), color="black", ls="--", lw=0.9)
            ax.axhline(0.0, color="gray", lw=0.6)
            if axis == "waiting_depth":
                ax.set_xscale("symlog", linthresh=1.0)
                ax.set_xlim(left=-0.5)
            ax.set_ylim(*ylim)
            ax.set_xlabel(axis)
            ax.set_ylabel("relative error (pred/measured − 1)")
            if i == 0 and (regimes or models):
                lines = [h for h in ax.get_lines() if not h.get_label().startswith("_")]
                ax.legend(handles=_regime_handles(regimes, colors) + lines, loc="best")
        fig.suptitle(title)
        _fixed_margins(fig)
        return save_figure(fig, path)


def _scatter_by_regime(ax, x: np.ndarray, y: np.ndarray, ok: np.ndarray, regime: np.ndarray,
                       colors: Mapping[str, str], alpha: float = 0.7) -> None:
    """All points in one scatter, in a fixed shuffled order, so no regime is painted over the others just
    because it was drawn last (and one artist draws much faster than one per regime)."""
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return
    idx = idx[np.random.default_rng(0).permutation(idx.size)]
    ax.scatter(x[idx], y[idx], s=8, alpha=alpha, c=[colors[str(r)] for r in regime[idx]], linewidths=0)


def _regime_handles(regimes: Sequence[str], colors: Mapping[str, str]) -> list:
    """Legend entries for the regime colours (the scatter itself is a single unlabelled artist)."""
    return [Line2D([], [], ls="", marker="o", ms=5, color=colors[r], label=r) for r in regimes]


def _binned_median(x: np.ndarray, v: np.ndarray, bins: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Median of ``v`` in equal-count bins of ``x`` (ties kept together); empty input gives empty arrays."""
    ok = np.isfinite(x) & np.isfinite(v)
    if ok.sum() < 2 * bins:
        return np.array([]), np.array([])
    xs, vs = x[ok], v[ok]
    edges = np.unique(np.quantile(xs, np.linspace(0, 1, bins + 1)))
    if edges.size < 2:
        return np.array([float(np.median(xs))]), np.array([float(np.median(vs))])
    idx = np.clip(np.searchsorted(edges, xs, side="right") - 1, 0, edges.size - 2)
    cx, cy = [], []
    for b in range(edges.size - 1):
        sel = idx == b
        if sel.any():
            cx.append(float(np.median(xs[sel])))
            cy.append(float(np.median(vs[sel])))
    return np.array(cx), np.array(cy)


def sweep_panels(
    sweep: pd.DataFrame, thresholds: Mapping[str, Mapping[str, Sequence[float]]], path: Path, *, title: str
) -> Path:
    """Prediction along each sweep (one panel per target × axis): hard gate vs soft gate, thresholds drawn.

    A hard gate shows a step where the regime switches; the soft gate should pass through it smoothly.
    ``thresholds`` maps target -> axis -> threshold values.
    """
    keys = list(sweep.groupby(["target", "axis"], sort=True).groups) if len(sweep) else []
    ncols = min(2, max(len(keys), 1))
    nrows = int(np.ceil(max(len(keys), 1) / ncols))
    with _DefaultStyle():
        fig = _new_figure(4.4 * ncols + 0.4, 3.2 * nrows + 0.4)
        for i, (target, axis) in enumerate(keys):
            ax = fig.add_subplot(nrows, ncols, i + 1)
            part = sweep[(sweep["target"] == target) & (sweep["axis"] == axis)].sort_values("x", kind="stable")
            x = part["x"].to_numpy(dtype=float)
            ax.plot(x, part["pred_hard"].to_numpy(dtype=float), color="#d62728", lw=1.4, label="hard gate")
            ax.plot(x, part["pred_soft"].to_numpy(dtype=float), color="#1f77b4", lw=1.4, ls="--", label="soft gate")
            for t in thresholds.get(str(target), {}).get(str(axis), ()):
                ax.axvline(float(t), color="black", ls=":", lw=0.9)
            ax.set_xlabel(str(axis))
            ax.set_ylabel("predicted (µs)")
            ax.set_title(f"{TARGET_LABELS.get(str(target), str(target))} along {axis}")
            ax.legend(loc="best")
            ax.grid(True, alpha=0.3)
        fig.suptitle(title)
        _fixed_margins(fig)
        return save_figure(fig, path)


def coverage_heatmap(table: pd.DataFrame, path: Path, *, title: str) -> Path:
    """Heatmap of row counts, hardware (rows) × regime (columns), each cell annotated; zero cells are red-lined."""
    with _DefaultStyle():
        nr, nc = table.shape
        fig = _new_figure(max(4.0, 0.9 * nc + 2.5), max(2.2, 0.45 * nr + 1.6))
        ax = fig.add_subplot(1, 1, 1)
        vals = table.to_numpy(dtype=float, na_value=0.0) if nr and nc else np.zeros((1, 1))
        vmax = max(float(np.log10(vals + 1.0).max()), 1.0)
        im = ax.imshow(np.log10(vals + 1.0), cmap="viridis", aspect="auto", interpolation="nearest", vmin=0.0,
                       vmax=vmax)
        for i in range(vals.shape[0]):
            for j in range(vals.shape[1]):
                v = vals[i, j]
                light = np.log10(v + 1.0) < 0.6 * vmax
                ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=7,
                        color="white" if light else "black")
                if v == 0:
                    ax.add_patch(matplotlib.patches.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False,
                                                              edgecolor="red", lw=1.5))
        ax.set_xticks(range(nc), [str(c) for c in table.columns], rotation=30, ha="right")
        ax.set_yticks(range(nr), [str(r) for r in table.index])
        fig.colorbar(im, ax=ax, label="log10(rows + 1)")
        ax.set_title(title)
        longest_col = max((len(str(c)) for c in table.columns), default=4)
        longest_row = max((len(str(r)) for r in table.index), default=4)
        _fixed_margins(fig, left=0.25 + 0.065 * longest_row, right=0.1, bottom=0.35 + 0.045 * longest_col, top=0.35)
        return save_figure(fig, path)


def gate_interval(rows: Sequence[Mapping[str, object]], path: Path, *, title: str) -> Path:
    """The bootstrap interval of MAPE(candidate) − MAPE(champion) per gate block, with zero marked.

    Each row has ``label``, ``lo``, ``hi`` and optionally ``point`` (percentage points). Left of zero
    means the candidate is better; green when the whole interval is below zero.
    """
    with _DefaultStyle():
        fig = _new_figure(6.0, 0.5 * max(len(rows), 1) + 1.4)
        ax = fig.add_subplot(1, 1, 1)
        for i, r in enumerate(rows):
            lo, hi = float(r["lo"]), float(r["hi"])
            color = "#2ca02c" if hi < 0 else ("#d62728" if lo > 0 else "#ff7f0e")
            ax.plot([lo, hi], [i, i], color=color, lw=3, solid_capstyle="butt")
            point = r.get("point")
            if point is not None and np.isfinite(float(point)):
                ax.plot([float(point)], [i], "o", color="black", ms=5)
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_yticks(range(len(rows)), [str(r["label"]) for r in rows])
        ax.set_ylim(-0.7, max(len(rows), 1) - 0.3)
        ax.invert_yaxis()
        ax.set_xlabel("MAPE(candidate) − MAPE(champion), percentage points (bootstrap CI)")
        ax.set_title(title)
        ax.grid(True, axis="x", alpha=0.3)
        longest = max((len(str(r["label"])) for r in rows), default=4)
        _fixed_margins(fig, left=0.25 + 0.065 * longest, right=0.2, bottom=0.5, top=0.35)
        return save_figure(fig, path)
