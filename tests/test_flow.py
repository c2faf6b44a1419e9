"""The Prefect retraining flow, run for real under ``prefect_test_harness`` (a temporary Prefect API), on a
throw-away copy of the project with the small synthetic preset; and the drift check on synthesized batches."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from molerd import pipeline, registry
from pipeline_project import make_project, small_params, synth_batch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="module")
def flow_project(tmp_path_factory, harness):
    from flows.retrain import retrain

    params = small_params()
    params["gate"]["targets"] = ["beta"]  # see test_pipeline_dvc: too few queued requests for a fair alpha gate
    repo = make_project(tmp_path_factory.mktemp("flowproj"), params)
    first = retrain(root=str(repo), synthesize_default=True)
    return repo, params, first


def test_flow_run_trains_per_hardware_gates_and_releases(flow_project):
    repo, _, summary = flow_project
    assert summary["decision"] == "promote" and summary["version"] == "v1"
    assert summary["validation"]["tables"]["steps"]["accepted"] > 0
    assert [t["hardware"] for t in summary["train"]] == ["H100"]
    assert registry.current_version(repo / "data" / "releases") == "v1"
    registry.verify_release(repo / "data" / "releases" / "v1")

    from prefect.client.orchestration import get_client

    async def runs():
        async with get_client() as client:
            flows = await client.read_flow_runs()
            tasks = await client.read_task_runs()
            return flows, tasks

    flows, tasks = asyncio.run(runs())
    assert any(f.state.is_completed() for f in flows)
    names = {t.name for t in tasks}
    assert "train-H100" in names  # the per-hardware fan-out (.map), named by hardware
    assert {"synthesize", "validate", "label", "rebalance", "evaluate", "gate", "release"} <= \
        {n.rsplit("-", 1)[0] for n in names}
    assert all(t.state.is_completed() for t in tasks), [(t.name, t.state.type) for t in tasks]


def test_same_mix_batch_needs_no_retrain(flow_project, tmp_path):
    from flows.retrain import retrain

    repo, params, _ = flow_project
    incoming = tmp_path / "incoming"  # what the scheduled deployment watches: one sub-folder per batch
    synth_batch(incoming / "batch-same", params, seed=777)
    summary = retrain(root=str(repo), incoming=str(incoming))
    assert summary["decision"] == "no retrain needed", summary["drift"]["reasons"]
    assert not summary["drift"]["retrain_needed"] and list(summary["drift"]["batches"]) == ["batch-same"]
    assert (repo / "data" / "drift" / "batch-same.json").is_file()
    assert (repo / "data" / "raw" / "batch-same").is_dir()  # kept: it joins the next training data
    assert registry.current_version(repo / "data" / "releases") == "v1"  # nothing was retrained or released
    again = retrain(root=str(repo), incoming=str(incoming))  # the next scheduled run: nothing new
    assert again["decision"] == "no new traces"


def test_batch_from_a_different_load_mix_is_flagged(flow_project, tmp_path):
    repo, params, _ = flow_project
    batch = synth_batch(tmp_path / "batch-overload", params, seed=778, scenarios=["overload", "kv_pressure", "saturation"])
    rep = pipeline.drift(params, pipeline.Layout(repo), batch)
    assert rep["retrain_needed"], rep
    doc = json.loads((repo / "data" / "drift" / "batch-overload.json").read_text())
    assert doc["retrain_needed"] and doc["reasons"]


def test_training_fan_out_on_a_local_dask_cluster_gives_identical_coefficients(flow_project, tmp_path, monkeypatch):
    from distributed import LocalCluster

    from flows.retrain import dask_task_runner, train_fanout

    repo, params, _ = flow_project
    layout = pipeline.Layout(repo)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        monkeypatch.setenv("MOLERD_DASK_ADDRESS", cluster.scheduler_address)
        assert type(dask_task_runner(params)).__name__ == "DaskTaskRunner"
        out = train_fanout(params)(params, ["H100"], layout.labelled, layout.balanced, tmp_path / "models")
    assert out[0]["hardware"] == "H100"
    for name in ("model.json", "train_report.json", "predictions.parquet"):
        assert (tmp_path / "models" / "H100" / name).read_bytes() == (layout.model_dir("H100") / name).read_bytes(), name


def test_the_scheduled_deployment_follows_params():
    from flows.deploy import deployment

    params = pipeline.load_params(Path(__file__).resolve().parent.parent / "params.yaml")
    dep = deployment(params)
    assert dep.name == params["schedule"]["name"]
    assert [s.schedule.cron for s in dep.schedules] == [params["schedule"]["cron"]]
    assert dep.parameters["incoming"] == params["schedule"]["incoming"]
