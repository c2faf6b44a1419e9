"""Step-time oracle against physics and public numbers (not against itself)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from molerd.paths import data_dir
from molerd.synth.oracle import StepOracle, capture_sizes, get_oracle

SCOPES = [(hw, m, tp) for hw in ("H100", "H200", "A100-80")
          for m, tp in (("llama-3.1-8b-instruct", 1), ("llama-2-7b-hf", 1), ("llama-3.1-70b-instruct", 4), ("mixtral-8x7b-v0.1", 2))]


def _roofline_us(hw: str, model: str, tp: int, tokens: float, sum_ctx: float, seqs: float) -> float:
    """Independent roofline from data/hardware_config.json and the HF config: bytes/BW vs FLOPs/peak."""
    h = json.loads((data_dir() / "hardware_config.json").read_text())[hw]
    c = json.loads((data_dir() / "model_configs" / model / "config.json").read_text())
    hid, L, V = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
    heads, kvh = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    d = hid // heads
    attn = hid * (heads + 2 * kvh) * d + heads * d * hid
    mlp = 3 * hid * c["intermediate_size"]
    experts, topk = c.get("num_local_experts", 1), c.get("num_experts_per_tok", 1)
    touched = min(experts, max(tokens, 1) * topk)
    weight_bytes = 2 * (L * (attn + touched * mlp) + 2 * V * hid)
    kv_bytes = sum_ctx * 2 * L * kvh * d * 2
    flops = tokens * 2 * L * (attn + topk * mlp) + seqs * 2 * V * hid
    return max((weight_bytes + kv_bytes) / tp / (h["BwPeakTBs"] * 1e6), flops / tp / (h["TFlopsPeak"] * 1e6))


@pytest.mark.parametrize("hw,model,tp", SCOPES)
def test_no_step_beats_the_roofline(hw, model, tp):
    o = get_oracle(hw, model, tp)
    for b in (1, 8, 64, 256):
        for ctx in (128, 2048, 16384):
            t = float(o.decode_step_us(b, np.array([b * ctx]))[0])
            assert t >= _roofline_us(hw, model, tp, b, b * ctx, b), (hw, model, b, ctx, t)
    for n in (16, 512, 2048, 8192):
        t = o.step_us([n], [0], 0, 0.0, 1)
        assert t >= _roofline_us(hw, model, tp, n, 0, 1), (hw, model, n, t)


def test_batch1_decode_8b_h100_between_5_and_15_ms():
    o = get_oracle("H100", "llama-3.1-8b-instruct", 1)
    t = float(o.decode_step_us(1, np.array([1024.0]))[0])
    assert 5_000 <= t <= 15_000, t


def test_prefill_2048_llama2_7b_h100_between_25_and_120_ms():
    o = get_oracle("H100", "llama-2-7b-hf", 1)
    t = o.step_us([2048], [0], 0, 0.0, 1)
    assert 25_000 <= t <= 120_000, t


@pytest.mark.parametrize("hw,model,tp", SCOPES[::3])
def test_decode_time_grows_with_context(hw, model, tp):
    o = get_oracle(hw, model, tp)
    for b in (8, 64):
        sums = b * np.array([64, 256, 1024, 4096, 16384], dtype=float)
        t = o.decode_step_us(b, sums)
        assert np.all(np.diff(t) >= 0), t
        # the extra time is at least half of what reading the extra KV at peak bandwidth takes
        kv_extra_us = (sums[-1] - sums[0]) * o.spec.kv_bytes_per_token / tp / o.hw.bytes_per_us
        assert t[-1] - t[0] >= 0.5 * kv_extra_us, (t, kv_extra_us)


def test_prefill_time_grows_with_flops():
    o = get_oracle("H100", "llama-3.1-8b-instruct", 1)
    t = [o.step_us([n], [0], 0, 0.0, 1) for n in (256, 1024, 4096, 8192)]
    assert all(b > a for a, b in zip(t, t[1:])), t
    # compute-bound: 4x the tokens costs well over 2x the time at large n
    assert t[3] / t[1] > 3.0, t
    big = get_oracle("H100", "llama-3.1-70b-instruct", 4).step_us([4096], [0], 0, 0.0, 1)
    assert big > t[2] * 1.5  # 70B/4 GPUs does ~2.2x the FLOPs per GPU of 8B


def test_chunk_with_prior_context_costs_more_attention():
    o = get_oracle("H100", "llama-3.1-8b-instruct", 1)
    assert o.step_us([512], [8192], 0, 0.0, 1) > o.step_us([512], [0], 0, 0.0, 1)


def test_cuda_graph_padding_gives_plateaus():
    assert capture_sizes(512)[:5].tolist() == [1, 2, 4, 8, 16]
    o = get_oracle("H100", "llama-3.1-8b-instruct", 1)
    # 9..16 decodes pad to the same captured size: identical GEMM time
    assert o.linear_us[9] == o.linear_us[16]
    assert o.linear_us[17] > o.linear_us[16]


def test_unknown_hardware_is_a_clear_error():
    with pytest.raises(KeyError, match="no kernel tables for hardware 'L40S'"):
        StepOracle("L40S", "llama-3.1-8b-instruct", 1)
