"""Rebalancing: only training rows, deterministic, thin regimes brought up, gaps reported."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from molerd.rebalance import RebalanceError, rebalance, regime_counts

REGIMES = ["low_load", "normal_load", "high_pressure", "preemption"]


def _frame(seed: int = 0, n: int = 600) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    regime = rng.choice(REGIMES[:3], size=n, p=[0.80, 0.17, 0.03])
    return pd.DataFrame({
        "trace_id": [f"run{i % 6}" for i in range(n)],
        "hardware": np.where(np.arange(n) % 2 == 0, "H100", "A100-80"),
        "regime": regime,
        "queue_delay_us": rng.uniform(10, 1000, n),
        "row_id": np.arange(n),
    })


def _split(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    test = df["trace_id"].isin(["run4", "run5"])
    return df[~test.to_numpy()], df[test.to_numpy()]


def test_regime_counts_includes_zero_rows_for_absent_regimes():
    df = _frame()
    c = regime_counts(df, regimes=REGIMES)
    assert list(c.columns) == ["hardware", "regime", "rows"]
    assert len(c) == 2 * len(REGIMES)
    assert (c.loc[c.regime == "preemption", "rows"] == 0).all()
    assert c["rows"].sum() == len(df)
    h = c[(c.hardware == "H100") & (c.regime == "low_load")]["rows"].item()
    assert h == ((df.hardware == "H100") & (df.regime == "low_load")).sum()


def test_regime_counts_rejects_unknown_labels_and_missing_labels():
    df = _frame()
    with pytest.raises(RebalanceError, match=r"not in the allowed set"):
        regime_counts(df, regimes=["low_load", "normal_load"])
    df.loc[df.index[3], "regime"] = None
    with pytest.raises(RebalanceError, match=r"no regime label"):
        regime_counts(df, regimes=REGIMES)


def test_weights_bring_rare_regimes_up_and_cap():
    train, _ = _split(_frame())
    res = rebalance(train, method="weights", min_rows=60, max_weight=5.0, regimes=REGIMES)
    frame, w = res
    assert len(frame) == len(train) and len(w) == len(train)
    lab = frame["regime"].to_numpy()
    eff = {r: w[lab == r].sum() for r in REGIMES}
    n = {r: (lab == r).sum() for r in REGIMES}
    assert np.all(w[lab == "low_load"] == 1.0)  # common regime untouched
    assert n["normal_load"] < 60 or eff["normal_load"] == n["normal_load"]
    # the rarest present regime is up-weighted, but no weight exceeds the cap
    assert w[lab == "high_pressure"].min() > 1.0 and w.max() <= 5.0
    assert eff["high_pressure"] > n["high_pressure"]
    by_regime = {e["regime"]: e for e in res.report.entries}
    assert by_regime["preemption"]["status"] == "missing"
    if n["high_pressure"] * 5 < 60:
        assert by_regime["high_pressure"]["status"] == "capped"
    json.dumps(res.report.to_dict(), allow_nan=False)
    assert "preemption" in res.report.to_markdown()


def test_resample_never_touches_test_rows_and_is_deterministic():
    df = _frame()
    train, test = _split(df)
    a = rebalance(train, method="resample", target_share=0.15, max_weight=10, seed=7, by="hardware")
    b = rebalance(train, method="resample", target_share=0.15, max_weight=10, seed=7, by="hardware")
    c = rebalance(train, method="resample", target_share=0.15, max_weight=10, seed=8, by="hardware")
    pd.testing.assert_frame_equal(a.frame, b.frame)
    assert np.array_equal(a.sample_weight, b.sample_weight)
    assert not a.frame.equals(c.frame)  # the seed matters
    # every output row is a copy of a training row; no held-out row ever appears
    assert set(a.frame["row_id"]) <= set(train["row_id"])
    assert not set(a.frame["row_id"]) & set(test["row_id"])
    assert (a.frame["row_id"].to_numpy() == train["row_id"].to_numpy()[a.source_row]).all()
    # the originals come first, unchanged, and the thin regime grew within its own hardware
    pd.testing.assert_frame_equal(a.frame.iloc[: len(train)], train.reset_index(drop=True))
    for e in a.report.entries:
        got = ((a.frame.hardware == e["group"]["hardware"]) & (a.frame.regime == e["regime"])).sum()
        assert got == e["rows_after"]
        assert e["rows_after"] <= max(e["rows_before"] * 10, e["rows_before"])
    thin = [e for e in a.report.entries if e["status"] == "resampled"]
    assert thin and all(e["rows_after"] >= e["target_rows"] for e in thin)
    # the input frame is not modified
    pd.testing.assert_frame_equal(train, _split(_frame())[0])


def test_leakage_guard_and_bad_params():
    df = _frame().assign(split="train")
    df.loc[df.index[:5], "split"] = "test"
    with pytest.raises(RebalanceError, match=r"only see training rows"):
        rebalance(df, min_rows=10, split_col="split")
    with pytest.raises(RebalanceError, match=r"method must be one of"):
        rebalance(_frame(), method="smote", min_rows=10)
    with pytest.raises(RebalanceError, match=r"needs a target"):
        rebalance(_frame(), method="weights")
    with pytest.raises(RebalanceError, match=r"max_weight must be"):
        rebalance(_frame(), min_rows=10, max_weight=0.5)
    nohw = _frame()
    nohw.loc[nohw.index[2], "hardware"] = None
    with pytest.raises(RebalanceError, match=r"no value in group column 'hardware'"):
        rebalance(nohw, min_rows=10, by="hardware")


def test_none_method_is_identity():
    train, _ = _split(_frame())
    frame, w = rebalance(train, method="none")
    pd.testing.assert_frame_equal(frame, train.reset_index(drop=True))
    assert (w == 1.0).all()
