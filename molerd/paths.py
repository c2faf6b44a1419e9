"""Where the project's embedded reference data lives (hardware specs, model configs, kernel tables)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The project's ``data/`` folder; ``MOLERD_DATA_DIR`` overrides it (for an installed wheel)."""
    env = os.environ.get("MOLERD_DATA_DIR")
    return Path(env) if env else PROJECT_ROOT / "data"
