"""Compact kernel tables (measured in vLLM by NVIDIA aiconfigurator) and the loader the step-time oracle uses.

The upstream tables hold every dtype and variant aiconfigurator measured (several MB per GPU). The oracle
only needs bf16 weights and a bf16 KV cache, so :func:`compact_kernel_tables` keeps those rows (all shapes,
so any model config under ``data/model_configs`` can be interpolated) and writes them to
``data/kernels/<gpu>/<kind>.parquet``. Latencies stay in the upstream unit (ms); the oracle converts to µs.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

from molerd.paths import data_dir

KINDS = ("gemm", "context_attention", "generation_attention", "allreduce", "moe")

# BLIS hardware name -> aiconfigurator system folder.
HARDWARE_TO_KERNEL_DIR = {"H100": "h100_sxm", "H200": "h200_sxm", "A100-80": "a100_sxm", "A100-SXM": "a100_sxm"}


def kernel_dir_for(hardware: str) -> str:
    """The kernel-table folder of a BLIS hardware name; a clear error for GPUs without measured kernels."""
    try:
        return HARDWARE_TO_KERNEL_DIR[hardware]
    except KeyError:
        raise KeyError(
            f"no kernel tables for hardware {hardware!r}; the synthesizer supports "
            f"{', '.join(sorted(HARDWARE_TO_KERNEL_DIR))}"
        ) from None


def _one(src_gpu: Path, pattern: str) -> pd.DataFrame:
    files = sorted(src_gpu.glob(pattern))
    if not files:
        raise FileNotFoundError(f"{src_gpu}: no file matches {pattern!r}")
    return pd.read_parquet(files[-1])


def compact_kernel_tables(src: Path, dst: Path, gpus: tuple[str, ...] = ("h100_sxm", "h200_sxm", "a100_sxm")) -> list[Path]:
    """Filter aiconfigurator's ``systems/data/<gpu>`` tables down to what the oracle reads (bf16, no sliding window)."""
    written: list[Path] = []
    for gpu in gpus:
        g = Path(src) / gpu
        out = Path(dst) / gpu
        out.mkdir(parents=True, exist_ok=True)
        tables: dict[str, pd.DataFrame] = {}
        d = _one(g, "gemm/*/*/gemm_perf.parquet")
        tables["gemm"] = d.loc[d["gemm_dtype"] == "bfloat16", ["m", "n", "k", "latency"]]
        for kind in ("context_attention", "generation_attention"):
            d = _one(g, f"attention/*/*/{kind}_perf.parquet")
            keep = d["kv_cache_dtype"] == "bfloat16"
            if "window_size" in d.columns:
                keep &= d["window_size"] == 0
            cols = ["batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim", "step", "latency"]
            tables[kind] = d.loc[keep, cols]
        d = _one(g, "comm/vllm/*/custom_allreduce_perf.parquet")
        tables["allreduce"] = d[["backend", "num_gpus", "message_size", "latency"]]
        d = _one(g, "moe/*/*/moe_perf.parquet")
        d = d[(d["moe_dtype"] == "bfloat16") & (d["kernel_source"] == "vllm_fused_moe") & (d["moe_ep_size"] == 1)]
        cols = ["num_tokens", "hidden_size", "inter_size", "topk", "num_experts", "moe_tp_size", "distribution", "latency"]
        tables["moe"] = d[cols]
        for kind, t in tables.items():
            t = t.sort_values(list(t.columns[:-1])).drop_duplicates(subset=list(t.columns[:-1]), keep="first")
            t = t.reset_index(drop=True)
            t["latency"] = t["latency"].astype("float64")
            path = out / f"{kind}.parquet"
            t.to_parquet(path, index=False, compression="zstd")
            written.append(path)
        sysyaml = g / "system.yaml"
        if sysyaml.exists():
            (out / "system.yaml").write_text(sysyaml.read_text())
            written.append(out / "system.yaml")
    return written


@lru_cache(maxsize=None)
def load_kernel_table(gpu_dir: str, kind: str) -> pd.DataFrame:
    """One compact table from ``data/kernels/<gpu_dir>/<kind>.parquet`` (cached; treat as read-only)."""
    if kind not in KINDS:
        raise KeyError(f"unknown kernel table kind {kind!r}; known: {', '.join(KINDS)}")
    path = data_dir() / "kernels" / gpu_dir / f"{kind}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: kernel table missing; rebuild with molerd.synth.kernels.compact_kernel_tables")
    return pd.read_parquet(path)


@lru_cache(maxsize=None)
def load_system(gpu_dir: str) -> dict:
    """The GPU's ``system.yaml`` (memory, PCIe bandwidth, NCCL/other reserved memory)."""
    import yaml

    return yaml.safe_load((data_dir() / "kernels" / gpu_dir / "system.yaml").read_text())
