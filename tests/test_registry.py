"""Registry: atomic immutable publishing, checksums, current/rollback, diff, CLI, concurrency."""

from __future__ import annotations

import copy
import json
import multiprocessing as mp
from pathlib import Path

import pytest
from typer.testing import CliRunner

from molerd import blis, registry
from molerd import release as R
from release_helpers import SCOPE, fitted_models


@pytest.fixture(scope="module")
def docs():
    beta, alpha, steps, req = fitted_models()
    block = blis.fit_blis_block(steps, req)
    d1 = R.build_release("v1", [R.build_scope(*SCOPE, beta=beta, alpha=alpha, blis=block, metrics={"beta_mape": 0.2})])
    d2 = copy.deepcopy(d1)
    d2["version"] = "v2"
    d2["scopes"][0]["metrics"]["beta_mape"] = 0.1
    d2["scopes"][0]["blis"]["beta_coeffs"][6] += 1.0
    return d1, d2


def test_publish_layout_checksums_and_current(tmp_path, docs):
    d = registry.publish_release(tmp_path, "v1", docs[0], gate_report={"decision": "promote"})
    files = {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}
    sk = R.scope_key(*SCOPE)
    assert {"release.json", "metrics.json", "gate.json", "golden.json", "MANIFEST.json",
            f"blis/{sk}/defaults.snippet.yaml", f"blis/{sk}/flags.txt"} == files
    assert not list(d.rglob("*.pkl")) and not list(d.rglob("*.joblib"))
    assert registry.current_version(tmp_path) == "v1"
    assert registry.load_release(tmp_path).version == "v1"
    a, b = blis.parse_flags((d / f"blis/{sk}/flags.txt").read_text())
    assert list(b) == docs[0]["scopes"][0]["blis"]["beta_coeffs"]
    golden = json.loads((d / "golden.json").read_text())
    assert R.check_golden(registry.load_release(tmp_path), golden) == []


def test_refuses_overwrite_and_detects_tampering(tmp_path, docs):
    registry.publish_release(tmp_path, "v1", docs[0])
    with pytest.raises(registry.RegistryError, match="already exists"):
        registry.publish_release(tmp_path, "v1", docs[0])
    f = tmp_path / "v1" / "metrics.json"
    f.write_text(f.read_text() + " ")
    with pytest.raises(registry.RegistryError, match=r"metrics.json: sha256 mismatch"):
        registry.load_release(tmp_path, "v1")


def test_failed_write_leaves_registry_unchanged(tmp_path, docs, monkeypatch):
    registry.publish_release(tmp_path, "v1", docs[0])
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    calls = {"n": 0}
    real = registry._fsync_write

    def failing(path, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(registry, "_fsync_write", failing)
    with pytest.raises(OSError, match="No space left"):
        registry.publish_release(tmp_path, "v2", docs[1])
    after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert after == before and registry.current_version(tmp_path) == "v1"


def test_rollback_diff_and_cli(tmp_path, docs):
    registry.publish_release(tmp_path, "v1", docs[0])
    registry.publish_release(tmp_path, "v2", docs[1])
    assert registry.current_version(tmp_path) == "v2"
    diff = registry.diff_releases("v1", "v2", tmp_path)
    names = {r["name"] for r in diff["coefficients"]}
    assert f"{R.scope_key(*SCOPE)}.blis.beta.constant" in names
    assert any(r["name"].endswith("beta_mape") and r["delta"] == pytest.approx(-0.1) for r in diff["metrics"])
    assert registry.rollback(tmp_path, "v1") == "v2" and registry.current_version(tmp_path) == "v1"
    with pytest.raises(registry.RegistryError, match="no release 'v9'"):
        registry.rollback(tmp_path, "v9")

    from molerd.cli import app
    run = CliRunner()
    out = run.invoke(app, ["release", "list", "--root", str(tmp_path)])
    assert out.exit_code == 0 and "* v1" in out.output and "  v2" in out.output
    out = run.invoke(app, ["release", "export-blis", "v2", "--scope", R.scope_key(*SCOPE), "--root", str(tmp_path)])
    assert out.exit_code == 0 and blis.parse_flags(out.output)[1] == tuple(docs[1]["scopes"][0]["blis"]["beta_coeffs"])
    out = run.invoke(app, ["release", "export-blis", "v2", "--scope", R.scope_key(*SCOPE), "--snippet", "--root", str(tmp_path)])
    assert out.exit_code == 0 and out.output.startswith("trained_physics_coefficients:")
    out = run.invoke(app, ["release", "rollback", "nope", "--root", str(tmp_path)])
    assert out.exit_code == 2
    out = run.invoke(app, ["release", "show", "v2", "--root", str(tmp_path)])
    assert out.exit_code == 0 and json.loads(out.output)["version"] == "v2"


def _publish(args):
    root, version, doc = args
    try:
        registry.publish_release(Path(root), version, doc, golden={"format": "molerd-golden", "cases": []})
        return "ok"
    except registry.RegistryError as exc:
        return str(exc)


def test_concurrent_publishers_cannot_both_win(tmp_path, docs):
    with mp.get_context("fork").Pool(2) as pool:
        results = pool.map(_publish, [(str(tmp_path), "v1", docs[0])] * 2)
    assert sorted(r == "ok" for r in results) == [False, True]
    registry.verify_release(tmp_path / "v1")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


_KILLED_WRITER = """
import json, sys, time
from pathlib import Path
from molerd import registry
root, doc_file, ready = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
doc = json.loads(doc_file.read_text())
real, n = registry._fsync_write, [0]
def slow(path, data):
    real(path, data)
    n[0] += 1
    if n[0] == 2:          # half a release on disk: announce it, then hang until killed
        ready.write_text("half written")
        time.sleep(600)
registry._fsync_write = slow
registry.publish_next(root, "v", lambda version: (dict(doc, version=version), {}))
"""


def test_sigkill_mid_publish_leaves_no_partial_release_and_the_next_run_recovers(tmp_path, docs):
    import os
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "releases"
    registry.publish_release(root, "v1", docs[0])
    before = registry.list_releases(root)
    (tmp_path / "doc.json").write_text(json.dumps(docs[1]))
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(root), str(tmp_path / "doc.json"), str(ready)])
    try:
        for _ in range(600):
            if ready.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert ready.exists(), "the writer never reached the middle of its release"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    # killed mid-way: its half-written release sits in a hidden temp folder, never under a version name
    assert [p.name for p in root.iterdir() if p.name.startswith(".tmp-")]
    assert registry.list_releases(root) == before and registry.current_version(root) == "v1"
    assert not (root / "v2").exists()
    # the next run takes the lock the dead writer held (the kernel released it), cleans up and publishes
    d = registry.publish_next(root, "v", lambda version: (dict(docs[1], version=version), {}))
    assert d.name == "v2" and registry.current_version(root) == "v2"
    registry.verify_release(d)
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]


def _publish_next(args):
    root, doc = args
    return registry.publish_next(Path(root), "v", lambda version: (dict(doc, version=version), {})).name


def test_two_pipeline_runs_at_once_get_two_versions_and_a_consistent_registry(tmp_path, docs):
    with mp.get_context("fork").Pool(2) as pool:
        names = pool.map(_publish_next, [(str(tmp_path), docs[0]), (str(tmp_path), docs[1])])
    assert sorted(names) == ["v1", "v2"]
    for v in names:
        registry.verify_release(tmp_path / v)
    assert registry.current_version(tmp_path) in names
    assert [r["version"] for r in registry.list_releases(tmp_path)] == ["v1", "v2"]
