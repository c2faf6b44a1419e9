"""Regime coverage report: which regimes lack data on which hardware, and which profiling run fills them.

Reviewer B: "rare regimes (saturation, preemption) may have insufficient training data ... add synthetic data
augmentation by intentionally inducing saturation/preemption during profiling". Rebalancing (``molerd.rebalance``)
can only stretch rows that exist; this report turns the gaps into concrete profiling recipes: the load level
(request rate as a multiple of the saturation rate λ_sat, the rate at which the waiting queue starts growing
without bound), prompt/output lengths, the KV-cache pressure to aim for and the engine settings that get there.
The recipes are written from the regime THRESHOLDS passed in, and respect the detectors' rule ORDER
(alpha: low_load → high_pressure → preemption → normal_load; beta: prefill → decode → saturation → mixed),
because a run that hits a higher-priority rule first lands in a different regime.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import pandas as pd

from molerd.features import ALPHA_REGIMES, BETA_REGIMES

log = logging.getLogger(__name__)

__all__ = [
    "ALPHA_REGIMES",
    "BETA_REGIMES",
    "CoverageError",
    "CoverageReport",
    "RegimeThresholds",
    "coverage_report",
    "profiling_recipe",
]



class CoverageError(ValueError):
    """Bad input to the coverage report (missing count columns, bad min_rows or thresholds)."""


@dataclass(frozen=True)
class RegimeThresholds:
    """The rule thresholds the regimes are defined by (seed values by default; params.yaml ``label:``).

    Attributes
    ----------
    low_load_max_queue_depth : float, default 2
        alpha low_load when waiting queue depth ≤ this (requests).
    high_pressure_kv : float, default 0.85
        alpha high_pressure when KV usage ratio > this.
    preemption_min_recent : float, default 0
        alpha preemption when recent preemptions > this.
    prefill_ratio_high : float, default 0.7
        beta prefill_dominated when prefill/(prefill+decode) tokens > this.
    prefill_ratio_low : float, default 0.3
        beta decode_dominated when the prefill ratio < this.
    saturation_kv : float, default 0.9
        beta saturation when KV usage ratio > this (and the prefill ratio is in the middle band).
    """

    low_load_max_queue_depth: float = 2
    high_pressure_kv: float = 0.85
    preemption_min_recent: float = 0
    prefill_ratio_high: float = 0.7
    prefill_ratio_low: float = 0.3
    saturation_kv: float = 0.9

    @classmethod
    def from_mapping(cls, params: Mapping[str, Any] | None) -> RegimeThresholds:
        """Build from a flat mapping or from the params.yaml ``label`` shape ``{"alpha": {...}, "beta": {...}}``.

        Keys of the ``alpha``/``beta`` sub-sections must be known threshold names; other top-level
        keys (e.g. ``test_fraction``) are not thresholds and are ignored.
        """
        if params is None:
            return cls()
        known = {f.name for f in fields(cls)}
        flat: dict[str, Any] = {k: v for k, v in params.items() if k in known}
        for section in ("alpha", "beta"):
            sub = params.get(section)
            if sub is None:
                continue
            unknown = sorted(set(sub) - known)
            if unknown:
                raise CoverageError(f"thresholds: unknown key(s) {unknown} in section {section!r}; "
                                    f"allowed: {sorted(known)}.")
            flat.update(sub)
        t = cls(**{k: float(v) for k, v in flat.items()})
        t.validate()
        return t

    def validate(self) -> None:
        for name in ("high_pressure_kv", "prefill_ratio_high", "prefill_ratio_low", "saturation_kv"):
            v = getattr(self, name)
            if not (0.0 <= v <= 1.0):
                raise CoverageError(f"thresholds: {name} must be in [0, 1]. Got {v!r} instead.")
        if not self.prefill_ratio_low < self.prefill_ratio_high:
            raise CoverageError(f"thresholds: prefill_ratio_low ({self.prefill_ratio_low}) must be < "
                                f"prefill_ratio_high ({self.prefill_ratio_high}).")
        if self.low_load_max_queue_depth < 0 or self.preemption_min_recent < 0:
            raise CoverageError("thresholds: low_load_max_queue_depth and preemption_min_recent must be >= 0.")

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def _fmt(x: float) -> str:
    return f"{x:g}"


def profiling_recipe(regime: str, t: RegimeThresholds | None = None) -> dict[str, Any] | None:
    """A concrete profiling run that produces rows of ``regime`` under thresholds ``t``; None if unknown.

    Returns a dict with ``family`` (alpha rows are requests, beta rows are steps), ``aim`` (the state to
    reach), ``load_x_saturation`` [lo, hi] (request rate / λ_sat), ``arrival`` pattern, ``prompt_tokens``
    and ``output_tokens`` ranges, ``kv_usage_target`` [lo, hi], ``engine`` setting hints, ``expected_yield``
    (rough share of the run's rows that land in the regime) and ``how`` (one sentence for humans).
    """
    t = t or RegimeThresholds()
    q, hk, pm = t.low_load_max_queue_depth, t.high_pressure_kv, t.preemption_min_recent
    ph, pl, sk = t.prefill_ratio_high, t.prefill_ratio_low, t.saturation_kv
    mid = (pl + ph) / 2
    r: dict[str, dict[str, Any]] = {
        "low_load": {
            "family": "alpha",
            "aim": f"waiting queue ≤ {_fmt(q)} requests when a request is queued",
            "load_x_saturation": [0.1, 0.4], "arrival": "poisson",
            "prompt_tokens": [128, 2048], "output_tokens": [32, 256], "kv_usage_target": [0.0, 0.5],
            "engine": {"enable_prefix_caching": "run once on and once off (varies the prefix-cache miss ratio)"},
            "expected_yield": 0.9,
            "how": f"Poisson arrivals at 0.1–0.4× λ_sat, so the queue rarely exceeds {_fmt(q)}; spread prompt "
                   "lengths 128–2048 to fit the tokenisation term.",
        },
        "normal_load": {
            "family": "alpha",
            "aim": f"queue > {_fmt(q)}, KV usage ≤ {_fmt(hk)}, no recent preemptions",
            "load_x_saturation": [0.8, 1.05], "arrival": "poisson",
            "prompt_tokens": [256, 1024], "output_tokens": [64, 256],
            "kv_usage_target": [0.3, round(max(hk - 0.1, 0.0), 3)],
            "engine": {"num_gpu_blocks": "default (ample KV so the queue, not memory, limits admission)"},
            "expected_yield": 0.6,
            "how": f"Poisson arrivals just below to just above λ_sat (0.8–1.05×) with short/medium requests so a queue "
                   f"of more than {_fmt(q)} builds while KV stays under {_fmt(hk)}.",
        },
        "high_pressure": {
            "family": "alpha",
            "aim": f"queue > {_fmt(q)} and KV usage > {_fmt(hk)} when requests are queued",
            "load_x_saturation": [1.1, 1.5], "arrival": "poisson",
            "prompt_tokens": [2048, 8192], "output_tokens": [512, 2048],
            "kv_usage_target": [round(hk + 0.02, 3), 0.99],
            "engine": {"num_gpu_blocks": "lower it (e.g. gpu_memory_utilization −0.1) so long contexts fill the cache",
                       "max_num_seqs": "raise it so admission is limited by KV, not by the sequence cap"},
            "expected_yield": 0.5,
            "how": f"Overload at 1.1–1.5× λ_sat with long prompts and outputs so KV usage stays above {_fmt(hk)} "
                   "while requests keep arriving (checked before preemption: these rows are high_pressure even if "
                   "preemptions occur).",
        },
        "preemption": {
            "family": "alpha",
            "aim": f"queue > {_fmt(q)}, KV usage ≤ {_fmt(hk)}, recent preemptions > {_fmt(pm)}",
            "load_x_saturation": [1.2, 2.0], "arrival": "bursty (on/off: 10 s bursts at 2× λ_sat, 10 s at 0.5×)",
            "prompt_tokens": [512, 2048], "output_tokens": [1024, 4096],
            "kv_usage_target": [0.5, round(hk, 3)],
            "engine": {"num_gpu_blocks": "reduce it (e.g. a third of default) so growing decodes force preemptions",
                       "preemption_mode": "recompute and swap (one run each)"},
            "expected_yield": 0.25,
            "how": f"Bursts of long-output requests over a reduced KV cache force preemptions; the requests queued "
                   f"just after a burst, when KV has dropped back under {_fmt(hk)} but preemptions are recent, "
                   "land here (high_pressure is checked first).",
        },
        "prefill_dominated": {
            "family": "beta",
            "aim": f"steps with prefill ratio > {_fmt(ph)}",
            "load_x_saturation": [0.2, 0.6], "arrival": "poisson",
            "prompt_tokens": [2048, 8192], "output_tokens": [1, 16], "kv_usage_target": [0.0, 0.6],
            "engine": {"max_num_batched_tokens": "sweep 2048/8192/16384 (chunk size sets prefill tokens per step)"},
            "expected_yield": 0.7,
            "how": "Long prompts with very short outputs at moderate load: most steps are (chunked) prefills.",
        },
        "decode_dominated": {
            "family": "beta",
            "aim": f"steps with prefill ratio < {_fmt(pl)}",
            "load_x_saturation": [0.5, 0.9], "arrival": "poisson",
            "prompt_tokens": [32, 256], "output_tokens": [512, 2048], "kv_usage_target": [0.1, 0.7],
            "engine": {"max_num_seqs": "sweep 32/128/256 to vary the decode batch size"},
            "expected_yield": 0.85,
            "how": "Short prompts with long outputs at high concurrency: steps are full of decodes.",
        },
        "mixed_balanced": {
            "family": "beta",
            "aim": f"steps with prefill ratio in [{_fmt(pl)}, {_fmt(ph)}] and KV usage ≤ {_fmt(sk)}",
            "load_x_saturation": [0.8, 1.0], "arrival": "poisson",
            "prompt_tokens": [512, 2048], "output_tokens": [32, 128],
            "kv_usage_target": [0.3, round(max(sk - 0.1, 0.0), 3)],
            "engine": {"max_num_batched_tokens": f"about {_fmt(round(1 / (1 - mid), 2))}× max_num_seqs so a prefill chunk "
                                                 f"and the running decodes share each step near ratio {_fmt(mid)}",
                       "enable_chunked_prefill": True},
            "expected_yield": 0.35,
            "how": "Chunked prefill near saturation with prompt ≈ 4–16× output: new prompts are chunked into steps "
                   "that also carry the running decodes.",
        },
        "saturation": {
            "family": "beta",
            "aim": f"steps with prefill ratio in [{_fmt(pl)}, {_fmt(ph)}] and KV usage > {_fmt(sk)}",
            "load_x_saturation": [1.2, 1.6], "arrival": "poisson",
            "prompt_tokens": [1024, 4096], "output_tokens": [128, 512],
            "kv_usage_target": [round(sk + 0.02, 3), 1.0],
            "engine": {"num_gpu_blocks": "lower it so the cache stays above the saturation threshold",
                       "max_num_batched_tokens": f"about {_fmt(round(1 / (1 - mid), 2))}× max_num_seqs (keeps steps mixed)",
                       "enable_chunked_prefill": True},
            "expected_yield": 0.3,
            "how": f"The mixed_balanced workload pushed into overload with longer contexts on a smaller KV cache, so "
                   f"steps stay mixed while KV usage exceeds {_fmt(sk)} (prefill/decode-dominated steps are "
                   "classified first, so the mix matters as much as the pressure).",
        },
    }
    return r.get(regime)


@dataclass
class CoverageReport:
    """Per (group, regime) row counts against ``min_rows``, with recipes for the gaps."""

    min_rows: dict[str, int] | int
    thresholds: RegimeThresholds
    entries: list[dict[str, Any]] = field(default_factory=list)
    by: list[str] = field(default_factory=list)

    @property
    def lacking(self) -> list[dict[str, Any]]:
        """Entries below their ``min_rows`` (status ``empty`` or ``thin``)."""
        return [e for e in self.entries if e["status"] != "ok"]

    @property
    def complete(self) -> bool:
        return not self.lacking

    def to_dict(self) -> dict[str, Any]:
        """``counts`` and ``missing`` follow the release report's ``coverage.json`` contract (``target`` = the
        regime family, alpha or beta); ``recipes`` holds the full profiling recipe per gap."""
        def flat(e: dict[str, Any]) -> dict[str, Any]:
            return {**e["group"], "target": e["family"], "regime": e["regime"], "rows": e["rows"],
                    "min_rows": e["min_rows"], "status": e["status"]}

        return {
            "complete": self.complete, "by": list(self.by), "min_rows": self.min_rows,
            "thresholds": self.thresholds.to_dict(),
            "counts": [flat(e) for e in self.entries],
            "missing": [{**flat(e), "missing_rows": e["missing_rows"], "suggested_rows": e["suggested_rows"],
                         "advice": e["recipe"]["how"] if e["recipe"] else "no recipe known for this regime"}
                        for e in self.lacking],
            "recipes": [{**e["group"], "regime": e["regime"], **(e["recipe"] or {})} for e in self.lacking],
        }

    def to_markdown(self) -> str:
        lines = ["### Regime coverage", ""]
        if self.complete:
            lines.append("Every regime of every group has enough rows.")
        else:
            lines.append(f"{len(self.lacking)} (group, regime) pair(s) below min_rows.")
        lines += ["", "| group | regime | family | rows | min rows | status |", "|---|---|---|---|---|---|"]
        for e in self.entries:
            grp = ", ".join(f"{k}={v}" for k, v in e["group"].items()) or "all"
            lines.append(f"| {grp} | {e['regime']} | {e['family'] or '?'} | {e['rows']} | {e['min_rows']} | {e['status']} |")
        for e in self.lacking:
            grp = ", ".join(f"{k}={v}" for k, v in e["group"].items()) or "all"
            rec = e["recipe"]
            lines += ["", f"#### {grp} / {e['regime']}: {e['rows']} rows, need {e['missing_rows']} more"]
            if rec is None:
                lines.append("No profiling recipe is known for this regime; profile a workload that reaches it.")
                continue
            unit = "requests" if rec["family"] == "alpha" else "steps"
            lines += [
                f"- aim: {rec['aim']}",
                f"- load: {rec['load_x_saturation'][0]}–{rec['load_x_saturation'][1]}× saturation rate, {rec['arrival']} arrivals",
                f"- prompt tokens {rec['prompt_tokens'][0]}–{rec['prompt_tokens'][1]}, output tokens "
                f"{rec['output_tokens'][0]}–{rec['output_tokens'][1]}",
                f"- KV usage target {rec['kv_usage_target'][0]}–{rec['kv_usage_target'][1]}",
                "- engine: " + "; ".join(f"{k}: {v}" for k, v in rec["engine"].items()),
                f"- record about {e['suggested_rows']} {unit} (expected yield ~{rec['expected_yield']:.0%})",
                f"- {rec['how']}",
            ]
        return "\n".join(lines) + "\n"


def coverage_report(
    counts: pd.DataFrame,
    min_rows: int | Mapping[str, int] = 200,
    thresholds: RegimeThresholds | Mapping[str, Any] | None = None,
    *,
    regime_col: str = "regime",
    count_col: str = "rows",
    by: str | Sequence[str] | None = ("hardware",),
    regimes: Sequence[str] | None = None,
) -> CoverageReport:
    """Say which regimes per group lack data and what profiling run would fill each gap.

    Parameters
    ----------
    counts : DataFrame
        Long table ``[*by, regime_col, count_col]`` as returned by :func:`molerd.rebalance.regime_counts`.
    min_rows : int or mapping of regime to int, default 200
        Rows a regime needs (seed: ~2,000–3,000 per regime for a production fit).
    thresholds : RegimeThresholds or mapping, optional
        The regime thresholds in force (params.yaml ``label`` section shape is accepted).
    regime_col, count_col : str
        Column names in ``counts``.
    by : str or sequence of str or None, default ("hardware",)
        Group columns in ``counts``.
    regimes : sequence of str, optional
        Regimes that every group must cover; ones absent from ``counts`` count as 0 rows. Default: the
        regimes in ``counts``.

    Returns
    -------
    CoverageReport
    """
    t = thresholds if isinstance(thresholds, RegimeThresholds) else RegimeThresholds.from_mapping(thresholds)
    t.validate()
    by_t = () if by is None else ((by,) if isinstance(by, str) else tuple(by))
    missing_cols = [c for c in (*by_t, regime_col, count_col) if c not in counts.columns]
    if missing_cols:
        raise CoverageError(f"coverage_report: counts lacks column(s) {missing_cols}; it has {list(counts.columns)}. "
                            "Build it with molerd.rebalance.regime_counts.")
    cnt = pd.to_numeric(counts[count_col], errors="coerce")
    if cnt.isna().any() or (cnt < 0).any():
        bad = counts.index[(cnt.isna() | (cnt < 0)).to_numpy()][:5].tolist()
        raise CoverageError(f"coverage_report: column {count_col!r} must hold counts >= 0; bad rows {bad}.")
    if isinstance(min_rows, Mapping):
        mr = {str(k): int(v) for k, v in min_rows.items()}
        if any(v < 0 for v in mr.values()):
            raise CoverageError(f"coverage_report: min_rows values must be >= 0. Got {mr!r} instead.")
    elif int(min_rows) < 0:
        raise CoverageError(f"coverage_report: min_rows must be >= 0. Got {min_rows!r} instead.")

    names = list(dict.fromkeys(str(r) for r in regimes)) if regimes is not None else \
        list(dict.fromkeys(counts[regime_col].astype(str)))
    summed = counts.assign(_n=cnt.astype("int64"), _r=counts[regime_col].astype(str)) \
        .groupby([*by_t, "_r"], sort=True)["_n"].sum()
    groups = list(counts[list(by_t)].drop_duplicates().sort_values(list(by_t)).itertuples(index=False, name=None)) \
        if by_t else [()]
    report = CoverageReport(min_rows=mr if isinstance(min_rows, Mapping) else int(min_rows), thresholds=t, by=list(by_t))
    for g in groups:
        for r in names:
            key = (*g, r) if by_t else r
            n = int(summed.get(key, 0))
            need = mr.get(r, 0) if isinstance(min_rows, Mapping) else int(min_rows)
            rec = profiling_recipe(r, t)
            family = rec["family"] if rec else ("alpha" if r in ALPHA_REGIMES else "beta" if r in BETA_REGIMES else None)
            short = max(need - n, 0)
            status = "ok" if short == 0 else ("empty" if n == 0 else "thin")
            entry = {"group": dict(zip(by_t, (v.item() if hasattr(v, "item") else v for v in g))), "regime": r,
                     "family": family, "rows": n, "min_rows": need, "missing_rows": short, "status": status,
                     "recipe": rec if status != "ok" else None,
                     "suggested_rows": int(math.ceil(short / rec["expected_yield"])) if (rec and short) else None}
            report.entries.append(entry)
            if status != "ok":
                log.info("coverage: %s/%s has %d rows (< %d)", entry["group"] or "all", r, n, need)
    return report
