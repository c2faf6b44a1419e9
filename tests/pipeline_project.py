"""Build a throw-away copy of the project (a real git + DVC repo) for end-to-end pipeline tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COPY = ["molerd", "tasks", "flows", "dvc.yaml", "params.yaml", "pyproject.toml",
        "data/kernels", "data/workloads", "data/model_configs", "data/hardware_config.json", "data/NOTICE.md"]


def small_params(hardware: tuple[str, ...] = ("H100",), model: str = "llama-3.1-8b-instruct", tp: int = 1) -> dict:
    """The project's params with the small synthetic preset on one model per hardware: the same DAG, less data."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base"]["hardware"] = list(hardware)
    params["synth"] = {**params.get("synth", {}), "preset": "small",
                       "scopes": [{"hardware": h, "model": model, "tp": tp} for h in hardware]}
    params["gate"]["bootstrap_samples"] = 200
    params["train"]["gbm"]["max_iter"] = 50
    return params


def env_for(repo: Path) -> dict:
    """Environment in which `python -m molerd` imports the copy's code and `dvc` is the installed one."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(repo)
    env["MOLERD_DATA_DIR"] = str(repo / "data")
    env["DVC_NO_ANALYTICS"] = "1"
    env.setdefault("GIT_AUTHOR_NAME", "molerd tests")
    env.setdefault("GIT_AUTHOR_EMAIL", "tests@molerd.invalid")
    env.setdefault("GIT_COMMITTER_NAME", "molerd tests")
    env.setdefault("GIT_COMMITTER_EMAIL", "tests@molerd.invalid")
    return env


def run(cmd: list[str], repo: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=repo, env=env_for(repo), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def make_project(dest: Path, params: dict) -> Path:
    """Copy the project into ``dest``, write ``params``, and make it a git + DVC repository."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel in COPY:
        src = ROOT / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest / rel)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dest / ".gitignore").write_text((ROOT / ".gitignore").read_text())
    run(["git", "init", "-q"], dest)
    run([sys.executable, "-m", "dvc", "init", "-q"], dest)
    run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "project"], dest)
    return dest


def dvc(args: list[str], repo: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], repo, check)


def synth_batch(dest: Path, params: dict, seed: int, scenarios: list[str] | None = None) -> Path:
    """A new batch of runs in ``dest``: the params' synth preset (only ``scenarios`` when given), another seed."""
    from molerd.synth import synthesize
    from molerd.synth.dataset import config_from_section

    config = config_from_section(params["synth"])
    if scenarios:
        config["scenarios"] = [s for s in config["scenarios"] if s["name"] in scenarios]
    synthesize(config, dest, seed=seed)
    return dest
