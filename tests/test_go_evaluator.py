"""The Go evaluator (integrations/blis) reproduces the Python golden vectors of a real release."""

from __future__ import annotations

import pytest

from molerd import blis, registry
from molerd import release as R
from release_helpers import SCOPE, fitted_models, go_test_golden


@pytest.mark.parametrize("gate_width", [1.0, 0.0])  # soft and hard gates
def test_go_matches_golden(tmp_path, gate_width):
    beta, alpha, steps, req = fitted_models(gate_width=gate_width)
    doc = R.build_release("g1", [R.build_scope(*SCOPE, beta=beta, alpha=alpha, blis=blis.fit_blis_block(steps, req))])
    d = registry.publish_release(tmp_path / "releases", "g1", doc)
    out = go_test_golden(d)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "golden cases agree" in out.stdout
