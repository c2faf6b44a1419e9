"""Metrics and held-out splits: MAPE, median and p90 APE overall, per regime and per (hardware, model);
splits hold out whole runs (``trace_id``), never random rows of one run."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold

from molerd import features as F
from molerd.metrics import ape, ape_floor, mape, summarize  # noqa: F401  (re-exported)
from molerd.regimes import RuleDetector

def target_values(table: pd.DataFrame, target: str, alpha_kind: str = "scheduled_minus_queued") -> np.ndarray:
    """y for ``target``: beta = step_duration_us; alpha = ``features.alpha_target(table, alpha_kind)``."""
    if target == "beta":
        return F.beta_target(table).to_numpy()
    if target == "alpha":
        return F.alpha_target(table, alpha_kind).to_numpy()
    raise ValueError(f"unknown target {target!r}; valid: {', '.join(F.TARGETS)}")


def reference_regimes(table: pd.DataFrame, target: str) -> np.ndarray:
    """Regime labels from the seed's hard rules: the fixed partition every model is compared on."""
    return RuleDetector(target, None, 0.0).fit().predict(F.gate_inputs(table, target))


def metrics_table(y_true, y_pred, table: pd.DataFrame, target: str, model: str = "model") -> pd.DataFrame:
    """Tidy metrics: one row per (model, group_kind ∈ {overall, regime, scope}, group)."""
    y_true = np.asarray(y_true, dtype="float64")
    y_pred = np.asarray(y_pred, dtype="float64")
    rows = [{"model": model, "group_kind": "overall", "group": "all", **summarize(y_true, y_pred)}]
    reg = reference_regimes(table, target)
    for r in F.REGIMES[target]:
        sel = reg == r
        if sel.any():
            rows.append({"model": model, "group_kind": "regime", "group": r, **summarize(y_true[sel], y_pred[sel])})
    scope = (table["hardware"].astype(str) + "|" + table["model"].astype(str)).to_numpy()
    for s in sorted(set(scope)):
        sel = scope == s
        rows.append({"model": model, "group_kind": "scope", "group": s, **summarize(y_true[sel], y_pred[sel])})
    return pd.DataFrame(rows)


def split_by_run(table: pd.DataFrame, test_fraction: float = 0.25, seed: int = 0,
                 strata: dict[str, str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (train, test) masks holding out whole runs: per (hardware, model, tp) scope, about
    ``test_fraction`` of its trace_ids (at least one when the scope has two or more runs) go to test.

    With ``strata`` (trace_id -> label, e.g. :func:`run_strata`), the draw is made within each (scope,
    stratum): a stratum with two or more runs sends at least one to test and keeps at least one in training,
    a stratum with one run keeps it in training; so a behaviour that only some runs show is learned from
    one run and judged on another, never only tested or only trained."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    runs = table[["trace_id", *F.SCOPE_KEY]].astype({"trace_id": str, "hardware": str, "model": str})
    uniq = runs.drop_duplicates("trace_id").copy()
    uniq["stratum"] = uniq["trace_id"].map(strata or {}).fillna("") if strata else ""
    test_ids: set[str] = set()
    for _, g in uniq.groupby([*F.SCOPE_KEY, "stratum"], sort=True):
        ids = np.array(sorted(g["trace_id"]))
        if len(ids) < 2:
            continue
        k = max(1, int(round(test_fraction * len(ids))))
        test_ids.update(rng.choice(ids, size=min(k, len(ids) - 1), replace=False).tolist())
    test = runs["trace_id"].isin(test_ids).to_numpy()
    return ~test, test


def run_strata(labelled: dict[str, pd.DataFrame], min_rows: int = 20) -> dict[str, str]:
    """Each run's signature regime: the ``target:regime`` whose share of the run's rows most exceeds its
    share in the run's scope (among regimes with at least ``min_rows`` rows in the run). Runs of the same
    kind (a saturation sweep, a preemption storm) share a stratum without the split knowing how they were made.

    ``labelled`` maps target -> table with trace_id, scope columns and ``regime``."""
    best: dict[str, tuple[float, str]] = {}
    for target, df in sorted(labelled.items()):
        if len(df) == 0:
            continue
        d = df[["trace_id", *F.SCOPE_KEY, "regime"]].astype({"trace_id": str, "hardware": str, "model": str,
                                                             "regime": str})
        per_run = d.groupby(["trace_id", "regime"], sort=True).size().rename("n").reset_index()
        scope_of = d.drop_duplicates("trace_id").set_index("trace_id")[list(F.SCOPE_KEY)]
        per_run = per_run.join(scope_of, on="trace_id")
        run_tot = per_run.groupby("trace_id")["n"].transform("sum")
        scope_share = (d.groupby([*F.SCOPE_KEY, "regime"]).size() / d.groupby(list(F.SCOPE_KEY)).size()).rename("s")
        per_run = per_run.join(scope_share, on=[*F.SCOPE_KEY, "regime"])
        per_run["lift"] = per_run["n"] / run_tot / per_run["s"]
        for r in per_run[per_run["n"] >= min_rows].itertuples(index=False):
            label = f"{target}:{r.regime}"
            cur = best.get(r.trace_id)
            if cur is None or (r.lift, label) > cur:
                best[r.trace_id] = (float(r.lift), label)
    return {k: v[1] for k, v in best.items()}


def grouped_folds(table: pd.DataFrame, n_splits: int = 3):
    """GroupKFold splits by trace_id (for ``cross_val_score(..., cv=grouped_folds(X))``)."""
    groups = table["trace_id"].astype(str).to_numpy()
    return list(GroupKFold(n_splits=n_splits).split(np.zeros(len(table)), groups=groups))


def compare_models(models: dict, train: pd.DataFrame, test: pd.DataFrame, target: str,
                   alpha_kind: str = "scheduled_minus_queued") -> pd.DataFrame:
    """Fit every (unfitted) model in ``models`` on ``train`` and score it on ``test``: a tidy table with
    columns model, group_kind, group, n, mape, median_ape, p90_ape. Rows with a non-finite target are left
    out of both (counted in ``n``)."""
    ytr = target_values(train, target, alpha_kind)
    yte = target_values(test, target, alpha_kind)
    oktr, okte = np.isfinite(ytr), np.isfinite(yte)
    tr, te = train.loc[oktr], test.loc[okte]
    out = []
    for name, model in models.items():
        model.fit(tr, ytr[oktr])
        out.append(metrics_table(yte[okte], model.predict(te), te, target, name))
    return pd.concat(out, ignore_index=True)
