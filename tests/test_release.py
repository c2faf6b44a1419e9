"""Release format, strict loader, reference predictor vs the estimator, golden vectors."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from molerd import blis
from molerd import features as F
from molerd import release as R
from release_helpers import SCOPE, fitted_models


@pytest.fixture(scope="module")
def built():
    beta, alpha, steps, req = fitted_models()
    block = blis.fit_blis_block(steps, req)
    doc = R.build_release("t1", [R.build_scope(*SCOPE, beta=beta, alpha=alpha, blis=block, metrics={"beta_mape": 0.1})])
    return beta, alpha, steps, req, doc


def test_reference_predictor_matches_estimator(built):
    beta, alpha, steps, req, doc = built
    r = R.Release(copy.deepcopy(doc))
    for est, X, fn in ((beta, steps, r.predict_step), (alpha, req, r.predict_queueing)):
        want = est.predict(X)
        got = fn(X, state={})
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=0)


def test_golden_vectors_reproduce_and_agree_with_estimator(built):
    beta, alpha, _, _, doc = built
    r = R.Release(copy.deepcopy(doc))
    g = R.make_golden(r)
    assert g == R.make_golden(R.Release(copy.deepcopy(doc)))  # deterministic
    assert R.check_golden(r, g) == []
    kinds = {c["kind"].split(":")[0] for c in g["cases"]}
    assert {"regime_sample", "state_free", "boundary_threshold", "boundary_threshold_above", "boundary_center"} <= kinds
    for target, est in (("beta", beta), ("alpha", alpha)):
        rows = R.golden_rows(g, target)
        np.testing.assert_allclose(est.predict(rows), rows["expected"], rtol=1e-9, atol=0)
        assert len({c["regime"] for c in g["cases"] if c["target"] == target}) >= 3


def test_state_free_default_uses_assumed_gate_inputs(built):
    beta, _, steps, _, doc = built
    r = R.Release(copy.deepcopy(doc))
    from molerd.mixture import predict_from_spec
    sub = steps.iloc[:50]
    np.testing.assert_allclose(r.predict_step(sub), predict_from_spec(doc["scopes"][0]["beta"], sub, state_free=True),
                               rtol=1e-9)


def test_formula_interpreter_matches_feature_catalog():
    rng = np.random.default_rng(0)
    raw = {c: rng.uniform(0.0, 900.0, 64) for t in F.RAW_INPUTS for c in F.RAW_INPUTS[t]}
    raw["kv_usage_ratio"] = rng.uniform(0, 1, 64)
    raw["prefill_tokens"][:8] = 0.0
    raw["decode_tokens"][:4] = 0.0
    for model in ("llama-3.1-8b-instruct", "mixtral-8x7b-v0.1"):
        const = F.scope_constants("H100", model, 2)
        for name, f in F.CATALOG.items():
            want = F.compute_features([name], raw, const)[:, 0]
            env = {**{k: np.asarray(v) for k, v in raw.items()}, **{k: np.full(64, v) for k, v in const.items()}}
            feats = {}
            for dep in R._feature_order({k: {"expression": x.expression} for k, x in F.CATALOG.items()}, set(env)):
                from collections import ChainMap
                feats[dep] = np.broadcast_to(R.eval_formula(R.parse_formula(F.CATALOG[dep].expression), ChainMap(env, feats)), (64,))
            np.testing.assert_allclose(feats[name], want, rtol=1e-12, atol=1e-300, err_msg=name)


@pytest.mark.parametrize("formula", ["__import__('os').system('x')", "a.b", "x[0]", "lambda: 1", "f(1)", "'s'"])
def test_formula_language_rejects_code(formula):
    with pytest.raises(ValueError, match="not allowed|not valid"):
        R.parse_formula(formula)


def _mutate(doc, path, value=None, delete=False):
    d = copy.deepcopy(doc)
    cur = d
    for k in path[:-1]:
        cur = cur[k]
    if delete:
        del cur[path[-1]]
    else:
        cur[path[-1]] = value
    return d


@pytest.mark.parametrize("path,value,msg", [
    (["schema_version"], 99, "newer than this reader"),
    (["surprise"], 1, r"unknown key\(s\) \['surprise'\]"),
    (["scopes", 0, "tp"], "1", "expected an integer"),
    (["scopes", 0, "beta", "experts", "saturation", "intercept"], "x", "expected a finite number"),
    (["scopes", 0, "beta", "gate", "rules", 0, "op"], "=>", "must be one of"),
    (["scopes", 0, "beta", "feature_catalog", "batch_reqs", "expression"], "__import__('os')", "not allowed"),
    (["scopes", 0, "blis", "beta_coeffs"], [-1.0] * 10, ">= 0"),
    (["scopes", 0, "alpha", "state_free", "assume", "queue_depth"], None, "finite number"),
])
def test_strict_validation_names_path_and_rule(built, path, value, msg):
    bad = _mutate(built[4], path, value)
    with pytest.raises(R.ReleaseFormatError, match=msg) as ei:
        R.Release(bad, "rel.json")
    assert "rel.json" in str(ei.value)


def test_load_from_file_and_dir(built, tmp_path):
    (tmp_path / "release.json").write_text(json.dumps(built[4]))
    assert R.load(tmp_path).version == "t1"
    (tmp_path / "release.json").write_text('{"schema_version": NaN}')
    with pytest.raises(R.ReleaseFormatError, match="not allowed|not valid"):
        R.load(tmp_path)


def test_missing_inputs_fall_back_then_error_names_row(built):
    doc = copy.deepcopy(built[4])
    spec = doc["scopes"][0]["beta"]
    r = R.Release(copy.deepcopy(doc))
    if "constant_us" in spec:  # every expert NaN -> global -> backup -> training median
        got = r.predict_step({"prefill_tokens": [np.nan], "decode_tokens": [np.nan]}, state={})
        assert got[0] == max(spec["constant_us"], spec["prediction_floor_us"])
    spec.pop("backup_expert", None)
    spec.pop("constant_us", None)
    with pytest.raises(R.ReleasePredictError, match="row 0"):
        R.Release(doc).predict_step({"prefill_tokens": [np.nan], "decode_tokens": [np.nan]}, state={})
    with pytest.raises(R.ReleasePredictError, match="unknown scope"):
        r.predict_step({"prefill_tokens": [1.0]}, scope="A100-80_x_tp1")
