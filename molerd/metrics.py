"""The error metric every part of the pipeline judges by: absolute percentage error with a denominator floor.

MAPE is the gate's metric, but a target that can sit near zero makes it meaningless: the seed's queueing
delay ``scheduled − queued`` of a request that arrives while the engine is idle is the rest of the step in
flight (a few µs to a few ms), set by the phase of the step clock, which no state-based model can know. So
each target has a floor: APE = |ŷ − y| / max(y, floor). Step times (beta, ≥ several ms) and BLIS's API
overhead (``queued − arrived``) are never near zero and use 1 µs (plain MAPE); the seed's alpha uses 5 ms,
about half a decode step. Training losses, the estimator's ``score``, the evaluation, the gate and the report
all use the same floor (params: ``evaluate.ape_floor_us``).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

# keyed by what y means: "beta", or the alpha target kind
APE_FLOOR_US: dict[str, float] = {"beta": 1.0, "scheduled_minus_queued": 5000.0, "queued_minus_arrived": 1.0}
DEFAULT_FLOOR_US = 1.0


def ape_floor(target: str, alpha_kind: str | None = None, overrides: Mapping[str, float] | None = None) -> float:
    """The APE floor (µs) of ``target`` ("beta", or "alpha" with its ``alpha_kind``); ``overrides`` is the
    ``evaluate.ape_floor_us`` params mapping, keyed like :data:`APE_FLOOR_US`."""
    key = "beta" if target == "beta" else (alpha_kind or "scheduled_minus_queued")
    floors = {**APE_FLOOR_US, **{k: float(v) for k, v in (overrides or {}).items()}}
    return float(floors.get(key, DEFAULT_FLOOR_US))


def ape(y_true, y_pred, floor: float = DEFAULT_FLOOR_US) -> np.ndarray:
    """Absolute percentage error per row (fraction), |ŷ − y| / max(|y|, floor)."""
    y_true = np.asarray(y_true, dtype="float64")
    return np.abs(np.asarray(y_pred, dtype="float64") - y_true) / np.maximum(np.abs(y_true), floor)


def mape(y_true, y_pred, floor: float = DEFAULT_FLOOR_US) -> float:
    """Mean of :func:`ape` (fraction: 0.1 = 10 %)."""
    return float(np.mean(ape(y_true, y_pred, floor)))


def summarize(y_true, y_pred, floor: float = DEFAULT_FLOOR_US) -> dict:
    """n, MAPE, median APE and p90 APE (fractions) over the rows with a finite target."""
    y_true = np.asarray(y_true, dtype="float64")
    ok = np.isfinite(y_true)
    e = ape(y_true[ok], np.asarray(y_pred, dtype="float64")[ok], floor)
    if len(e) == 0:
        return {"n": 0, "mape": np.nan, "median_ape": np.nan, "p90_ape": np.nan}
    return {"n": int(len(e)), "mape": float(e.mean()), "median_ape": float(np.median(e)),
            "p90_ape": float(np.quantile(e, 0.9))}
