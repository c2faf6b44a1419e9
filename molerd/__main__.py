"""``python -m molerd ...`` is the same as the ``molerd`` command (what dvc.yaml stages call)."""

from molerd.cli import app

app(prog_name="molerd")
