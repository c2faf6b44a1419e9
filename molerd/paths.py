"""Where the project's embedded reference data lives (hardware specs, model configs, kernel tables)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The project's ``data/`` folder; ``MOLERD_DATA_DIR`` overrides it (for an installed wheel)."""
    env = os.environ.get("MOLERD_DATA_DIR")
    return Path(env) if env else PROJECT_ROOT / "data"


def releases_dir() -> Path:
    """The release registry of the project being worked on: ``data/releases`` under the working directory
    (where ``dvc repro`` and the CLI run), unlike :func:`data_dir`, which holds the package's reference data."""
    return Path("data") / "releases"
