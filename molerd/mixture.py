"""The MoLE-RD estimator: a soft-gated mixture of per-regime linear experts (scikit-learn API).

``MoLERegressor.fit(X, y)`` takes a canonical table (``steps`` for beta, ``requests`` for alpha) and the
target in µs; features come from ``molerd.features`` (the catalog the release's reference predictor shares)
and gate weights from ``molerd.regimes``. ``to_spec()`` is the complete, JSON-safe description of the fitted
model that BLIS / the Go evaluator / the Python reference predictor reimplement; :func:`predict_from_spec`
evaluates a spec on raw inputs and must agree with ``predict``.
"""

from __future__ import annotations

import logging
import math
import warnings
from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.model_selection import GroupKFold, KFold
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from molerd import features as F
from molerd.experts import DEFAULT_ALPHAS, LOSSES, ExpertFit, fit_expert
from molerd.metrics import ape_floor, mape
from molerd.regimes import (DEFAULT_REGIME, ClassifierDetector, RuleDetector, default_thresholds,
                            search_thresholds, soft_weights, Rule)

log = logging.getLogger(__name__)

SPEC_FORMAT = "molerd.mole/v1"
DETECTORS = ("rules", "learned", "classifier")
FALLBACKS = ("global", "shrink")
TARGET_SEMANTICS = {
    "beta": "step_duration_us: GPU forward time of one engine step, µs (vLLM step.BATCH_SUMMARY duration)",
    "alpha:scheduled_minus_queued": "scheduled_us − queued_us: the seed's queueing delay in the engine, µs "
                                    "(NOT BLIS α0; BLIS simulates its own queue)",
    "alpha:queued_minus_arrived": "queued_us − arrived_us: API overhead before the engine queue, µs (BLIS α0)",
}
GATE_MIN_WEIGHT = 1e-3  # rows below this gate weight are left out of a regime's fit


class InsufficientDataError(ValueError):
    """Raised when there are no usable rows to fit on."""


def _check_param(name, value, ok: bool, allowed: str):
    if not ok:
        raise ValueError(f"The {name!r} parameter of MoLERegressor must be {allowed}. Got {value!r} instead.")


class MoLERegressor(RegressorMixin, BaseEstimator):
    """Mixture of Linear Experts with Regime Detection.

    Parameters
    ----------
    target : {"beta", "alpha"}, default "beta"
        beta: X is a ``steps`` table and y is ``step_duration_us``; alpha: X is a ``requests`` table and y
        is ``features.alpha_target(X, alpha_target)``.
    feature_set : {"physics", "seed"}, default "physics"
        Which catalog of per-regime vectors (``features.REGIME_FEATURES``).
    detector : {"rules", "learned", "classifier"}, default "rules"
        rules: the seed's thresholds (or ``detector_params["thresholds"]``); learned: thresholds picked by a
        grouped ``cv``-fold grid search on the training rows (fit one estimator per hardware); classifier:
        logistic regression on the gate inputs trained to route each row to the expert that fits it best.
    detector_params : dict or None
        ``{"thresholds": {...}}`` for rules/learned start values, ``{"grids": {...}}`` for learned,
        ``{"C": 1.0}`` for the classifier.
    gate_width : float or dict, default 1.0
        Soft-gate width scale on ``regimes.DEFAULT_WIDTHS`` (0 = hard gating), or gate input → width.
    min_rows : int, default 50
        A regime with fewer (hard-labelled) training rows uses ``fallback``.
    fallback : {"global", "shrink"}, default "global"
        global: the thin regime uses the global expert; shrink: it is fitted on the global feature vector
        with a ridge penalty toward the global coefficients, scaled by min_rows / n_rows.
    loss : {"relative", "log", "squared"}, default "relative"
        relative: weights 1/y²; log: Σ(log ŷ − log y)² for the linear ŷ; squared: plain least squares.
    positive : bool, default False
        Non-negative feature coefficients (the intercept is free).
    alphas : tuple of float
        Ridge penalties tried per expert (GCV on standardised, weighted features).
    alpha_target : {"scheduled_minus_queued", "queued_minus_arrived"}
        Meaning of y for target="alpha" (recorded in the spec; y itself is given to ``fit``).
    ape_floor_us : float or None
        Denominator floor of the relative-error losses and of ``score`` (see :mod:`molerd.metrics`); None =
        the metric's floor for this target (``metrics.ape_floor``).
    prediction_floor : float or None
        Predictions are clipped below at this many µs; None = half the smallest positive training target.
    cv : int, default 3
        Folds for the learned-threshold search (grouped by ``trace_id`` when the table has it).
    random_state : int or None
        Only used for ungrouped folds.

    Attributes
    ----------
    experts_ : dict regime → ExpertFit;  global_expert_ : ExpertFit;  detector_ : fitted detector
    regime_report_ : pandas.DataFrame, one row per regime (n_rows, n_effective, source, note, train_mape)
    dropped_features_ : dict feature → reason;  scope_constants_ : dict scope_id → constants
    floor_ : float;  n_dropped_rows_ : int (non-finite targets left out of the fit)

    Notes
    -----
    ``score`` returns **negative MAPE** (higher is better), so ``GridSearchCV``/``cross_val_score`` select
    by the release gate's metric. Plain numpy input (no canonical columns) is "generic mode": one global
    linear expert on the given columns, no regimes (used by scikit-learn's common checks).
    """

    def __init__(self, target="beta", feature_set="physics", detector="rules", detector_params=None,
                 gate_width=1.0, min_rows=50, fallback="global", loss="relative", positive=False,
                 alphas=DEFAULT_ALPHAS, alpha_target="scheduled_minus_queued", prediction_floor=None, cv=3,
                 random_state=None, ape_floor_us=None):
        self.target = target
        self.feature_set = feature_set
        self.detector = detector
        self.detector_params = detector_params
        self.gate_width = gate_width
        self.min_rows = min_rows
        self.fallback = fallback
        self.loss = loss
        self.positive = positive
        self.alphas = alphas
        self.alpha_target = alpha_target
        self.prediction_floor = prediction_floor
        self.cv = cv
        self.random_state = random_state
        self.ape_floor_us = ape_floor_us

    # ------------------------------------------------------------------------------------ validation
    def _validate_params(self):
        _check_param("target", self.target, self.target in F.TARGETS, f"one of {F.TARGETS}")
        _check_param("feature_set", self.feature_set, self.feature_set in F.FEATURE_SETS, f"one of {F.FEATURE_SETS}")
        _check_param("detector", self.detector, self.detector in DETECTORS, f"one of {DETECTORS}")
        _check_param("fallback", self.fallback, self.fallback in FALLBACKS, f"one of {FALLBACKS}")
        _check_param("loss", self.loss, self.loss in LOSSES, f"one of {LOSSES}")
        _check_param("min_rows", self.min_rows, isinstance(self.min_rows, Integral) and self.min_rows >= 1,
                     "an int >= 1")
        _check_param("alpha_target", self.alpha_target, self.alpha_target in F.ALPHA_TARGET_KINDS,
                     f"one of {F.ALPHA_TARGET_KINDS}")
        gw = self.gate_width
        _check_param("gate_width", gw, isinstance(gw, dict) or (isinstance(gw, Real) and gw >= 0),
                     "a float >= 0 or a dict gate input -> width")
        _check_param("alphas", self.alphas, len(tuple(self.alphas)) > 0 and all(a > 0 for a in self.alphas),
                     "a non-empty sequence of floats > 0")
        _check_param("cv", self.cv, isinstance(self.cv, Integral) and self.cv >= 2, "an int >= 2")
        pf = self.prediction_floor
        _check_param("prediction_floor", pf, pf is None or (isinstance(pf, Real) and pf >= 0), "None or a float >= 0")

    def _is_canonical(self, X) -> bool:
        return isinstance(X, pd.DataFrame) and set(F.SCOPE_KEY) <= set(X.columns)

    # --------------------------------------------------------------------------------------- fitting
    def fit(self, X, y, sample_weight=None):
        """Fit detector and experts. X: canonical table (or a numpy matrix, generic mode); y: target, µs."""
        self._validate_params()
        self.generic_ = not self._is_canonical(X)
        if self.generic_:
            X, y = validate_data(self, X, y, y_numeric=True)
            Xf = np.asarray(X, dtype="float64")
            names = [f"x{j}" for j in range(Xf.shape[1])]
            G = None
        else:
            y = np.asarray(y, dtype="float64").ravel()
            if len(y) != len(X):
                raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
            names = F.union_features(self.target, self.feature_set)
            Xf, names, notes = F.feature_matrix(X, names)
            self.dropped_features_ = notes
            _, self.scope_constants_ = F.table_scope_constants(X)
            G = F.gate_inputs(X, self.target)
        sw = _check_sample_weight(sample_weight, np.empty((len(y), 0)), dtype=np.float64)
        if sample_weight is not None and not np.any(sw > 0):
            raise ValueError("Sample weights must contain at least one non-zero number.")
        finite = np.isfinite(y)
        if self.loss != "squared":
            finite &= y > 0
        self.n_dropped_rows_ = int((~finite).sum())
        if self.n_dropped_rows_:
            warnings.warn(f"MoLERegressor: {self.n_dropped_rows_} of {len(y)} rows have a non-finite"
                          f"{'' if self.loss == 'squared' else ' or non-positive'} target and were left out of the fit")
        if finite.sum() < 2:
            raise InsufficientDataError(f"need at least 2 rows with a usable target; n_samples={int(finite.sum())}")
        self.feature_names_ = list(names)
        ypos = y[finite & (y > 0)]
        if self.prediction_floor is not None:
            self.floor_ = float(self.prediction_floor)
        elif self.generic_ or len(ypos) == 0:
            self.floor_ = -math.inf
        else:
            self.floor_ = 0.5 * float(ypos.min())
        idx = np.flatnonzero(finite)
        complete = [j for j in range(Xf.shape[1]) if np.isfinite(Xf[idx, j]).all()]
        self.ape_floor_ = (float(self.ape_floor_us) if self.ape_floor_us is not None else
                           ape_floor(self.target, self.alpha_target))
        self.backup_expert_ = self._fit_one(Xf[idx][:, complete], y[idx], [names[j] for j in complete], sw[idx])
        self.constant_ = float(np.median(y[idx]))
        self.global_expert_ = self._fit_one(Xf[idx], y[idx], names, sw[idx])
        if self.generic_:
            self.regimes_ = ("global",)
            self.experts_ = {"global": self.global_expert_}
            self.regime_report_ = pd.DataFrame([{"regime": "global", "n_rows": len(idx), "source": "own"}])
            return self
        self.regimes_ = F.REGIMES[self.target]
        groups = X["trace_id"].astype(str).to_numpy() if "trace_id" in X.columns else None
        self.gate_medians_ = {c: (float(np.nanmedian(G[c])) if G[c].notna().any() else 0.0) for c in G.columns}
        dp = dict(self.detector_params or {})
        if self.detector in ("rules", "learned"):
            thresholds = dict(dp.get("thresholds") or {})
            if self.detector == "learned":
                thresholds = self._search(Xf, names, G, y, sw, finite, groups, thresholds, dp.get("grids"))
            self.detector_ = RuleDetector(self.target, thresholds, self.gate_width).fit()
            W = self.detector_.weights(G)
            self.experts_, self.regime_report_ = self._fit_experts(Xf, names, y, sw, finite, W,
                                                                   self.detector_.hard_weights(G))
        else:
            rules = RuleDetector(self.target, dp.get("thresholds"), self.gate_width).fit()
            experts, _ = self._fit_experts(Xf, names, y, sw, finite, rules.weights(G), rules.hard_weights(G))
            P = self._expert_matrix(experts, Xf, names)
            ape = np.abs(P - y[:, None]) / np.maximum(np.abs(y[:, None]), 1.0)
            ape = np.where(np.isfinite(ape), ape, np.inf)
            labels = np.asarray(self.regimes_, dtype=object)[ape.argmin(axis=1)]
            self.detector_ = ClassifierDetector(self.target, C=dp.get("C", 1.0), cv=self.cv,
                                                random_state=self.random_state)
            self.detector_.fit(G.iloc[idx], labels[idx], None if groups is None else groups[idx])
            W = self.detector_.weights(G)
            H = np.zeros_like(W)
            H[np.arange(len(W)), W.argmax(axis=1)] = 1.0
            self.experts_, self.regime_report_ = self._fit_experts(Xf, names, y, sw, finite, W, H)
        pred = self._predict_arrays(Xf, names, G)
        lab = np.asarray(self.regimes_, dtype=object)[self._hard(G).argmax(axis=1)]
        self.regime_report_["train_mape"] = [
            mape(y[finite & (lab == r)], pred[finite & (lab == r)], self.ape_floor_) if (finite & (lab == r)).any()
            else float("nan")
            for r in self.regime_report_["regime"]]
        return self

    def _fit_one(self, X, y, names, w, **kw) -> ExpertFit:
        """One linear expert with this estimator's loss, penalties, sign constraint and floors."""
        return fit_expert(X, y, names, w, self.loss, self.alphas, self.positive, floor=max(self.floor_, 1e-9),
                          ape_floor=self.ape_floor_, **kw)

    def _fit_experts(self, Xf, names, y, sw, finite, W, H):
        experts, rows = {}, []
        hard = H.argmax(axis=1)
        for j, regime in enumerate(self.regimes_):
            want = F.regime_features(self.target, self.feature_set)[regime]
            cols = [names.index(f) for f in want if f in names]
            fnames = [names[c] for c in cols]
            n_hard = int((finite & (hard == j)).sum())
            n_eff = float(W[finite, j].sum())
            sel = finite & (W[:, j] >= GATE_MIN_WEIGHT)
            row = {"regime": regime, "n_rows": n_hard, "n_effective": round(n_eff, 3),
                   "features": fnames, "dropped": [f for f in want if f not in names]}
            own_rows = int((sel & np.isfinite(Xf[:, cols]).all(axis=1)).sum())
            all_rows = int((sel & np.isfinite(Xf).all(axis=1)).sum())
            if n_hard >= self.min_rows and own_rows > len(cols) + 1:
                experts[regime] = self._fit_one(Xf[sel][:, cols], y[sel], fnames, sw[sel] * W[sel, j])
                row.update(source="own", note="")
            else:
                cause = (f"{n_hard} rows < min_rows={self.min_rows}" if n_hard < self.min_rows else
                         f"{own_rows} gated rows with complete features <= {len(cols) + 1} (features + intercept)")
                if self.fallback == "shrink" and n_hard >= 2 and all_rows >= 2:
                    experts[regime] = self._fit_one(Xf[sel], y[sel], list(names), sw[sel] * W[sel, j],
                                                    prior=self.global_expert_.coef,
                                                    prior_scale=self.min_rows / max(n_hard, 1))
                    row.update(source="shrunk", features=list(names), note=f"{cause}: shrunk toward the global expert")
                else:
                    experts[regime] = self.global_expert_
                    row.update(source="global", features=list(names), note=f"{cause}: uses the global expert")
                warnings.warn(f"MoLERegressor({self.target}): regime {regime!r}: {row['note']}")
            rows.append(row)
        return experts, pd.DataFrame(rows)

    def _search(self, Xf, names, G, y, sw, finite, groups, start, grids):
        """Grouped-CV grid search of the rule thresholds (lower held-out MAPE wins)."""
        idx = np.flatnonzero(finite)
        if groups is not None and len(np.unique(groups[idx])) >= self.cv:
            folds = list(GroupKFold(n_splits=self.cv).split(idx, groups=groups[idx]))
        else:
            folds = list(KFold(n_splits=self.cv, shuffle=True, random_state=self.random_state).split(idx))

        def score(th):
            det = RuleDetector(self.target, th, self.gate_width).fit()
            W, H = det.weights(G), det.hard_weights(G)
            errs, ns = [], []
            for tr, te in folds:
                mtr = np.zeros(len(y), bool)
                mtr[idx[tr]] = True
                te_i = idx[te]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.global_expert_, saved = self._fit_one(Xf[mtr], y[mtr], names, sw[mtr]), self.global_expert_
                    try:
                        ex, _ = self._fit_experts(Xf, names, y, sw, mtr, W, H)
                    finally:
                        self.global_expert_ = saved
                P = self._expert_matrix(ex, Xf[te_i], names)
                pred = self._mix(W[te_i], P, Xf[te_i], names)
                errs.append(mape(y[te_i], pred, self.ape_floor_) * len(te_i))
                ns.append(len(te_i))
            return float(sum(errs) / sum(ns))

        best, trials = search_thresholds(score, self.target, start, grids)
        default_score = next((t["score"] for t in trials
                              if all(t[k] == v for k, v in {**default_thresholds(self.target), **start}.items())), None)
        self.threshold_search_ = {"best": best, "best_score": min(t["score"] for t in trials),
                                  "default_score": default_score, "n_trials": len(trials)}
        return best

    # ------------------------------------------------------------------------------------ prediction
    def _expert_matrix(self, experts, Xf, names):
        P = np.empty((len(Xf), len(self.regimes_)))
        for j, regime in enumerate(self.regimes_):
            e = experts[regime]
            cols = [names.index(f) for f in e.features]
            P[:, j] = e.predict(Xf[:, cols])
        return P

    def _mix(self, W, P, Xf, names):
        good = np.isfinite(P)
        Wg = np.where(good, W, 0.0)
        tot = Wg.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            pred = np.where(tot > 0, (Wg * np.where(good, P, 0.0)).sum(axis=1) / np.where(tot > 0, tot, 1.0), np.nan)
        for level, g in (("global", self.global_expert_), ("backup", self.backup_expert_)):
            bad = ~np.isfinite(pred)
            if bad.any():
                pred[bad] = g.predict(Xf[bad][:, [names.index(f) for f in g.features]])
        bad = ~np.isfinite(pred)
        if bad.any():
            log.warning("%d rows have NaN in every expert's features (first rows %s); predicted the training "
                        "median %.1f µs", int(bad.sum()), np.flatnonzero(bad)[:5].tolist(), self.constant_)
            pred[bad] = self.constant_
        return np.maximum(pred, self.floor_)

    def _hard(self, G):
        if isinstance(self.detector_, RuleDetector):
            return self.detector_.hard_weights(G)
        W = self.detector_.weights(G)
        H = np.zeros_like(W)
        H[np.arange(len(W)), W.argmax(axis=1)] = 1.0
        return H

    def _predict_arrays(self, Xf, names, G):
        W = self.detector_.weights(G)
        return self._mix(W, self._expert_matrix(self.experts_, Xf, names), Xf, names)

    def _features(self, X):
        if self.generic_:
            X = validate_data(self, X, reset=False)
            return np.asarray(X, dtype="float64"), None
        if not self._is_canonical(X):
            raise ValueError(f"MoLERegressor was fitted on a canonical {self.target} table; predict needs a "
                             f"DataFrame with columns {list(F.SCOPE_KEY)} and the raw inputs {F.RAW_INPUTS[self.target]}")
        Xf = F.compute_features(self.feature_names_, X, F.table_scope_constants(X)[0])
        return Xf, F.gate_inputs(X, self.target)

    def predict(self, X) -> np.ndarray:
        """Predicted target, µs, finite and >= ``floor_``."""
        check_is_fitted(self, "experts_")
        Xf, G = self._features(X)
        if self.generic_:
            return self.global_expert_.predict(Xf)
        return self._predict_arrays(Xf, self.feature_names_, G)

    def predict_regime(self, X) -> np.ndarray:
        """Hard regime label per row (the zero-width decision list, or the classifier's most likely regime)."""
        check_is_fitted(self, "experts_")
        if self.generic_:
            return np.full(len(X), "global", dtype=object)
        G = F.gate_inputs(X, self.target)
        return np.asarray(self.regimes_, dtype=object)[self._hard(G).argmax(axis=1)]

    def gate_weights(self, X) -> pd.DataFrame:
        """Soft gate weights per regime (rows sum to 1)."""
        check_is_fitted(self, "experts_")
        return pd.DataFrame(self.detector_.weights(F.gate_inputs(X, self.target)), columns=list(self.regimes_),
                            index=X.index)

    def score(self, X, y, sample_weight=None) -> float:
        """Negative MAPE (fraction; higher is better), the release gate's metric."""
        y = np.asarray(y, dtype="float64").ravel()
        ok = np.isfinite(y)
        return -mape(y[ok], self.predict(X)[ok], self.ape_floor_)

    # --------------------------------------------------------------------------------------- spec
    def to_spec(self) -> dict:
        """Complete, JSON-safe description of the fitted model. Semantics (format ``molerd.mole/v1``):

        For one raw row r (columns ``features.RAW_INPUTS[target]`` + hardware, model, tp):

        1. constants c = ``scope_constants[scope_id]`` with scope_id = "hardware|model|tp" (or recompute with
           ``features.scope_constants``); each feature f_k = ``feature_catalog[f_k].expression`` over r and c.
        2. gate inputs g = ``gate.inputs`` expressions over r (prefill_ratio = prefill/(prefill+decode+1e-6)).
           A consumer that cannot see engine state (BLIS StepTime) substitutes ``state_free.assume`` for the
           inputs listed in ``state_free.state_inputs``.
        3. gate weights w over ``regimes`` (sum 1):
           * kind "rules": walk ``gate.rules`` in order with remaining = 1; each rule fires with
             s = 1/(1+exp(−direction·slope·(g[input] − center))) (if width == 0: s = [g[input] op threshold]);
             s = 0 if g[input] is NaN; w[rule.regime] += remaining·s; remaining ·= (1 − s); finally
             w[default_regime] += remaining.
           * kind "classifier": z = (fill_nan(g[inputs], median) − mean)/scale; multi-class: softmax(intercept
             + coef·z) over classes; two classes: p(classes[1]) = sigmoid(intercept[0] + coef[0]·z); regimes
             not in classes get 0.
        4. each regime's expert: e_R = intercept_R + Σ coef_R[k]·f_{features_R[k]} (a thin regime's block
           holds the global expert's or a shrunk vector; ``source`` says which).
        5. prediction = max(prediction_floor_us, Σ_R w_R·e_R) in µs, where regimes whose e_R is NaN (a NaN raw
           input) are left out and the rest renormalised; if all are NaN, use ``global_expert``; if that is NaN,
           ``backup_expert`` (only features that were never missing in training); if that is NaN too,
           ``constant_us`` (the training median).
        """
        check_is_fitted(self, "experts_")
        if self.generic_:
            raise ValueError("to_spec needs a model fitted on a canonical table (generic numpy mode has no "
                             "feature catalog)")
        key = "beta" if self.target == "beta" else f"alpha:{self.alpha_target}"
        det = self.detector_.to_spec()
        if self.detector == "learned":
            det["kind"] = "rules"
            det["learned"] = {k: v for k, v in self.threshold_search_.items()}
        state_inputs = [c for c in F.GATE_INPUTS[self.target] if c != "prefill_ratio"]
        assume = {c: self.gate_medians_[c] for c in state_inputs}
        all_feats = sorted({f for e in [*self.experts_.values(), self.global_expert_] for f in e.features})
        regimes = {}
        rep = self.regime_report_.set_index("regime")
        for r in self.regimes_:
            block = self.experts_[r].to_spec()
            block.update(source=str(rep.loc[r, "source"]), n_rows=int(rep.loc[r, "n_rows"]),
                         note=str(rep.loc[r, "note"]))
            regimes[r] = block
        spec = {
            "format": SPEC_FORMAT,
            "target": self.target,
            "target_semantics": TARGET_SEMANTICS[key],
            "units": "us",
            "feature_set": self.feature_set,
            "loss": self.loss,
            "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.get_params().items()},
            "prediction_floor_us": float(self.floor_),
            "regimes": list(self.regimes_),
            "gate": {**det, "inputs": dict(F.GATE_INPUTS[self.target])},
            "experts": regimes,
            "global_expert": self.global_expert_.to_spec(),
            "backup_expert": self.backup_expert_.to_spec(),
            "constant_us": self.constant_,
            "state_free": {"state_inputs": state_inputs, "assume": assume,
                           "regime": str(self.predict_regime_from_gate(assume)),
                           "rule": "substitute `assume` for the state inputs and run the gate as usual"},
            "feature_catalog": F.catalog_spec(all_feats),
            "raw_inputs": list(F.RAW_INPUTS[self.target]),
            "scope_constants": self.scope_constants_,
            "dropped_features": dict(self.dropped_features_),
            "n_dropped_rows": int(self.n_dropped_rows_),
        }
        return _json_safe(spec)

    def predict_regime_from_gate(self, g: dict) -> str:
        G = pd.DataFrame({c: [g.get(c, np.nan)] for c in F.GATE_INPUTS[self.target]})
        if self.target == "beta" and "prefill_ratio" not in g:
            G["prefill_ratio"] = np.nan
        return str(np.asarray(self.regimes_, dtype=object)[self._hard(G).argmax(axis=1)][0])


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else (None if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    return obj


def predict_from_spec(spec: dict, raw: pd.DataFrame, state_free: bool = False) -> np.ndarray:
    """Evaluate a ``to_spec()`` dict on raw rows, following only the spec's documented semantics."""
    target = spec["target"]
    regimes = spec["regimes"]
    n = len(raw)
    const = {k: np.empty(n) for k in F.SCOPE_CONSTANTS}
    sids = [F.scope_id(h, m, t) for h, m, t in zip(raw["hardware"].astype(str), raw["model"].astype(str),
                                                   raw["tp"].astype(int))]
    for sid in set(sids):
        c = spec["scope_constants"].get(sid) or F.scope_constants(*sid.split("|")[:2], int(sid.split("|")[2]))
        sel = np.array([s == sid for s in sids])
        for k, v in c.items():
            const[k][sel] = v
    G = F.gate_inputs(raw, target)
    if state_free:
        for c, v in spec["state_free"]["assume"].items():
            G[c] = v
    gate = spec["gate"]
    W = np.zeros((n, len(regimes)))
    if gate["kind"] == "rules":
        rules = [Rule(r["regime"], r["input"], r["op"], r["threshold"], r["width"]) for r in gate["rules"]]
        W = soft_weights(G, rules, tuple(regimes), gate["default_regime"])
    else:
        Z = np.column_stack([G[c].to_numpy(dtype="float64", na_value=np.nan) for c in gate["inputs"]])
        Z = np.where(np.isnan(Z), np.asarray(gate["median"]), Z)
        Z = (Z - np.asarray(gate["mean"])) / np.asarray(gate["scale"])
        classes = gate["classes"]
        if len(classes) == 1:
            W[:, regimes.index(classes[0])] = 1.0
        else:
            coef, b = np.asarray(gate["coef"]), np.asarray(gate["intercept"])
            if len(classes) == 2:
                p1 = 1.0 / (1.0 + np.exp(-(Z @ coef[0] + b[0])))
                P = np.column_stack([1 - p1, p1])
            else:
                L = Z @ coef.T + b
                L -= L.max(axis=1, keepdims=True)
                P = np.exp(L) / np.exp(L).sum(axis=1, keepdims=True)
            for j, c in enumerate(classes):
                W[:, regimes.index(c)] = P[:, j]
    P = np.empty((n, len(regimes)))
    for j, r in enumerate(regimes):
        e = spec["experts"][r]
        X = F.compute_features(e["features"], raw, const)
        P[:, j] = e["intercept"] + X @ np.asarray(e["coef"], dtype="float64")
    good = np.isfinite(P)
    Wg = np.where(good, W, 0.0)
    tot = Wg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        pred = np.where(tot > 0, (Wg * np.where(good, P, 0.0)).sum(axis=1) / np.where(tot > 0, tot, 1.0), np.nan)
    for key in ("global_expert", "backup_expert"):
        bad = ~np.isfinite(pred)
        if bad.any():
            g = spec[key]
            Xg = F.compute_features(g["features"], raw.iloc[np.flatnonzero(bad)],
                                    {k: v[bad] for k, v in const.items()})
            pred[bad] = g["intercept"] + Xg @ np.asarray(g["coef"], dtype="float64")
    pred = np.where(np.isfinite(pred), pred, spec["constant_us"])
    return np.maximum(pred, spec["prediction_floor_us"])
