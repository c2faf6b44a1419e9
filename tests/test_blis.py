"""BLIS block: basis terms, non-negative fit, alpha triple, flags/snippet round trip."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml

from molerd import blis


def make_steps(n=300, seed=0, hardware="H100", model="llama-3.1-8b-instruct", tp=1, betas=None):
    rng = np.random.default_rng(seed)
    pf = rng.integers(0, 2048, n) * (rng.random(n) < 0.5)
    dc = rng.integers(1, 128, n)
    npf = np.where(pf > 0, rng.integers(1, 4, n), 0)
    df = pd.DataFrame(
        {
            "hardware": hardware, "model": model, "tp": tp,
            "prefill_tokens": pf, "decode_tokens": dc, "num_prefill_reqs": npf, "num_decode_reqs": dc,
            "sum_prefill_attention": pf * rng.uniform(0, 3000, n), "sum_decode_context": dc * rng.uniform(100, 4000, n),
        }
    )
    if betas is not None:
        df["step_duration_us"] = blis.basis_terms(df).to_numpy() @ np.asarray(betas)
    return df


TRUE_BETAS = [1.3, 1.1, 0.0, 0.0, 0.0, 4.0, 900.0, 0.0, 2.0, 1.5]


def test_basis_terms_order_and_physics():
    df = make_steps(5)
    T = blis.basis_terms(df)
    assert list(T.columns) == list(blis.BETA_TERMS)
    c = blis.scope_constants("H100", "llama-3.1-8b-instruct", 1)
    row = df.iloc[0]
    expect = (row.prefill_tokens * c["flops_per_token"] + c["attention_flops_per_context_token"] * row.sum_prefill_attention) / c["flops_per_us"]
    assert T["T_pf_compute"].iloc[0] == pytest.approx(expect, rel=1e-12)
    assert (T["T_tp"] == 0).all()  # tp = 1 has no all-reduce
    assert (T["n_MoE_layers"] == 0).all()  # dense model
    assert (T["L"] == 32).all()
    moe = blis.basis_terms(make_steps(3, model="mixtral-8x7b-v0.1", tp=2))
    assert (moe["n_MoE_layers"] == 32).all() and (moe["T_tp"] > 0).all()
    assert blis.basis_terms(make_steps(3), ep_term=True).shape[1] == 11


def test_missing_context_policy():
    df = make_steps(4)
    df.loc[2, "sum_decode_context"] = np.nan
    assert np.isfinite(blis.basis_terms(df).to_numpy()).all()
    with pytest.raises(blis.BlisFitError, match="lack sum_prefill_attention/sum_decode_context"):
        blis.basis_terms(df, missing="error")


def test_fit_recovers_known_betas_and_they_are_nonnegative():
    df = make_steps(400, betas=TRUE_BETAS)
    betas, report = blis.fit_betas(df)
    assert len(betas) == 10 and np.all(betas >= 0) and np.all(np.isfinite(betas))
    np.testing.assert_allclose(betas, TRUE_BETAS, rtol=1e-6, atol=1e-6)
    assert set(report["terms_fixed_to_zero"]) == {"T_weight", "T_tp", "L", "n_MoE_layers"}
    assert report["train_mape"] < 1e-8


def test_fit_never_negative_even_when_data_wants_it():
    df = make_steps(200, seed=3)
    # duration falls with decode tokens: an OLS fit would give a negative slope
    df["step_duration_us"] = 5000.0 - 10.0 * df["decode_tokens"] + 0.5 * df["prefill_tokens"]
    betas, _ = blis.fit_betas(df)
    assert np.all(betas >= 0)


def test_alpha_triple():
    n = 50
    rng = np.random.default_rng(1)
    arrived = rng.uniform(0, 1e6, n)
    out = rng.integers(2, 200, n)
    req = pd.DataFrame({
        "arrived_us": arrived, "queued_us": arrived + 1500.0, "first_token_us": arrived + 20000.0,
        "output_tokens": out,
    })
    req["finished_us"] = req["first_token_us"] + (out - 1) * 12000.0
    req["departed_us"] = req["finished_us"] + 700.0
    (a0, a1, a2), rep = blis.fit_alpha_triple(req)
    assert (a0, a1, a2) == pytest.approx((1500.0, 700.0, 12000.0))
    assert rep["alpha2_method"] == "per_token"
    steps = pd.DataFrame({"step_duration_us": [11000.0, 11000.0]})
    (_, _, a2o), rep = blis.fit_alpha_triple(req, steps)
    assert a2o == pytest.approx(1000.0) and rep["alpha2_method"] == "overhead"
    # no departed column: that term is 0 and reported, never silently made up
    (_, a1m, _), rep = blis.fit_alpha_triple(req.drop(columns="departed_us"))
    assert a1m == 0.0 and "alpha1_post_decode_us" in rep["terms_without_data_set_to_zero"]


def test_block_flags_and_snippet_round_trip_exactly():
    df = make_steps(300, betas=TRUE_BETAS)
    block = blis.fit_blis_block(df)
    block = blis.BlisBlock(alpha_coeffs=(1e-05, 1 / 3, 123456789.123), beta_coeffs=tuple(b + 1e-300 * 0 + b / 7 for b in block.beta_coeffs))
    a, b = blis.parse_flags(blis.flags_string(block))
    assert a == block.alpha_coeffs and b == block.beta_coeffs  # bit-exact
    text = blis.snippet_yaml(block)
    assert set(yaml.safe_load(text)) == {"trained_physics_coefficients"}
    a2, b2 = blis.parse_snippet(text)
    assert a2 == block.alpha_coeffs and b2 == block.beta_coeffs
    assert blis.BlisBlock.from_dict(block.to_dict()).beta_coeffs == block.beta_coeffs


@pytest.mark.parametrize(
    "alpha,beta,msg",
    [((1.0, 2.0), (0.0,) * 10, "exactly 3 alpha"), ((1.0,) * 3, (0.0,) * 6, "7 to 11 beta"),
     ((1.0,) * 3, (0.0,) * 9 + (-1.0,), "finite and >= 0"), ((1.0, math.nan, 1.0), (0.0,) * 10, "finite and >= 0")],
)
def test_validate_coeffs_rejects(alpha, beta, msg):
    with pytest.raises(ValueError, match=msg):
        blis.validate_coeffs(alpha, beta)


def test_parse_rejects_unknown_keys_and_missing_flags():
    with pytest.raises(ValueError, match="exactly alpha_coeffs and beta_coeffs"):
        blis.parse_snippet("trained_physics_coefficients:\n  alpha_coeffs: [1, 2, 3]\n  beta_coeffs: [0,0,0,0,0,0,0]\n  extra: 1\n")
    with pytest.raises(ValueError, match="--beta-coeffs missing"):
        blis.parse_flags("--alpha-coeffs 1,2,3")


def test_evaluate_block_beats_or_matches_blackbox_on_physics_data():
    train = make_steps(300, seed=1, betas=TRUE_BETAS)
    test = make_steps(100, seed=2, betas=TRUE_BETAS)
    block = blis.fit_blis_block(train)
    m = blis.evaluate_block(block, test)
    assert m["blis_physics_step_mape"] < 1e-6 < m["blis_blackbox_step_mape"]
