"""Ingestion of the three input formats on the hand-designed fixtures (see tests/fixtures/make_fixtures.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from molerd.ingest import IngestError, detect_format, read_input
from molerd.ingest.otel import ingest_otel, read_otel
from molerd.ingest.vllm_stats import read_vllm_stats

FIX = Path(__file__).parent / "fixtures"
OTEL = FIX / "otel_run"

# Hand-computed from the scenario (budget 8): step -> (sum_decode_context, sum_prefill_attention, max_context,
# prefix_cache_hit_tokens). E.g. step 2: A's last chunk 2 after 8 -> 2*(8+1)=18, B's chunk 4 -> 4*2=8.
EXPECTED = {
    1: (0, 32, 8, 0),
    2: (0, 26, 10, 0),
    3: (16, 0, 11, 0),  # A ctx 11 + B ctx 5
    5: (0, 72, 20, 16),  # C: 4 tokens after 16 cached -> 4*(16+2)
    6: (21, 18, 21, 0),  # C decode 21; B resumes: recompute 4+2 tokens -> 6*3
    7: (29, 18, 22, 0),  # B 7 + C 22; D chunk 6 -> 6*3
    8: (23, 54, 23, 0),  # C 23; D chunk 6 after 6 -> 6*9
    9: (13, 0, 13, 0),  # D decode 12+1
}


@pytest.fixture(scope="module")
def otel():
    return ingest_otel(OTEL / "traces.json")


def test_otel_steps_only_from_summaries_and_context_sums(otel):
    steps = otel.steps.set_index("step_id")
    assert sorted(steps.index.astype(int)) == sorted(EXPECTED)  # steps 0 and 4 were sampled out
    for s, (dctx, attn, maxc, hit) in EXPECTED.items():
        row = steps.loc[s]
        assert (row.sum_decode_context, row.sum_prefill_attention, row.max_context, row.prefix_cache_hit_tokens) == (
            dctx, attn, maxc, hit), f"step {s}"  # fmt: skip
    assert steps.loc[3, "ts_start_us"] == pytest.approx(1000.03e6)
    assert (steps["kv_fragmentation_ratio"] == 0.25).all()
    assert set(steps["hardware"]) == {"H100"} and set(steps["kv_blocks_total"]) == {64}
    assert otel.rejected.empty and otel.errors == []


def test_otel_requests_journey_api_and_engine_state(otel):
    req = otel.requests.set_index("request_id")
    assert list(req.index) == ["req-A-0-a1b2", "req-B-0-c3d4", "req-C-0-e5f6", "req-D-0-a7b8", "req-E-0-c9d0"]
    assert list(req["status"]) == ["stop", "stop", "length", "aborted", "aborted"]
    assert list(req["output_tokens"]) == [3, 4, 4, 2, 0]
    assert list(req["num_preemptions"]) == [0, 1, 0, 0, 0]
    assert req.loc["req-C-0-e5f6", "cached_prompt_tokens"] == 16
    assert np.isnan(req.loc["req-E-0-c9d0", "scheduled_us"])
    # API clock is 500 s behind the engine; the fixture's arrivals are 300 µs before QUEUED.
    gap = (req["queued_us"] - req["arrived_us"]).to_numpy()
    np.testing.assert_allclose(gap, 300.0, atol=1.0)
    # D was queued during step 6 -> state of step 6; A before any summary -> NaN.
    assert req.loc["req-D-0-a7b8", "running_depth"] == 2 and req.loc["req-D-0-a7b8", "waiting_depth"] == 0
    assert np.isnan(req.loc["req-A-0-a1b2", "running_depth"])
    assert req.loc["req-C-0-e5f6", "recent_preemptions"] == 1  # B preempted at step 4, 3 ms earlier


def test_read_otel_stable_signature_and_settings_override():
    steps, requests = read_otel(OTEL / "traces.json", settings={"hardware": "A100-80", "trace_id": "x"})
    assert set(steps["hardware"]) == {"A100-80"} and set(requests["trace_id"]) == {"x"}


def test_snapshot_overrides_rebuild(tmp_path):
    """A step whose summary disagrees with the rebuilt membership is NaN unless snapshots cover it."""
    run = tmp_path / "run"
    shutil.copytree(OTEL, run)
    text = (run / "traces.json").read_text()
    # claim a different prefill token count for steps 7 (has snapshots) and 8 (no snapshots)
    for step in (7, 8):
        marker = f'{{"key":"step.id","value":{{"intValue":"{step}"}}}}'
        i = text.index(marker)
        j = text.index('"batch.prefill_tokens","value":{"intValue":"6"}', i)
        text = text[:j] + '"batch.prefill_tokens","value":{"intValue":"5"}' + text[j + 47:]
    (run / "traces.json").write_text(text)
    steps = ingest_otel(run / "traces.json").steps.set_index("step_id")
    assert tuple(steps.loc[7, ["sum_decode_context", "sum_prefill_attention", "max_context"]]) == (29, 18, 22)
    assert steps.loc[8, ["sum_decode_context", "sum_prefill_attention", "max_context"]].isna().all()
    assert steps.loc[6, "sum_decode_context"] == 21


def test_truncated_last_line_keeps_complete_lines(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(OTEL, run)
    lines = (run / "traces.json").read_text().splitlines(keepends=True)
    (run / "traces.json").write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    res = read_input(run)
    assert len(res.steps) == 8 and len(res.requests) == 5 and res.errors == []
    assert len(res.rejected) == 1
    rej = res.rejected.iloc[0]
    assert rej["line"] == len(lines) and "truncated_line" in rej["failed_checks"]
    assert rej["source"].endswith("traces.json")
    # the API line was the one cut: arrivals are unknown now, not invented
    assert res.requests["arrived_us"].isna().all()


def test_malformed_middle_line_is_a_file_error(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(OTEL, run)
    lines = (run / "traces.json").read_text().splitlines(keepends=True)
    lines[1] = lines[1][:40] + "\n"
    (run / "traces.json").write_text("".join(lines))
    res = read_input(run)
    assert len(res.errors) == 1
    file, msg = res.errors[0]
    assert file.endswith("traces.json") and "line 2" in msg and "malformed JSON" in msg


def test_wrong_otlp_value_type_quarantines_that_row(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(OTEL, run)
    text = (run / "traces.json").read_text()
    bad = text.replace('{"key":"step.duration_us","value":{"doubleValue":3100.0}}',
                       '{"key":"step.duration_us","value":{"stringValue":"fast"}}')  # fmt: skip
    assert bad != text
    # and a journey event of request C with a string step
    marker = '"key":"scheduler.step","value":{"intValue":"5"}'
    bad = bad.replace(marker, '"key":"scheduler.step","value":{"stringValue":"five"}', 1)
    (run / "traces.json").write_text(bad)
    res = ingest_otel(run / "traces.json")
    assert 3 not in set(res.steps["step_id"]) and len(res.steps) == 7
    reasons = list(res.rejected["failed_checks"])
    assert any("step.duration_us" in r and "stringValue" in r for r in reasons)
    assert any("scheduler.step" in r for r in reasons)
    assert "req-C-0-e5f6" not in set(res.requests["request_id"]) and len(res.requests) == 4
    assert set(res.rejected["table"]) == {"steps", "requests"}
    assert (res.rejected["line"].notna() | res.rejected["values"].str.contains("req-C")).all()


def test_vllm_stats_alignment_and_metrics_join():
    res = read_vllm_stats(FIX / "vllm_stats_run")
    req = res.requests.set_index("request_id")
    assert res.steps.empty and len(req) == 5
    gap = req["queued_us"] - req["arrived_us"]
    assert gap.min() == pytest.approx(0.0, abs=1e-3) and gap.idxmin() == "r3"
    assert req.loc["r5", "status"] == "aborted" and np.isnan(req.loc["r5", "scheduled_us"])
    # r3 queued at engine 1003.1005 s -> metrics sample at t=1003.0 (running 1, waiting 2, 85 %)
    assert tuple(req.loc["r3", ["running_depth", "waiting_depth"]]) == (1, 2)
    assert req.loc["r3", "kv_usage_ratio"] == pytest.approx(0.85)
    assert req.loc["r4", "kv_usage_ratio"] == pytest.approx(0.30)
    assert set(req["trace_id"]) == {"fixture-stats"} and set(req["max_num_batched_tokens"]) == {2048}


@pytest.mark.parametrize(
    "path, fmt",
    [(OTEL, "otel"), (OTEL / "traces.json", "otel"), (FIX / "vllm_stats_run", "vllm-stats"),
     (FIX / "vllm_stats_run" / "request_stats.jsonl", "vllm-stats"), (FIX / "canonical", "canonical"),
     (FIX / "canonical" / "steps.csv", "canonical")],  # fmt: skip
)
def test_detect_format_from_content(path, fmt, tmp_path):
    assert detect_format(path) == fmt
    if path.is_file():  # a misleading name does not matter
        renamed = tmp_path / "data.txt"
        renamed.write_bytes(path.read_bytes())
        assert detect_format(renamed) == fmt


@pytest.mark.parametrize(
    "content, expected",
    [(b"", "empty file"), (b"hello world\n", "unknown format"), (b'{"foo": 1}\n', "neither OTLP")],
)
def test_unreadable_files_give_one_clear_error(tmp_path, content, expected):
    p = tmp_path / "bad.json"
    p.write_bytes(content)
    with pytest.raises(IngestError, match=expected):
        detect_format(p)
    res = read_input(p)
    assert res.steps.empty and res.requests.empty
    assert len(res.errors) == 1 and res.errors[0][0] == str(p) and expected in res.errors[0][1]


def test_header_only_csv_is_a_file_error(tmp_path):
    p = tmp_path / "steps.csv"
    p.write_text((FIX / "canonical" / "steps.csv").read_text().splitlines()[0] + "\n")
    res = read_input(p)
    assert len(res.errors) == 1 and "header only" in res.errors[0][1]


def test_engine_settings_feed_scope(tmp_path):
    run = tmp_path / "myrun"
    shutil.copytree(OTEL, run)
    settings = json.loads((run / "engine_settings.json").read_text())
    del settings["trace_id"]
    (run / "engine_settings.json").write_text(json.dumps(settings))
    steps, _ = read_otel(run / "traces.json")
    assert set(steps["trace_id"]) == {"myrun"} and set(steps["prefix_caching"]) == {True}


def test_adapter_notes_reach_the_validation_report(tmp_path):
    from molerd.validate import validate_inputs

    report = validate_inputs([FIX / "otel_run"], tmp_path / "out")
    (note,) = report["notes"].values()
    assert note["membership_rebuilt"] + note["membership_unknown"] == report["tables"]["steps"]["total"]
    assert "arrival" in note["arrival_clock"]
