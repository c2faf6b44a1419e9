"""One Prefect task per pipeline stage. Each only forwards to ``molerd.pipeline``; DVC already caches stage
outputs, so Prefect's own result caching is off (``NO_CACHE``). Retries sit on the tasks that do I/O against
things that can fail transiently (reading incoming traces, writing the registry, talking to a DVC remote)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from molerd import pipeline

IO_RETRIES = dict(retries=2, retry_delay_seconds=[2, 10], retry_jitter_factor=0.5)


@task(name="synthesize", cache_policy=NO_CACHE)
def synthesize(params: dict, out_dir: Path) -> dict:
    return pipeline.synthesize(params, out_dir)


@task(name="validate", cache_policy=NO_CACHE, **IO_RETRIES)
def validate(params: dict, inputs: list[Path], out_dir: Path, metrics_file: Path | None = None) -> dict:
    return pipeline.validate(params, inputs, out_dir, metrics_file=metrics_file)


@task(name="label", cache_policy=NO_CACHE)
def label(params: dict, validated_dir: Path, out_dir: Path) -> dict:
    return pipeline.label(params, validated_dir, out_dir)


@task(name="rebalance", cache_policy=NO_CACHE)
def rebalance(params: dict, labelled_dir: Path, out_dir: Path) -> dict:
    return pipeline.rebalance(params, labelled_dir, out_dir)


@task(name="train", cache_policy=NO_CACHE, task_run_name="train-{hardware}")
def train(hardware: str, params: dict, labelled_dir: Path, balanced_dir: Path, models_root: Path) -> dict:
    return pipeline.train(params, hardware, labelled_dir, balanced_dir, Path(models_root) / hardware)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(params: dict, layout: pipeline.Layout) -> dict:
    return pipeline.evaluate(params, layout)


@task(name="gate", cache_policy=NO_CACHE)
def gate(params: dict, layout: pipeline.Layout) -> dict:
    return pipeline.gate(params, layout)


@task(name="release", cache_policy=NO_CACHE, **IO_RETRIES)
def release(params: dict, layout: pipeline.Layout) -> dict:
    return pipeline.release(params, layout)


@task(name="copy-batch", cache_policy=NO_CACHE, **IO_RETRIES)
def copy_batch(src: Path, raw_dir: Path) -> Path:
    return pipeline.copy_batch(src, raw_dir)


@task(name="drift-check", cache_policy=NO_CACHE)
def drift_check(params: dict, layout: pipeline.Layout, batch_dir: Path) -> dict:
    return pipeline.drift(params, layout, batch_dir)


@task(name="dvc", cache_policy=NO_CACHE, **IO_RETRIES)
def dvc(args: list[str], cwd: Path) -> str:
    """Run one DVC command (add, commit, push) in the project; its output goes to the flow's log."""
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout
