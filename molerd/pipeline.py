"""The pipeline's stages as plain functions over files.

``dvc.yaml`` runs each one through ``molerd stage <name>`` and the Prefect flows call them as tasks: the logic
of every stage exists once, here. A stage reads only its declared inputs, rewrites its outputs completely
(never appends) and is deterministic for the same data, params and seed. Paths come from :class:`Layout`, the
one place that names where each stage writes.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from sklearn.base import clone

log = logging.getLogger(__name__)

TARGETS = ("beta", "alpha")
TABLE_OF = {"beta": "steps", "alpha": "requests"}
PRED_MODELS = ("candidate", "champion", "blis_block", "blackbox", "gbm", "union_ridge")


# ---------------------------------------------------------------------------------------------------------
# Params and paths
# ---------------------------------------------------------------------------------------------------------


def load_params(path: Path | str = "params.yaml") -> dict:
    """Read ``params.yaml``; a missing file is an error that names it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"params file {path} not found; run from the project root or pass --params")
    params = yaml.safe_load(path.read_text()) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping of sections, got {type(params).__name__}")
    return params


@dataclass(frozen=True)
class Layout:
    """Where every stage reads and writes, relative to the project root (dvc.yaml uses the same paths)."""

    root: Path = Path(".")

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def default_raw(self) -> Path:
        return self.raw / "default"

    @property
    def validated(self) -> Path:
        return self.root / "data" / "processed" / "validated"

    @property
    def labelled(self) -> Path:
        return self.root / "data" / "processed" / "labelled"

    @property
    def balanced(self) -> Path:
        return self.root / "data" / "processed" / "balanced"

    @property
    def models(self) -> Path:
        return self.root / "data" / "models"

    def model_dir(self, hardware: str) -> Path:
        return self.models / hardware

    @property
    def eval(self) -> Path:
        return self.root / "data" / "eval"

    @property
    def gate(self) -> Path:
        return self.root / "data" / "gate"

    @property
    def releases(self) -> Path:
        return self.root / "data" / "releases"

    @property
    def release_summary(self) -> Path:
        return self.root / "data" / "release_summary.json"

    @property
    def metrics(self) -> Path:
        """Small JSON metrics files DVC keeps in git (``dvc metrics diff``)."""
        return self.root / "data" / "metrics"

    @property
    def plots(self) -> Path:
        """CSV series for ``dvc plots``."""
        return self.root / "data" / "plots"


def _fresh_dir(path: Path) -> Path:
    """Rewrite a stage's output directory completely (DVC's rule: never append to an output)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return o.as_posix()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


PARTITION = "hardware"


def write_table(df: pd.DataFrame, directory: Path, name: str) -> None:
    """Write a table partitioned by hardware: ``<directory>/<name>/hardware=<hw>/part-0.parquet`` (file names
    fixed, so the same rows give the same files), so a training task, a Dask worker or another machine reads
    only its own hardware's rows."""
    root = Path(directory) / name
    root.mkdir(parents=True, exist_ok=True)
    for hw, part in df.groupby(df[PARTITION].astype(str), sort=True):
        (root / f"{PARTITION}={hw}").mkdir(exist_ok=True)
        part.reset_index(drop=True).to_parquet(root / f"{PARTITION}={hw}" / "part-0.parquet", index=False)
    if len(df) == 0:  # keep the columns of an empty table
        df.to_parquet(root / "empty.parquet", index=False)


def _read_table(directory: Path, name: str, hardware: str | None = None) -> pd.DataFrame:
    """A stage's table: ``<name>.parquet``, or the hardware partitions :func:`write_table` wrote (only
    ``hardware``'s when given)."""
    path = Path(directory) / f"{name}.parquet"
    if path.exists():
        df = pd.read_parquet(path)
        return df if hardware is None else df[df[PARTITION].astype(str) == hardware].reset_index(drop=True)
    root = Path(directory) / name
    if not root.is_dir():
        raise FileNotFoundError(f"{path} not found: run the stage that writes it first")
    every = sorted(root.glob(f"{PARTITION}=*/part-0.parquet"))
    parts = every if hardware is None else [p for p in every if p.parent.name == f"{PARTITION}={hardware}"]
    if not parts:  # no rows (for this hardware): an empty table with the right columns
        template = root / "empty.parquet" if (root / "empty.parquet").exists() else (every[0] if every else None)
        if template is None:
            raise FileNotFoundError(f"{root} holds no partitions: run the stage that writes it first")
        return pd.read_parquet(template).iloc[0:0]
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


# ---------------------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------------------


def synthesize(params: dict, out_dir: Path) -> dict:
    """Default data: synthesize vLLM OTEL traces from real kernel timings (``synth`` section)."""
    from molerd import synth

    from molerd.synth.dataset import config_from_section

    sp = params.get("synth") or {}
    config = config_from_section(sp)
    out_dir = _fresh_dir(Path(out_dir))
    runs = synth.synthesize(config, out_dir, seed=int(sp.get("seed", params["base"]["seed"])))
    summary = {"preset": sp.get("preset", "default"), "runs": len(runs), "out": out_dir.as_posix()}
    log.info("synthesized %d runs into %s", len(runs), out_dir)
    return summary


def validate(params: dict, inputs: list[Path], out_dir: Path, progress: bool = False,
             metrics_file: Path | None = None) -> dict:
    """Ingest every input and split it into accepted rows and a quarantine (``validate`` section); the
    counts also go to ``metrics_file`` (the DVC metrics file) when given."""
    from molerd.validate import validate_inputs

    vp = params.get("validate") or {}
    fmt = vp.get("format", "auto")
    out_dir = _fresh_dir(Path(out_dir))
    report = validate_inputs([Path(p) for p in inputs], out_dir, None if fmt in (None, "auto") else fmt,
                             progress=progress, workers=int(vp.get("workers", 1)))
    if metrics_file is not None:
        write_json(metrics_file, {"tables": report["tables"], "file_errors": len(report["file_errors"])})
    return report


def _rule_regimes(table: pd.DataFrame, target: str, thresholds: dict) -> np.ndarray:
    from molerd import features as F
    from molerd.regimes import RuleDetector

    if len(table) == 0:
        return np.array([], dtype=object)
    det = RuleDetector(target, thresholds or None, 0.0).fit()
    return det.predict(F.gate_inputs(table, target))


def label_thresholds(params: dict, target: str) -> dict:
    """The seed-rule thresholds of ``label`` in the names ``molerd.regimes`` uses."""
    from molerd.regimes import threshold_names

    lp = (params.get("label") or {}).get(target) or {}
    names = set(threshold_names(target))
    unknown = set(lp) - names
    if unknown:
        raise ValueError(f"params.yaml label.{target}: unknown threshold(s) {sorted(unknown)}; valid: {sorted(names)}")
    return {k: float(v) for k, v in lp.items()}


def label(params: dict, validated_dir: Path, out_dir: Path) -> dict:
    """Label each row with its regime (the seed's rules, ``label`` thresholds) and assign whole runs to
    train or test per (hardware, model, tp) scope; write the regime coverage report."""
    from molerd.coverage import coverage_report
    from molerd.evaluate import run_strata, split_by_run
    from molerd.rebalance import regime_counts
    from molerd import features as F

    lp = params.get("label") or {}
    seed = int(params["base"]["seed"])
    tables = {t: _read_table(Path(validated_dir), t) for t in ("steps", "requests")}
    labelled = {}
    for target in TARGETS:
        df = tables[TABLE_OF[target]].copy()
        df["regime"] = _rule_regimes(df, target, label_thresholds(params, target))
        labelled[target] = df
    runs = pd.concat([tables[t][["trace_id", *F.SCOPE_KEY]] for t in tables], ignore_index=True)
    runs = runs.drop_duplicates("trace_id").sort_values("trace_id").reset_index(drop=True)
    strata = run_strata(labelled, int(lp.get("stratum_min_rows", 20))) if lp.get("stratify", True) else None
    _, test_mask = split_by_run(runs, float(lp.get("test_fraction", 0.25)), seed, strata)
    test_ids = set(runs.loc[test_mask, "trace_id"].astype(str))
    out_dir = _fresh_dir(Path(out_dir))
    counts = []
    for target in TARGETS:
        name = TABLE_OF[target]
        df = labelled[target]
        df["split"] = np.where(df["trace_id"].astype(str).isin(test_ids), "test", "train")
        write_table(df, out_dir, name)
        c = regime_counts(df, "regime", by=("hardware",), regimes=list(F.REGIMES[target]))
        c.insert(1, "target", target)
        counts.append(c)
    counts_df = pd.concat(counts, ignore_index=True)
    min_rows = int(lp.get("coverage_min_rows", 200))
    cov = {}
    md = ["# Regime coverage\n"]
    for target in TARGETS:
        sub = counts_df[counts_df["target"] == target].drop(columns="target")
        rep = coverage_report(sub, min_rows, lp, regimes=list(F.REGIMES[target]))
        cov[target] = rep.to_dict()
        md.append(f"## {target}\n\n{rep.to_markdown()}\n")
    coverage = {
        "counts": counts_df.to_dict(orient="records"),
        "missing": [m for t in TARGETS for m in cov[t].get("missing", [])],
        "report": cov,
        "test_runs": sorted(test_ids),
        "run_strata": dict(sorted((strata or {}).items())),
        "train_runs": sorted(set(runs["trace_id"].astype(str)) - test_ids),
    }
    write_json(out_dir / "coverage.json", coverage)
    (out_dir / "coverage.md").write_text("\n".join(md))
    return {"test_runs": len(test_ids), "runs": len(runs), "missing": len(coverage["missing"])}



def rebalance(params: dict, labelled_dir: Path, out_dir: Path) -> dict:
    """Bring rare regimes of the TRAINING rows up (weights or resampling, ``rebalance`` section); test rows
    are never read here, so they can never leak into training."""
    from molerd import features as F
    from molerd.rebalance import rebalance as rebalance_rows

    rp = params.get("rebalance") or {}
    seed = int(params["base"]["seed"])
    out_dir = _fresh_dir(Path(out_dir))
    reports, md = {}, ["# Rebalancing of rare regimes (training rows only)\n"]
    for target in TARGETS:
        name = TABLE_OF[target]
        df = _read_table(Path(labelled_dir), name)
        train = df[df["split"] == "train"].reset_index(drop=True)
        res = rebalance_rows(
            train, "regime", method=rp.get("method", "weights"), target_share=rp.get("target_share"),
            min_rows=rp.get("min_rows"), max_weight=float(rp.get("max_weight", 10.0)), seed=seed,
            by=tuple(rp.get("by", ("hardware",))), regimes=list(F.REGIMES[target]), split_col="split",
        )
        frame = res.frame.copy()
        frame["sample_weight"] = res.sample_weight
        write_table(frame, out_dir, f"{name}_train")
        reports[target] = res.report.to_dict()
        md.append(f"## {target} ({name})\n\n{res.report.to_markdown()}")
    write_json(out_dir / "rebalance_report.json", reports)
    (out_dir / "rebalance_report.md").write_text("\n".join(md))
    return {t: {"rows_in": reports[t]["rows_in"], "rows_out": reports[t]["rows_out"]} for t in TARGETS}


# ---------------------------------------------------------------------------------------------------------
# Training (one hardware at a time: `train@<hw>` in DVC, `.map` in Prefect)
# ---------------------------------------------------------------------------------------------------------

STATE_COLUMNS = ("kv_usage_ratio", "waiting_depth")


def _targets(df: pd.DataFrame, target: str, alpha_kind: str) -> np.ndarray:
    from molerd.evaluate import target_values

    return target_values(df, target, alpha_kind)


def _usable_rows(df: pd.DataFrame, target: str, alpha_kind: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows of ``df`` whose ``target`` value is finite and > 0 (what every model fits and is scored on),
    and those values."""
    y = _targets(df, target, alpha_kind)
    ok = np.isfinite(y) & (y > 0)
    return df.loc[ok].reset_index(drop=True), y[ok]


def _scopes(df: pd.DataFrame) -> list[tuple[str, str, int]]:
    keys = df[["hardware", "model", "tp"]].drop_duplicates().astype({"hardware": str, "model": str, "tp": int})
    return sorted(keys.itertuples(index=False, name=None))


def _in_scope(df: pd.DataFrame, scope: tuple[str, str, int]) -> pd.DataFrame:
    h, m, t = scope
    sel = (df["hardware"].astype(str) == h) & (df["model"].astype(str) == m) & (df["tp"].astype(int) == t)
    return df.loc[sel].reset_index(drop=True)


def scope_name(scope: tuple[str, str, int]) -> str:
    """A scope's name in releases and reports: ``<hardware>/<model>/tp<k>``."""
    return f"{scope[0]}/{scope[1]}/tp{scope[2]}"


def build_models(params: dict, target: str, alpha_kind: str | None = None) -> dict:
    """Unfitted candidate and baselines for ``target`` (and, for alpha, the alpha target ``alpha_kind``)
    from the ``train`` section."""
    from molerd.baseline import BlackboxAlpha, BlackboxBeta, GBMCeiling, LittlesLawAlpha, UnionRidge
    from molerd.mixture import MoLERegressor

    tp_ = params.get("train") or {}
    seed = int(params["base"]["seed"])
    est = dict(tp_.get("estimator") or {})
    est.update(tp_.get(target) or {})
    est.pop("alpha_targets", None)
    if target == "alpha" and alpha_kind:
        est["alpha_target"] = alpha_kind
    floor = floor_for(params, target, alpha_kind)
    est["ape_floor_us"] = floor
    models = {
        "candidate": MoLERegressor(target=target, random_state=seed, **est),
        "blackbox": (BlackboxBeta if target == "beta" else BlackboxAlpha)(ape_floor_us=floor),
        "union_ridge": UnionRidge(target=target, feature_set=est.get("feature_set", "physics"), ape_floor_us=floor),
        "gbm": GBMCeiling(target=target, random_state=seed, ape_floor_us=floor, **(tp_.get("gbm") or {})),
    }
    if target == "alpha":
        models["littles_law"] = LittlesLawAlpha(ape_floor_us=floor)
    return models


def floor_for(params: dict, target: str, alpha_kind: str | None = None) -> float:
    """The APE denominator floor (µs) of ``target``: :mod:`molerd.metrics`, overridden by
    ``evaluate.ape_floor_us``. For alpha without a kind: the gated (first) alpha target's."""
    from molerd.metrics import ape_floor

    kind = alpha_kind or (alpha_kinds(params)[0] if target == "alpha" else None)
    return ape_floor(target, kind, (params.get("evaluate") or {}).get("ape_floor_us"))


def alpha_kinds(params: dict) -> list[str]:
    """The alpha targets to fit: the first is gated; every one is fitted and labelled."""
    kinds = ((params.get("train") or {}).get("alpha") or {}).get("alpha_targets") or ["scheduled_minus_queued"]
    return list(kinds)


def _prediction_frame(test: pd.DataFrame, target: str, y: np.ndarray) -> pd.DataFrame:
    from molerd import features as F

    g = F.gate_inputs(test, target)
    out = pd.DataFrame({
        "target": target,
        "hardware": test["hardware"].astype(str).to_numpy(),
        "model": test["model"].astype(str).to_numpy(),
        "tp": test["tp"].astype(int).to_numpy(),
        "trace_id": test["trace_id"].astype(str).to_numpy(),
        "row_key": (test["step_id"] if target == "beta" else test["request_id"]).astype(str).to_numpy(),
        "regime": test["regime"].astype(str).to_numpy(),
        "y_true": y,
        "kv_usage_ratio": test["kv_usage_ratio"].to_numpy(dtype="float64", na_value=np.nan),
        "waiting_depth": test["waiting_depth"].to_numpy(dtype="float64", na_value=np.nan),
        "prefill_ratio": (g["prefill_ratio"].to_numpy(dtype="float64", na_value=np.nan)
                          if "prefill_ratio" in g else np.nan),
    })
    return out


def hard_and_soft(est, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Predictions of one fitted MoLE estimator with its soft gate and with the zero-width (hard) gate."""
    from molerd import features as F

    Xf, G = est._features(rows)
    P = est._expert_matrix(est.experts_, Xf, est.feature_names_)
    return est._mix(est._hard(G), P, Xf, est.feature_names_), est._mix(est.detector_.weights(G), P, Xf,
                                                                          est.feature_names_)


def transition_sweep(est, rows: pd.DataFrame, target: str, n_grid: int = 101) -> pd.DataFrame:
    """Prediction along kv_usage_ratio and prefill_ratio (beta) sweeps, hard vs soft gate, for the report."""
    from molerd.regimes import _set_gate_input

    axes = {"kv_usage_ratio": np.linspace(0.5, 1.0, n_grid)}
    if target == "alpha":
        # the KV-pressure rule only decides for a queued request that is not low-load: sweep such a row
        queued = rows[rows["waiting_depth"].to_numpy(dtype="float64", na_value=np.nan) >
                      est.detector_.to_spec().get("thresholds", {}).get("low_load_max_queue_depth", 2) + 2]
        rows = queued if len(queued) else rows
    base = rows.iloc[[len(rows) // 2]].reset_index(drop=True)
    if target == "beta":
        axes["prefill_ratio"] = np.linspace(0.0, 1.0, n_grid)
        base = _set_gate_input(base, "prefill_ratio", 0.5)
    parts = []
    for axis, grid in axes.items():
        sweep = pd.concat([_set_gate_input(base, axis, float(v)) for v in grid], ignore_index=True)
        hard, soft = hard_and_soft(est, sweep)
        parts.append(pd.DataFrame({"target": target, "axis": axis, "x": grid, "pred_hard": hard, "pred_soft": soft}))
    return pd.concat(parts, ignore_index=True)


def _detector_info(est) -> dict:
    """What a detector variant learned: the thresholds it chose (learned) or its own held-out accuracy at
    routing rows to the expert that fits them best (classifier)."""
    spec = est.detector_.to_spec()
    if est.detector == "learned":
        return {"thresholds": spec.get("thresholds"), "search": _round_floats(dict(est.threshold_search_))}
    if est.detector == "classifier":
        return {"heldout_accuracy": spec.get("heldout_accuracy")}
    return {"thresholds": spec.get("thresholds")}


def gate_jumps(est, rows: pd.DataFrame, n_rows: int = 25, seed: int = 0) -> list[dict]:
    """Largest prediction jump across each gate boundary, hard gate vs the soft one, over up to ``n_rows``
    held-out rows (:func:`molerd.regimes.boundary_jumps`): a hard gate's jump stays as the grid refines,
    the soft gate's shrinks toward 0."""
    from molerd.regimes import RuleDetector, boundary_jumps

    if not isinstance(est.detector_, RuleDetector) or len(rows) == 0:
        return []
    base = rows.sample(n=min(n_rows, len(rows)), random_state=seed).reset_index(drop=True)
    hard = boundary_jumps(est, base, predict=lambda X: hard_and_soft(est, X)[0])
    soft = boundary_jumps(est, base, predict=lambda X: hard_and_soft(est, X)[1])
    return [{"regime": h["regime"], "input": h["input"], "threshold": h["threshold"], "width": h["width"],
             "max_jump_hard_pct": 100.0 * h["max_rel_jump"], "max_jump_soft_pct": 100.0 * s_["max_rel_jump"]}
            for h, s_ in zip(hard.to_dict("records"), soft.to_dict("records"))]


def _fit_target(params: dict, target: str, train: pd.DataFrame, test: pd.DataFrame, kind: str,
                with_baselines: bool) -> tuple[dict, pd.DataFrame | None, pd.DataFrame | None, dict]:
    """Fit the candidate (and baselines) for one scope and target; predictions for its test rows."""
    tr, ytr = _usable_rows(train, target, kind)
    w = tr["sample_weight"].to_numpy(dtype="float64") if "sample_weight" in tr else None
    models = build_models(params, target, kind if target == "alpha" else None)
    if not with_baselines:
        models = {"candidate": models["candidate"]}
    else:  # the other detectors, fitted the same way and judged on the same held-out rows (reviewers B, C)
        for det in (params.get("train") or {}).get("compare_detectors") or []:
            if det != models["candidate"].detector:
                models[f"detector_{det}"] = clone(models["candidate"]).set_params(detector=det)
    for m in models.values():
        m.fit(tr, ytr, sample_weight=w)
    cand = models["candidate"]
    info = {"alpha_target": kind if target == "alpha" else None, "train_rows": len(tr),
            "dropped_rows": len(train) - len(tr), "detector": cand.detector,
            "regimes": cand.regime_report_.to_dict(orient="records"),
            "dropped_features": dict(cand.dropped_features_),
            "detectors": {name[len("detector_"):]: _detector_info(m) for name, m in models.items()
                          if name.startswith("detector_")}}
    if len(test) == 0:
        return cand.to_spec(), None, None, info
    te, yte = _usable_rows(test, target, kind)
    if len(te) == 0:
        return cand.to_spec(), None, None, info
    pf = _prediction_frame(te, target, yte)
    for name, m in models.items():
        pf[f"pred_{name}"] = m.predict(te)
    from molerd.evaluate import summarize

    floor = floor_for(params, target, kind if target == "alpha" else None)
    info["test_rows"] = int(len(te))
    info["ape_floor_us"] = floor
    info["test"] = {name: summarize(pf["y_true"], pf[f"pred_{name}"], floor) for name in models}
    info["gate_jumps"] = gate_jumps(cand, te, seed=int(params["base"]["seed"]))
    return cand.to_spec(), pf, transition_sweep(cand, te, target), info


def train(params: dict, hardware: str, labelled_dir: Path, balanced_dir: Path, out_dir: Path) -> dict:
    """Fit, for every (model, tp) scope of one hardware: the MoLE-RD beta and alpha candidates, the baselines
    and the BLIS block; write their specs (``model.json``), held-out predictions and gate sweeps."""
    from molerd.blis import fit_blis_block, predict_step_time

    kinds = alpha_kinds(params)
    tables = {}
    for target in TARGETS:
        name = TABLE_OF[target]
        tr = _read_table(Path(balanced_dir), f"{name}_train", hardware)
        te = _read_table(Path(labelled_dir), name, hardware)
        tables[target] = (tr, te[te["split"] == "test"].reset_index(drop=True))
    out_dir = _fresh_dir(Path(out_dir))
    scopes = sorted(set(_scopes(tables["beta"][0])) | set(_scopes(tables["alpha"][0])))
    specs, preds, sweeps, report = {}, [], [], {}
    for scope in scopes:
        sname = scope_name(scope)
        entry: dict[str, Any] = {"hardware": scope[0], "model": scope[1], "tp": scope[2]}
        rep: dict[str, Any] = {}
        st_tr, st_te = (_in_scope(t, scope) for t in tables["beta"])
        rq_tr, rq_te = (_in_scope(t, scope) for t in tables["alpha"])
        try:
            entry["beta"], pf, sw, rep["beta"] = _fit_target(params, "beta", st_tr, st_te, "", True)
            block = fit_blis_block(_usable_rows(st_tr, "beta", "")[0], rq_tr)
            entry["blis"] = block.to_dict()
            if pf is not None:  # the same held-out rows as the candidate's, in the same order
                pf["pred_blis_block"] = predict_step_time(block, _usable_rows(st_te, "beta", "")[0])
                preds.append(pf)
                sweeps.append(sw.assign(scope=sname))
        except ValueError as exc:  # too few rows for this scope: reported, never silently dropped
            rep["beta"] = {"skipped": str(exc)}
        entry["alpha"] = {}
        for i, kind in enumerate(kinds):
            key = "alpha" if i == 0 else f"alpha_{kind}"
            try:
                spec, pf, sw, rep[key] = _fit_target(params, "alpha", rq_tr, rq_te, kind, i == 0)
                entry["alpha"][kind] = spec
                if i == 0 and pf is not None:
                    pf["pred_blis_block"] = np.nan
                    preds.append(pf)
                    sweeps.append(sw.assign(scope=sname))
            except ValueError as exc:
                rep[key] = {"skipped": str(exc)}
        specs[sname] = entry
        report[sname] = rep
    write_json(out_dir / "model.json", {"hardware": hardware, "alpha_targets": kinds, "scopes": specs})
    write_json(out_dir / "train_report.json", report)
    pred = pd.concat(preds, ignore_index=True) if preds else pd.DataFrame()
    pred.to_parquet(out_dir / "predictions.parquet", index=False)
    (pd.concat(sweeps, ignore_index=True) if sweeps else pd.DataFrame()).to_parquet(out_dir / "sweep.parquet",
                                                                                    index=False)
    return {"hardware": hardware, "scopes": len(specs), "test_rows": int(len(pred))}


# ---------------------------------------------------------------------------------------------------------
# Evaluation, gate
# ---------------------------------------------------------------------------------------------------------


def metrics_summary(pred: pd.DataFrame, floors: dict[str, float] | None = None) -> dict:
    """``metrics.json``: per target, MAPE / median / p90 APE in percent of every ``pred_<model>`` column,
    overall, per regime and per scope (``<hardware>/<model>/tp<k>``), with the target's APE floor."""
    from molerd.evaluate import summarize

    def block(df: pd.DataFrame, floor: float) -> dict:
        out = {}
        for col in [c for c in df.columns if c.startswith("pred_")]:
            p = df[col].to_numpy(dtype="float64", na_value=np.nan)
            if not np.isfinite(p).any():
                continue
            s = summarize(df["y_true"].to_numpy(dtype="float64"), p, floor)
            out[col[5:]] = {"n": s["n"], **{k: 100.0 * s[k] for k in ("mape", "median_ape", "p90_ape")}}
        return out

    metrics = {}
    for target in TARGETS:
        df = pred[pred["target"] == target] if len(pred) else pred
        if len(df) == 0:
            continue
        floor = (floors or {}).get(target, 1.0)
        scope = df["hardware"] + "/" + df["model"] + "/tp" + df["tp"].astype(str)
        metrics[target] = {
            "ape_floor_us": floor,
            "overall": block(df, floor),
            "per_regime": {r: block(g, floor) for r, g in df.groupby("regime", sort=True)},
            "per_scope": {s: block(g, floor) for s, g in df.groupby(scope, sort=True)},
        }
    return metrics


def _round_floats(obj: Any, digits: int = 6) -> Any:
    if isinstance(obj, dict):
        return {k: _round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round_floats(v, digits) for v in obj]
    if isinstance(obj, float):
        return round(obj, digits) if np.isfinite(obj) else None
    return obj


def _test_rows(layout: Layout, target: str) -> pd.DataFrame:
    df = _read_table(layout.labelled, TABLE_OF[target])
    df = df[df["split"] == "test"].copy()
    df["row_key"] = (df["step_id"] if target == "beta" else df["request_id"]).astype(str)
    return df


def current_champion(layout: Layout):
    """The current release (``data/releases/current``), loaded and checked, or None if there is none."""
    from molerd import registry
    from molerd.release import load

    version = registry.current_version(layout.releases)
    if version is None:
        return None
    return load(layout.releases / version)


def release_predict(rel, target: str, scope: tuple, rows: pd.DataFrame) -> np.ndarray | None:
    """Predictions of release ``rel`` for ``rows`` of one (hardware, model, tp) scope through the reference
    predictor (from the release file alone), or None when the release has no ``target`` model for it."""
    key = (str(scope[0]), str(scope[1]), int(scope[2]))
    if key not in rel.scopes or rel.scopes[key].get(target) is None:
        return None
    model = rel.model(target, key)
    numeric = rows[[c for c in model.raw_inputs if c in rows.columns]].astype("float64")
    return model.predict(numeric, numeric).value


def champion_predictions(layout: Layout, pred: pd.DataFrame) -> tuple[np.ndarray, dict]:
    """Predictions of the current release on the held-out rows, through the reference predictor, from the
    release file alone. Scopes the release does not cover (and every scope when there is no release yet) use
    the BLIS blackbox baseline: the incumbent single linear model."""
    out = pred["pred_blackbox"].to_numpy(dtype="float64").copy()
    rel = current_champion(layout)
    info = {"champion": rel.version if rel is not None else "blis-blackbox baseline", "scopes_from_release": [],
            "scopes_from_blackbox": []}
    for target in TARGETS:
        sel_t = (pred["target"] == target).to_numpy()
        if not sel_t.any():
            continue
        raw = _test_rows(layout, target).set_index(["trace_id", "row_key"])
        for scope, idx in pred[sel_t].groupby(["hardware", "model", "tp"], sort=True).groups.items():
            name = scope_name((str(scope[0]), str(scope[1]), int(scope[2])))
            rows = pred.loc[idx]
            p = None if rel is None else release_predict(
                rel, target, scope, raw.loc[list(zip(rows["trace_id"], rows["row_key"]))].reset_index())
            if p is None:
                info["scopes_from_blackbox"].append(f"{target}:{name}")
                continue
            out[pred.index.get_indexer(idx)] = p
            info["scopes_from_release"].append(f"{target}:{name}")
    return out, info


def model_notes(scope: str, target: str, part: dict) -> list[dict]:
    """What a reader of the report must know about one fitted scope: a skipped scope, every regime that did
    not get its own expert (fallback to or shrinkage toward the global expert, and why), every feature dropped
    because the traces do not carry its inputs, and rows left out for an unusable target."""
    out = []
    if "skipped" in part:
        out.append({"scope": scope, "target": target, "kind": "skipped", "detail": part["skipped"]})
    for r in part.get("regimes", []):
        if r.get("source") not in (None, "own"):
            out.append({"scope": scope, "target": target, "kind": f"regime {r['regime']}: {r['source']}",
                        "detail": r.get("note", "")})
    for f, why in sorted((part.get("dropped_features") or {}).items()):
        out.append({"scope": scope, "target": target, "kind": f"feature {f} dropped", "detail": str(why)})
    if part.get("dropped_rows"):
        out.append({"scope": scope, "target": target, "kind": "rows left out",
                    "detail": f"{part['dropped_rows']} training rows with a non-finite or non-positive target"})
    return out


def evaluate(params: dict, layout: Layout) -> dict:
    """Held-out (by run) predictions of the candidate, the champion and the baselines → ``data/eval``
    (predictions, metrics, gate sweeps, coverage) and the DVC metrics and plots files."""
    from molerd.report import write_dvc_plots

    hw = [h for h in params["base"]["hardware"] if (layout.model_dir(h) / "predictions.parquet").exists()]
    parts = [pd.read_parquet(layout.model_dir(h) / "predictions.parquet") for h in hw]
    parts = [p for p in parts if len(p)]
    if not parts:
        raise ValueError("no held-out predictions: every scope lacked test runs (see data/processed/labelled/coverage.json)")
    pred = pd.concat(parts, ignore_index=True)
    pred["pred_champion"], champ = champion_predictions(layout, pred)
    out = _fresh_dir(layout.eval)
    pred.to_parquet(out / "predictions.parquet", index=False)
    sweeps = [pd.read_parquet(layout.model_dir(h) / "sweep.parquet") for h in hw]
    pd.concat([s for s in sweeps if len(s)], ignore_index=True).to_parquet(out / "sweep.parquet", index=False)
    shutil.copy(layout.labelled / "coverage.json", out / "coverage.json")
    jumps, notes = [], []
    for h in hw:
        for sname, rep in sorted(json.loads((layout.model_dir(h) / "train_report.json").read_text()).items()):
            for target in TARGETS:
                part = rep.get(target) or {}
                jumps += [{"scope": sname, "target": target, **j} for j in part.get("gate_jumps", [])]
                notes += model_notes(sname, target, part)
    write_json(out / "gate_jumps.json", _round_floats(jumps))
    write_json(out / "model_notes.json", notes)
    metrics = _round_floats(metrics_summary(pred, {t: floor_for(params, t) for t in TARGETS}))
    write_json(out / "metrics.json", metrics)
    write_json(out / "champion.json", champ)
    # the DVC metrics file: the headline numbers only (dvc metrics diff stays readable)
    head = {t: {m: v["mape"] for m, v in metrics[t]["overall"].items()} for t in metrics}
    floors = {t: metrics[t]["ape_floor_us"] for t in metrics}
    write_json(layout.metrics / "eval.json", {"mape_percent": head, "ape_floor_us": floors, "champion": champ["champion"],
                                              "test_rows": {t: int((pred["target"] == t).sum()) for t in TARGETS}})
    ep = params.get("evaluate") or {}
    layout.plots.mkdir(parents=True, exist_ok=True)
    write_dvc_plots(out, layout.plots, max_points=int(ep.get("plot_points", 2000)), seed=int(params["base"]["seed"]))
    return {"test_rows": int(len(pred)), "champion": champ["champion"], "mape_percent": head}


def gate(params: dict, layout: Layout) -> dict:
    """Promote only if the candidate beats the champion on the same held-out rows (``gate`` section)."""
    from molerd.gate import combine_gate_reports, gate_decision

    gp = dict(params.get("gate") or {})
    targets = list(gp.pop("targets", TARGETS))
    pred = pd.read_parquet(layout.eval / "predictions.parquet")
    champ = json.loads((layout.eval / "champion.json").read_text())
    reports = {}
    for target in targets:
        df = pred[pred["target"] == target]
        reports[target] = gate_decision(
            df["y_true"].to_numpy(), df["pred_candidate"].to_numpy(), df["pred_champion"].to_numpy(),
            (df["hardware"] + "/" + df["regime"]).to_numpy(), groups=df["trace_id"].to_numpy(),
            seed=int(params["base"]["seed"]), label=f"{target} vs {champ['champion']}",
            ape_floor=floor_for(params, target), **gp,
        )
    combined = combine_gate_reports(reports, required=targets)
    doc = {"decision": "promote" if combined.promote else "reject", "champion": champ["champion"],
           "combined": combined.to_dict(), "parts": {t: r.to_dict() for t, r in reports.items()},
           "thresholds": {t: label_thresholds(params, t) for t in TARGETS}}
    out = _fresh_dir(layout.gate)
    write_json(out / "gate.json", doc)
    (out / "gate.md").write_text(combined.to_markdown())
    write_json(layout.metrics / "gate.json", {
        "decision": doc["decision"], "champion": champ["champion"],
        **{f"{t}_mape_candidate": doc["parts"][t].get("candidate_mape") for t in targets},
        **{f"{t}_mape_champion": doc["parts"][t].get("champion_mape") for t in targets},
    })
    return {"decision": doc["decision"], "reasons": combined.to_dict().get("reasons", [])}


# ---------------------------------------------------------------------------------------------------------
# Drift check of a new batch (before retraining)
# ---------------------------------------------------------------------------------------------------------


def pending_batches(incoming: Path, raw_dir: Path) -> list[Path]:
    """Sub-folders of ``incoming`` (each a batch of runs) not yet copied under ``raw_dir``, sorted by name."""
    if not Path(incoming).is_dir():
        return []
    return sorted(p for p in Path(incoming).iterdir()
                  if p.is_dir() and not p.name.startswith(".") and not (Path(raw_dir) / p.name).exists())


def copy_batch(src: Path, raw_dir: Path) -> Path:
    """Copy a batch folder to ``raw_dir/<name>`` (via a temp name, so a failed copy leaves nothing half
    there); a batch already under that name is an error unless it is the same folder."""
    src, dest = Path(src), Path(raw_dir) / Path(src).name
    if dest.exists():
        if dest.resolve() == src.resolve():
            return dest
        raise FileExistsError(f"{dest} already exists: name the new batch differently")
    tmp = Path(raw_dir) / f".incoming-{src.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    tmp.rename(dest)
    return dest


def drift(params: dict, layout: Layout, batch_dir: Path) -> dict:
    """Compare a new batch of traces with the training data: feature distributions, regime mix, and the
    current release's step-time MAPE on it. Writes ``data/drift/<batch>.json`` and ``.md``."""
    import tempfile

    from molerd.drift import drift_check
    from molerd.evaluate import summarize

    dp = dict(params.get("drift") or {})
    features = list(dp.pop("features"))
    with tempfile.TemporaryDirectory() as tmp:
        validate(params, [Path(batch_dir)], Path(tmp) / "validated")
        batch = pd.read_parquet(Path(tmp) / "validated" / "steps.parquet")
    batch["regime"] = _rule_regimes(batch, "beta", label_thresholds(params, "beta"))
    reference = _read_table(layout.labelled, "steps")
    reference = reference[reference["split"] == "train"]
    current = None
    rel = current_champion(layout)
    if rel is not None and len(batch):
        y, p = [], []
        for scope, g in batch.groupby(["hardware", "model", "tp"], sort=True):
            pg = release_predict(rel, "beta", scope, g)
            if pg is not None:
                p.append(pg)
                y.append(g["step_duration_us"].to_numpy(dtype="float64"))
        if y:
            current = 100.0 * summarize(np.concatenate(y), np.concatenate(p), floor_for(params, "beta"))["mape"]
    rep = drift_check(reference, batch, features, "regime", current_mape=current, **dp)
    out = layout.root / "data" / "drift"
    out.mkdir(parents=True, exist_ok=True)
    name = Path(batch_dir).name
    doc = rep.to_dict()
    write_json(out / f"{name}.json", doc)
    (out / f"{name}.md").write_text(rep.to_markdown())
    return doc


# ---------------------------------------------------------------------------------------------------------
# Release
# ---------------------------------------------------------------------------------------------------------

EVAL_FILES = ("metrics.json", "champion.json", "coverage.json", "predictions.parquet", "sweep.parquet",
              "gate_jumps.json", "model_notes.json")


def _sha256_files(paths: list[Path]) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _git_commit(root: Path) -> str | None:
    """The checkout's commit (``+dirty`` when tracked files differ from it), or None outside git."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=30)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(params: dict, layout: Layout) -> dict:
    """What a release was trained on: data hash (the validated tables), params hash, code commit, seed."""
    import hashlib

    tables = [layout.validated / f"{t}.parquet" for t in ("steps", "requests")]
    return {
        "data_version": "sha256:" + _sha256_files(tables),
        "params_version": "sha256:" + hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest(),
        "code_version": _git_commit(layout.root),
        "seed": int(params["base"]["seed"]),
        "trained_on": list(params["base"]["hardware"]),
    }


def release_scopes(params: dict, layout: Layout, metrics: dict) -> list[dict]:
    """One release scope per trained (hardware, model, tp): the gated beta and alpha specs, the BLIS block,
    and the scope's held-out metrics; the other alpha targets' fits are recorded in its metrics."""
    from molerd.release import build_scope

    kinds = alpha_kinds(params)
    reports = {}
    scopes = []
    for hw in params["base"]["hardware"]:
        model_file = layout.model_dir(hw) / "model.json"
        if not model_file.exists():
            continue
        doc = json.loads(model_file.read_text())
        reports.update(json.loads((layout.model_dir(hw) / "train_report.json").read_text()))
        for sname, entry in sorted(doc["scopes"].items()):
            alpha = (entry.get("alpha") or {}).get(kinds[0])
            m = {t: metrics[t]["per_scope"][sname] for t in TARGETS if sname in (metrics.get(t) or {}).get("per_scope", {})}
            m["train"] = reports.get(sname, {})
            m["alpha_target"] = kinds[0]
            scopes.append(build_scope(entry["hardware"], entry["model"], entry["tp"], beta=entry.get("beta"),
                                      alpha=alpha, blis=entry.get("blis"), metrics=_round_floats(m)))
    return scopes


def release(params: dict, layout: Layout) -> dict:
    """If the gate said promote: publish an immutable release (coefficients per scope, BLIS block, golden
    vectors, metrics of candidate and champion, provenance, the report and the evaluation it shows) under the
    next free version, and point ``current`` at it. Either way write ``release_summary.json``."""
    import tempfile

    from molerd import registry
    from molerd.release import build_release
    from molerd.report import build_report

    rp = params.get("release") or {}
    gate_doc = json.loads((layout.gate / "gate.json").read_text())
    summary: dict[str, Any] = {"decision": gate_doc["decision"], "champion": gate_doc["champion"],
                               "reasons": gate_doc["combined"].get("reasons", [])}
    if gate_doc["decision"] == "promote":
        metrics = json.loads((layout.eval / "metrics.json").read_text())
        headline = {t: {m: metrics[t]["overall"].get(m) for m in ("candidate", "champion", "blis_block", "blackbox",
                                                                   "gbm", "union_ridge", "littles_law")
                        if m in metrics[t]["overall"]} for t in metrics}
        scopes = release_scopes(params, layout, metrics)
        champion = current_champion(layout)
        previous = None if champion is None else {"version": champion.version, "metrics": champion.doc.get("metrics", {})}
        prov = provenance(params, layout)

        def build(version: str) -> tuple[dict, dict]:
            doc = build_release(version, scopes, provenance=prov, metrics={"heldout_mape_percent": headline},
                                previous_release=previous,
                                created_utc=pd.Timestamp.now("UTC").strftime("%Y-%m-%dT%H:%M:%SZ"))
            extra = {f"eval/{n}": (layout.eval / n).read_bytes() for n in EVAL_FILES if (layout.eval / n).exists()}
            with tempfile.TemporaryDirectory() as tmp:
                build_report(layout.eval, Path(tmp) / "report", title=f"MoLE-RD release {version}",
                             gate_path=layout.gate / "gate.json", seed=int(params["base"]["seed"]))
                for f in sorted((Path(tmp) / "report").rglob("*")):
                    if f.is_file():
                        extra[f"report/{f.relative_to(Path(tmp) / 'report').as_posix()}"] = f.read_bytes()
            return doc, {"metrics": {"candidate": headline, "champion": gate_doc["champion"],
                                     "previous_release": previous, "per_scope": {
                                         f"{s['hardware']}/{s['model']}/tp{s['tp']}": s["metrics"] for s in scopes}},
                         "gate_report": gate_doc, "extra_files": extra}

        rdir = registry.publish_next(layout.releases, str(rp.get("version_prefix", "v")), build)
        summary.update(version=rdir.name, release_dir=rdir.as_posix(), report=(rdir / "report" / "index.html").as_posix())
    layout.releases.mkdir(parents=True, exist_ok=True)  # the registry exists (empty) before the first promotion
    summary["current"] = registry.current_version(layout.releases)
    write_json(layout.release_summary, summary)
    return summary
