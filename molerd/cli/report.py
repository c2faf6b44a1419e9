"""``molerd report``: the release report (HTML + Markdown + PNGs) and the CSVs ``dvc plots`` draws."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add the ``report`` command to the ``molerd`` app."""

    @app.command("report")
    def report(
        source: Optional[str] = typer.Argument(None, help="A release VERSION (data/releases/VERSION), or an "
                                               "evaluate-stage folder (metrics.json, gate.json, predictions.parquet, "
                                               "coverage.json, sweep.parquet)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report folder (index.html, report.md, img/); "
                                           "default for a release: data/reports/VERSION."),
        release: Optional[str] = typer.Option(None, "--release", help="Same as giving VERSION."),
        plots_dir: Optional[Path] = typer.Option(None, "--plots", help="Also write the dvc plots CSVs here."),
        thresholds: Optional[str] = typer.Option(None, "--thresholds", help="JSON object axis -> list of values, or "
                                                 "target -> axis -> list; overrides gate.json."),
        gate: Optional[Path] = typer.Option(None, "--gate", help="gate.json to show when it is not in EVAL_DIR "
                                            "(default: EVAL_DIR/gate.json, else EVAL_DIR/../gate/gate.json)."),
        title: Optional[str] = typer.Option(None, "--title", help="Page title."),
        max_points: int = typer.Option(4000, "--max-points", min=1, help="Scatter points per target."),
        seed: int = typer.Option(0, "--seed", help="Subsampling seed."),
        strict: bool = typer.Option(False, "--strict", help="Fail on an unusable optional input instead of "
                                    "noting it in the report."),
    ) -> None:
        """Build the static release report (no JavaScript, nothing from the network). A published release
        already holds its report (data/releases/VERSION/report/index.html); this renders it again elsewhere."""
        from molerd import report as rep

        if (source is None) == (release is None):
            raise typer.BadParameter("give exactly one of VERSION, EVAL_DIR or --release VERSION")
        eval_dir = None
        if source is not None:
            if Path(source).is_dir():
                eval_dir = Path(source)
            else:
                release = source
        thr = None
        if thresholds:
            try:
                thr = json.loads(thresholds)
            except json.JSONDecodeError as exc:
                raise typer.BadParameter(f"--thresholds is not valid JSON: {exc.msg}") from exc
        kwargs = {"thresholds": thr, "max_points": max_points, "seed": seed, "strict": strict, "gate_path": gate}
        if title:
            kwargs["title"] = title
        try:
            if release is not None:
                index = rep.build_release_report(release, out, **kwargs)
                where = rep.release_dir(release)
            else:
                if out is None:
                    raise typer.BadParameter("--out DIR is required with EVAL_DIR")
                index = rep.build_report(eval_dir, out, **kwargs)
                where = eval_dir
            if plots_dir is not None:
                written = rep.write_dvc_plots(where, plots_dir, seed=seed)
                typer.echo(f"dvc plots: {', '.join(sorted(p.name for p in written.values()))} in {plots_dir}")
        except rep.ReportInputError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        typer.echo(f"report: {index}")
