"""Numerical robustness of ``MoLERegressor`` (issue 8): degenerate training data never yields NaN/inf or a crash.

Cases: constant features inside a regime, a singular design (duplicated / collinear columns), all-equal
targets, a regime with only 1-3 rows (fallback with a warning and a note in ``regime_report_``), and extreme
but valid inputs at prediction time. Every prediction must be finite and >= ``floor_``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from estimator_data import make_steps
from molerd.mixture import MoLERegressor

FAST = dict(alphas=(1e-3, 1.0, 100.0))


@pytest.fixture(scope="module")
def steps():
    return make_steps(n_runs=3, steps_per_run=150, seed=11, noise=0.05)[0]


def _ok(m: MoLERegressor, X) -> np.ndarray:
    p = m.predict(X)
    assert p.shape == (len(X),)
    assert np.isfinite(p).all(), f"non-finite predictions at rows {np.flatnonzero(~np.isfinite(p))[:5]}"
    assert (p >= m.floor_).all()
    return p


def _labels(m, X):
    return pd.Series(m.predict_regime(X)).value_counts().to_dict()


def test_constant_features_in_a_regime(steps):
    """Inside decode_dominated every physics input is frozen: that expert sees constant columns only."""
    df = steps.copy()
    m0 = MoLERegressor(gate_width=0.0, min_rows=10, **FAST).fit(df, df["step_duration_us"])
    dec = m0.predict_regime(df) == "decode_dominated"
    assert dec.sum() >= 20
    for c in ["prefill_tokens", "decode_tokens", "num_prefill_reqs", "num_decode_reqs", "running_depth",
              "sum_decode_context", "sum_prefill_attention", "max_context", "kv_usage_ratio", "waiting_depth"]:
        df.loc[dec, c] = df.loc[dec, c].iloc[0]
    df.loc[dec, "step_duration_us"] = df.loc[dec, "step_duration_us"].to_numpy() * 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no divide-by-zero / invalid from zero variance
        m = MoLERegressor(gate_width=0.0, min_rows=10, **FAST).fit(df, df["step_duration_us"])
    e = m.experts_["decode_dominated"]
    assert np.isfinite(e.coef).all() and np.isfinite(e.intercept)
    assert e.constant_features, "constant columns must be recorded (coefficient 0, effect in the intercept)"
    assert all(e.coef[e.features.index(f)] == 0.0 for f in e.constant_features)
    p = _ok(m, df)
    # the frozen regime predicts one value, the mean level of its targets (relative loss: near the median)
    y = df.loc[dec, "step_duration_us"]
    assert np.ptp(p[dec]) < 1e-6 * p[dec].mean() + 1e-9
    assert y.min() <= p[dec][0] <= y.max()


def test_singular_design_duplicated_columns_generic_mode():
    """Exactly duplicated and all-zero columns: the ridge still solves (SVD), predictions finite."""
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 100, 300)
    X = np.column_stack([a, a, 2 * a, np.zeros(300), rng.uniform(0, 1, 300)])
    y = 500 + 3 * a + rng.normal(0, 1, 300)
    m = MoLERegressor(**FAST).fit(X, y)
    p = m.predict(X)
    assert np.isfinite(p).all()
    assert np.mean(np.abs(p - y) / y) < 0.02
    coef = m.global_expert_.coef
    assert np.isfinite(coef).all() and coef[3] == 0.0
    assert np.isclose(coef[0] + coef[1] + 2 * coef[2], 3.0, rtol=0.05)  # the identifiable combination


def test_singular_design_collinear_physics_features(steps):
    """decode context strictly proportional to decode tokens and no prefill at all: collinear experts."""
    df = steps.copy()
    df["sum_decode_context"] = df["decode_tokens"] * 1000.0
    df["max_context"] = 1000.0
    df["num_decode_reqs"] = df["decode_tokens"]
    df["running_depth"] = df["decode_tokens"] + df["num_prefill_reqs"]
    y = 800 + 4.0 * df["decode_tokens"] + 0.05 * df["prefill_tokens"]
    m = MoLERegressor(min_rows=10, **FAST).fit(df, y)
    for e in [*m.experts_.values(), m.global_expert_]:
        assert np.isfinite(e.coef).all() and np.isfinite(e.intercept)
    p = _ok(m, df)
    assert np.mean(np.abs(p - y) / y) < 0.05


@pytest.mark.parametrize("loss", ["relative", "log", "squared"])
def test_all_equal_targets(steps, loss):
    y = np.full(len(steps), 1234.5)
    m = MoLERegressor(min_rows=10, loss=loss, **FAST).fit(steps, y)
    p = _ok(m, steps)
    np.testing.assert_allclose(p, 1234.5, rtol=1e-6)
    assert m.floor_ == pytest.approx(1234.5 / 2)


@pytest.mark.parametrize("n_thin", [1, 2, 3])
@pytest.mark.parametrize("fallback", ["global", "shrink"])
def test_regime_with_1_to_3_rows_falls_back_with_a_note(steps, n_thin, fallback):
    df = steps.copy()
    df["kv_usage_ratio"] = np.minimum(df["kv_usage_ratio"], 0.5)
    m0 = MoLERegressor(gate_width=0.0, min_rows=10, **FAST).fit(df, df["step_duration_us"])
    mixed = np.flatnonzero(m0.predict_regime(df) == "mixed_balanced")
    df.loc[df.index[mixed[:n_thin]], "kv_usage_ratio"] = 0.97  # only these rows are saturated
    with pytest.warns(UserWarning, match=r"regime 'saturation': %d rows < min_rows=50" % n_thin):
        m = MoLERegressor(gate_width=0.0, min_rows=50, fallback=fallback, **FAST).fit(df, df["step_duration_us"])
    assert _labels(m, df).get("saturation") == n_thin
    rep = m.regime_report_.set_index("regime")
    assert rep.loc["saturation", "n_rows"] == n_thin
    expected_source = "shrunk" if (fallback == "shrink" and n_thin >= 2) else "global"
    assert rep.loc["saturation", "source"] == expected_source
    assert f"{n_thin} rows < min_rows=50" in rep.loc["saturation", "note"]
    if expected_source == "global":
        assert m.experts_["saturation"] is m.global_expert_
    assert np.isfinite(m.experts_["saturation"].coef).all()
    _ok(m, df)
    spec = m.to_spec()  # the fallback is recorded in the release spec too
    assert spec["experts"]["saturation"]["source"] == expected_source


def test_thin_regime_note_is_truthful_when_min_rows_is_met(steps):
    """2 saturated rows with min_rows=1: too few rows for its features, so it falls back; the note must
    not claim '2 rows < min_rows=1'."""
    df = steps.copy()
    df["kv_usage_ratio"] = np.minimum(df["kv_usage_ratio"], 0.5)
    m0 = MoLERegressor(gate_width=0.0, min_rows=10, **FAST).fit(df, df["step_duration_us"])
    mixed = np.flatnonzero(m0.predict_regime(df) == "mixed_balanced")
    df.loc[df.index[mixed[:2]], "kv_usage_ratio"] = 0.97
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MoLERegressor(gate_width=0.0, min_rows=1, **FAST).fit(df, df["step_duration_us"])
    rep = m.regime_report_.set_index("regime").loc["saturation"]
    assert rep["source"] != "own"
    assert "2 rows < min_rows=1" not in rep["note"], rep["note"]


def test_extreme_inputs_at_prediction_time(steps):
    m = MoLERegressor(min_rows=10, **FAST).fit(steps, steps["step_duration_us"])
    X = steps.iloc[:6].copy()
    X["prefill_tokens"] = [0, 0, 1, 8192, 10**7, 0]
    X["decode_tokens"] = [0, 1, 0, 0, 10**6, 0]
    X["num_prefill_reqs"] = [0, 0, 1, 1, 1000, 0]
    X["num_decode_reqs"] = [0, 1, 0, 0, 10**6, 0]
    X["sum_decode_context"] = [0.0, 1.0, 0.0, 0.0, 1e12, 0.0]
    X["sum_prefill_attention"] = [0.0, 0.0, 0.5, 3e7, 1e15, 0.0]
    X["kv_usage_ratio"] = [0.0, 1.0, 0.5, 0.99, 1.0, 0.0]
    p = _ok(m, X)
    assert p[4] > p[3]  # a vastly larger batch is not predicted faster


def test_degenerate_fit_is_deterministic(steps):
    df = steps.copy()
    df["sum_decode_context"] = df["decode_tokens"] * 1000.0
    a = MoLERegressor(min_rows=10, random_state=0, **FAST).fit(df, df["step_duration_us"]).predict(df)
    b = MoLERegressor(min_rows=10, random_state=0, **FAST).fit(df, df["step_duration_us"]).predict(df)
    assert a.tobytes() == b.tobytes()
