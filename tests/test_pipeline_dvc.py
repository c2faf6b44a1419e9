"""The whole pipeline under a real ``dvc repro`` in a throw-away git + DVC repository (small synthetic preset).

The tests run in order on one project: first repro (synthesize → … → first release), a no-change repro,
then a training-param change that must rerun training and what follows, and nothing before it.
"""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from molerd import registry
from molerd.release import check_golden, load
from pipeline_project import dvc, make_project, run, small_params, synth_batch
from release_helpers import go_test_golden

pytestmark = pytest.mark.slow

STAGES = {"synthesize", "validate", "label", "rebalance", "train@H100", "evaluate", "gate", "release"}


def ran(stdout: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", stdout))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    params = small_params()
    # the small preset has ~100 queued requests per alpha regime: too few for a fair alpha gate, so the
    # test gates on beta; alpha is still trained, evaluated, reported and released
    params["gate"]["targets"] = ["beta"]
    repo = make_project(tmp_path_factory.mktemp("proj"), params)
    first = dvc(["repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "first repro"], repo)
    return repo, first.stdout


def test_first_repro_runs_every_stage_and_publishes_a_release(project):
    repo, out = project
    assert ran(out) == STAGES
    summary = json.loads((repo / "data" / "release_summary.json").read_text())
    assert summary["decision"] == "promote" and summary["version"] == "v1" and summary["current"] == "v1"
    assert f"release v1 written to data/releases/v1" in out and "report: data/releases/v1/report/index.html" in out
    rdir = repo / "data" / "releases" / "v1"
    registry.verify_release(rdir)  # every file matches MANIFEST.json
    rel = load(rdir)
    assert check_golden(rel, json.loads((rdir / "golden.json").read_text())) == []
    (scope,) = rel.scopes
    assert scope == ("H100", "llama-3.1-8b-instruct", 1)
    flags = (rdir / "blis" / "H100_llama-3.1-8b-instruct_tp1" / "flags.txt").read_text()
    assert flags.startswith("--alpha-coeffs ") and " --beta-coeffs " in flags
    doc = json.loads((rdir / "release.json").read_text())
    assert doc["provenance"]["data_version"].startswith("sha256:") and doc["provenance"]["seed"] == 20261203
    assert doc["provenance"]["code_version"]  # the temp repo's git commit
    assert (rdir / "report" / "index.html").is_file() and list((rdir / "report" / "img").glob("*.png"))
    gate = json.loads((rdir / "gate.json").read_text())
    assert gate["decision"] == "promote" and gate["champion"] == "blis-blackbox baseline"
    # the soft gate removes the jumps the hard gate makes at every rule boundary (measured on held-out rows)
    jumps = json.loads((rdir / "eval" / "gate_jumps.json").read_text())
    assert {(j["target"], j["regime"]) for j in jumps} >= {("beta", "prefill_dominated"), ("beta", "saturation"),
                                                         ("alpha", "low_load"), ("alpha", "high_pressure")}
    for j in jumps:
        assert j["max_jump_soft_pct"] <= j["max_jump_hard_pct"], j
    assert max(j["max_jump_hard_pct"] for j in jumps) > 5 * max(j["max_jump_soft_pct"] for j in jumps)
    page = (rdir / "report" / "index.html").read_text(encoding="utf-8")
    assert 'id="boundary-jumps"' in page
    # every regime that did not get its own expert is a warning in the report, with its reason, and no other
    notes = json.loads((rdir / "eval" / "model_notes.json").read_text())
    in_spec = {(t, r) for t in ("beta", "alpha") for r, e in doc["scopes"][0][t]["experts"].items() if e["source"] != "own"}
    in_notes = {(n["target"], n["kind"].split()[1].rstrip(":")) for n in notes if n["kind"].startswith("regime ")}
    assert in_spec == in_notes
    assert 'id="model-notes"' in page and all(html.escape(n["detail"]) in page for n in notes)


def test_the_go_evaluator_reproduces_the_pipelines_release(project):
    repo, _ = project
    out = go_test_golden(repo / "data" / "releases" / "v1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "golden cases agree" in out.stdout


def test_validation_keeps_its_quarantine_and_counts(project):
    repo, _ = project
    counts = json.loads((repo / "data" / "metrics" / "validation.json").read_text())["tables"]
    for table in ("steps", "requests"):
        c = counts[table]
        assert c["total"] == c["accepted"] + c["quarantined"] and c["accepted"] > 0
        assert len(pd.read_parquet(repo / "data" / "processed" / "validated" / f"{table}.parquet")) == c["accepted"]
    q = pd.read_parquet(repo / "data" / "processed" / "validated" / "quarantine.parquet")
    assert len(q) == sum(c["quarantined"] for c in counts.values())


def test_metrics_and_plots_are_dvc_metrics(project):
    repo, _ = project
    shown = dvc(["metrics", "show", "--json"], repo).stdout
    assert "mape_percent" in shown and "decision" in shown
    ev = json.loads((repo / "data" / "metrics" / "eval.json").read_text())
    assert ev["mape_percent"]["beta"]["candidate"] < ev["mape_percent"]["beta"]["blackbox"]
    plots = pd.read_csv(repo / "data" / "plots" / "per_regime_mape.csv")
    assert {"regime", "mape"} <= set(plots.columns) and np.isfinite(plots["mape"]).all()


def test_second_repro_with_nothing_changed_runs_no_stage(project):
    repo, _ = project
    out = dvc(["repro"], repo).stdout
    assert ran(out) == set(), out
    assert "didn't change, skipping" in out or "Data and pipelines are up to date" in out


def test_changing_a_training_param_reruns_training_and_what_follows_only(project):
    repo, _ = project
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["estimator"]["gate_width"] = 0.5
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    diff = dvc(["params", "diff", "--json"], repo).stdout
    assert "train.estimator.gate_width" in diff
    before = sorted(p.name for p in (repo / "data" / "releases").iterdir())
    out = dvc(["repro"], repo).stdout
    assert ran(out) == {"train@H100", "evaluate", "gate", "release"}, out
    # the new candidate is judged against release v1 (the champion now), not against the baseline
    gate = json.loads((repo / "data" / "gate" / "gate.json").read_text())
    assert gate["champion"] == "v1"
    summary = json.loads((repo / "data" / "release_summary.json").read_text())
    after = sorted(p.name for p in (repo / "data" / "releases").iterdir())
    if summary["decision"] == "promote":
        assert summary["version"] == "v2" and after == sorted(before + ["v2"])
    else:  # rejected: the registry is exactly as it was
        assert after == before and registry.current_version(repo / "data" / "releases") == "v1"
    registry.verify_release(repo / "data" / "releases" / "v1")  # the old release is untouched either way


def test_a_new_trace_batch_added_with_dvc_reruns_from_validation_and_pushes(project, tmp_path):
    repo, _ = project
    params = yaml.safe_load((repo / "params.yaml").read_text())
    synth_batch(repo / "data" / "raw" / "batch-2", params, seed=4242, scenarios=["light", "mixed"])
    dvc(["add", "data/raw/batch-2"], repo)
    assert (repo / "data" / "raw" / "batch-2.dvc").is_file()
    out = dvc(["repro"], repo).stdout
    assert ran(out) == STAGES - {"synthesize"}, out
    runs = json.loads((repo / "data" / "processed" / "labelled" / "coverage.json").read_text())
    assert any(r.endswith("_r0") and "light" in r for r in runs["train_runs"] + runs["test_runs"])
    remote = tmp_path / "remote"
    dvc(["remote", "add", "-d", "store", str(remote)], repo)
    dvc(["push"], repo)
    assert any(remote.rglob("*")), "dvc push wrote nothing to the remote"
    assert "in sync" in dvc(["status", "-c"], repo).stdout
