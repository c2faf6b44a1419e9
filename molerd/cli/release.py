"""``molerd release list|show|diff|rollback|export-blis``: inspect and manage the coefficient registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from molerd import registry


def register(app: typer.Typer) -> None:
    rel_app = typer.Typer(help="Inspect and manage coefficient releases (data/releases).", no_args_is_help=True)
    app.add_typer(rel_app, name="release")
    RootOpt = typer.Option(None, "--root", help="registry root (default data/releases)")

    def _run(fn):
        try:
            return fn()
        except (registry.RegistryError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2)

    @rel_app.command("list")
    def list_cmd(root: Optional[Path] = RootOpt) -> None:
        """List published versions; '*' marks the current one."""
        for r in _run(lambda: registry.list_releases(root)):
            typer.echo(f"{'*' if r['current'] else ' '} {r['version']}  {', '.join(r['scopes'])}")

    @rel_app.command("show")
    def show_cmd(version: str = typer.Argument("current"), root: Optional[Path] = RootOpt) -> None:
        """Show a release (checksums verified) as JSON."""
        typer.echo(json.dumps(_run(lambda: registry.show_release(root, version)), indent=2))

    @rel_app.command("diff")
    def diff_cmd(a: str, b: str, root: Optional[Path] = RootOpt) -> None:
        """Coefficient and metric differences b − a."""
        typer.echo(json.dumps(_run(lambda: registry.diff_releases(a, b, root)), indent=2))

    @rel_app.command("rollback")
    def rollback_cmd(version: str, root: Optional[Path] = RootOpt) -> None:
        """Point 'current' at an existing version."""
        prev = _run(lambda: registry.rollback(root, version))
        typer.echo(f"current: {prev} -> {version}")

    @rel_app.command("export-blis")
    def export_cmd(version: str, scope: str = typer.Option(..., "--scope", help="e.g. H100_llama-3.1-8b-instruct_tp1"),
                   snippet: bool = typer.Option(False, "--snippet", help="the defaults.yaml snippet instead of flags"),
                   out: Optional[Path] = typer.Option(None, "--out", help="write to this file instead of printing"),
                   root: Optional[Path] = RootOpt) -> None:
        """The BLIS --alpha-coeffs/--beta-coeffs flags (or, with --snippet, the defaults.yaml snippet) of one
        scope, printed or written with --out; `blis run ... $(molerd release export-blis v1 --scope S)`."""
        text = _run(lambda: registry.export_blis(root, version, scope, snippet=snippet))
        if out is None:
            typer.echo(text, nl=False)
        else:
            out.write_text(text)
            typer.echo(f"wrote {out}")
