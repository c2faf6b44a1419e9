"""Drift check: a batch from a different load mix is flagged; one from the same distribution passes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from molerd.drift import DriftError, drift_check, population_stability_index

FEATURES = ["waiting_depth", "kv_usage_ratio", "prompt_tokens"]


def _requests(n: int, seed: int, load: float) -> pd.DataFrame:
    """Synthetic request states: higher ``load`` → deeper queues, fuller KV, more high-pressure rows."""
    rng = np.random.default_rng(seed)
    queue = rng.poisson(1.0 + 8.0 * load, n)
    kv = np.clip(rng.beta(2 + 6 * load, 4, n), 0, 1)
    prompt = rng.lognormal(6.5, 0.6, n).round()
    regime = np.where(queue <= 2, "low_load", np.where(kv > 0.85, "high_pressure", "normal_load"))
    return pd.DataFrame({"waiting_depth": queue, "kv_usage_ratio": kv, "prompt_tokens": prompt, "regime": regime})


def test_same_distribution_passes():
    ref, batch = _requests(4000, 1, 0.2), _requests(1500, 2, 0.2)
    rep = drift_check(ref, batch, FEATURES, current_mape=8.0, mape_threshold=15.0)
    assert not rep.retrain_needed, rep.reasons
    assert rep.reasons[0].startswith("no retrain needed")
    assert all(f["psi"] < 0.1 for f in rep.features)
    assert rep.regime_mix["tvd"] < 0.1
    assert "no retrain needed" in rep.to_markdown()
    json.dumps(rep.to_dict(), allow_nan=False)


def test_different_load_mix_is_flagged():
    ref, batch = _requests(4000, 1, 0.2), _requests(1500, 3, 0.9)
    rep = drift_check(ref, batch, FEATURES)
    assert rep.retrain_needed
    drifted = {f["feature"] for f in rep.features if f["drifted"]}
    assert {"waiting_depth", "kv_usage_ratio"} <= drifted
    assert "prompt_tokens" not in drifted  # unchanged feature stays quiet
    assert rep.regime_mix["shifted"] and rep.regime_mix["tvd"] > 0.3
    assert any(r.startswith("regime mix shifted") for r in rep.reasons)
    assert "RETRAIN NEEDED" in rep.to_markdown()


def test_mape_alone_triggers_and_nan_is_counted():
    ref, batch = _requests(2000, 1, 0.2), _requests(800, 2, 0.2)
    batch.loc[batch.index[:7], "kv_usage_ratio"] = np.nan
    rep = drift_check(ref, batch, FEATURES, current_mape=31.0, mape_threshold=15.0)
    assert rep.retrain_needed and rep.mape["exceeded"]
    assert any("MAPE" in r for r in rep.reasons)
    kv = next(f for f in rep.features if f["feature"] == "kv_usage_ratio")
    assert kv["n_batch_missing"] == 7 and kv["n_batch"] == 793
    assert any("kv_usage_ratio" in w for w in rep.warnings)


def test_psi_properties():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 5000)
    assert population_stability_index(a, a) == pytest.approx(0.0, abs=1e-12)
    small = population_stability_index(a, rng.normal(0.1, 1, 5000))
    large = population_stability_index(a, rng.normal(1.0, 1, 5000))
    assert 0 <= small < 0.1 < 0.2 < large
    # discrete feature with ties: a point mass moving is caught
    d_ref = rng.integers(0, 3, 3000).astype(float)
    assert population_stability_index(d_ref, np.full(1000, 2.0)) > 1.0


def test_errors_name_the_problem():
    ref = _requests(100, 1, 0.2)
    with pytest.raises(DriftError, match=r"batch frame lacks column\(s\) \['kv_usage_ratio'\]"):
        drift_check(ref, ref.drop(columns="kv_usage_ratio"), FEATURES)
    with pytest.raises(DriftError, match=r"'psi_threshold' parameter"):
        drift_check(ref, ref, FEATURES, psi_threshold=0)
