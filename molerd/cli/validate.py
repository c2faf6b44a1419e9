"""``molerd validate``: read traces in any supported format, validate, write accepted rows + quarantine."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def validate_cmd(
    inputs: list[Path] = typer.Argument(..., help="trace files or folders (searched recursively)"),
    out: Path = typer.Option(..., "--out", help="output folder for steps/requests/quarantine parquet + report"),
    fmt: Optional[str] = typer.Option(None, "--format", help="otel | vllm-stats | canonical (default: detect)"),
    engine: str = typer.Option("fast", "--engine", help="fast (vectorised checks) | pandera (reference)"),
    workers: int = typer.Option(1, "--workers", min=1, help="processes reading inputs in parallel"),
) -> None:
    """Validate traces against the data contract; bad rows go to the quarantine with every rule they broke."""
    from molerd.validate import validate_inputs

    if fmt is not None and fmt not in ("otel", "vllm-stats", "canonical"):
        typer.echo(f"--format must be one of otel, vllm-stats, canonical; got {fmt!r}", err=True)
        raise typer.Exit(2)
    big = sum(p.stat().st_size for p in inputs if p.is_file()) > 50e6 or any(p.is_dir() for p in inputs)
    report = validate_inputs(inputs, out, fmt, engine=engine, progress=big, workers=workers)
    for table, c in report["tables"].items():
        typer.echo(f"{table}: {c['accepted']} accepted, {c['quarantined']} quarantined, {c['total']} total")
    for e in report["file_errors"]:
        typer.echo(f"error: {e['file']}: {e['message']}", err=True)
    typer.echo(f"wrote {out}/steps.parquet, requests.parquet, quarantine.parquet, validation_report.json")
    if sum(c["total"] for c in report["tables"].values()) == 0:
        typer.echo("nothing could be read", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("validate")(validate_cmd)
