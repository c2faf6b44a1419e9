"""Baselines the MoLE-RD gate is measured against, with the same fit/predict API on canonical tables.

* :class:`BlackboxBeta`  — BLIS's removed ``blackbox`` backend: β0 + β1·prefill_tokens + β2·decode_tokens.
* :class:`BlackboxAlpha` — α0 + α1·prompt_tokens (BLIS blackbox QueueingTime).
* :class:`UnionRidge`    — one linear model on the union of every regime's features (no regimes).
* :class:`LittlesLawAlpha` — parameter-free queueing estimate waiting × mean service ÷ max(running, 1).
* :class:`GBMCeiling`    — non-linear ceiling: HistGradientBoostingRegressor on log(y) over all raw inputs
  and features (not exportable to BLIS; it tells how much a non-linear model could gain).

The linear baselines are fitted with the same relative-error loss as MoLE-RD by default (``loss``), so the
comparison isolates regimes and features, not the loss.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.utils.validation import check_is_fitted

from molerd import features as F
from molerd.experts import DEFAULT_ALPHAS, fit_expert
from molerd.metrics import ape_floor, mape


def _floor(given, target: str) -> float:
    """The APE floor a baseline fits and scores with: the one given, else the metric's for ``target``."""
    return float(given) if given is not None else ape_floor(target)


def _cols(X: pd.DataFrame, cols) -> np.ndarray:
    missing = [c for c in cols if c not in X.columns]
    if missing:
        raise KeyError(f"baseline needs column(s) {missing}, which the table lacks")
    return np.column_stack([X[c].to_numpy(dtype="float64", na_value=np.nan) for c in cols])


class _LinearOnColumns(RegressorMixin, BaseEstimator):
    columns: tuple[str, ...] = ()

    target_key = "beta"

    def __init__(self, loss="relative", alphas=DEFAULT_ALPHAS, ape_floor_us=None):
        self.loss = loss
        self.alphas = alphas
        self.ape_floor_us = ape_floor_us

    def fit(self, X: pd.DataFrame, y, sample_weight=None):
        y = np.asarray(y, dtype="float64")
        self.ape_floor_ = _floor(self.ape_floor_us, self.target_key)
        self.expert_ = fit_expert(_cols(X, self.columns), y, list(self.columns), sample_weight, self.loss,
                                  self.alphas, ape_floor=self.ape_floor_)
        pos = y[np.isfinite(y) & (y > 0)]
        self.floor_ = 0.5 * float(pos.min()) if len(pos) else 0.0
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        check_is_fitted(self, "expert_")
        return np.maximum(self.expert_.predict(_cols(X, self.columns)), self.floor_)

    def score(self, X, y, sample_weight=None):
        """Negative MAPE, like MoLERegressor."""
        return -mape(y, self.predict(X), self.ape_floor_)

    def coefficients(self) -> list[float]:
        """[intercept, coef...] in the column order of ``columns`` (BLIS blackbox order)."""
        return [float(self.expert_.intercept), *map(float, self.expert_.coef)]


class BlackboxBeta(_LinearOnColumns):
    """StepTime = β0 + β1·prefill_tokens + β2·decode_tokens (µs)."""

    columns = ("prefill_tokens", "decode_tokens")


class BlackboxAlpha(_LinearOnColumns):
    """QueueingTime = α0 + α1·prompt_tokens (µs)."""

    columns = ("prompt_tokens",)
    target_key = "alpha"


class UnionRidge(RegressorMixin, BaseEstimator):
    """A single ridge on the union of all regimes' features of ``feature_set`` (one linear model)."""

    def __init__(self, target="beta", feature_set="physics", loss="relative", alphas=DEFAULT_ALPHAS, positive=False,
                 ape_floor_us=None):
        self.target = target
        self.feature_set = feature_set
        self.loss = loss
        self.alphas = alphas
        self.positive = positive
        self.ape_floor_us = ape_floor_us

    def fit(self, X, y, sample_weight=None):
        Xf, names, self.dropped_features_ = F.feature_matrix(X, F.union_features(self.target, self.feature_set))
        y = np.asarray(y, dtype="float64")
        self.ape_floor_ = _floor(self.ape_floor_us, self.target)
        self.expert_ = fit_expert(Xf, y, names, sample_weight, self.loss, self.alphas, self.positive,
                                  ape_floor=self.ape_floor_)
        self.median_ = float(np.nanmedian(y))
        pos = y[np.isfinite(y) & (y > 0)]
        self.floor_ = 0.5 * float(pos.min()) if len(pos) else 0.0
        return self

    def predict(self, X):
        check_is_fitted(self, "expert_")
        Xf = F.compute_features(self.expert_.features, X, F.table_scope_constants(X)[0])
        p = self.expert_.predict(Xf)  # rows with a NaN raw input get the training median (no imputation of inputs)
        return np.maximum(np.where(np.isfinite(p), p, self.median_), self.floor_)

    def score(self, X, y, sample_weight=None):
        return -mape(y, self.predict(X), self.ape_floor_)


class LittlesLawAlpha(RegressorMixin, BaseEstimator):
    """Parameter-free alpha: waiting_depth × avg_service_time_us ÷ max(running_depth, 1), at least ``floor_us``.

    Rows without engine state (NaN inputs) get the training median target; ``n_no_state_`` counts them."""

    def __init__(self, floor_us=1.0, ape_floor_us=None):
        self.floor_us = floor_us
        self.ape_floor_us = ape_floor_us

    def fit(self, X, y, sample_weight=None):
        y = np.asarray(y, dtype="float64")
        self.ape_floor_ = _floor(self.ape_floor_us, "alpha")
        self.median_ = float(np.nanmedian(y))
        self.n_no_state_ = int(np.isnan(self._raw(X)).sum())
        return self

    def _raw(self, X):
        return F.compute_features(["littles_law_us"], X, {})[:, 0]

    def predict(self, X):
        check_is_fitted(self, "median_")
        v = self._raw(X)
        return np.maximum(np.where(np.isfinite(v), v, self.median_), self.floor_us)

    def score(self, X, y, sample_weight=None):
        return -mape(y, self.predict(X), self.ape_floor_)


class GBMCeiling(RegressorMixin, BaseEstimator):
    """HistGradientBoostingRegressor on log(y) over raw inputs, gate inputs and all catalog features.

    ``loss="squared_error"`` (default) fits log(y) in least squares (the geometric mean); ``"absolute_error"``
    with row weights 1/max(y, APE floor) makes it predict the weighted
    conditional median, which is exactly what minimises MAPE (the median commutes with the log); for a heavy-tailed target
    (queueing delays spread over orders of magnitude) that is far below the geometric mean which
    ``"squared_error"`` on log(y) gives, and far better in MAPE."""

    def __init__(self, target="beta", loss="squared_error", max_iter=300, learning_rate=0.1, max_leaf_nodes=31,
                 random_state=0, ape_floor_us=None):
        self.target = target
        self.loss = loss
        self.ape_floor_us = ape_floor_us
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.random_state = random_state

    def _design(self, X, fit=False):
        names = F.union_features(self.target, "physics") + [n for n in F.union_features(self.target, "seed")
                                                             if n not in F.union_features(self.target, "physics")]
        if fit:
            _, self.features_, _ = F.feature_matrix(X, names)
        Xf = F.compute_features(self.features_, X, F.table_scope_constants(X)[0])
        G = F.gate_inputs(X, self.target).to_numpy(dtype="float64")
        raw = np.column_stack([X[c].to_numpy(dtype="float64", na_value=np.nan) if c in X.columns
                               else np.full(len(X), np.nan) for c in F.RAW_INPUTS[self.target]])
        D = np.column_stack([Xf, G, raw])
        if fit:  # a column with no value at all (input absent from the table) carries no information
            self.columns_kept_ = np.flatnonzero(np.isfinite(D).any(axis=0))
        return D[:, self.columns_kept_]

    def fit(self, X, y, sample_weight=None):
        y = np.asarray(y, dtype="float64")
        ok = np.isfinite(y) & (y > 0)
        self.model_ = HistGradientBoostingRegressor(loss=self.loss, max_iter=self.max_iter,
                                                    learning_rate=self.learning_rate,
                                                    max_leaf_nodes=self.max_leaf_nodes,
                                                    random_state=self.random_state)
        D = self._design(X, fit=True)
        self.ape_floor_ = _floor(self.ape_floor_us, self.target)
        sw = np.ones(int(ok.sum())) if sample_weight is None else np.asarray(sample_weight, dtype="float64")[ok]
        if self.loss == "absolute_error":
            sw = sw / np.maximum(y[ok], self.ape_floor_)
            sw = sw / sw.mean()
        self.model_.fit(D[ok], np.log(y[ok]), sample_weight=sw)
        return self

    def predict(self, X):
        check_is_fitted(self, "model_")
        return np.exp(self.model_.predict(self._design(X)))

    def score(self, X, y, sample_weight=None):
        return -mape(y, self.predict(X), self.ape_floor_)
