"""Promotion gate: promote only a candidate that is better overall, robustly, and in every regime."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from molerd.gate import GateError, GateReport, combine_gate_reports, gate_decision, mape

PARAMS = dict(min_improvement=0.02, bootstrap_samples=500, bootstrap_confidence=0.95,
              regime_tolerance=0.05, min_regime_rows=50, seed=11)


def _heldout(n: int = 3000, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.uniform(200.0, 20000.0, n)  # µs
    regimes = rng.choice(["decode_dominated", "prefill_dominated", "saturation"], n, p=[0.6, 0.3, 0.1])
    champion = y * (1 + rng.normal(0, 0.20, n))
    return rng, y, regimes, champion


def test_clearly_better_candidate_is_promoted():
    rng, y, reg, champ = _heldout()
    cand = y * (1 + rng.normal(0, 0.10, len(y)))
    rep = gate_decision(y, cand, champ, reg, **PARAMS, label="beta@H100")
    assert rep.decision == "promote" and rep.promote
    assert rep.overall["relative_improvement"] > 0.3
    # MAPEs are in percent (as in metrics.json), differences in percentage points
    assert rep.overall["candidate_mape"] == pytest.approx(mape(y, cand)) and 7 < rep.overall["candidate_mape"] < 9
    assert rep.overall["mape_diff"] == pytest.approx(mape(y, cand) - mape(y, champ))
    assert rep.bootstrap["fraction_improved"] == 1.0
    lo, hi = rep.bootstrap["mape_diff_ci"]
    assert lo <= hi < 0
    assert {c["name"] for c in rep.checks} == {"finite", "overall", "bootstrap", "regimes"}
    d = rep.to_dict()
    json.dumps(d, allow_nan=False)
    assert GateReport.from_dict(d).to_dict() == d
    assert "PROMOTE" in rep.to_markdown() and "beta@H100" in rep.to_markdown()


def test_worse_overall_is_rejected():
    rng, y, reg, champ = _heldout()
    cand = y * (1 + rng.normal(0, 0.30, len(y)))
    rep = gate_decision(y, cand, champ, reg, **PARAMS)
    assert rep.decision == "reject"
    assert any(r.startswith("overall:") for r in rep.reasons)
    assert any(r.startswith("bootstrap:") for r in rep.reasons)


def test_worse_in_one_regime_beyond_tolerance_is_rejected():
    rng, y, reg, champ = _heldout()
    noise = np.where(reg == "saturation", 0.35, 0.10)  # far better overall, much worse on saturation
    cand = y * (1 + rng.normal(0, 1, len(y)) * noise)
    rep = gate_decision(y, cand, champ, reg, **PARAMS)
    assert rep.overall["relative_improvement"] > PARAMS["min_improvement"]
    assert rep.decision == "reject"
    assert len(rep.reasons) == 1 and rep.reasons[0].startswith("regimes:") and "saturation" in rep.reasons[0]
    sat = next(r for r in rep.regimes if r["regime"] == "saturation")
    assert sat["judged"] and not sat["passed"] and sat["relative_change"] > 0.05
    # the same regime below min_regime_rows is reported but not judged
    rep2 = gate_decision(y, cand, champ, reg, **{**PARAMS, "min_regime_rows": 10_000})
    assert rep2.decision == "promote"
    assert not any(r["judged"] for r in rep2.regimes)


def test_noisy_tiny_improvement_fails_the_bootstrap():
    rng = np.random.default_rng(5)
    n = 40
    y = rng.uniform(100, 1000, n)
    champ = y * (1 + rng.normal(0, 0.3, n))
    cand = y * (1 + rng.normal(0, 0.3, n))
    # scale candidate errors so its overall MAPE is exactly 5 % lower than the champion's
    ape_c = np.abs(cand - y) / y
    ape_h = np.abs(champ - y) / y
    cand = y + (cand - y) * (0.95 * ape_h.mean() / ape_c.mean())
    rep = gate_decision(y, cand, champ, np.full(n, "mixed_balanced"), **PARAMS)
    assert rep.overall["relative_improvement"] == pytest.approx(0.05, rel=1e-9)
    assert rep.decision == "reject"
    assert [r.split(":")[0] for r in rep.reasons] == ["bootstrap"]
    assert rep.bootstrap["fraction_improved"] < 0.95
    lo, hi = rep.bootstrap["mape_diff_ci"]
    assert lo < 0 < hi  # the CI straddles zero


def test_group_bootstrap_is_stricter_with_few_runs():
    """Five runs, candidate better in only three: row bootstrap is fooled, run bootstrap is not."""
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(5), 400)
    y = rng.uniform(100, 1000, len(groups))
    champ = y * (1 + rng.normal(0, 0.2, len(y)))
    scale = np.array([0.5, 0.5, 0.5, 1.15, 1.15])[groups]
    cand = y * (1 + rng.normal(0, 0.2, len(y)) * scale)
    reg = np.full(len(y), "decode_dominated")
    by_row = gate_decision(y, cand, champ, reg, **PARAMS)
    by_run = gate_decision(y, cand, champ, reg, **PARAMS, groups=groups)
    assert by_row.promote
    assert by_run.bootstrap["unit"] == "groups" and by_run.bootstrap["n_units"] == 5
    assert by_run.bootstrap["fraction_improved"] < by_row.bootstrap["fraction_improved"]
    ci_row = np.diff(by_row.bootstrap["mape_diff_ci"])[0]
    ci_run = np.diff(by_run.bootstrap["mape_diff_ci"])[0]
    assert ci_run > ci_row


def test_deterministic_and_fast_for_large_inputs():
    rng = np.random.default_rng(1)
    n = 100_000
    y = rng.uniform(100, 1000, n)
    champ = y * (1 + rng.normal(0, 0.2, n))
    cand = y * (1 + rng.normal(0, 0.195, n))
    reg = rng.choice(["a", "b"], n)
    t0 = time.perf_counter()
    a = gate_decision(y, cand, champ, reg, bootstrap_samples=1000, seed=4)
    elapsed = time.perf_counter() - t0
    assert elapsed < 20  # ~1 s unloaded; generous for a loaded 2-core machine
    assert a.bootstrap["n_units"] == n and a.bootstrap["samples"] == 1000
    m = 5000  # bit-for-bit determinism on a smaller slice (same seed → same dict; other seed → other CI)
    args = (y[:m], cand[:m], champ[:m], reg[:m])
    first, again = gate_decision(*args, seed=4), gate_decision(*args, seed=4)
    assert first.to_dict() == again.to_dict()
    assert gate_decision(*args, seed=5).bootstrap["mape_diff_ci"] != first.bootstrap["mape_diff_ci"]


def test_non_finite_candidate_rejected_and_first_release_promoted():
    rng, y, reg, champ = _heldout(500)
    cand = y * 1.01
    cand[3] = np.nan
    rep = gate_decision(y, cand, champ, reg, **PARAMS)
    assert rep.decision == "reject" and any(r.startswith("finite:") for r in rep.reasons)
    json.dumps(rep.to_dict(), allow_nan=False)
    first = gate_decision(y, y * 1.05, None, reg, **PARAMS)
    assert first.promote and first.overall["champion_mape"] is None


def test_bad_inputs_raise_clear_errors():
    y = np.array([100.0, 0.0, 50.0])
    with pytest.raises(GateError, match=r"not finite and > 0 \(row positions \[1\]"):
        gate_decision(y, y, y, ["a"] * 3)
    with pytest.raises(GateError, match=r"pred_candidate has 2 rows but y_true has 3"):
        gate_decision([1.0, 2.0, 3.0], [1.0, 2.0], [1.0, 2.0, 3.0], ["a"] * 3)
    with pytest.raises(GateError, match=r"'bootstrap_confidence' parameter"):
        gate_decision([1.0], [1.0], [1.0], ["a"], bootstrap_confidence=1.5)


def test_combine_requires_every_part():
    rng, y, reg, champ = _heldout(1500)
    good = gate_decision(y, y * (1 + rng.normal(0, 0.1, len(y))), champ, reg, **PARAMS)
    bad = gate_decision(y, y * (1 + rng.normal(0, 0.3, len(y))), champ, reg, **PARAMS)
    assert combine_gate_reports({"H100/beta": good, "H100/alpha": good}).promote
    c = combine_gate_reports({"H100/beta": good, "H100/alpha": bad})
    assert c.decision == "reject" and "H100/alpha" in c.reasons[0]
    assert combine_gate_reports({"H100/beta": good, "H100/alpha": bad}, required=["H100/beta"]).promote
    missing = combine_gate_reports({"H100/beta": good}, required=["H100/beta", "H100/alpha"])
    assert not missing.promote and missing.parts["H100/alpha"] == "missing"
    json.dumps(c.to_dict(), allow_nan=False)
    assert "| H100/alpha | yes | reject |" in c.to_markdown()
