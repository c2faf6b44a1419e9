"""Regime detectors and soft gates.

A detector turns *gate inputs* (``molerd.features.GATE_INPUTS``: prefill_ratio, kv_usage_ratio, queue_depth,
recent_preemptions) into weights over the closed set of regimes (``molerd.features.REGIMES``) that sum to 1.

* :class:`RuleDetector` — the seed's decision list (order and default thresholds 0.7/0.3/0.9 for beta,
  2/0.85/0 for alpha) made soft: each rule *i* fires with ``s_i = sigmoid(d_i·k_i·(x_i − c_i))`` and regime *i*
  gets ``w_i = s_i · Π_{j<i}(1 − s_j)``; the default regime gets ``Π_j (1 − s_j)``. Width 0 is the hard
  decision list (``s_i = [x_i op t_i]``). The slope ``k = 2·ln(19)/width`` makes ``s`` go from 0.05 to 0.95
  across ``[c − width/2, c + width/2]`` (e.g. KV pressure 0.80–0.90 around 0.85). NaN input → the rule does
  not fire.
* :func:`search_thresholds` / :func:`learn_thresholds_by_hardware` — thresholds chosen by a cross-validated
  coordinate grid search, one set per hardware.
* :class:`ClassifierDetector` — multinomial logistic regression on the gate inputs, soft weights =
  class probabilities, held-out accuracy measured on its own (``accuracy_``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, asdict
from typing import Callable, Mapping

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, KFold

from molerd.features import GATE_INPUTS, REGIMES

OPS = (">", ">=", "<", "<=")
COUNT_INPUTS = ("queue_depth", "recent_preemptions")

# Default transition-zone widths per gate input (gate_width=1.0 scales these; 0 = hard gating).
DEFAULT_WIDTHS = {"prefill_ratio": 0.1, "kv_usage_ratio": 0.1, "queue_depth": 2.0, "recent_preemptions": 1.0}

# The seed's rules in the seed's order: (regime, input, op, threshold name, default threshold).
SEED_RULES = {
    "beta": [
        ("prefill_dominated", "prefill_ratio", ">", "prefill_ratio_high", 0.7),
        ("decode_dominated", "prefill_ratio", "<", "prefill_ratio_low", 0.3),
        ("saturation", "kv_usage_ratio", ">", "saturation_kv", 0.9),
    ],
    "alpha": [
        ("low_load", "queue_depth", "<=", "low_load_max_queue_depth", 2),
        ("high_pressure", "kv_usage_ratio", ">", "high_pressure_kv", 0.85),
        ("preemption", "recent_preemptions", ">", "preemption_min_recent", 0),
    ],
}
DEFAULT_REGIME = {"beta": "mixed_balanced", "alpha": "normal_load"}

# Candidate grids for the learned thresholds.
THRESHOLD_GRIDS = {
    "prefill_ratio_high": [0.5, 0.6, 0.7, 0.8, 0.9],
    "prefill_ratio_low": [0.05, 0.1, 0.2, 0.3, 0.4],
    "saturation_kv": [0.75, 0.8, 0.85, 0.9, 0.95],
    "low_load_max_queue_depth": [0, 1, 2, 4, 8],
    "high_pressure_kv": [0.7, 0.8, 0.85, 0.9, 0.95],
    "preemption_min_recent": [0, 1, 3],
}


@dataclass(frozen=True)
class Rule:
    """One entry of the decision list. ``center`` is where the soft rule is half on; for integer counts it
    sits half-way between the last value that fails and the first that passes the hard rule."""

    regime: str
    input: str
    op: str
    threshold: float
    width: float

    @property
    def direction(self) -> float:
        return 1.0 if self.op in (">", ">=") else -1.0

    @property
    def center(self) -> float:
        if self.input in COUNT_INPUTS:
            return self.threshold + {">": 0.5, "<=": 0.5, ">=": -0.5, "<": -0.5}[self.op]
        return float(self.threshold)

    @property
    def slope(self) -> float:
        return 2.0 * math.log(19.0) / self.width if self.width > 0 else math.inf

    def fire(self, x: np.ndarray) -> np.ndarray:
        """Soft firing strength in [0, 1]; the hard rule when width is 0; 0 where x is NaN."""
        x = np.asarray(x, dtype="float64")
        nan = np.isnan(x)
        if self.width <= 0:
            xx = np.where(nan, 0.0, x)
            hard = {">": xx > self.threshold, ">=": xx >= self.threshold,
                    "<": xx < self.threshold, "<=": xx <= self.threshold}[self.op]
            return np.where(nan, 0.0, hard.astype("float64"))
        z = self.direction * self.slope * (np.where(nan, self.center, x) - self.center)
        s = 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1/(1+exp(-z)), overflow-free
        return np.where(nan, 0.0, s)

    def to_spec(self) -> dict:
        d = asdict(self)
        d.update(center=self.center, slope=None if self.width <= 0 else self.slope, direction=self.direction)
        return d


def build_rules(target: str, thresholds: Mapping[str, float] | None = None,
                gate_width: float | Mapping[str, float] | None = 1.0) -> list[Rule]:
    """The seed decision list for ``target`` with ``thresholds`` overriding defaults by name and
    ``gate_width`` either a scale on ``DEFAULT_WIDTHS`` (1.0 defaults, 0 hard) or a dict input → width."""
    if target not in SEED_RULES:
        raise ValueError(f"unknown target {target!r}; valid: {', '.join(SEED_RULES)}")
    thresholds = dict(thresholds or {})
    known = {r[3] for r in SEED_RULES[target]}
    unknown = set(thresholds) - known
    if unknown:
        raise ValueError(f"unknown {target} threshold(s) {sorted(unknown)}; valid: {sorted(known)}")
    rules = []
    for regime, inp, op, tname, default in SEED_RULES[target]:
        if gate_width is None:
            width = DEFAULT_WIDTHS[inp]
        elif isinstance(gate_width, Mapping):
            width = float(gate_width.get(inp, DEFAULT_WIDTHS[inp]))
        else:
            width = float(gate_width) * DEFAULT_WIDTHS[inp]
        if not width >= 0:
            raise ValueError(f"gate width for {inp!r} must be >= 0, got {width!r}")
        rules.append(Rule(regime, inp, op, float(thresholds.get(tname, default)), width))
    return rules


def threshold_names(target: str) -> list[str]:
    return [r[3] for r in SEED_RULES[target]]


def default_thresholds(target: str) -> dict[str, float]:
    return {r[3]: float(r[4]) for r in SEED_RULES[target]}


def soft_weights(G: pd.DataFrame, rules: list[Rule], regimes: tuple[str, ...], default_regime: str) -> np.ndarray:
    """Decision-list gate weights, shape (n_rows, len(regimes)) in ``regimes`` order; each row sums to 1."""
    n = len(G)
    W = np.zeros((n, len(regimes)))
    remaining = np.ones(n)
    for rule in rules:
        x = G[rule.input].to_numpy(dtype="float64", na_value=np.nan) if rule.input in G else np.full(n, np.nan)
        s = rule.fire(x)
        W[:, regimes.index(rule.regime)] += remaining * s
        remaining = remaining * (1.0 - s)
    W[:, regimes.index(default_regime)] += remaining
    return W


class RuleDetector(BaseEstimator):
    """The seed's rule detector with thresholds and gate widths as parameters (soft decision list).

    Parameters
    ----------
    target : {"beta", "alpha"}
    thresholds : dict or None — overrides of ``default_thresholds(target)`` by name.
    gate_width : float or dict — scale on ``DEFAULT_WIDTHS`` (0 = hard), or input → width.
    """

    def __init__(self, target="beta", thresholds=None, gate_width=1.0):
        self.target = target
        self.thresholds = thresholds
        self.gate_width = gate_width

    def fit(self, G=None, y=None):
        self.rules_ = build_rules(self.target, self.thresholds, self.gate_width)
        self.regimes_ = REGIMES[self.target]
        self.default_regime_ = DEFAULT_REGIME[self.target]
        return self

    def weights(self, G: pd.DataFrame) -> np.ndarray:
        return soft_weights(G, self.rules_, self.regimes_, self.default_regime_)

    def hard_weights(self, G: pd.DataFrame) -> np.ndarray:
        hard = [Rule(r.regime, r.input, r.op, r.threshold, 0.0) for r in self.rules_]
        return soft_weights(G, hard, self.regimes_, self.default_regime_)

    def predict(self, G: pd.DataFrame) -> np.ndarray:
        """Hard regime label per row (the zero-width decision list)."""
        return np.asarray(self.regimes_, dtype=object)[self.hard_weights(G).argmax(axis=1)]

    def to_spec(self) -> dict:
        return {
            "kind": "rules",
            "rule_order": [r.regime for r in self.rules_],
            "default_regime": self.default_regime_,
            "thresholds": {name: r.threshold for name, r in zip(threshold_names(self.target), self.rules_)},
            "rules": [r.to_spec() for r in self.rules_],
        }


# How to move raw columns so that one gate input sweeps a range (others fixed).
def _set_gate_input(rows: pd.DataFrame, gate_input: str, value: float) -> pd.DataFrame:
    out = rows.copy()
    if gate_input == "prefill_ratio":
        total = out["prefill_tokens"].to_numpy(dtype="float64") + out["decode_tokens"].to_numpy(dtype="float64")
        out["prefill_tokens"] = value * total
        out["decode_tokens"] = (1.0 - value) * total
    elif gate_input == "queue_depth":
        out["waiting_depth"] = np.asarray(value, dtype="float64")
    elif gate_input == "recent_preemptions":
        col = "num_preempted" if "num_preempted" in out.columns else "recent_preemptions"
        out[col] = np.asarray(value, dtype="float64")
    else:
        out[gate_input] = np.asarray(value, dtype="float64")
    return out


def boundary_jumps(estimator, rows: pd.DataFrame, half_range: float | None = None, n_grid: int = 201,
                   predict: Callable[[pd.DataFrame], np.ndarray] | None = None) -> pd.DataFrame:
    """Largest prediction jump across each rule boundary.

    For every rule of ``estimator.detector_`` (a fitted MoLERegressor with a rule detector), sweep that
    rule's gate input over ``[t − h, t + h]`` on ``n_grid`` points (raw columns moved accordingly, e.g.
    prefill_ratio at constant batch tokens) for each base row, and report the largest relative change
    between neighbouring points, max |Δŷ| / mean(ŷ). With hard gating it stays finite as the grid refines
    (a discontinuity); with soft gating it shrinks toward 0. One row per rule: regime, input, threshold,
    max_rel_jump. ``predict`` (default ``estimator.predict``) lets a caller sweep another prediction of the
    same fitted experts, e.g. the hard-gated one.
    """
    predict = predict or estimator.predict
    out = []
    for rule in estimator.detector_.rules_:
        h = half_range if half_range is not None else max(2.0 * DEFAULT_WIDTHS[rule.input], 1e-3)
        lo = rule.threshold - h
        if rule.input in ("prefill_ratio", "kv_usage_ratio"):
            lo, hi = max(lo, 0.0), min(rule.threshold + h, 1.0)
        else:
            lo, hi = max(lo, 0.0), rule.threshold + h
        grid = np.linspace(lo, hi, n_grid)
        k = len(rows)
        stacked = rows.iloc[np.tile(np.arange(k), n_grid)].reset_index(drop=True)
        preds = predict(_set_gate_input(stacked, rule.input, np.repeat(grid, k))).reshape(n_grid, k).T
        rel = np.abs(np.diff(preds, axis=1)) / np.maximum(preds.mean(axis=1, keepdims=True), 1e-12)
        out.append({"regime": rule.regime, "input": rule.input, "threshold": rule.threshold,
                    "width": rule.width, "max_rel_jump": float(rel.max())})
    return pd.DataFrame(out)


def search_thresholds(score_fn: Callable[[dict], float], target: str, start: Mapping[str, float] | None = None,
                      grids: Mapping[str, list] | None = None, rounds: int = 1) -> tuple[dict, list[dict]]:
    """Coordinate grid search: for each threshold in rule order try its grid, keep the lowest ``score_fn``
    (a cross-validated error, lower is better). Returns ``(best_thresholds, trials)``; deterministic."""
    best = dict(default_thresholds(target))
    best.update(start or {})
    grids = {**THRESHOLD_GRIDS, **(grids or {})}
    trials = []
    best_score = score_fn(dict(best))
    trials.append({**best, "score": best_score})
    for _ in range(rounds):
        for name in threshold_names(target):
            for cand in grids[name]:
                trial = {**best, name: float(cand)}
                if target == "beta" and trial["prefill_ratio_low"] >= trial["prefill_ratio_high"]:
                    continue
                if trial == best:
                    continue
                s = score_fn(dict(trial))
                trials.append({**trial, "score": s})
                if s < best_score - 1e-12:
                    best, best_score = trial, s
    return best, trials


def learn_thresholds_by_hardware(X: pd.DataFrame, y, estimator, cv: int = 3,
                                 grids: Mapping[str, list] | None = None) -> pd.DataFrame:
    """Per-hardware learned thresholds: fit ``clone(estimator)`` with ``detector="learned"`` on each
    hardware's rows and report the chosen values and CV error. One row per hardware."""
    y = np.asarray(y, dtype="float64")
    rows = []
    for hw in sorted(pd.unique(X["hardware"].astype(str))):
        sel = (X["hardware"].astype(str) == hw).to_numpy()
        est = clone(estimator).set_params(detector="learned", cv=cv)
        if grids is not None:
            est.set_params(detector_params={"grids": dict(grids)})
        est.fit(X.loc[sel], y[sel])
        rows.append({"hardware": hw, "n_rows": int(sel.sum()), **est.detector_.to_spec()["thresholds"],
                     "cv_mape": est.threshold_search_["best_score"],
                     "cv_mape_default": est.threshold_search_["default_score"]})
    return pd.DataFrame(rows)


class ClassifierDetector(BaseEstimator):
    """Multinomial logistic regression on standardised gate inputs; soft weights are class probabilities.

    ``fit(G, labels, groups=None)`` also measures ``accuracy_`` on held-out folds (grouped by run when
    ``groups`` is given) before refitting on everything. NaN gate inputs are replaced by the training
    median (recorded in ``to_spec``), since a classifier must see a number.
    """

    def __init__(self, target="beta", C=1.0, cv=3, random_state=None):
        self.target = target
        self.C = C
        self.cv = cv
        self.random_state = random_state

    def _prep(self, G: pd.DataFrame) -> np.ndarray:
        Z = np.column_stack([G[c].to_numpy(dtype="float64", na_value=np.nan) if c in G else np.full(len(G), np.nan)
                             for c in self.inputs_])
        Z = np.where(np.isnan(Z), self.median_, Z)
        return (Z - self.mean_) / self.scale_

    def fit(self, G: pd.DataFrame, labels, groups=None):
        labels = np.asarray(labels, dtype=object)
        self.inputs_ = list(GATE_INPUTS[self.target])
        self.regimes_ = REGIMES[self.target]
        raw = np.column_stack([G[c].to_numpy(dtype="float64", na_value=np.nan) for c in self.inputs_])
        med = np.nanmedian(np.where(np.isnan(raw).all(axis=0), 0.0, raw), axis=0)
        self.median_ = np.where(np.isnan(med), 0.0, med)
        filled = np.where(np.isnan(raw), self.median_, raw)
        self.mean_ = filled.mean(axis=0)
        sd = filled.std(axis=0)
        self.scale_ = np.where(sd > 0, sd, 1.0)
        Z = (filled - self.mean_) / self.scale_
        classes = np.unique(labels)
        if len(classes) < 2:
            self.clf_ = None
            self.only_class_ = classes[0]
            self.accuracy_ = 1.0
            return self
        # held-out accuracy first (on its own, before the final fit)
        if groups is not None and len(np.unique(groups)) >= self.cv:
            splits = GroupKFold(n_splits=self.cv).split(Z, labels, groups)
        else:
            splits = KFold(n_splits=self.cv, shuffle=True, random_state=self.random_state).split(Z)
        correct = total = 0
        for tr, te in splits:
            if len(np.unique(labels[tr])) < 2:
                pred = np.full(len(te), labels[tr][0], dtype=object)
            else:
                m = LogisticRegression(C=self.C, max_iter=500).fit(Z[tr], labels[tr])
                pred = m.predict(Z[te])
            correct += int((pred == labels[te]).sum())
            total += len(te)
        self.accuracy_ = correct / max(total, 1)
        self.clf_ = LogisticRegression(C=self.C, max_iter=500).fit(Z, labels)
        return self

    def weights(self, G: pd.DataFrame) -> np.ndarray:
        W = np.zeros((len(G), len(self.regimes_)))
        if self.clf_ is None:
            W[:, self.regimes_.index(self.only_class_)] = 1.0
            return W
        P = self.clf_.predict_proba(self._prep(G))
        for j, c in enumerate(self.clf_.classes_):
            W[:, self.regimes_.index(c)] = P[:, j]
        return W

    def predict(self, G: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.regimes_, dtype=object)[self.weights(G).argmax(axis=1)]

    def to_spec(self) -> dict:
        """weights = softmax(intercept + coef · ((fill_nan(x, median) − mean) / scale)) over ``classes``
        (a two-class fit is the binary logistic: p(classes[1]) = sigmoid(intercept[0] + coef[0]·z))."""
        spec = {"kind": "classifier", "model": "multinomial_logistic", "inputs": self.inputs_,
                "median": self.median_.tolist(), "mean": self.mean_.tolist(), "scale": self.scale_.tolist(),
                "heldout_accuracy": float(self.accuracy_)}
        if self.clf_ is None:
            spec.update(classes=[str(self.only_class_)], coef=[], intercept=[])
        else:
            spec.update(classes=[str(c) for c in self.clf_.classes_], coef=self.clf_.coef_.tolist(),
                        intercept=self.clf_.intercept_.tolist())
        return spec
