"""``molerd synth``: write the synthetic default dataset (OTEL run folders) from a preset or params.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("synth")
    def synth(
        out: Path = typer.Option(..., "--out", help="directory that receives one folder per run"),
        params: Optional[Path] = typer.Option(None, "--params", help="params.yaml; its 'synth' section overrides the preset"),
        preset: str = typer.Option("default", "--preset", help="default | small"),
        seed: Optional[int] = typer.Option(None, "--seed", help="random seed (default: params synth.seed, else base.seed, else 0)"),
    ) -> None:
        """Simulate vLLM runs (workloads × GPUs × models) and write traces.json, engine_settings.json, ground_truth.parquet."""
        from molerd.synth.dataset import config_from_params, synthesize

        try:
            config, cfg_seed = config_from_params(params, preset)
            folders = synthesize(config, out, seed if seed is not None else cfg_seed)
        except (FileNotFoundError, KeyError, ValueError) as err:
            typer.echo(f"molerd synth: {err}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"wrote {len(folders)} runs to {out}")
