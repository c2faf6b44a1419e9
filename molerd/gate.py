"""The promotion gate: a candidate release replaces the champion only if it is measurably better.

Both models are scored on the SAME held-out rows, by MAPE (the metric BLIS users care about). A candidate
is promoted only if all of these hold:

1. ``overall``   -- its overall MAPE is lower than the champion's by at least ``min_improvement``
   (relative: 0.02 means 2 % lower MAPE);
2. ``bootstrap`` -- the win survives a paired bootstrap: rows (or whole groups, e.g. traces/runs, when
   ``groups`` is given) are resampled with the same indices for both models, and the candidate's MAPE is
   lower in at least ``bootstrap_confidence`` of the resamples;
3. ``regimes``   -- no regime with at least ``min_regime_rows`` held-out rows gets worse by more than
   ``regime_tolerance`` (relative MAPE increase), so an overall win cannot hide a broken tail regime;
4. ``finite``    -- the candidate produces a finite prediction for every row.

With no champion (first release) the candidate is promoted if its predictions are finite. Several gate
reports (beta and alpha, per hardware) are combined by :func:`combine_gate_reports`: promote only if every
required part promotes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from molerd import metrics

log = logging.getLogger(__name__)

__all__ = ["CombinedGateDecision", "GateError", "GateReport", "combine_gate_reports", "gate_decision", "mape"]

PROMOTE = "promote"
REJECT = "reject"
# Rows gathered per bootstrap chunk: bounds memory (~8 bytes × this × 3) independently of n and B.
_CHUNK_CELLS = 4_000_000


class GateError(ValueError):
    """Bad input to the gate (mismatched lengths, non-positive targets, bad parameters)."""


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _pct(x: float | None) -> str:
    """A relative quantity (fraction) as percent."""
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.2f} %"


def _pp(x: float | None) -> str:
    """A MAPE (already in percent) or a MAPE difference (percentage points)."""
    return "–" if x is None or not math.isfinite(x) else f"{x:.2f}"


def mape(y_true: np.ndarray, y_pred: np.ndarray, ape_floor: float = 1.0) -> float:
    """Mean absolute percentage error in PERCENT (10.0 = 10 %, as in metrics.json), the metric of
    :mod:`molerd.metrics` with its denominator floor; ``y_true`` must be > 0."""
    return 100.0 * metrics.mape(y_true, y_pred, ape_floor)


def _rel_change(new: float, old: float) -> float:
    """new/old - 1, with 0/0 = 0 and x/0 = inf."""
    if old == 0.0:
        return 0.0 if new == 0.0 else math.inf
    return new / old - 1.0


# --------------------------------------------------------------------------------------------- report
@dataclass
class GateReport:
    """Everything the gate decided and why. ``to_dict()`` is JSON-safe; ``to_markdown()`` is for humans.

    Units: every MAPE is in percent (as in ``metrics.json``), MAPE differences in percentage points
    (candidate − champion, negative = candidate better); ``relative_*`` values and thresholds are fractions.

    Attributes
    ----------
    decision : {"promote", "reject"}
    reasons : list of str
        One line per failed check when rejected; one line per passed check when promoted.
    checks : list of dict
        ``{"name", "passed", "detail"}`` for every check that ran.
    overall : dict
        ``n_rows``, ``candidate_mape``, ``champion_mape`` (%), ``mape_diff`` (pp), ``relative_improvement``.
    bootstrap : dict
        ``unit`` (rows/groups), ``n_units``, ``samples``, ``confidence``, ``fraction_improved`` (share of
        resamples with lower candidate MAPE), ``mape_diff_ci`` (pp), ``relative_improvement_ci``.
    regimes : list of dict
        Per regime: ``n_rows``, both MAPEs, ``relative_change`` (candidate/champion − 1), ``judged``, ``passed``.
    params : dict
        The gate parameters used.
    """

    decision: str
    reasons: list[str]
    checks: list[dict[str, Any]]
    overall: dict[str, Any]
    bootstrap: dict[str, Any]
    regimes: list[dict[str, Any]]
    params: dict[str, Any]
    label: str | None = None

    @property
    def promote(self) -> bool:
        return self.decision == PROMOTE

    def to_dict(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            if isinstance(v, float):
                return _num(v)
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            return v

        # Flat overall numbers and a compact ``per_regime`` view are what the release report reads.
        return clean({
            "label": self.label, "decision": self.decision, "promote": self.promote, "reasons": list(self.reasons),
            **self.overall, "bootstrap": self.bootstrap,
            "per_regime": {r["regime"]: {"candidate": r["candidate_mape"], "champion": r["champion_mape"]}
                           for r in self.regimes},
            "regimes": self.regimes, "checks": self.checks, "params": self.params,
        })

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GateReport:
        """Rebuild a report from :meth:`to_dict` output (e.g. per-hardware ``gate.json`` files)."""
        overall = {k: d[k] for k in ("n_rows", "candidate_mape", "champion_mape", "mape_diff", "relative_improvement")}
        return cls(decision=d["decision"], reasons=list(d["reasons"]), checks=list(d["checks"]),
                   overall=overall, bootstrap=dict(d["bootstrap"]), regimes=list(d["regimes"]),
                   params=dict(d["params"]), label=d.get("label"))

    def to_markdown(self) -> str:
        title = f"Gate{f' — {self.label}' if self.label else ''}: **{self.decision.upper()}**"
        o, b = self.overall, self.bootstrap
        lines = [f"### {title}", ""]
        lines += [f"- {r}" for r in self.reasons]
        lines += ["", "| | candidate MAPE (%) | champion MAPE (%) | difference (pp) | relative improvement |",
                  "|---|---|---|---|---|",
                  f"| overall ({o['n_rows']} rows) | {_pp(o['candidate_mape'])} | {_pp(o['champion_mape'])} "
                  f"| {_pp(o['mape_diff'])} | {_pct(o['relative_improvement'])} |", ""]
        if b.get("samples"):
            lo, hi = b["mape_diff_ci"]
            rlo, rhi = b["relative_improvement_ci"]
            lines += [
                f"Paired bootstrap over {b['n_units']} {b['unit']} × {b['samples']} resamples: candidate better in "
                f"{_pct(b['fraction_improved'])} (need ≥ {_pct(b['confidence'])}); "
                f"{_pct(b['confidence'])} CI of the MAPE difference (candidate − champion) "
                f"[{_pp(lo)}, {_pp(hi)}] pp; of the relative improvement [{_pct(rlo)}, {_pct(rhi)}].", ""]
        if self.regimes:
            lines += ["| regime | rows | candidate MAPE (%) | champion MAPE (%) | change | judged | ok |",
                      "|---|---|---|---|---|---|---|"]
            for r in self.regimes:
                lines.append(f"| {r['regime']} | {r['n_rows']} | {_pp(r['candidate_mape'])} | {_pp(r['champion_mape'])} "
                             f"| {_pct(r['relative_change'])} | {'yes' if r['judged'] else 'no (too few rows)'} "
                             f"| {'✓' if r['passed'] else '✗'} |")
            lines.append("")
        lines.append("Params: " + ", ".join(f"`{k}={v}`" for k, v in self.params.items()))
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- inputs
def _check_params(min_improvement: float, bootstrap_samples: int, bootstrap_confidence: float,
                  regime_tolerance: float, min_regime_rows: int) -> None:
    def bad(name: str, must: str, got: Any) -> GateError:
        return GateError(f"The {name!r} parameter of gate_decision must be {must}. Got {got!r} instead.")

    if not (math.isfinite(min_improvement) and -1.0 < min_improvement < 1.0):
        raise bad("min_improvement", "a relative improvement in (-1, 1), e.g. 0.02", min_improvement)
    if int(bootstrap_samples) != bootstrap_samples or bootstrap_samples < 0:
        raise bad("bootstrap_samples", "an int >= 0 (0 skips the bootstrap check)", bootstrap_samples)
    if not (0.0 < bootstrap_confidence < 1.0):
        raise bad("bootstrap_confidence", "in (0, 1), e.g. 0.95", bootstrap_confidence)
    if not (math.isfinite(regime_tolerance) and regime_tolerance >= 0):
        raise bad("regime_tolerance", "a finite float >= 0, e.g. 0.05", regime_tolerance)
    if int(min_regime_rows) != min_regime_rows or min_regime_rows < 1:
        raise bad("min_regime_rows", "an int >= 1", min_regime_rows)


def _as_1d(name: str, x: Any, n: int | None) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise GateError(f"gate_decision: {name} must be 1-D, got shape {a.shape}.")
    if n is not None and len(a) != n:
        raise GateError(f"gate_decision: {name} has {len(a)} rows but y_true has {n}; score both models on the same rows.")
    return a


def _bootstrap(ape_c: np.ndarray, ape_h: np.ndarray, groups: np.ndarray | None, samples: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """Paired bootstrap MAPEs, shape (samples,) each. Same resample indices for both models.

    Resampling groups uses per-group sums, so the cost is O(samples × n_groups); resampling rows gathers in
    chunks of ``_CHUNK_CELLS`` cells to bound memory.
    """
    if groups is not None:
        codes, _ = _factorize(groups)
        n_units = int(codes.max()) + 1
        s_c = np.bincount(codes, weights=ape_c, minlength=n_units)
        s_h = np.bincount(codes, weights=ape_h, minlength=n_units)
        cnt = np.bincount(codes, minlength=n_units).astype(np.float64)
        # Per unit: add the column vectors for each chosen group (sum of rows in resample).
        out_c = np.empty(samples)
        out_h = np.empty(samples)
        step = max(1, _CHUNK_CELLS // n_units)
        for start in range(0, samples, step):
            idx = rng.integers(0, n_units, size=(min(step, samples - start), n_units))
            tot = cnt[idx].sum(axis=1)
            out_c[start:start + len(idx)] = s_c[idx].sum(axis=1) / tot
            out_h[start:start + len(idx)] = s_h[idx].sum(axis=1) / tot
        return out_c, out_h, n_units
    n = len(ape_c)
    out_c = np.empty(samples)
    out_h = np.empty(samples)
    step = max(1, _CHUNK_CELLS // n)
    for start in range(0, samples, step):
        idx = rng.integers(0, n, size=(min(step, samples - start), n))
        out_c[start:start + len(idx)] = ape_c[idx].mean(axis=1)
        out_h[start:start + len(idx)] = ape_h[idx].mean(axis=1)
    return out_c, out_h, n


def _factorize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes for labels, in sorted label order (deterministic across runs)."""
    uniq, codes = np.unique(np.asarray(x).astype(str), return_inverse=True)
    return codes.astype(np.int64), uniq


# --------------------------------------------------------------------------------------------- gate
def gate_decision(
    y_true: Any,
    pred_candidate: Any,
    pred_champion: Any | None,
    regimes: Any,
    *,
    min_improvement: float = 0.02,
    bootstrap_samples: int = 1000,
    bootstrap_confidence: float = 0.95,
    regime_tolerance: float = 0.05,
    min_regime_rows: int = 50,
    ape_floor: float = 1.0,
    seed: int = 0,
    groups: Any | None = None,
    label: str | None = None,
) -> GateReport:
    """Decide whether the candidate replaces the champion, from held-out predictions of both.

    Parameters
    ----------
    y_true : array-like of float, shape (n,)
        Held-out targets, µs; every value must be finite and > 0 (MAPE divides by it).
    pred_candidate, pred_champion : array-like of float, shape (n,)
        Predictions of the candidate and of the current release on the SAME rows, µs.
        ``pred_champion=None`` means no release exists yet (first promotion).
    regimes : array-like of str, shape (n,)
        Regime of each row (as labelled by the data, not by either model), for the per-regime check.
    min_improvement : float, default 0.02
        Required relative drop of overall MAPE: ``1 - mape_cand/mape_champ >= min_improvement``.
    bootstrap_samples : int, default 1000
        Paired bootstrap resamples (0 disables the bootstrap check).
    bootstrap_confidence : float in (0, 1), default 0.95
        Required fraction of resamples in which the candidate's MAPE is lower; also the CI level.
    regime_tolerance : float >= 0, default 0.05
        Allowed relative MAPE increase in any judged regime (0.05 = 5 % worse).
    min_regime_rows : int >= 1, default 50
        Regimes with fewer held-out rows are reported but not judged.
    ape_floor : float, default 1.0
        Denominator floor of the APE, µs (:mod:`molerd.metrics`; the seed's alpha uses 5 ms).
    seed : int, default 0
        Seed of the bootstrap's local generator.
    groups : array-like, shape (n,), optional
        Group of each row (e.g. ``trace_id``). When given, whole groups are resampled, which respects
        the correlation of rows within one run.
    label : str, optional
        Name of what is gated (e.g. "beta@H100"), shown in the report.

    Returns
    -------
    GateReport
    """
    _check_params(min_improvement, bootstrap_samples, bootstrap_confidence, regime_tolerance, min_regime_rows)
    y = _as_1d("y_true", y_true, None).astype(np.float64)
    n = len(y)
    if n == 0:
        raise GateError("gate_decision: y_true is empty; the held-out split has no rows to compare the models on.")
    bad = ~np.isfinite(y) | (y <= 0)
    if bad.any():
        pos = np.flatnonzero(bad)
        raise GateError(
            f"gate_decision: {len(pos)} held-out target(s) are not finite and > 0 (row positions {pos[:5].tolist()}, "
            f"values {y[pos[:5]].tolist()}); MAPE is undefined there. Validate the held-out table first."
        )
    p_c = _as_1d("pred_candidate", pred_candidate, n).astype(np.float64)
    p_h = None if pred_champion is None else _as_1d("pred_champion", pred_champion, n).astype(np.float64)
    reg = _as_1d("regimes", regimes, n).astype(str)
    grp = None if groups is None else _as_1d("groups", groups, n)
    if p_h is not None and not np.isfinite(p_h).all():
        pos = np.flatnonzero(~np.isfinite(p_h))
        raise GateError(
            f"gate_decision: the champion predicted non-finite values for {len(pos)} row(s) "
            f"(positions {pos[:5].tolist()}); the current release cannot be scored. Check the release it came from."
        )
    params = {"min_improvement": float(min_improvement), "bootstrap_samples": int(bootstrap_samples),
              "bootstrap_confidence": float(bootstrap_confidence), "regime_tolerance": float(regime_tolerance),
              "min_regime_rows": int(min_regime_rows), "ape_floor_us": float(ape_floor), "seed": int(seed),
              "grouped": grp is not None}
    checks: list[dict[str, Any]] = []

    def check(name: str, passed: bool, detail: str) -> None:
        checks.append({"name": name, "passed": bool(passed), "detail": detail})

    finite_c = np.isfinite(p_c)
    check("finite", bool(finite_c.all()),
          "candidate predictions are finite" if finite_c.all()
          else f"candidate predicted non-finite values for {int((~finite_c).sum())} of {n} rows "
               f"(positions {np.flatnonzero(~finite_c)[:5].tolist()})")
    ape_c = np.where(finite_c, 100.0 * metrics.ape(y, p_c, ape_floor), np.inf)  # percent
    mape_c = float(ape_c.mean())
    overall: dict[str, Any] = {"n_rows": n, "candidate_mape": mape_c, "champion_mape": None, "mape_diff": None,
                               "relative_improvement": None}
    boot: dict[str, Any] = {"unit": "groups" if grp is not None else "rows", "n_units": None, "samples": 0,
                            "confidence": float(bootstrap_confidence), "fraction_improved": None,
                            "mape_diff_ci": [None, None], "relative_improvement_ci": [None, None]}
    regime_rows: list[dict[str, Any]] = []
    labels, reg_codes = np.unique(reg, return_inverse=True)

    if p_h is None:
        check("champion", True, "no current release: nothing to compare against (first promotion)")
        for i, r in enumerate(labels):
            m = reg_codes == i
            regime_rows.append({"regime": str(r), "n_rows": int(m.sum()), "candidate_mape": float(ape_c[m].mean()),
                                "champion_mape": None, "relative_change": None, "judged": False, "passed": True})
    else:
        ape_h = 100.0 * metrics.ape(y, p_h, ape_floor)
        mape_h = float(ape_h.mean())
        improvement = -_rel_change(mape_c, mape_h)
        overall.update(champion_mape=mape_h, mape_diff=mape_c - mape_h, relative_improvement=improvement)
        check("overall", improvement >= min_improvement,
              f"overall MAPE {_pp(mape_c)} % vs champion {_pp(mape_h)} %: relative improvement {_pct(improvement)} "
              f"({'≥' if improvement >= min_improvement else '<'} required {_pct(min_improvement)})")

        if bootstrap_samples > 0 and finite_c.all():
            rng = np.random.default_rng(seed)
            bc, bh, n_units = _bootstrap(ape_c, ape_h, grp, int(bootstrap_samples), rng)
            frac = float(np.mean(bc < bh))
            a = (1.0 - bootstrap_confidence) / 2.0
            diff = bc - bh
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = np.where(bh > 0, 1.0 - bc / bh, np.where(bc > 0, -np.inf, 0.0))
            boot.update(n_units=n_units, samples=int(bootstrap_samples), fraction_improved=frac,
                        mape_diff_ci=[float(np.quantile(diff, a)), float(np.quantile(diff, 1 - a))],
                        relative_improvement_ci=[float(np.quantile(rel, a)), float(np.quantile(rel, 1 - a))])
            ok = frac >= bootstrap_confidence and n_units >= 2
            detail = (f"candidate MAPE lower in {_pct(frac)} of {bootstrap_samples} paired resamples over "
                      f"{n_units} {boot['unit']} ({'≥' if frac >= bootstrap_confidence else '<'} required "
                      f"{_pct(bootstrap_confidence)}); CI of the MAPE difference [{_pp(boot['mape_diff_ci'][0])}, "
                      f"{_pp(boot['mape_diff_ci'][1])}] pp")
            if n_units < 2:
                detail += f"; only {n_units} {boot['unit'][:-1]}: the bootstrap cannot measure uncertainty"
            check("bootstrap", ok, detail)
        elif bootstrap_samples > 0:
            check("bootstrap", False, "skipped: candidate has non-finite predictions")

        worse: list[str] = []
        for i, r in enumerate(labels):
            m = reg_codes == i
            k = int(m.sum())
            mc, mh = float(ape_c[m].mean()), float(ape_h[m].mean())
            change = _rel_change(mc, mh)
            judged = k >= min_regime_rows
            passed = (not judged) or change <= regime_tolerance
            if not passed:
                worse.append(f"{r} ({k} rows): MAPE {_pp(mc)} % vs {_pp(mh)} %, {_pct(change)} worse")
            regime_rows.append({"regime": str(r), "n_rows": k, "candidate_mape": mc, "champion_mape": mh,
                                "relative_change": change, "judged": judged, "passed": passed})
        n_judged = sum(1 for r in regime_rows if r["judged"])
        check("regimes", not worse,
              f"no judged regime ({n_judged} with ≥ {min_regime_rows} rows) worse by more than {_pct(regime_tolerance)}"
              if not worse else f"regime(s) worse by more than {_pct(regime_tolerance)}: " + "; ".join(worse))

    promote = all(c["passed"] for c in checks)
    decision = PROMOTE if promote else REJECT
    reasons = [f"{c['name']}: {c['detail']}" for c in checks if (c["passed"] if promote else not c["passed"])]
    report = GateReport(decision=decision, reasons=reasons, checks=checks, overall=overall, bootstrap=boot,
                        regimes=regime_rows, params=params, label=label)
    log.info("gate%s: %s (%s)", f" {label}" if label else "", decision, "; ".join(reasons))
    return report


# --------------------------------------------------------------------------------------------- combine
@dataclass
class CombinedGateDecision:
    """Decision over several gated parts (e.g. ``{"H100/beta": ..., "H100/alpha": ...}``).

    Rule: promote only if every REQUIRED part promotes (all parts are required unless ``required`` was
    given); a required part that is absent rejects. Optional parts are reported but never block.
    """

    decision: str
    reasons: list[str]
    parts: dict[str, str]
    required: list[str]
    reports: dict[str, GateReport] = field(repr=False, default_factory=dict)

    @property
    def promote(self) -> bool:
        return self.decision == PROMOTE

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "promote": self.promote, "reasons": list(self.reasons),
                "parts": dict(self.parts), "required": list(self.required),
                "reports": {k: v.to_dict() for k, v in self.reports.items()}}

    def to_markdown(self) -> str:
        lines = [f"## Promotion gate: **{self.decision.upper()}**", ""]
        lines += [f"- {r}" for r in self.reasons]
        lines += ["", "| part | required | decision |", "|---|---|---|"]
        for k, d in self.parts.items():
            lines.append(f"| {k} | {'yes' if k in self.required else 'no'} | {d} |")
        lines.append("")
        for k in self.parts:
            if k in self.reports:
                lines.append(self.reports[k].to_markdown())
        return "\n".join(lines) + "\n"


def combine_gate_reports(reports: Mapping[str, GateReport], required: Sequence[str] | None = None) -> CombinedGateDecision:
    """Combine per-target/per-hardware gate reports: promote only if every required part promotes.

    Parameters
    ----------
    reports : mapping of str to GateReport
        One report per gated part, keyed by a name such as ``"H100/beta"``.
    required : sequence of str, optional
        Parts that must promote. Default: all parts in ``reports``. A required part missing from
        ``reports`` rejects (a gate that did not run cannot approve).
    """
    if not reports and not required:
        raise GateError("combine_gate_reports: no gate reports given; run the gate for at least one part.")
    req = list(reports) if required is None else list(dict.fromkeys(required))
    parts = {k: r.decision for k, r in sorted(reports.items())}
    reasons: list[str] = []
    for k in req:
        if k not in reports:
            reasons.append(f"{k}: required part has no gate report (did its evaluation run?)")
            parts[k] = "missing"
        elif not reports[k].promote:
            reasons.append(f"{k}: rejected — " + "; ".join(reports[k].reasons))
    promote = not reasons
    if promote:
        reasons = [f"all {len(req)} required part(s) promote: {', '.join(req)}"]
    return CombinedGateDecision(decision=PROMOTE if promote else REJECT, reasons=reasons, parts=parts,
                                required=req, reports=dict(reports))
