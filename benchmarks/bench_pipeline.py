"""End-to-end pipeline time on the default data: wall time of each ``dvc repro`` stage, the whole pipeline,
and a no-change ``dvc repro``, in a throw-away copy of this checkout (a fresh git + DVC repository).

    python benchmarks/bench_pipeline.py [--keep DIR]

Targets (2 cores): whole pipeline <= 5 min, no-change ``dvc repro`` <= 3 s. Stages run one at a time with
``dvc repro --single-item`` (so each figure includes DVC's own hashing and lock-file work), in DAG order.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
TARGET_TOTAL_S, TARGET_NOOP_S = 300.0, 3.0


def copy_checkout(dest: Path) -> None:
    """The checkout's files as git sees them (tracked + untracked, not ignored): what a fresh clone has."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def sh(cmd: list[str], cwd: Path, env: dict) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return dt


def stage_order(repo: Path) -> list[str]:
    """Stages of dvc.yaml in file order, foreach stages expanded (``train@H100``...)."""
    doc = yaml.safe_load((repo / "dvc.yaml").read_text())
    params = yaml.safe_load((repo / "params.yaml").read_text())
    out = []
    for name, st in doc["stages"].items():
        if "foreach" in st:
            out += [f"{name}@{item}" for item in params["base"]["hardware"]]
        else:
            out.append(name)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, default=None, help="run in this (new) folder and keep it")
    args = ap.parse_args()
    repo = args.keep or Path(tempfile.mkdtemp(prefix="molerd-bench-pipeline-"))
    repo.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    env.setdefault("GIT_AUTHOR_NAME", "bench"), env.setdefault("GIT_AUTHOR_EMAIL", "bench@molerd.invalid")
    env.setdefault("GIT_COMMITTER_NAME", "bench"), env.setdefault("GIT_COMMITTER_EMAIL", "bench@molerd.invalid")
    copy_checkout(repo)
    sh(["git", "init", "-q"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "bench"], repo, env)
    print(f"project copy: {repo}  (cores: {os.cpu_count()})")
    total = 0.0
    for stage in stage_order(repo):
        dt = sh([sys.executable, "-m", "dvc", "repro", "--single-item", stage], repo, env)
        total += dt
        print(f"  {stage:<16s} {dt:7.1f} s")
    print(f"whole pipeline: {total:.1f} s  (target <= {TARGET_TOTAL_S:.0f} s: {'met' if total <= TARGET_TOTAL_S else 'MISSED'})")
    noop = min(sh([sys.executable, "-m", "dvc", "repro"], repo, env) for _ in range(3))
    print(f"no-change dvc repro (best of 3): {noop:.2f} s  (target <= {TARGET_NOOP_S:.0f} s: "
          f"{'met' if noop <= TARGET_NOOP_S else 'MISSED'})")
    if args.keep is None:
        shutil.rmtree(repo, ignore_errors=True)


if __name__ == "__main__":
    main()
