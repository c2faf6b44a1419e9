"""Hardware and model specifications: the physical constants every feature and roofline term is built on.

Hardware names follow BLIS's ``hardware_config.json`` (H100, A100-SXM, A100-80, L40S) plus H200, so a
release's scope matches what BLIS loads. Model names are the folder names under ``data/model_configs``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from molerd.paths import data_dir

BYTES_PER_PARAM = 2  # bf16 weights and KV cache


@dataclass(frozen=True)
class HardwareSpec:
    name: str
    tflops_peak: float  # dense bf16 TFLOP/s
    bw_peak_tbs: float  # HBM bandwidth, TB/s
    memory_gib: float
    mfu_prefill: float
    mfu_decode: float
    intra_node_bw_gbs: float  # NVLink (or PCIe) per GPU, GB/s

    @property
    def flops_per_us(self) -> float:
        return self.tflops_peak * 1e6

    @property
    def bytes_per_us(self) -> float:
        return self.bw_peak_tbs * 1e6


@dataclass(frozen=True)
class ModelSpec:
    name: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    num_experts: int  # 1 for dense models
    experts_per_token: int  # 1 for dense models

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

    @property
    def params_attention_per_layer(self) -> int:
        q = self.num_heads * self.head_dim
        kv = 2 * self.num_kv_heads * self.head_dim
        return self.hidden_size * (q + kv) + q * self.hidden_size

    @property
    def params_mlp_per_expert(self) -> int:
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def total_params(self) -> int:
        per_layer = self.params_attention_per_layer + self.num_experts * self.params_mlp_per_expert
        return self.num_layers * per_layer + 2 * self.vocab_size * self.hidden_size

    @property
    def active_params(self) -> int:
        per_layer = self.params_attention_per_layer + self.experts_per_token * self.params_mlp_per_expert
        return self.num_layers * per_layer + 2 * self.vocab_size * self.hidden_size

    @property
    def flops_per_token(self) -> float:
        """Dense matmul FLOPs per token (2 per active parameter), excluding attention over context."""
        return 2.0 * self.active_params

    @property
    def attention_flops_per_context_token(self) -> float:
        """FLOPs per (query token, context token) pair over all layers: QK^T and PV."""
        return 4.0 * self.num_layers * self.num_heads * self.head_dim

    @property
    def kv_bytes_per_token(self) -> float:
        """Bytes of K and V cache per token over all layers (bf16)."""
        return 2.0 * self.num_layers * self.num_kv_heads * self.head_dim * BYTES_PER_PARAM

    @property
    def weight_bytes(self) -> float:
        return float(self.total_params * BYTES_PER_PARAM)


@lru_cache(maxsize=None)
def _hardware_table(path: str) -> dict:
    return json.loads(Path(path).read_text())


def hardware_names() -> tuple[str, ...]:
    return tuple(_hardware_table(str(data_dir() / "hardware_config.json")))


def hardware(name: str) -> HardwareSpec:
    table = _hardware_table(str(data_dir() / "hardware_config.json"))
    if name not in table:
        raise KeyError(f"unknown hardware {name!r}; known: {', '.join(sorted(table))}")
    h = table[name]
    return HardwareSpec(
        name=name,
        tflops_peak=float(h["TFlopsPeak"]),
        bw_peak_tbs=float(h["BwPeakTBs"]),
        memory_gib=float(h["MemoryGiB"]),
        mfu_prefill=float(h["mfuPrefill"]),
        mfu_decode=float(h["mfuDecode"]),
        intra_node_bw_gbs=float(h.get("IntraNodeBwGBs", 450.0)),
    )


def model_names() -> tuple[str, ...]:
    root = data_dir() / "model_configs"
    return tuple(sorted(p.parent.name for p in root.glob("*/config.json")))


@lru_cache(maxsize=None)
def model(name: str) -> ModelSpec:
    path = data_dir() / "model_configs" / name / "config.json"
    if not path.exists():
        raise KeyError(f"unknown model {name!r}; known: {', '.join(model_names())}")
    return model_from_config(name, json.loads(path.read_text()))


def model_from_config(name: str, cfg: dict) -> ModelSpec:
    """Build a spec from a HuggingFace ``config.json`` dictionary."""
    heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    return ModelSpec(
        name=name,
        num_layers=int(cfg["num_hidden_layers"]),
        hidden_size=hidden,
        intermediate_size=int(cfg.get("moe_intermediate_size") or cfg["intermediate_size"])
        if cfg.get("num_experts") or cfg.get("num_local_experts")
        else int(cfg["intermediate_size"]),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        vocab_size=int(cfg["vocab_size"]),
        num_experts=int(cfg.get("num_local_experts") or cfg.get("num_experts") or 1),
        experts_per_token=int(cfg.get("num_experts_per_tok") or 1),
    )
