"""The ``molerd`` command line. Each module in this package adds its commands through ``register(app)``,
so a concept's commands live beside nothing else and the entry point never needs editing."""

from __future__ import annotations

import importlib
import pkgutil

import typer

app = typer.Typer(
    name="molerd",
    help="MoLE-RD: validate vLLM traces, synthesize default data, train regime experts, gate and release "
    "coefficients for BLIS.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    importlib.import_module(f"{__name__}.{_mod.name}").register(app)


def main() -> None:  # pragma: no cover - thin entry point
    app()
