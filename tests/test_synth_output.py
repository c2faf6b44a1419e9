"""Run folders: OTEL format, determinism, the reader accepts every row, regimes of the small preset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from molerd.synth import ALPHA_REGIMES, BETA_REGIMES, default_config, synthesize
from molerd.synth.dataset import config_from_params


def _tiny_config() -> dict:
    cfg = default_config("small")
    cfg["workers"] = 1
    cfg["replicates"] = 1
    keep = {"light", "saturation"}
    cfg["scenarios"] = [s for s in cfg["scenarios"] if s["name"] in keep]
    for s in cfg["scenarios"]:
        s["workload"]["num_requests"] = 60
    return cfg


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> list[Path]:
    return synthesize(default_config("small"), tmp_path_factory.mktemp("small"), seed=11)


def test_same_seed_gives_identical_bytes(tmp_path):
    a = synthesize(_tiny_config(), tmp_path / "a", seed=5)
    b = synthesize(_tiny_config(), tmp_path / "b", seed=5)
    c = synthesize(_tiny_config(), tmp_path / "c", seed=6)
    for fa, fb in zip(a, b):
        for name in ("traces.json", "engine_settings.json", "ground_truth.parquet"):
            assert (fa / name).read_bytes() == (fb / name).read_bytes(), name
    assert (a[0] / "traces.json").read_bytes() != (c[0] / "traces.json").read_bytes()


def test_parallel_and_serial_runs_are_identical(tmp_path):
    cfg = _tiny_config()
    serial = synthesize(cfg, tmp_path / "s", seed=5)
    cfg["workers"] = 2
    par = synthesize(cfg, tmp_path / "p", seed=5)
    for fs, fp in zip(serial, par):
        assert (fs / "traces.json").read_bytes() == (fp / "traces.json").read_bytes()


def test_run_folder_follows_the_otel_reference(small_dataset):
    run = small_dataset[0]
    settings = json.loads((run / "engine_settings.json").read_text())
    assert set(settings) == {"trace_id", "hardware", "model", "tp", "max_num_seqs", "max_num_batched_tokens",
                             "num_gpu_blocks", "block_size", "enable_prefix_caching", "cpu_offload"}
    scopes, names = set(), set()
    for line in (run / "traces.json").read_text().splitlines():
        obj = json.loads(line)
        for rs in obj["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                scopes.add(ss["scope"]["name"])
                for sp in ss["spans"]:
                    for ev in sp["events"]:
                        names.add(ev["name"])
                        assert isinstance(ev["timeUnixNano"], str)
                        for a in ev["attributes"]:
                            (kind, v), = a["value"].items()
                            assert kind in ("intValue", "doubleValue", "stringValue", "boolValue")
                            if kind == "intValue":
                                assert isinstance(v, str) and int(v) == int(v)
    assert scopes == {"vllm.scheduler.step", "vllm.scheduler", "vllm.api"}
    assert {"step.BATCH_SUMMARY", "journey.QUEUED", "journey.SCHEDULED", "journey.FIRST_TOKEN", "journey.FINISHED",
            "api.ARRIVED", "api.DEPARTED"} <= names


def test_preemption_runs_carry_preempt_and_resume_events(small_dataset):
    run = next(r for r in small_dataset if "_saturation" in r.name)
    text = (run / "traces.json").read_text()
    assert "journey.PREEMPTED" in text and '"RESUME"' in text


def test_ground_truth_has_noiseless_steps_and_true_queueing_delay(small_dataset):
    gt = pd.read_parquet(small_dataset[0] / "ground_truth.parquet")
    steps, reqs = gt[gt["record"] == "step"], gt[gt["record"] == "request"]
    assert steps["step_id"].is_monotonic_increasing and (steps["oracle_step_us"] > 0).all()
    ratio = steps["step_duration_us"] / steps["oracle_step_us"]
    assert 0.95 < ratio.mean() < 1.05 and ratio.std() > 0.005  # multiplicative noise around the oracle
    assert (reqs["queue_delay_us"].dropna() >= 0).all() and len(reqs) > 0


def test_small_preset_reaches_every_regime(small_dataset):
    gt = pd.concat([pd.read_parquet(r / "ground_truth.parquet") for r in small_dataset])
    beta = gt[(gt["record"] == "step") & gt["has_duration"]]["regime"].value_counts()
    alpha = gt[gt["record"] == "request"]["regime"].value_counts()
    for r in BETA_REGIMES:
        assert beta.get(r, 0) >= 100, beta.to_dict()
    for r in ALPHA_REGIMES:
        assert alpha.get(r, 0) >= 50, alpha.to_dict()


def test_reader_accepts_every_row(small_dataset, tmp_path):
    validate = pytest.importorskip("molerd.validate")
    otel = pytest.importorskip("molerd.ingest.otel")
    steps, reqs = otel.read_otel(small_dataset[0] / "traces.json")
    gt = pd.read_parquet(small_dataset[0] / "ground_truth.parquet")
    assert len(steps) == int(gt["has_duration"].fillna(False).sum())
    assert len(reqs) == int((gt["record"] == "request").sum())
    merged = steps.merge(gt[gt["record"] == "step"][["step_id", "step_duration_us"]], on="step_id", suffixes=("", "_gt"))
    assert np.allclose(merged["step_duration_us"], merged["step_duration_us_gt"])
    some = [r for r in small_dataset if r.name.rsplit("_", 2)[-2] in ("light", "saturation", "offload")]
    assert len(some) == 6
    report = validate.validate_inputs([r / "traces.json" for r in some], tmp_path / "v")
    for table in ("steps", "requests"):
        assert report["tables"][table]["quarantined"] == 0, report["tables"]
        assert report["tables"][table]["accepted"] > 0


def test_params_file_overrides_and_rejects_unknown_keys(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("base:\n  seed: 9\nsynth:\n  preset: small\n  sample_rate: 0.1\n  engine:\n    noise_sigma: 0.0\n")
    cfg, seed = config_from_params(p)
    assert seed == 9 and cfg["sample_rate"] == 0.1 and cfg["engine"]["noise_sigma"] == 0.0
    assert len(cfg["scopes"]) == 1
    p.write_text("synth:\n  sampel_rate: 0.1\n")
    with pytest.raises(ValueError, match="unknown synth keys \\['sampel_rate'\\]"):
        config_from_params(p)
