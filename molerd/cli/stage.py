"""``molerd stage <name>``: the commands ``dvc.yaml`` runs, one per pipeline stage (thin: parse, call
``molerd.pipeline``, print a one-line summary)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

stage_app = typer.Typer(help="Run one pipeline stage (what dvc.yaml calls).", no_args_is_help=True)

PARAMS = typer.Option(Path("params.yaml"), "--params", help="params.yaml to read.")
ROOT = typer.Option(Path("."), "--root", help="Project root holding data/.")


def _echo(summary: dict) -> None:
    typer.echo(json.dumps(summary, default=str, sort_keys=True))


def _setup(params: Path, root: Path):
    from molerd import pipeline

    return pipeline, pipeline.load_params(params), pipeline.Layout(root)


@stage_app.command("synthesize")
def synthesize(params: Path = PARAMS, root: Path = ROOT) -> None:
    """Generate the embedded default traces into data/raw/default."""
    pipeline, p, layout = _setup(params, root)
    _echo(pipeline.synthesize(p, layout.default_raw))


@stage_app.command("validate")
def validate(params: Path = PARAMS, root: Path = ROOT,
             inputs: Optional[List[Path]] = typer.Argument(None, help="Inputs (default: validate.inputs).")) -> None:
    """Ingest and validate every input; quarantine rejected rows."""
    pipeline, p, layout = _setup(params, root)
    ins = inputs or [layout.root / x for x in (p.get("validate") or {}).get("inputs", ["data/raw"])]
    rep = pipeline.validate(p, ins, layout.validated, progress=True, metrics_file=layout.metrics / "validation.json")
    for t, r in rep["tables"].items():
        typer.echo(f"{t}: {r['accepted']} accepted, {r['quarantined']} quarantined, {r['total']} total")
    for e in rep.get("file_errors", []):
        typer.echo(f"error: {e.get('file')}: {e.get('message')}", err=True)


@stage_app.command("label")
def label(params: Path = PARAMS, root: Path = ROOT) -> None:
    """Label regimes, split whole runs into train/test, write the coverage report."""
    pipeline, p, layout = _setup(params, root)
    _echo(pipeline.label(p, layout.validated, layout.labelled))


@stage_app.command("rebalance")
def rebalance(params: Path = PARAMS, root: Path = ROOT) -> None:
    """Bring rare regimes of the training rows up (weights or resampling)."""
    pipeline, p, layout = _setup(params, root)
    _echo(pipeline.rebalance(p, layout.labelled, layout.balanced))


@stage_app.command("train")
def train(hardware: str = typer.Option(..., "--hardware", help="Hardware name, e.g. H100."),
          params: Path = PARAMS, root: Path = ROOT) -> None:
    """Fit detectors, experts, baselines and the BLIS block for one hardware."""
    pipeline, p, layout = _setup(params, root)
    _echo(pipeline.train(p, hardware, layout.labelled, layout.balanced, layout.model_dir(hardware)))


@stage_app.command("evaluate")
def evaluate(params: Path = PARAMS, root: Path = ROOT) -> None:
    """Held-out metrics of candidate, champion and baselines; DVC plots."""
    pipeline, p, layout = _setup(params, root)
    _echo(pipeline.evaluate(p, layout))


@stage_app.command("gate")
def gate(params: Path = PARAMS, root: Path = ROOT) -> None:
    """Decide whether the candidate replaces the current release."""
    pipeline, p, layout = _setup(params, root)
    _echo(pipeline.gate(p, layout))


@stage_app.command("release")
def release(params: Path = PARAMS, root: Path = ROOT) -> None:
    """Publish an immutable release if the gate said promote; print where it and its report are."""
    pipeline, p, layout = _setup(params, root)
    s = pipeline.release(p, layout)
    typer.echo(f"gate decision: {s.get('decision')}")
    if s.get("version"):
        typer.echo(f"release {s['version']} written to {s.get('release_dir')}")
        typer.echo(f"report: {s.get('report')}")
    typer.echo(f"current release: {s.get('current')}")


def register(app: typer.Typer) -> None:
    app.add_typer(stage_app, name="stage")
