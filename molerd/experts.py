"""Per-regime linear experts: a weighted ridge with generalised cross-validation, written out so that
sample weights, relative-error losses, non-negative coefficients and shrinkage toward a prior (the global
expert) all compose, and so that the result is plain coefficients in raw feature units.

Fitting is done on weighted, standardised columns (so the ridge penalty does not depend on feature units
and collinear physics terms are tamed), then mapped back: ``prediction = intercept + coef · x_raw``. The
intercept is the per-step (or per-request) overhead floor. Columns that are constant in the rows an expert
sees get coefficient 0 (their effect is in the intercept) and are listed in ``constant_features``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import nnls

LOSSES = ("relative", "log", "mape", "squared")
DEFAULT_ALPHAS = (1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)
# IRLS for the "mape" loss: residuals below this fraction of the target count as this fraction
MAPE_IRLS_DELTA = 1e-3


@dataclass
class ExpertFit:
    """A fitted linear expert in raw units."""

    features: list[str]
    coef: np.ndarray
    intercept: float
    alpha: float
    n_rows: int
    constant_features: list[str] = field(default_factory=list)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.intercept + np.asarray(X, dtype="float64") @ self.coef

    def to_spec(self) -> dict:
        return {"features": list(self.features), "coef": [float(c) for c in self.coef],
                "intercept": float(self.intercept), "ridge_alpha": float(self.alpha),
                "constant_features": list(self.constant_features)}


def _weighted_ridge(X, y, w, alphas, positive, prior=None, prior_scale=1.0):
    """Solve min Σ w (y − c − X b)² + a‖D(b − prior)‖² with D the weighted column scales; GCV over alphas.

    Returns (coef, intercept, alpha, constant_mask). ``w`` is normalised to mean 1 over rows with w > 0.
    ``prior_scale`` multiplies every alpha (shrinkage strength toward ``prior``).
    """
    n, p = X.shape
    w = w / w.mean()
    sw = np.sqrt(w)
    xm = (w @ X) / w.sum()
    ym = float(w @ y / w.sum())
    Xc = X - xm
    sd = np.sqrt((w @ (Xc ** 2)) / w.sum())
    scale_ref = np.maximum(np.abs(xm), 1.0)
    const = sd <= 1e-9 * scale_ref
    prior = np.zeros(p) if prior is None else np.asarray(prior, dtype="float64")
    coef = np.where(const, prior, 0.0).astype("float64")
    active = ~const
    # offset by the prior: fit the deviation from it
    r = (y - ym) - Xc @ prior
    if active.sum() == 0:
        intercept = ym - xm @ prior
        return prior.copy(), float(intercept), float("nan"), const
    Z = Xc[:, active] / sd[active]
    Zw = Z * sw[:, None]
    rw = r * sw
    U, s, Vt = np.linalg.svd(Zw, full_matrices=False)
    Uty = U.T @ rw
    best = None
    for a0 in alphas:
        a = float(a0) * prior_scale
        d = s / (s ** 2 + a)
        b = Vt.T @ (d * Uty)
        resid = rw - Zw @ b
        tr = float(np.sum(s ** 2 / (s ** 2 + a)))
        denom = (1.0 - (tr + 1.0) / n) ** 2 if n > tr + 1 else 1e-12
        gcv = float(resid @ resid) / n / max(denom, 1e-12)
        if best is None or gcv < best[0] - 1e-15 * abs(best[0]):
            best = (gcv, a, b)
    _, a, b = best
    if positive:
        # non-negative raw coefficients: the deviation plus prior must be >= 0 → substitute b_total = prior + dev
        pz = prior[active] * sd[active]
        A = np.vstack([Zw, np.sqrt(a) * np.eye(Zw.shape[1])])
        rhs = np.concatenate([rw + Zw @ pz, np.sqrt(a) * pz])
        btot, _ = nnls(A, rhs, maxiter=50 * A.shape[1])
        b = btot - pz
    coef[active] = prior[active] + b / sd[active]
    intercept = ym - xm @ coef
    return coef, float(intercept), a, const


def fit_expert(X: np.ndarray, y: np.ndarray, features: list[str], sample_weight=None, loss: str = "relative",
               alphas=DEFAULT_ALPHAS, positive: bool = False, floor: float = 1e-6, prior=None,
               prior_scale: float = 1.0, log_iters: int = 6, mape_iters: int = 30,
               ape_floor: float = 0.0) -> ExpertFit:
    """Fit one linear expert.

    loss:
      * ``"squared"``  — weighted least squares on y.
      * ``"relative"`` — weights 1/y² (minimises Σ((ŷ − y)/y)², the squared relative error).
      * ``"mape"``     — minimises Σ|ŷ − y|/y, the gate's metric itself, by iteratively reweighted least
        squares started from the relative fit (robust to the few rows with a tiny target that dominate 1/y²).
      * ``"log"``      — minimises Σ(log ŷ − log y)² for the *linear* predictor ŷ = c + b·x by Gauss-Newton
        (start from the relative fit, then refit z = ŷ(1 + log(y/ŷ)) with weights 1/ŷ²); the model stays a dot
        product, so BLIS can evaluate it.
    ``ape_floor`` (µs): relative errors are taken against max(y, ape_floor), as the metric does
    (:mod:`molerd.metrics`), so rows with a near-zero target do not take all the weight.
    Rows with non-finite features or target, or zero weight, are ignored (the caller counts them).
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")
    X = np.asarray(X, dtype="float64")
    y = np.asarray(y, dtype="float64")
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype="float64")
    ok = np.isfinite(y) & np.all(np.isfinite(X), axis=1) & (w > 0)
    if loss != "squared":
        ok &= y > 0
    X, y, w = X[ok], y[ok], w[ok]
    n = len(y)
    if n == 0:
        raise ValueError(f"no usable rows to fit an expert on features {features}")
    yd = np.maximum(y, ape_floor)  # the metric's denominator
    if loss == "squared":
        ww = w
    else:
        ww = w / yd ** 2
    coef, intercept, a, const = _weighted_ridge(X, y, ww, alphas, positive, prior, prior_scale)
    if loss == "log":
        for _ in range(log_iters):
            yh = np.maximum(intercept + X @ coef, max(floor, 1e-9))
            z = yh * (1.0 + np.log(y / yh))
            coef, intercept, a, const = _weighted_ridge(X, z, w / yh ** 2, alphas, positive, prior, prior_scale)
    elif loss == "mape":
        # iteratively reweighted least squares for Σ w·|ŷ − y|/y (least absolute relative error): a row's
        # weight becomes w / (y·|residual|), bounded so an exact fit cannot take all the weight
        for _ in range(mape_iters):
            r = np.abs(intercept + X @ coef - y)
            coef, intercept, a, const = _weighted_ridge(X, y, w / (yd * np.maximum(r, MAPE_IRLS_DELTA * yd)), alphas,
                                                        positive, prior, prior_scale)
    return ExpertFit(list(features), coef, intercept, a, n, [f for f, c in zip(features, const) if c])
