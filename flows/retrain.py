"""The retraining flow: new traces in → drift check → validate → label → rebalance → train per hardware
(``.map``) → evaluate → gate → release → version with DVC.

Run once:      python -m flows.retrain --new-traces path/to/batch
Schedule it:   python -m flows.deploy   (serves the flow with the cron schedule from params.yaml)
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact

from molerd import pipeline
from tasks import stages


def _summary_markdown(summary: dict) -> str:
    lines = ["# MoLE-RD retraining run", ""]
    for key in ("decision", "version", "current", "release_dir", "report", "reason"):
        if summary.get(key) is not None:
            lines.append(f"- **{key}**: {summary[key]}")
    if summary.get("drift"):
        lines += ["", "## Drift", "", f"retrain needed: {summary['drift'].get('retrain_needed')}",
                  *[f"- {r}" for r in summary["drift"].get("reasons", [])]]
    if summary.get("gate"):
        lines += ["", "## Gate", "", *[f"- {r}" for r in summary["gate"].get("reasons", [])]]
    return "\n".join(lines) + "\n"


def dask_task_runner(params: dict):
    """A Prefect DaskTaskRunner on the cluster named by ``MOLERD_DASK_ADDRESS`` or ``execution.dask_address``
    (e.g. ``tcp://scheduler:8786``), or None: train in local threads."""
    address = os.environ.get("MOLERD_DASK_ADDRESS") or (params.get("execution") or {}).get("dask_address")
    if not address:
        return None
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(address=address)


@flow(name="molerd-train-per-hardware")
def train_per_hardware(params: dict, hardware: list[str], labelled: Path, balanced: Path, models_root: Path) -> list[dict]:
    """The per-hardware training fan-out: one ``train`` task per hardware, each reading only its hardware's
    Parquet partitions; runs wherever this flow's task runner sends it (local threads or a Dask cluster)."""
    futures = stages.train.map(hardware, unmapped(params), unmapped(labelled), unmapped(balanced),
                               unmapped(models_root))
    return [f.result() for f in futures]


def train_fanout(params: dict):
    """:func:`train_per_hardware`, on Dask when a cluster is configured."""
    runner = dask_task_runner(params)
    return train_per_hardware if runner is None else train_per_hardware.with_options(task_runner=runner)


@flow(name="molerd-retrain", log_prints=True)
def retrain(
    root: str = ".",
    params_path: str = "params.yaml",
    new_traces: str | None = None,
    incoming: str | None = None,
    synthesize_default: bool = False,
    force: bool = False,
    dvc_version: bool = False,
    dvc_push: bool = False,
) -> dict:
    """Retrain when new traces arrive and promote a release only if it beats the current one.

    Parameters
    ----------
    root : the project checkout (holds params.yaml, data/, dvc.yaml).
    new_traces : a folder of new runs (one batch); it is copied to ``data/raw/<name>`` and drift-checked first.
    incoming : a folder whose sub-folders are batches; those not yet under ``data/raw`` are the new ones
        (what the scheduled deployment passes). Nothing new there: the run records "no new traces".
    synthesize_default : (re)generate the embedded default data before training.
    force : retrain even when there is nothing new or the drift check says it is not needed.
    dvc_version : ``dvc add`` the new batches and ``dvc commit`` the stages' outputs into dvc.lock.
    dvc_push : also ``dvc push`` to the configured remote.
    """
    logger = get_run_logger()
    root_p = Path(root).resolve()
    params = pipeline.load_params(root_p / params_path)
    layout = pipeline.Layout(root_p)
    summary: dict = {}
    sources = [Path(new_traces)] if new_traces else []
    if incoming:
        sources += pipeline.pending_batches(Path(incoming), layout.raw)
        if not sources and not synthesize_default and not force:
            summary.update(decision="no new traces", reason=f"no new batch in {incoming}")
            create_markdown_artifact(_summary_markdown(summary), key="molerd-retrain-summary")
            return summary
    batch_dirs = [stages.copy_batch(src, layout.raw) for src in sources]
    if batch_dirs and layout.labelled.exists():
        checks = {b.name: stages.drift_check(params, layout, b) for b in batch_dirs}
        summary["drift"] = {"batches": checks, "retrain_needed": any(c["retrain_needed"] for c in checks.values()),
                            "reasons": [f"{name}: {r}" for name, c in checks.items() for r in c.get("reasons", [])]}
        if not summary["drift"]["retrain_needed"] and not force:
            summary.update(decision="no retrain needed", reason="drift and error below the thresholds")
            logger.info("no retrain needed: %s", json.dumps(summary["drift"]["reasons"]))
            create_markdown_artifact(_summary_markdown(summary), key="molerd-retrain-summary")
            return summary
    if synthesize_default:
        stages.synthesize(params, layout.default_raw)
    inputs = [layout.root / p for p in (params.get("validate") or {}).get("inputs", ["data/raw"])]
    summary["validation"] = stages.validate(params, inputs, layout.validated, layout.metrics / "validation.json")
    summary["label"] = stages.label(params, layout.validated, layout.labelled)
    summary["rebalance"] = stages.rebalance(params, layout.labelled, layout.balanced)
    summary["train"] = train_fanout(params)(params, list(params["base"]["hardware"]), layout.labelled,
                                            layout.balanced, layout.models)
    summary["evaluate"] = stages.evaluate(params, layout)
    summary["gate"] = stages.gate(params, layout)
    rel = stages.release(params, layout)
    summary.update(rel)
    if dvc_version:
        for batch_dir in batch_dirs:
            stages.dvc(["add", str(batch_dir.relative_to(root_p))], root_p)
        stages.dvc(["commit", "-f"], root_p)
        if dvc_push:
            stages.dvc(["push"], root_p)
    logger.info("decision: %s; current release: %s", summary.get("decision"), summary.get("current"))
    create_markdown_artifact(_summary_markdown(summary), key="molerd-retrain-summary")
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Run the MoLE-RD retraining flow once.")
    ap.add_argument("--root", default=".")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--new-traces", default=None, help="a folder of new runs (one batch)")
    ap.add_argument("--incoming", default=None, help="a folder of batches; the ones not yet in data/raw are new")
    ap.add_argument("--synthesize-default", action="store_true")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--dvc-version", action="store_true")
    ap.add_argument("--dvc-push", action="store_true")
    a = ap.parse_args(argv)
    out = retrain(root=a.root, params_path=a.params, new_traces=a.new_traces, incoming=a.incoming,
                  synthesize_default=a.synthesize_default,
                  force=a.force, dvc_version=a.dvc_version, dvc_push=a.dvc_push)
    print(json.dumps({k: out.get(k) for k in ("decision", "version", "current", "release_dir", "report")}, indent=2))


if __name__ == "__main__":
    main()
