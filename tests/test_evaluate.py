"""Metrics and run-grouped splits."""

import numpy as np
import pandas as pd
import pytest

from molerd.baseline import BlackboxBeta
from molerd.evaluate import ape, compare_models, grouped_folds, metrics_table, split_by_run, summarize
from molerd.mixture import MoLERegressor
from estimator_data import make_steps


@pytest.fixture(scope="module")
def steps():
    a = make_steps(n_runs=4, steps_per_run=100, seed=21)[0]
    b = make_steps(n_runs=3, steps_per_run=100, seed=22, hardware="A100-80")[0]
    return pd.concat([a, b], ignore_index=True)


def test_ape_and_summary():
    s = summarize([100, 200, 0.5, np.nan], [110, 100, 1.0, 5])
    assert s["n"] == 3
    assert s["mape"] == pytest.approx((0.1 + 0.5 + 0.5) / 3)  # 0.5 µs target clipped at the 1 µs floor
    assert s["median_ape"] == pytest.approx(0.5)
    np.testing.assert_allclose(ape([10.0], [5.0]), [0.5])


def test_split_holds_out_whole_runs_per_scope(steps):
    tr, te = split_by_run(steps, 0.25, seed=0)
    assert not set(steps.loc[tr, "trace_id"]) & set(steps.loc[te, "trace_id"])
    assert tr.sum() + te.sum() == len(steps)
    for hw in ("H100", "A100-80"):
        assert set(steps.loc[te, "hardware"]) >= {hw}
    tr2, te2 = split_by_run(steps, 0.25, seed=0)
    assert (te == te2).all()
    for a, b in grouped_folds(steps, 3):
        assert not set(steps["trace_id"].iloc[a]) & set(steps["trace_id"].iloc[b])


def test_metrics_table_and_compare_models(steps):
    tr, te = split_by_run(steps, 0.3, seed=1)
    out = compare_models({"blackbox": BlackboxBeta(), "mole": MoLERegressor(min_rows=20)},
                         steps[tr], steps[te], "beta")
    assert list(out.columns) == ["model", "group_kind", "group", "n", "mape", "median_ape", "p90_ape"]
    overall = out[out.group_kind == "overall"].set_index("model")["mape"]
    assert overall["mole"] < overall["blackbox"]
    assert set(out[out.group_kind == "scope"]["group"]) == {"H100|llama-3.1-8b-instruct", "A100-80|llama-3.1-8b-instruct"}
    assert out[(out.model == "mole") & (out.group_kind == "regime")]["n"].sum() == te.sum()
    mt = metrics_table([1.0, 2.0], [1.0, 2.0], steps.head(2), "beta", "x")
    assert mt.loc[0, "mape"] == 0.0
