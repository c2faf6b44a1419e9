"""Drift check: does a new batch of traces look like the data the current release was trained on?

Three signals, each with its own threshold, decide ``retrain_needed``:

* per feature, the population stability index (PSI) over bins cut at the REFERENCE quantiles, plus a
  two-sample Kolmogorov–Smirnov test. KS alone is hypersensitive on large batches (a 1 % shift is
  "significant" with 10⁵ rows), so a feature drifts when PSI ≥ ``psi_threshold`` or when KS rejects at
  ``ks_alpha`` AND its statistic is at least ``ks_min_statistic`` (an effect size);
* the regime mix: total variation distance between the regime shares of reference and batch
  (0 = same mix, 1 = disjoint) against ``regime_shift_threshold``; PSI over the shares is reported too;
* the current release's MAPE on the new batch (percent, as in ``metrics.json``), when given, against
  ``mape_threshold`` (percent).

Missing values (NaN) are excluded per feature and counted in the report, never silently dropped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

log = logging.getLogger(__name__)

__all__ = ["DriftError", "DriftReport", "drift_check", "population_stability_index", "regime_shift"]


class DriftError(ValueError):
    """Bad input to the drift check (missing feature columns, bad thresholds)."""


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def population_stability_index(reference: np.ndarray, batch: np.ndarray, bins: int = 10, eps: float = 1e-4) -> float:
    """PSI of ``batch`` against ``reference``: Σ (b − r)·ln(b / r) over reference-quantile bins.

    Parameters
    ----------
    reference, batch : ndarray of float, shape (n_ref,), (n_batch,)
        Finite values of one feature (same unit in both).
    bins : int, default 10
        Number of reference quantile bins; tied quantiles (discrete features) merge, so fewer may be used.
        Values outside the reference range fall in the outer bins.
    eps : float, default 1e-4
        Floor on a bin's share, so an empty bin gives a large but finite PSI.

    Returns
    -------
    float
        0 for identical distributions; ~0.1 is a moderate shift, ≥ 0.2 a large one (common rule of thumb).
    """
    ref = np.asarray(reference, dtype=np.float64)
    bat = np.asarray(batch, dtype=np.float64)
    inner = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    # side="right": a value equal to an edge goes to the upper bin, so point masses get their own bin.
    r = np.bincount(np.searchsorted(inner, ref, side="right"), minlength=len(inner) + 1) / len(ref)
    b = np.bincount(np.searchsorted(inner, bat, side="right"), minlength=len(inner) + 1) / len(bat)
    r = np.maximum(r, eps)
    b = np.maximum(b, eps)
    return float(np.sum((b - r) * np.log(b / r)))


def regime_shift(reference_labels: Sequence[Any], batch_labels: Sequence[Any], eps: float = 1e-4) -> dict[str, Any]:
    """Regime-mix shift: shares per regime in both, total variation distance and PSI over the shares."""
    ref = pd.Series(np.asarray(reference_labels, dtype=object)).astype(str)
    bat = pd.Series(np.asarray(batch_labels, dtype=object)).astype(str)
    names = sorted(set(ref.unique()) | set(bat.unique()))
    rs = ref.value_counts(normalize=True).reindex(names, fill_value=0.0).to_numpy()
    bs = bat.value_counts(normalize=True).reindex(names, fill_value=0.0).to_numpy()
    tvd = 0.5 * float(np.abs(bs - rs).sum())
    r, b = np.maximum(rs, eps), np.maximum(bs, eps)
    psi = float(np.sum((b - r) * np.log(b / r)))
    return {
        "reference_shares": {k: float(v) for k, v in zip(names, rs)},
        "batch_shares": {k: float(v) for k, v in zip(names, bs)},
        "tvd": tvd,
        "psi": psi,
        "new_regimes": [k for k, v in zip(names, rs) if v == 0.0],
        "vanished_regimes": [k for k, v in zip(names, bs) if v == 0.0],
    }


@dataclass
class DriftReport:
    """Result of :func:`drift_check`. ``to_dict()`` is JSON-safe; ``to_markdown()`` is for humans."""

    retrain_needed: bool
    reasons: list[str]
    features: list[dict[str, Any]]
    regime_mix: dict[str, Any] | None
    mape: dict[str, Any] | None
    n_reference: int
    n_batch: int
    params: dict[str, Any]
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            if isinstance(v, (float, np.floating)):
                return _num(v)
            if isinstance(v, (np.integer,)):
                return int(v)
            if isinstance(v, (np.bool_,)):
                return bool(v)
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            return v

        return clean({"retrain_needed": self.retrain_needed, "reasons": self.reasons, "features": self.features,
                      "regime_mix": self.regime_mix, "mape": self.mape, "n_reference": self.n_reference,
                      "n_batch": self.n_batch, "params": self.params, "warnings": self.warnings})

    def to_markdown(self) -> str:
        head = "**RETRAIN NEEDED**" if self.retrain_needed else "no retrain needed"
        lines = [f"### Drift check: {head}", "", f"Reference: {self.n_reference} rows; batch: {self.n_batch} rows.", ""]
        lines += [f"- {r}" for r in self.reasons]
        lines += [f"- warning: {w}" for w in self.warnings]
        lines += ["", "| feature | PSI | KS statistic | KS p-value | rows ref/batch | NaN ref/batch | drift |",
                  "|---|---|---|---|---|---|---|"]
        for f in self.features:
            lines.append(f"| {f['feature']} | {_fmt(f['psi'])} | {_fmt(f['ks_statistic'])} | {_fmt(f['ks_pvalue'], 3)} "
                         f"| {f['n_reference']}/{f['n_batch']} | {f['n_reference_missing']}/{f['n_batch_missing']} "
                         f"| {'yes' if f['drifted'] else 'no'} |")
        if self.regime_mix is not None:
            rm = self.regime_mix
            lines += ["", f"Regime mix: TVD {_fmt(rm['tvd'])} (threshold {_fmt(self.params['regime_shift_threshold'])}), "
                      f"PSI {_fmt(rm['psi'])}.", "", "| regime | reference share | batch share |", "|---|---|---|"]
            for k in rm["reference_shares"]:
                lines.append(f"| {k} | {rm['reference_shares'][k]:.3f} | {rm['batch_shares'][k]:.3f} |")
        if self.mape is not None:
            m = self.mape
            lines += ["", f"Current release MAPE on the batch: {_fmt(m['current'])} % "
                      f"(threshold {_fmt(m['threshold'])} %)."]
        lines += ["", "Params: " + ", ".join(f"`{k}={v}`" for k, v in self.params.items())]
        return "\n".join(lines) + "\n"


def drift_check(
    reference: pd.DataFrame,
    batch: pd.DataFrame,
    features: Sequence[str],
    regime_col: str | None = "regime",
    *,
    psi_threshold: float = 0.2,
    ks_alpha: float = 0.01,
    ks_min_statistic: float = 0.1,
    regime_shift_threshold: float = 0.1,
    current_mape: float | None = None,
    mape_threshold: float | None = None,
    bins: int = 10,
    eps: float = 1e-4,
    min_rows: int = 20,
) -> DriftReport:
    """Compare a new batch with the reference (training) data and say whether to retrain.

    Parameters
    ----------
    reference, batch : DataFrame
        Rows of the same table (steps or requests), e.g. the current release's training rows and the
        newly arrived ones. Must hold every name in ``features`` (and ``regime_col`` unless None).
    features : sequence of str
        Numeric columns to compare (e.g. ``prefill_tokens``, ``kv_usage_ratio``; tokens, ratios, µs).
    regime_col : str or None, default "regime"
        Regime label column; None skips the regime-mix check.
    psi_threshold : float > 0, default 0.2
        A feature with PSI at or above this has drifted.
    ks_alpha : float in (0, 1), default 0.01
        KS significance level; KS counts only if also ``statistic >= ks_min_statistic``.
    ks_min_statistic : float in [0, 1], default 0.1
        Smallest KS distance (max CDF gap) that counts as drift.
    regime_shift_threshold : float in (0, 1], default 0.1
        Total variation distance of regime shares at or above which the mix has shifted.
    current_mape : float or None
        The current release's MAPE on the batch, percent (12.5 = 12.5 %); reported when given.
    mape_threshold : float or None
        Retrain when ``current_mape > mape_threshold`` (percent).
    bins : int >= 2, default 10
        PSI quantile bins.
    eps : float > 0, default 1e-4
        PSI share floor.
    min_rows : int >= 1, default 20
        Features with fewer non-missing rows on either side are not judged (reported as a warning).

    Returns
    -------
    DriftReport
    """
    def bad(name: str, must: str, got: Any) -> DriftError:
        return DriftError(f"The {name!r} parameter of drift_check must be {must}. Got {got!r} instead.")

    if not (psi_threshold > 0):
        raise bad("psi_threshold", "> 0, e.g. 0.2", psi_threshold)
    if not (0 < ks_alpha < 1):
        raise bad("ks_alpha", "in (0, 1), e.g. 0.01", ks_alpha)
    if not (0 <= ks_min_statistic <= 1):
        raise bad("ks_min_statistic", "in [0, 1], e.g. 0.1", ks_min_statistic)
    if not (0 < regime_shift_threshold <= 1):
        raise bad("regime_shift_threshold", "in (0, 1], e.g. 0.1", regime_shift_threshold)
    if int(bins) != bins or bins < 2:
        raise bad("bins", "an int >= 2", bins)
    if not (eps > 0):
        raise bad("eps", "> 0", eps)
    if mape_threshold is not None and not (mape_threshold > 0):
        raise bad("mape_threshold", "> 0 (percent, e.g. 15.0) or None", mape_threshold)
    features = list(features)
    if not features and regime_col is None and current_mape is None:
        raise DriftError("drift_check: nothing to check; pass features, a regime_col, or current_mape.")
    needed = features + ([regime_col] if regime_col is not None else [])
    for name, df in (("reference", reference), ("batch", batch)):
        missing = [c for c in needed if c not in df.columns]
        if missing:
            raise DriftError(f"drift_check: the {name} frame lacks column(s) {missing}; it has {list(df.columns)}. "
                             "Compare frames of the same table, labelled with regimes.")
    if len(reference) == 0 or len(batch) == 0:
        raise DriftError(f"drift_check: empty input (reference {len(reference)} rows, batch {len(batch)} rows).")

    params = {"features": features, "regime_col": regime_col, "psi_threshold": float(psi_threshold),
              "ks_alpha": float(ks_alpha), "ks_min_statistic": float(ks_min_statistic),
              "regime_shift_threshold": float(regime_shift_threshold),
              "mape_threshold": None if mape_threshold is None else float(mape_threshold), "bins": int(bins),
              "eps": float(eps), "min_rows": int(min_rows)}
    reasons: list[str] = []
    warnings: list[str] = []
    rows: list[dict[str, Any]] = []
    for feat in features:
        try:
            ref = pd.to_numeric(reference[feat], errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
            bat = pd.to_numeric(batch[feat], errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
        except (ValueError, TypeError) as exc:
            raise DriftError(f"drift_check: feature {feat!r} is not numeric ({exc}); pass numeric columns only.") from exc
        ref_ok, bat_ok = np.isfinite(ref), np.isfinite(bat)
        row: dict[str, Any] = {"feature": feat, "n_reference": int(ref_ok.sum()), "n_batch": int(bat_ok.sum()),
                               "n_reference_missing": int((~ref_ok).sum()), "n_batch_missing": int((~bat_ok).sum()),
                               "psi": None, "ks_statistic": None, "ks_pvalue": None, "drifted": False, "judged": False}
        if row["n_reference"] < min_rows or row["n_batch"] < min_rows:
            warnings.append(f"{feat}: too few finite values to judge (reference {row['n_reference']}, "
                            f"batch {row['n_batch']}, need {min_rows})")
            rows.append(row)
            continue
        r, b = ref[ref_ok], bat[bat_ok]
        psi = population_stability_index(r, b, bins=int(bins), eps=eps)
        ks = stats.ks_2samp(r, b)
        stat, pval = float(ks.statistic), float(ks.pvalue)
        why = []
        if psi >= psi_threshold:
            why.append(f"PSI {psi:.3f} ≥ {psi_threshold}")
        if pval < ks_alpha and stat >= ks_min_statistic:
            why.append(f"KS D={stat:.3f} ≥ {ks_min_statistic} with p={pval:.2g} < {ks_alpha}")
        row.update(psi=psi, ks_statistic=stat, ks_pvalue=pval, drifted=bool(why), judged=True)
        rows.append(row)
        if why:
            reasons.append(f"feature {feat} drifted: " + "; ".join(why))
        if row["n_batch_missing"] and not row["n_reference_missing"]:
            warnings.append(f"{feat}: {row['n_batch_missing']} missing value(s) in the batch, none in the reference")

    mix = None
    if regime_col is not None:
        ref_l, bat_l = reference[regime_col], batch[regime_col]
        n_unl = int(ref_l.isna().sum()), int(bat_l.isna().sum())
        if any(n_unl):
            warnings.append(f"regime mix: unlabelled rows excluded (reference {n_unl[0]}, batch {n_unl[1]})")
        mix = regime_shift(ref_l.dropna().to_numpy(), bat_l.dropna().to_numpy(), eps=eps)
        mix["shifted"] = mix["tvd"] >= regime_shift_threshold
        if mix["shifted"]:
            moved = sorted(mix["reference_shares"], key=lambda k: -abs(mix["batch_shares"][k] - mix["reference_shares"][k]))[:3]
            detail = ", ".join(f"{k} {mix['reference_shares'][k]:.1%}→{mix['batch_shares'][k]:.1%}" for k in moved)
            reasons.append(f"regime mix shifted: TVD {mix['tvd']:.3f} ≥ {regime_shift_threshold} ({detail})")
        if mix["new_regimes"]:
            warnings.append(f"regime(s) {mix['new_regimes']} appear in the batch but not in the reference")

    mape = None
    if current_mape is not None:
        exceeded = mape_threshold is not None and float(current_mape) > float(mape_threshold)
        mape = {"current": float(current_mape), "threshold": params["mape_threshold"], "exceeded": exceeded}
        if exceeded:
            reasons.append(f"current release MAPE {float(current_mape):.2f} % on the batch > threshold {float(mape_threshold):.2f} %")

    retrain = bool(reasons)
    if not retrain:
        reasons = ["no retrain needed: no feature, regime-mix or MAPE signal passed its threshold"]
    report = DriftReport(retrain_needed=retrain, reasons=reasons, features=rows, regime_mix=mix, mape=mape,
                         n_reference=len(reference), n_batch=len(batch), params=params, warnings=warnings)
    log.info("drift check: %s", "; ".join(reasons))
    return report
