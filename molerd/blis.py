"""The BLIS block of a release: coefficients in BLIS's own ``trained-physics`` format.

BLIS (inference-sim) computes ``StepTime = Σ β_i · term_i`` over roofline basis terms built from the
HuggingFace model config and its hardware table, plus an alpha triple (α0 queueing/API overhead µs,
α1 post-decode fixed overhead µs, α2 µs per output token). A release ships such a block per scope so a
stock BLIS binary can use the retrained data even without the MoLE-RD backend, and so the release can
report the single-linear-physics MAPE beside MoLE-RD's.

Which alpha is which: the BLIS alpha triple here is NOT the seed's regime alpha (``scheduled − queued``).
BLIS simulates its own waiting queue, so its QueueingTime must only hold the API overhead
``queued − arrived``; feeding ``scheduled − queued`` to BLIS would count queueing twice.

Units: µs and tokens. Everything is deterministic (no randomness at all).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from molerd import features as F
from molerd import metrics
from molerd.specs import BYTES_PER_PARAM, model

BETA_TERMS: tuple[str, ...] = (
    "T_pf_compute",  # β1a
    "T_dc_compute",  # β2a
    "T_weight",  # β3
    "T_tp",  # β4
    "L",  # β5
    "batch_size",  # β6
    "constant",  # β7
    "n_MoE_layers",  # β8
    "T_pf_kv",  # β1b
    "T_dc_kv",  # β2b
)
"""BLIS's beta order for the trained-physics backend (``defaults.yaml: beta_coeffs``)."""
EP_TERM = "T_dispatch"  # β_EP, the optional 11th term (expert-parallel dispatch); this pipeline has no EP data
ALPHA_TERMS: tuple[str, ...] = ("alpha0_api_overhead_us", "alpha1_post_decode_us", "alpha2_us_per_output_token")
LEGACY_BETA_TERMS: tuple[str, ...] = ("constant", "prefill_tokens", "decode_tokens")
LEGACY_ALPHA_TERMS: tuple[str, ...] = ("constant", "input_tokens")
DEFAULT_BLIS_VERSION = "inference-sim trained-physics (10/11-beta layout, defaults.yaml trained_physics_coefficients)"

# Terms that are the same for every step of one (hardware, model, tp) scope: inside one scope they are
# collinear with the constant, so the fit folds them into it (their beta is 0) instead of letting NNLS
# pick an arbitrary split.
_SCOPE_CONSTANT_TERMS = ("T_weight", "L", "n_MoE_layers")


class BlisFitError(ValueError):
    """The BLIS block cannot be fitted from the given table (says which table, rule and count)."""


@dataclass(frozen=True)
class BlisBlock:
    """A fitted BLIS block: what ``--alpha-coeffs/--beta-coeffs`` and ``defaults.yaml`` carry, plus the legacy
    3-beta blackbox for reference and a fit report (rows used/dropped, methods)."""

    alpha_coeffs: tuple[float, ...]
    beta_coeffs: tuple[float, ...]
    legacy_alpha: tuple[float, ...] = (0.0, 0.0)
    legacy_beta: tuple[float, ...] = (0.0, 0.0, 0.0)
    blis_version: str = DEFAULT_BLIS_VERSION
    report: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form used inside ``release.json``."""
        return {
            "blis_version": self.blis_version,
            "alpha_terms": list(ALPHA_TERMS),
            "alpha_coeffs": [float(a) for a in self.alpha_coeffs],
            "beta_terms": list(BETA_TERMS) + ([EP_TERM] if len(self.beta_coeffs) == 11 else []),
            "beta_coeffs": [float(b) for b in self.beta_coeffs],
            "legacy_blackbox": {
                "beta_terms": list(LEGACY_BETA_TERMS),
                "beta_coeffs": [float(b) for b in self.legacy_beta],
                "alpha_terms": list(LEGACY_ALPHA_TERMS),
                "alpha_coeffs": [float(a) for a in self.legacy_alpha],
                "alpha2_us_per_output_token": float(self.alpha_coeffs[2]),
            },
            "fit_report": self.report,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BlisBlock":
        block = cls(
            alpha_coeffs=tuple(float(a) for a in d["alpha_coeffs"]),
            beta_coeffs=tuple(float(b) for b in d["beta_coeffs"]),
            legacy_alpha=tuple(float(a) for a in d["legacy_blackbox"]["alpha_coeffs"]),
            legacy_beta=tuple(float(b) for b in d["legacy_blackbox"]["beta_coeffs"]),
            blis_version=str(d["blis_version"]),
            report=dict(d.get("fit_report", {})),
        )
        validate_coeffs(block.alpha_coeffs, block.beta_coeffs)
        return block


# ---------------------------------------------------------------------------------------------------------
# Basis terms
# ---------------------------------------------------------------------------------------------------------


def scope_constants(hardware_name: str, model_name: str, tp: int) -> dict[str, float]:
    """The per-scope constants the roofline terms use: the feature catalog's (:func:`molerd.features.
    scope_constants`, one definition for both) plus the hidden size and bytes per parameter."""
    m = model(model_name)
    return {**F.scope_constants(hardware_name, model_name, tp), "hidden_size": float(m.hidden_size),
            "bytes_per_param": float(BYTES_PER_PARAM)}


def _terms_for_scope(df: pd.DataFrame, c: dict[str, float], missing: str, where: str) -> pd.DataFrame:
    pf = df["prefill_tokens"].to_numpy(dtype="float64")
    dc = df["decode_tokens"].to_numpy(dtype="float64")
    pf_att = df["sum_prefill_attention"].to_numpy(dtype="float64", na_value=np.nan) if "sum_prefill_attention" in df else np.full(len(df), np.nan)
    dc_ctx = df["sum_decode_context"].to_numpy(dtype="float64", na_value=np.nan) if "sum_decode_context" in df else np.full(len(df), np.nan)
    if missing == "error":
        bad = np.isnan(pf_att) | np.isnan(dc_ctx)
        if bad.any():
            row = df.index[np.flatnonzero(bad)[0]]
            raise BlisFitError(
                f"{where}: {int(bad.sum())} step rows lack sum_prefill_attention/sum_decode_context (first: index {row!r}); "
                "rule: the BLIS roofline terms need the reconstructed batch context; pass missing='zero' to treat it as 0"
            )
    pf_att = np.nan_to_num(pf_att, nan=0.0)
    dc_ctx = np.nan_to_num(dc_ctx, nan=0.0)
    tp = c["tp"]
    flops = c["flops_per_us"] * tp
    bw = c["bytes_per_us"] * tp
    tokens = pf + dc
    allreduce_bytes = 2.0 * c["num_layers"] * tokens * c["hidden_size"] * c["bytes_per_param"] * (tp - 1.0) / tp
    n = len(df)
    out = {
        "T_pf_compute": (pf * c["flops_per_token"] + c["attention_flops_per_context_token"] * pf_att) / flops,
        "T_dc_compute": (dc * c["flops_per_token"] + c["attention_flops_per_context_token"] * dc_ctx) / flops,
        "T_weight": np.full(n, c["weight_bytes"] / bw),
        "T_tp": allreduce_bytes / c["link_bytes_per_us"],
        "L": np.full(n, c["num_layers"]),
        "batch_size": (df["num_prefill_reqs"].to_numpy(dtype="float64") + df["num_decode_reqs"].to_numpy(dtype="float64")),
        "constant": np.ones(n),
        "n_MoE_layers": np.full(n, c["num_layers"] * c["is_moe"]),
        "T_pf_kv": pf * c["kv_bytes_per_token"] / bw,
        "T_dc_kv": dc_ctx * c["kv_bytes_per_token"] / bw,
    }
    return pd.DataFrame(out, index=df.index)


def basis_terms(steps: pd.DataFrame, *, ep_term: bool = False, missing: str = "zero") -> pd.DataFrame:
    """Per-step BLIS roofline basis terms (µs, counts), one column per beta in BLIS's order.

    Parameters
    ----------
    steps : DataFrame
        Canonical steps rows (needs hardware, model, tp, prefill_tokens, decode_tokens, num_prefill_reqs,
        num_decode_reqs; sum_prefill_attention and sum_decode_context where known).
    ep_term : bool, default False
        Append the 11th term ``T_dispatch`` (always 0: no expert parallelism in the traced engines).
    missing : {"zero", "error"}
        What a missing (NaN) context sum means: contributes 0 to the attention/KV terms, or raise.

    Returns
    -------
    DataFrame of shape (n_steps, 10 or 11), same index as ``steps``.
    """
    if missing not in ("zero", "error"):
        raise ValueError(f"missing must be 'zero' or 'error', got {missing!r}")
    need = {"hardware", "model", "tp", "prefill_tokens", "decode_tokens", "num_prefill_reqs", "num_decode_reqs"}
    lacking = sorted(need - set(steps.columns))
    if lacking:
        raise BlisFitError(f"steps table lacks column(s) {lacking}; rule: BLIS basis terms need {sorted(need)}")
    parts = []
    for (hw, m, tp), g in steps.groupby(["hardware", "model", "tp"], sort=True):
        parts.append(_terms_for_scope(g, scope_constants(str(hw), str(m), int(tp)), missing, f"scope ({hw}, {m}, tp={tp})"))
    terms = pd.concat(parts).loc[steps.index] if parts else pd.DataFrame(columns=list(BETA_TERMS), dtype="float64")
    terms = terms[list(BETA_TERMS)]
    if ep_term:
        terms[EP_TERM] = 0.0
    return terms


# ---------------------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------------------


def _weighted_nnls(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """argmin_{b >= 0} Σ ((X b − y) / y)²: relative-error least squares (the gate is MAPE) with scaled columns."""
    A = X / y[:, None]
    scale = np.sqrt((A**2).sum(axis=0))
    active = scale > 0
    coef = np.zeros(X.shape[1])
    if active.any():
        sol, _ = nnls(A[:, active] / scale[active], np.ones(len(y)), maxiter=50 * X.shape[1] + 100)
        coef[active] = sol / scale[active]
    return coef


def _positive_target(steps: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    y = steps["step_duration_us"].to_numpy(dtype="float64", na_value=np.nan)
    ok = np.isfinite(y) & (y > 0)
    return steps.loc[ok], int((~ok).sum())


def fit_betas(steps: pd.DataFrame, *, ep_term: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit BLIS's trained-physics betas (all ≥ 0) on training steps by NNLS with weights 1/y.

    Terms that are constant over the training data (per-scope constants such as T_weight or L when only one
    scope is fitted) are folded into β7 so the solution is unique; terms that are all zero get β = 0.
    Returns the 10 (or 11) betas and a report of what was used.
    """
    if "step_duration_us" not in steps.columns:
        raise BlisFitError("steps table lacks step_duration_us; rule: the beta target is the measured step duration")
    used, dropped = _positive_target(steps)
    if len(used) < 3:
        raise BlisFitError(f"only {len(used)} steps with a positive finite step_duration_us; rule: need >= 3 to fit betas")
    T = basis_terms(used, ep_term=ep_term)
    X = T.to_numpy(dtype="float64")
    y = used["step_duration_us"].to_numpy(dtype="float64")
    names = list(T.columns)
    fit_cols = []
    folded = []
    for j, name in enumerate(names):
        col = X[:, j]
        if name != "constant" and (np.all(col == 0) or (name in _SCOPE_CONSTANT_TERMS and np.all(col == col[0]))):
            folded.append(name)
            continue
        fit_cols.append(j)
    coef = np.zeros(len(names))
    coef[fit_cols] = _weighted_nnls(X[:, fit_cols], y)
    pred = X @ coef
    report = {
        "n_steps_used": int(len(used)),
        "n_steps_dropped_nonpositive_target": dropped,
        "n_steps_missing_context": int(
            (used.get("sum_decode_context", pd.Series(np.nan, index=used.index)).isna()
             | used.get("sum_prefill_attention", pd.Series(np.nan, index=used.index)).isna()).sum()
        ),
        "terms_fixed_to_zero": folded,
        "train_mape": float(np.mean(np.abs(pred - y) / y)),
        "method": "scipy.optimize.nnls, weights 1/step_duration_us (relative error)",
    }
    return coef, report


def _median(x: np.ndarray) -> float:
    return float(np.median(x)) if len(x) else float("nan")


def fit_alpha_triple(
    requests: pd.DataFrame, steps: pd.DataFrame | None = None, *, alpha2_method: str = "auto"
) -> tuple[tuple[float, float, float], dict[str, Any]]:
    """Fit BLIS's alpha triple (medians: robust to the heavy tails of API timings).

    α0 = median(queued − arrived) (API overhead before the engine queue; NOT the seed's scheduled − queued);
    α1 = median(departed − finished) (post-decode fixed overhead);
    α2 = µs per output token. ``alpha2_method``: "per_token" = median((finished − first_token)/(output_tokens − 1)),
    the whole inter-token time; "overhead" = that minus the mean measured step duration of the same traces,
    i.e. the per-token time BLIS does not already simulate through StepTime (floored at 0). "auto" uses
    "overhead" when steps are given, else "per_token". A term with no usable rows is 0 and is reported.
    """
    if alpha2_method not in ("auto", "per_token", "overhead"):
        raise ValueError(f"alpha2_method must be 'auto', 'per_token' or 'overhead', got {alpha2_method!r}")
    if alpha2_method == "auto":
        alpha2_method = "overhead" if steps is not None and len(steps) else "per_token"
    if alpha2_method == "overhead" and (steps is None or not len(steps)):
        raise BlisFitError("alpha2_method='overhead' needs the steps table of the same traces")
    col = lambda name: requests[name].to_numpy(dtype="float64", na_value=np.nan) if name in requests else np.full(len(requests), np.nan)  # noqa: E731
    a0 = col("queued_us") - col("arrived_us")
    a0 = a0[np.isfinite(a0) & (a0 >= 0)]
    a1 = col("departed_us") - col("finished_us")
    a1 = a1[np.isfinite(a1) & (a1 >= 0)]
    out_tok = col("output_tokens")
    dec = col("finished_us") - col("first_token_us")
    ok = np.isfinite(dec) & (dec >= 0) & (out_tok > 1)
    per_tok = dec[ok] / (out_tok[ok] - 1.0)
    alpha2 = _median(per_tok)
    mean_step = float("nan")
    if alpha2_method == "overhead" and len(per_tok):
        mean_step = float(steps["step_duration_us"].to_numpy(dtype="float64").mean())
        alpha2 = max(0.0, alpha2 - mean_step)
    values = []
    missing = []
    for name, v in zip(ALPHA_TERMS, (_median(a0), _median(a1), alpha2)):
        if not math.isfinite(v):
            missing.append(name)
            v = 0.0
        values.append(max(0.0, float(v)))
    report = {
        "n_requests": int(len(requests)),
        "n_alpha0_rows": int(len(a0)),
        "n_alpha1_rows": int(len(a1)),
        "n_alpha2_rows": int(len(per_tok)),
        "alpha2_method": alpha2_method,
        "mean_step_duration_us": mean_step if math.isfinite(mean_step) else None,
        "terms_without_data_set_to_zero": missing,
        "alpha0_meaning": "queued_us - arrived_us (API overhead), median; BLIS simulates the queue itself",
    }
    return (values[0], values[1], values[2]), report


def fit_blackbox(steps: pd.DataFrame, requests: pd.DataFrame | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The removed BLIS ``blackbox`` backend: StepTime = β0 + β1·prefill + β2·decode, QueueingTime = α0 + α1·input.

    Fitted non-negatively with relative-error weights, like the physics block, so the comparison is fair.
    Returns (betas[3], alphas[2]); alphas are 0 when no request has both arrival and queue times.
    """
    used, _ = _positive_target(steps)
    X = np.column_stack([np.ones(len(used)), used["prefill_tokens"].to_numpy("float64"), used["decode_tokens"].to_numpy("float64")])
    betas = tuple(float(b) for b in _weighted_nnls(X, used["step_duration_us"].to_numpy("float64")))
    alphas: tuple[float, ...] = (0.0, 0.0)
    if requests is not None and {"queued_us", "arrived_us", "prompt_tokens"} <= set(requests.columns):
        y = requests["queued_us"].to_numpy("float64", na_value=np.nan) - requests["arrived_us"].to_numpy("float64", na_value=np.nan)
        ok = np.isfinite(y) & (y > 0)
        if ok.sum() >= 2:
            Xa = np.column_stack([np.ones(int(ok.sum())), requests["prompt_tokens"].to_numpy("float64")[ok]])
            alphas = tuple(float(a) for a in _weighted_nnls(Xa, y[ok]))
    return betas, alphas


def fit_blis_block(
    steps: pd.DataFrame,
    requests: pd.DataFrame | None = None,
    *,
    ep_term: bool = False,
    alpha2_method: str = "auto",
    blis_version: str = DEFAULT_BLIS_VERSION,
) -> BlisBlock:
    """Fit the whole BLIS block (betas, alpha triple, legacy blackbox) for the rows given (usually one scope)."""
    betas, beta_report = fit_betas(steps, ep_term=ep_term)
    if requests is not None and len(requests):
        alphas, alpha_report = fit_alpha_triple(requests, steps, alpha2_method=alpha2_method)
    else:
        alphas, alpha_report = (0.0, 0.0, 0.0), {"n_requests": 0, "terms_without_data_set_to_zero": list(ALPHA_TERMS)}
    legacy_beta, legacy_alpha = fit_blackbox(steps, requests)
    block = BlisBlock(
        alpha_coeffs=tuple(alphas),
        beta_coeffs=tuple(float(b) for b in betas),
        legacy_alpha=legacy_alpha,
        legacy_beta=legacy_beta,
        blis_version=blis_version,
        report={"beta": beta_report, "alpha": alpha_report},
    )
    validate_coeffs(block.alpha_coeffs, block.beta_coeffs)
    return block


# ---------------------------------------------------------------------------------------------------------
# Prediction and evaluation
# ---------------------------------------------------------------------------------------------------------


def predict_step_time(block: BlisBlock, steps: pd.DataFrame) -> np.ndarray:
    """StepTime (µs) for each step row, exactly as BLIS's trained-physics backend: basis terms · betas."""
    T = basis_terms(steps, ep_term=len(block.beta_coeffs) == 11)
    return T.to_numpy(dtype="float64") @ np.asarray(block.beta_coeffs, dtype="float64")


def predict_step_time_blackbox(block: BlisBlock, steps: pd.DataFrame) -> np.ndarray:
    """StepTime (µs) of the legacy 3-beta blackbox."""
    b0, b1, b2 = block.legacy_beta
    return b0 + b1 * steps["prefill_tokens"].to_numpy("float64") + b2 * steps["decode_tokens"].to_numpy("float64")


def mape(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Step-time MAPE as a fraction (0.1 = 10 %); rows with y_true <= 0 are not allowed."""
    y_true = np.asarray(y_true, dtype="float64")
    if np.any(y_true <= 0):
        raise ValueError("MAPE needs strictly positive targets")
    return metrics.mape(y_true, y_pred, metrics.ape_floor("beta"))


def evaluate_block(block: BlisBlock, steps: pd.DataFrame) -> dict[str, float]:
    """Held-out per-step MAPE of the physics block and of the legacy blackbox on ``steps``."""
    used, _ = _positive_target(steps)
    y = used["step_duration_us"].to_numpy("float64")
    return {
        "blis_physics_step_mape": mape(y, predict_step_time(block, used)),
        "blis_blackbox_step_mape": mape(y, predict_step_time_blackbox(block, used)),
        "n_steps": int(len(used)),
    }


# ---------------------------------------------------------------------------------------------------------
# Artifacts: flags and defaults.yaml snippet (repr-exact, round-trippable)
# ---------------------------------------------------------------------------------------------------------


def validate_coeffs(alpha: tuple[float, ...] | list[float], beta: tuple[float, ...] | list[float]) -> None:
    """BLIS's own rules: 3 alphas, 7–11 betas, all finite and ≥ 0 (it rejects anything else)."""
    if len(alpha) != 3:
        raise ValueError(f"BLIS needs exactly 3 alpha coefficients, got {len(alpha)}")
    if not 7 <= len(beta) <= 11:
        raise ValueError(f"BLIS needs 7 to 11 beta coefficients, got {len(beta)}")
    for kind, vals in (("alpha", alpha), ("beta", beta)):
        for i, v in enumerate(vals):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{kind} coefficient #{i} must be finite and >= 0, got {v!r}")


def format_float(x: float) -> str:
    """Shortest repr that parses back to the same double, written so YAML 1.1 and 1.2 both read a float."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"cannot write non-finite coefficient {x!r}")
    s = repr(x)
    if "e" in s and "." not in s.split("e")[0]:
        mant, exp = s.split("e")
        s = f"{mant}.0e{exp}"
    return s


def flags_string(block: BlisBlock) -> str:
    """``--alpha-coeffs a0,a1,a2 --beta-coeffs b1,...`` for ``blis run`` (both flags together, as BLIS requires)."""
    validate_coeffs(block.alpha_coeffs, block.beta_coeffs)
    a = ",".join(format_float(v) for v in block.alpha_coeffs)
    b = ",".join(format_float(v) for v in block.beta_coeffs)
    return f"--alpha-coeffs {a} --beta-coeffs {b}"


def parse_flags(text: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Inverse of :func:`flags_string`; raises ValueError naming the flag that is missing or malformed."""
    tokens = text.split()
    found: dict[str, tuple[float, ...]] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        name, _, val = tok.partition("=")
        if name in ("--alpha-coeffs", "--beta-coeffs"):
            if not val:
                if i + 1 >= len(tokens):
                    raise ValueError(f"flag {name} has no value")
                val = tokens[i + 1]
                i += 1
            try:
                found[name] = tuple(float(v) for v in val.split(","))
            except ValueError as exc:
                raise ValueError(f"flag {name}: {val!r} is not a comma-separated list of numbers") from exc
        else:
            raise ValueError(f"unexpected token {tok!r}; only --alpha-coeffs and --beta-coeffs are allowed")
        i += 1
    for name in ("--alpha-coeffs", "--beta-coeffs"):
        if name not in found:
            raise ValueError(f"flag {name} missing; BLIS needs both --alpha-coeffs and --beta-coeffs")
    validate_coeffs(found["--alpha-coeffs"], found["--beta-coeffs"])
    return found["--alpha-coeffs"], found["--beta-coeffs"]


def snippet_yaml(block: BlisBlock) -> str:
    """The ``defaults.yaml`` snippet: exactly ``trained_physics_coefficients: {alpha_coeffs, beta_coeffs}``."""
    validate_coeffs(block.alpha_coeffs, block.beta_coeffs)
    a = ", ".join(format_float(v) for v in block.alpha_coeffs)
    b = ", ".join(format_float(v) for v in block.beta_coeffs)
    return f"trained_physics_coefficients:\n  alpha_coeffs: [{a}]\n  beta_coeffs: [{b}]\n"


def parse_snippet(text: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Parse a snippet back strictly (unknown keys are errors, as in BLIS's strict YAML loader)."""
    import yaml

    doc = yaml.safe_load(text)
    if not isinstance(doc, dict) or set(doc) != {"trained_physics_coefficients"}:
        raise ValueError(f"snippet must have exactly one key 'trained_physics_coefficients', got {list(doc) if isinstance(doc, dict) else type(doc).__name__}")
    body = doc["trained_physics_coefficients"]
    if not isinstance(body, dict) or set(body) != {"alpha_coeffs", "beta_coeffs"}:
        raise ValueError(f"trained_physics_coefficients must hold exactly alpha_coeffs and beta_coeffs, got {body!r}")
    for key in ("alpha_coeffs", "beta_coeffs"):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in body[key]):
            raise ValueError(f"{key} must be a list of numbers, got {body[key]!r}")
    alpha = tuple(float(v) for v in body["alpha_coeffs"])
    beta = tuple(float(v) for v in body["beta_coeffs"])
    validate_coeffs(alpha, beta)
    return alpha, beta
