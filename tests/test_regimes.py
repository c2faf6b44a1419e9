"""Detectors: seed rules and order, soft gates, learned thresholds, classifier, boundary jumps."""

import numpy as np
import pandas as pd
import pytest

from molerd import features as F
from molerd.mixture import MoLERegressor
from molerd.regimes import (ClassifierDetector, RuleDetector, boundary_jumps, build_rules,
                            learn_thresholds_by_hardware, search_thresholds)
from estimator_data import make_steps


def G(**cols):
    return pd.DataFrame({k: np.asarray(v, dtype=float) for k, v in cols.items()})


def test_seed_beta_rules_and_order():
    det = RuleDetector("beta", gate_width=0).fit()
    g = G(prefill_ratio=[0.8, 0.1, 0.5, 0.5, 0.8], kv_usage_ratio=[0.95, 0.95, 0.95, 0.5, 0.2],
          queue_depth=[0] * 5, recent_preemptions=[0] * 5)
    assert det.predict(g).tolist() == ["prefill_dominated", "decode_dominated", "saturation", "mixed_balanced",
                                       "prefill_dominated"]
    assert det.to_spec()["thresholds"] == {"prefill_ratio_high": 0.7, "prefill_ratio_low": 0.3, "saturation_kv": 0.9}


def test_seed_alpha_rules_and_order():
    det = RuleDetector("alpha", gate_width=0).fit()
    g = G(queue_depth=[2, 3, 3, 3, 2], kv_usage_ratio=[0.99, 0.9, 0.5, 0.5, 0.1],
          recent_preemptions=[5, 5, 1, 0, 0])
    assert det.predict(g).tolist() == ["low_load", "high_pressure", "preemption", "normal_load", "low_load"]
    det2 = RuleDetector("alpha", thresholds={"high_pressure_kv": 0.95}, gate_width=0).fit()
    assert det2.predict(g)[1] == "preemption"
    with pytest.raises(ValueError, match="unknown alpha threshold"):
        RuleDetector("alpha", thresholds={"bogus": 1}).fit()


def test_soft_weights_sum_to_one_and_hard_is_the_zero_width_limit():
    rng = np.random.default_rng(0)
    g = G(prefill_ratio=rng.uniform(0, 1, 500), kv_usage_ratio=rng.uniform(0, 1, 500),
          queue_depth=rng.integers(0, 9, 500), recent_preemptions=rng.integers(0, 3, 500))
    for target in ("beta", "alpha"):
        W = RuleDetector(target, gate_width=1.0).fit().weights(g)
        assert W.shape == (500, 4) and np.all(W >= 0)
        np.testing.assert_allclose(W.sum(axis=1), 1.0, atol=1e-12)
        H = RuleDetector(target, gate_width=0.0).fit().weights(g)
        assert set(np.unique(H)) <= {0.0, 1.0}
        W_narrow = RuleDetector(target, gate_width=1e-6).fit().weights(g)
        assert np.mean(np.abs(W_narrow - H)) < 1e-3


def test_transition_zone_matches_the_width():
    rule = build_rules("alpha", gate_width=1.0)[1]  # KV pressure 0.85, width 0.1 → zone 0.80-0.90
    assert rule.input == "kv_usage_ratio" and rule.width == pytest.approx(0.1)
    np.testing.assert_allclose(rule.fire(np.array([0.80, 0.85, 0.90])), [0.05, 0.5, 0.95], atol=1e-9)
    assert rule.fire(np.array([np.nan]))[0] == 0.0
    q = build_rules("alpha")[0]  # queue_depth <= 2: centre half-way between 2 and 3
    assert q.center == 2.5 and q.fire(np.array([0.0]))[0] > 0.9 and q.fire(np.array([5.0]))[0] < 0.1


def test_search_thresholds_finds_the_minimum():
    best, trials = search_thresholds(lambda th: abs(th["saturation_kv"] - 0.8) + abs(th["prefill_ratio_high"] - 0.6),
                                     "beta")
    assert best["saturation_kv"] == 0.8 and best["prefill_ratio_high"] == 0.6
    assert all(t["prefill_ratio_low"] < t["prefill_ratio_high"] for t in trials)


def test_learned_thresholds_recover_a_moved_boundary():
    df, _ = make_steps(n_runs=4, steps_per_run=150, seed=3, noise=0.01, thresholds={"saturation_kv": 0.8})
    y = df["step_duration_us"].to_numpy()
    m = MoLERegressor(detector="learned", gate_width=0.0, min_rows=20,
                      detector_params={"grids": {"prefill_ratio_high": [0.7], "prefill_ratio_low": [0.3]}}).fit(df, y)
    assert m.detector_.to_spec()["thresholds"]["saturation_kv"] == 0.8
    assert m.threshold_search_["best_score"] < m.threshold_search_["default_score"]
    both = pd.concat([df, df.assign(hardware="H200", trace_id=df["trace_id"] + "-h200")], ignore_index=True)
    rep = learn_thresholds_by_hardware(both, np.concatenate([y, y]), MoLERegressor(gate_width=0.0, min_rows=20),
                                       grids={"prefill_ratio_high": [0.7], "prefill_ratio_low": [0.3],
                                              "saturation_kv": [0.8, 0.9]})
    assert rep["hardware"].tolist() == ["H100", "H200"] and set(rep["saturation_kv"]) == {0.8}


def test_classifier_detector_heldout_accuracy_and_weights():
    rng = np.random.default_rng(1)
    g = G(prefill_ratio=rng.uniform(0, 1, 400), kv_usage_ratio=rng.uniform(0, 1, 400),
          queue_depth=rng.integers(0, 9, 400), recent_preemptions=np.zeros(400))
    labels = np.where(g["prefill_ratio"] > 0.5, "prefill_dominated", "decode_dominated")
    det = ClassifierDetector("beta", random_state=0).fit(g, labels, groups=np.arange(400) % 5)
    assert det.accuracy_ > 0.9
    W = det.weights(g)
    np.testing.assert_allclose(W.sum(axis=1), 1.0)
    assert (det.predict(g) == labels).mean() > 0.9
    spec = det.to_spec()
    assert spec["classes"] == ["decode_dominated", "prefill_dominated"] and spec["heldout_accuracy"] == det.accuracy_


def test_soft_gating_shrinks_the_boundary_jump():
    df, _ = make_steps(n_runs=3, steps_per_run=150, seed=4, noise=0.02)
    y = df["step_duration_us"].to_numpy()
    rows = df.iloc[:5]
    hard = boundary_jumps(MoLERegressor(gate_width=0.0, min_rows=20).fit(df, y), rows, n_grid=401)
    soft = boundary_jumps(MoLERegressor(gate_width=1.0, min_rows=20).fit(df, y), rows, n_grid=401)
    assert len(hard) == 3
    assert hard["max_rel_jump"].max() > 0.02
    assert (soft["max_rel_jump"].to_numpy() < 0.25 * hard["max_rel_jump"].to_numpy() + 1e-4).all()
