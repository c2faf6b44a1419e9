"""Trace synthesizer: workloads → vLLM V1 scheduler model → kernel-table step-time oracle → OTEL traces.

Public API: :func:`synthesize` (config, out_dir, seed → run folders), :func:`default_config` (preset),
:class:`StepOracle`, :class:`Engine`, the seed's regime labelers :func:`label_alpha` / :func:`label_beta`.
"""

from molerd.synth.dataset import (
    ALPHA_REGIMES,
    BETA_REGIMES,
    default_config,
    ground_truth,
    label_alpha,
    label_beta,
    plan_runs,
    simulate,
    synthesize,
)
from molerd.synth.engine import Engine, EngineConfig
from molerd.synth.oracle import OracleParams, StepOracle

__all__ = [
    "ALPHA_REGIMES", "BETA_REGIMES", "Engine", "EngineConfig", "OracleParams", "StepOracle", "default_config",
    "ground_truth", "label_alpha", "label_beta", "plan_runs", "simulate", "synthesize",
]
