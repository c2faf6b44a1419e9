"""Coverage report: names the thin regimes per hardware with concrete, threshold-aware recipes."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from molerd.coverage import (
    ALPHA_REGIMES,
    BETA_REGIMES,
    CoverageError,
    RegimeThresholds,
    coverage_report,
    profiling_recipe,
)
from molerd.rebalance import regime_counts


def _labelled() -> pd.DataFrame:
    rows = (
        [("H100", "decode_dominated")] * 500 + [("H100", "prefill_dominated")] * 300
        + [("H100", "mixed_balanced")] * 250 + [("H100", "saturation")] * 12
        + [("A100-80", "decode_dominated")] * 400 + [("A100-80", "prefill_dominated")] * 220
    )
    return pd.DataFrame(rows, columns=["hardware", "regime"])


def test_names_missing_regimes_per_hardware_with_recipes():
    counts = regime_counts(_labelled(), regimes=BETA_REGIMES)
    rep = coverage_report(counts, min_rows=200, regimes=BETA_REGIMES)
    lacking = {(e["group"]["hardware"], e["regime"]): e for e in rep.lacking}
    assert set(lacking) == {("H100", "saturation"), ("A100-80", "mixed_balanced"), ("A100-80", "saturation")}
    assert lacking[("H100", "saturation")]["status"] == "thin"
    assert lacking[("H100", "saturation")]["missing_rows"] == 188
    assert lacking[("A100-80", "saturation")]["status"] == "empty"
    sat = lacking[("A100-80", "saturation")]["recipe"]
    assert sat["family"] == "beta"
    assert sat["kv_usage_target"][0] > 0.9  # above the saturation threshold
    assert sat["load_x_saturation"][0] > 1.0  # overload
    assert not rep.complete
    md = rep.to_markdown()
    assert "A100-80 / saturation" in md and "saturation rate" in md and "KV usage target" in md
    assert "H100 / decode_dominated" not in md  # covered regimes get no recipe section
    d = rep.to_dict()
    json.dumps(d, allow_nan=False)
    gap = next(m for m in d["missing"] if m["hardware"] == "A100-80" and m["regime"] == "mixed_balanced")
    assert gap["target"] == "beta" and gap["rows"] == 0 and gap["missing_rows"] == 200 and gap["advice"]
    assert len(d["counts"]) == 8 and {c["target"] for c in d["counts"]} == {"beta"}
    from molerd.report import validate_coverage

    validate_coverage(d)  # the release report accepts it


def test_recipes_follow_the_thresholds_passed_in():
    label_section = {"alpha": {"low_load_max_queue_depth": 4, "high_pressure_kv": 0.75},
                     "beta": {"saturation_kv": 0.95}, "test_fraction": 0.25}
    t = RegimeThresholds.from_mapping(label_section)
    assert t.low_load_max_queue_depth == 4 and t.high_pressure_kv == 0.75 and t.saturation_kv == 0.95
    hp = profiling_recipe("high_pressure", t)
    assert "0.75" in hp["aim"] and hp["kv_usage_target"][0] > 0.75
    assert "4" in profiling_recipe("low_load", t)["aim"]
    assert profiling_recipe("saturation", t)["kv_usage_target"][0] > 0.95
    # default thresholds give different numbers
    assert profiling_recipe("high_pressure")["kv_usage_target"][0] > 0.85
    assert profiling_recipe("no_such_regime") is None


def test_every_seed_regime_has_a_concrete_recipe():
    for r in (*ALPHA_REGIMES, *BETA_REGIMES):
        rec = profiling_recipe(r)
        assert rec["family"] == ("alpha" if r in ALPHA_REGIMES else "beta")
        lo, hi = rec["load_x_saturation"]
        assert 0 < lo <= hi
        assert rec["prompt_tokens"][0] <= rec["prompt_tokens"][1]
        assert 0 <= rec["kv_usage_target"][0] <= rec["kv_usage_target"][1] <= 1
        assert 0 < rec["expected_yield"] <= 1 and rec["how"]


def test_alpha_regimes_and_complete_coverage():
    df = pd.DataFrame({"hardware": ["H100"] * 40, "regime": ["low_load"] * 10 + ["normal_load"] * 10
                       + ["high_pressure"] * 10 + ["preemption"] * 10})
    counts = regime_counts(df, regimes=ALPHA_REGIMES)
    assert coverage_report(counts, min_rows=10).complete
    rep = coverage_report(counts, min_rows={"preemption": 50})
    assert [e["regime"] for e in rep.lacking] == ["preemption"]
    assert rep.lacking[0]["suggested_rows"] >= 40  # more than the gap: yield < 1
    assert "requests" in rep.to_markdown()


def test_bad_input_errors():
    with pytest.raises(CoverageError, match=r"lacks column"):
        coverage_report(pd.DataFrame({"regime": ["x"], "n": [1]}))
    with pytest.raises(CoverageError, match=r"prefill_ratio_low"):
        RegimeThresholds.from_mapping({"beta": {"prefill_ratio_low": 0.8, "prefill_ratio_high": 0.7}})
    with pytest.raises(CoverageError, match=r"unknown key"):
        RegimeThresholds.from_mapping({"alpha": {"high_presure_kv": 0.8}})
