"""Baselines: blackbox forms, union ridge, Little's law, GBM ceiling on canonical tables."""

import numpy as np
import pytest

from molerd import features as F
from molerd.baseline import BlackboxAlpha, BlackboxBeta, GBMCeiling, LittlesLawAlpha, UnionRidge
from estimator_data import make_requests, make_steps


@pytest.fixture(scope="module")
def steps():
    return make_steps(n_runs=3, steps_per_run=150, seed=11, noise=0.05)[0]


def test_blackbox_beta_recovers_a_linear_truth(steps):
    y = 3000 + 0.4 * steps["prefill_tokens"].to_numpy() + 12.0 * steps["decode_tokens"].to_numpy()
    m = BlackboxBeta(alphas=(1e-8,)).fit(steps, y)
    np.testing.assert_allclose(m.coefficients(), [3000, 0.4, 12.0], rtol=1e-4)
    assert m.score(steps, y) > -1e-6


def test_blackbox_alpha_and_littles_law():
    rq = make_requests(n_runs=2, reqs_per_run=100, seed=12)[0]
    y = F.alpha_target(rq, "queued_minus_arrived").to_numpy()
    m = BlackboxAlpha(alphas=(1e-8,)).fit(rq, y)
    np.testing.assert_allclose(m.coefficients(), [1500, 0.3], rtol=1e-4)
    ll = LittlesLawAlpha().fit(rq, y)
    p = ll.predict(rq)
    expect = rq["waiting_depth"] * rq["avg_service_time_us"] / np.maximum(rq["running_depth"], 1)
    np.testing.assert_allclose(p, np.maximum(expect, 1.0))
    rq2 = rq.copy()
    rq2.loc[rq2.index[:3], "waiting_depth"] = np.nan
    assert (ll.predict(rq2)[:3] == ll.median_).all()


def test_union_ridge_and_gbm_beat_blackbox_on_physics_truth(steps):
    y = steps["step_duration_us"].to_numpy()
    bb = -BlackboxBeta().fit(steps, y).score(steps, y)
    ur = -UnionRidge().fit(steps, y).score(steps, y)
    gbm = GBMCeiling(max_iter=25, random_state=0).fit(steps, y)
    g = -gbm.score(steps, y)
    assert ur < bb and g < bb
    np.testing.assert_array_equal(gbm.predict(steps), GBMCeiling(max_iter=25, random_state=0).fit(steps, y).predict(steps))
