"""Validation with quarantine: every rule named, nothing lost, bad files never stop the batch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from molerd.cli import app
from molerd.ingest import read_input
from molerd.validate import validate_inputs, validate_tables

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def good():
    res = read_input(FIX / "otel_run")
    return res.steps, res.requests


def _bad_tables(good):
    steps, req = good[0].copy(), good[1].copy()
    steps.loc[0, "step_duration_us"] = -5.0  # negative step duration
    steps.loc[1, "kv_usage_ratio"] = 1.7  # kv ratio out of [0, 1]
    steps.loc[2, "hardware"] = "TPU-v9"  # unknown hardware
    steps.loc[3, "step_id"] = steps.loc[4, "step_id"]  # duplicate id (the later one is rejected)
    steps.loc[5, "kv_usage_ratio"] = 1.7
    steps.loc[5, "step_duration_us"] = 0.0  # two rules on one row
    req.loc[1, "finished_us"] = req.loc[1, "queued_us"] - 10.0  # finishing before queued
    req.loc[3, "request_id"] = req.loc[2, "request_id"]  # duplicate request id
    return steps, req


@pytest.mark.parametrize("engine", ["fast", "pandera"])
def test_each_rule_is_named_and_nothing_is_lost(good, engine):
    steps, req = _bad_tables(good)
    vr = validate_tables(steps, req, "fixture", engine=engine)
    q = vr.quarantine.set_index(["table", "row"])["failed_checks"]
    assert "positive_step_duration" in q[("steps", 0)]
    assert "kv_usage_ratio:kv_usage_ratio_in_unit_interval" in q[("steps", 1)]
    assert "hardware:known_hardware" in q[("steps", 2)]
    assert q[("steps", 4)] == "unique_step_id" and ("steps", 3) not in q.index  # first occurrence kept
    assert "positive_step_duration" in q[("steps", 5)] and "kv_usage_ratio_in_unit_interval" in q[("steps", 5)]
    assert "positive_request_duration" in q[("requests", 1)] and "timestamps_ordered" in q[("requests", 1)]
    assert q[("requests", 3)] == "unique_request_id"
    for table, df in (("steps", steps), ("requests", req)):
        c = vr.counts[table]
        assert c["total"] == len(df) == c["accepted"] + c["quarantined"]
    assert vr.counts["steps"]["quarantined"] == 5 and vr.counts["requests"]["quarantined"] == 2
    # original values are kept as JSON
    vals = json.loads(vr.quarantine.query("table == 'steps' and row == 1")["values"].iloc[0])
    assert vals["kv_usage_ratio"] == 1.7 and vals["step_id"] == steps.loc[1, "step_id"]
    # accepted rows carry the schema dtypes
    assert vr.steps["step_id"].dtype == "int64" and vr.steps["prefix_caching"].dtype == bool


def test_fast_and_pandera_engines_agree(good):
    steps, req = _bad_tables(good)
    steps.loc[6, "tp"] = 0
    a = validate_tables(steps, req, "f", engine="fast")
    b = validate_tables(steps, req, "f", engine="pandera")
    key = ["table", "row"]
    qa, qb = a.quarantine.sort_values(key).reset_index(drop=True), b.quarantine.sort_values(key).reset_index(drop=True)
    assert qa[key].equals(qb[key])
    for x, y in zip(qa["failed_checks"], qb["failed_checks"]):
        assert set(x.split("; ")) == set(y.split("; "))
    pd.testing.assert_frame_equal(a.steps, b.steps.astype(a.steps.dtypes.to_dict()), check_dtype=False)


def test_cell_that_cannot_be_coerced_is_a_row_failure(good):
    steps = good[0].copy().astype({"prefill_tokens": object})
    steps.loc[2, "prefill_tokens"] = "lots"
    vr = validate_tables(steps, None, "f")
    assert vr.counts["steps"] == {"total": 8, "accepted": 7, "quarantined": 1}
    assert "prefill_tokens:coerce_dtype('int64')" in vr.quarantine["failed_checks"].iloc[0]


def _batch(tmp_path: Path) -> Path:
    """Good runs plus every kind of unreadable or schema-broken file, in one folder tree."""
    root = tmp_path / "in"
    shutil.copytree(FIX / "otel_run", root / "otel_run")
    shutil.copytree(FIX / "vllm_stats_run", root / "vllm_stats_run")
    shutil.copytree(FIX / "canonical", root / "canonical")
    (root / "broken").mkdir()
    (root / "broken" / "empty.csv").write_text("")
    header = (FIX / "canonical" / "steps.csv").read_text().splitlines()
    (root / "broken" / "header_only.csv").write_text(header[0] + "\n")
    df = pd.read_csv(FIX / "canonical" / "steps.csv").drop(columns=["step_duration_us"])
    df.to_csv(root / "broken" / "steps_missing_col.csv", index=False)
    lines = (FIX / "otel_run" / "traces.json").read_text().splitlines(keepends=True)
    (root / "truncated").mkdir()
    shutil.copy(FIX / "otel_run" / "engine_settings.json", root / "truncated")
    settings = json.loads((FIX / "otel_run" / "engine_settings.json").read_text())
    (root / "truncated" / "engine_settings.json").write_text(json.dumps(dict(settings, trace_id="trunc")))
    (root / "truncated" / "traces.json").write_text("".join(lines[:-1]) + lines[-1][:100])
    return root


def test_validate_inputs_batch_with_bad_files(tmp_path):
    out = tmp_path / "out"
    report = validate_inputs([_batch(tmp_path)], out)
    errs = {Path(e["file"]).name: e["message"] for e in report["file_errors"]}
    assert "empty" in errs["empty.csv"]
    assert "header only" in errs["header_only.csv"]
    assert "step_duration_us" in errs["steps_missing_col.csv"]
    t = report["tables"]
    # otel 8 + truncated copy 8 + canonical 3 good + 3 quarantined (missing column)
    assert t["steps"] == {"total": 22, "accepted": 19, "quarantined": 3}
    assert t["requests"]["accepted"] == 5 + 5 + 2 + 5
    assert t["traces"] == {"total": 1, "accepted": 0, "quarantined": 1}
    for c in t.values():
        assert c["total"] == c["accepted"] + c["quarantined"]
    q = pd.read_parquet(out / "quarantine.parquet")
    assert len(q) == sum(c["quarantined"] for c in t.values())
    assert q["failed_checks"].str.contains("missing required column").sum() == 3
    assert (q.loc[q["table"] == "traces", "line"] == 7).all()
    steps = pd.read_parquet(out / "steps.parquet")
    assert len(steps) == 19 and steps["step_duration_us"].gt(0).all()
    assert json.loads((out / "validation_report.json").read_text()) == report


def test_validate_inputs_is_deterministic(tmp_path):
    root = _batch(tmp_path)
    validate_inputs([root], tmp_path / "a")
    validate_inputs([root], tmp_path / "b")
    for name in ("steps.parquet", "requests.parquet", "quarantine.parquet", "validation_report.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_cli_validate(tmp_path):
    runner = CliRunner()
    out = tmp_path / "out"
    res = runner.invoke(app, ["validate", str(FIX / "otel_run"), str(FIX / "canonical" / "steps.csv"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "steps: 11 accepted, 0 quarantined, 11 total" in res.output
    assert (out / "quarantine.parquet").exists()
    empty = tmp_path / "empty.json"
    empty.write_text("")
    res = runner.invoke(app, ["validate", str(empty), "--out", str(tmp_path / "o2")])
    assert res.exit_code == 1
    assert "empty.json" in res.output and "empty file" in res.output
    res = runner.invoke(app, ["validate", str(FIX / "otel_run"), "--out", str(out), "--format", "xml"])
    assert res.exit_code == 2
