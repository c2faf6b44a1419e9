"""Feature catalog: documentation, closed-form evaluation from raw inputs, dropping unavailable inputs."""

import numpy as np
import pandas as pd
import pytest

from molerd import features as F
from estimator_data import make_requests, make_steps


@pytest.fixture(scope="module")
def steps():
    return make_steps(n_runs=2, steps_per_run=60, seed=1)[0]


def test_every_regime_feature_is_documented_and_uses_known_inputs():
    known_cols = set(F.RAW_INPUTS["beta"]) | set(F.RAW_INPUTS["alpha"])
    for target in F.TARGETS:
        for fs in F.FEATURE_SETS:
            for regime, names in F.regime_features(target, fs).items():
                assert regime in F.REGIMES[target]
                assert 2 <= len(names) <= 8
                for n in names:
                    f = F.CATALOG[n]
                    assert f.unit and f.description and f.expression
                    assert set(f.columns) <= known_cols, n
                    assert set(f.constants) <= set(F.SCOPE_CONSTANTS), n
                    assert set(f.columns) <= set(F.RAW_INPUTS[target]), (target, n)


def test_seed_vectors_are_as_written():
    b = F.regime_features("beta", "seed")
    assert b["prefill_dominated"] == ["seed_prefill_compute", "seed_prefill_attention_sq", "num_prefill_reqs", "seed_moe_prefill"]
    assert F.CATALOG["seed_prefill_attention_sq"].expression == "prefill_tokens ** 2 / (tp * flops_per_us)"
    a = F.regime_features("alpha", "seed")
    assert a["low_load"] == ["prompt_ktokens", "prefix_cache_miss_ratio"]
    for names in F.regime_features("alpha", "physics").values():
        assert "littles_law_us" in names


def test_compute_features_from_raw_dict_matches_table(steps):
    names = F.union_features("beta", "physics")
    X, kept, notes = F.feature_matrix(steps, names)
    row = steps.iloc[[7]]
    raw = {c: row[c].to_numpy() for c in F.RAW_INPUTS["beta"] if c in row}
    const = F.scope_constants("H100", "llama-3.1-8b-instruct", 1)
    np.testing.assert_allclose(F.compute_features(kept, raw, const)[0], X[7], rtol=1e-12)


def test_physics_values_by_hand():
    const = F.scope_constants("H100", "llama-3.1-8b-instruct", 2)
    raw = {"prefill_tokens": [1000.0], "decode_tokens": [10.0], "sum_prefill_attention": [1000 * (500 + 500.0)],
           "sum_decode_context": [20000.0]}
    X = F.compute_features(["t_prefill_attention_us", "t_decode_kv_us", "t_prefill_compute_us"], raw, const)[0]
    assert X[0] == pytest.approx(1e6 * const["attention_flops_per_context_token"] / (2 * const["flops_per_us"]))
    assert X[1] == pytest.approx(20000 * const["kv_bytes_per_token"] / (2 * const["bytes_per_us"]))
    assert X[2] == pytest.approx(1000 * const["flops_per_token"] / (2 * const["flops_per_us"]))
    # weight read: dense → constant; MoE → grows with batch tokens toward all experts
    moe = F.scope_constants("H100", "mixtral-8x7b-v0.1", 1)
    small = F.compute_features(["t_weight_us"], {"prefill_tokens": [0.0], "decode_tokens": [1.0]}, moe)[0, 0]
    big = F.compute_features(["t_weight_us"], {"prefill_tokens": [0.0], "decode_tokens": [256.0]}, moe)[0, 0]
    assert small < big == pytest.approx(moe["weight_bytes"] / moe["bytes_per_us"], rel=1e-6)


def test_missing_or_all_nan_inputs_are_dropped_with_a_note(steps):
    s = steps.copy()
    s["sum_decode_context"] = np.nan
    X, kept, notes = F.feature_matrix(s, F.regime_features("beta", "seed")["saturation"] + ["t_decode_kv_us"])
    assert "seed_fragmentation" not in kept and "missing" in notes["seed_fragmentation"]
    assert "t_decode_kv_us" not in kept and "all-NaN" in notes["t_decode_kv_us"]
    assert X.shape == (len(s), len(kept))
    with pytest.raises(KeyError, match="seed_fragmentation"):
        F.feature_matrix(s, ["seed_fragmentation"], drop_unavailable=False)


def test_alpha_targets_and_littles_law():
    rq, _ = make_requests(n_runs=1, reqs_per_run=20, seed=2)
    a = F.alpha_target(rq, "scheduled_minus_queued")
    b = F.alpha_target(rq, "queued_minus_arrived")
    np.testing.assert_allclose(a, rq["scheduled_us"] - rq["queued_us"])
    np.testing.assert_allclose(b, 1500 + 0.3 * rq["prompt_tokens"])
    with pytest.raises(ValueError, match="queued_minus_arrived"):
        F.alpha_target(rq, "nope")
    ll = F.compute_features(["littles_law_us"], {"waiting_depth": [10.0, 4.0], "avg_service_time_us": [1e5, 1e5],
                                                 "running_depth": [4.0, 0.0]}, {})[:, 0]
    np.testing.assert_allclose(ll, [2.5e5, 4e5])


def test_raw_inputs_and_unknown_scope(steps):
    r = F.raw_inputs(steps, "beta")
    assert list(r.columns[:3]) == ["hardware", "model", "tp"] and "sum_decode_context" in r
    bad = steps.head(3).copy()
    bad["model"] = "no-such-model"
    with pytest.raises(KeyError, match="no-such-model"):
        F.table_scope_constants(bad)
