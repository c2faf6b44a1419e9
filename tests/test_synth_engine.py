"""Scheduler behaviour: saturation, queueing, preemption only under KV pressure, prefix caching, workloads."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from molerd.synth import default_config, plan_runs, simulate
from molerd.synth.workloads import make_workload

SCOPE = {"hardware": "H100", "model": "llama-3.1-8b-instruct", "tp": 1}


def _run(workload: dict, engine: dict | None = None, seed: int = 3):
    cfg = default_config("small")
    cfg["scopes"] = [SCOPE]
    cfg["scenarios"] = [{"name": "t", "workload": workload, "engine": engine or {}}]
    return simulate(plan_runs(cfg)[0], seed)


def _throughput_and_delay(load: float):
    res, _, _ = _run({"arrival": "poisson", "load": load, "num_requests": 160, "prompt_mean": 300, "output_mean": 80},
                     {"max_num_seqs": 32})
    rq = res.req
    done = rq["status"] == "stop"
    span_s = (np.nanmax(rq["finished"]) - np.nanmin(rq["queued"])) / 1e6
    tokens = rq["out_done"][done].sum() + rq["prompt"][done].sum()
    delay = np.nanmean(rq["scheduled"] - rq["queued"])
    return tokens / span_s, delay


def test_throughput_saturates_and_queueing_grows_past_saturation():
    (t_lo, d_lo), (t_mid, d_mid), (t_hi, d_hi) = (_throughput_and_delay(x) for x in (0.2, 1.0, 4.0))
    assert t_mid > 2.0 * t_lo  # below saturation throughput follows the offered load
    assert t_hi < 1.6 * t_mid  # 4x the load does not give 4x the throughput
    assert d_hi > 5 * d_mid and d_hi > 1e5  # queueing delay explodes past saturation (>100 ms mean)
    assert d_lo < 5e4


@functools.lru_cache(maxsize=None)
def _preemption_runs(blocks):
    res, settings, _ = _run({"arrival": "poisson", "load": 3.0, "num_requests": 150, "prompt_mean": 1200, "output_mean": 300},
                            {"num_gpu_blocks_override": blocks, "max_num_batched_tokens": 512})
    return res, settings


def test_preemptions_only_when_kv_cache_is_full():
    res, settings = _preemption_runs(600)
    st = res.steps
    pre = np.flatnonzero(st["num_preempted"] > 0)
    assert pre.size > 0, "a 600-block cache under 3x overload must preempt"
    total = settings["num_gpu_blocks"]
    # the step before each preempting step had (nearly) the whole cache allocated: at most one step's worth of
    # new blocks (a full prefill budget plus one block per running request) can have been free
    pre = pre[(pre > 0) & (st["num_finished"][np.maximum(pre - 1, 0)] == 0)]
    before = st["kv_used_blocks"][pre - 1] / total
    slack = (512 / 16 + st["running_depth"][pre - 1] + 1) / total
    assert np.all(before >= 1.0 - slack - 1e-9), before.min()
    assert np.median(before) > 0.95
    big, _ = _preemption_runs(200_000)
    assert big.steps["num_preempted"].sum() == 0


def test_every_request_accounted_for_and_timestamps_ordered():
    res, _ = _preemption_runs(600)
    rq = res.req
    assert set(rq["status"]) <= {"stop", "aborted"}
    ok = rq["status"] == "stop"
    assert np.all(rq["queued"][ok] >= rq["arrived"][ok])
    assert np.all(rq["scheduled"][ok] >= rq["queued"][ok])
    assert np.all(rq["first_token"][ok] > rq["scheduled"][ok])
    assert np.all(rq["finished"][ok] >= rq["first_token"][ok])
    assert np.all(rq["out_done"][ok] == rq["output"][ok])
    st = res.steps
    assert np.all(np.diff(st["step_id"]) == 1)
    assert np.all(st["prefill_tokens"] + st["decode_tokens"] <= 512)
    assert np.all(st["ts_start_us"][1:] >= st["ts_start_us"][:-1] + st["duration_us"][:-1])  # steps never overlap


def test_prefix_caching_hits_shared_prompts():
    wl = {"arrival": "poisson", "load": 0.5, "num_requests": 120, "prompt_mean": 200, "output_mean": 40,
          "sessions": {"turns": 4, "system_prompt": 1024, "system_groups": 2}}
    on, _, _ = _run(wl)
    off, _, _ = _run(wl, {"enable_prefix_caching": False})
    assert on.req["cached"].sum() > 0.3 * on.req["prompt"].sum()
    assert off.req["cached"].sum() == 0
    # cached tokens are not recomputed: less prefill work in total
    assert on.steps["prefill_tokens"].sum() < off.steps["prefill_tokens"].sum()


def test_cpu_offload_moves_kv_instead_of_recomputing():
    wl = {"arrival": "poisson", "load": 3.0, "num_requests": 150, "prompt_mean": 1200, "output_mean": 300}
    eng = {"num_gpu_blocks_override": 600, "max_num_batched_tokens": 512}
    rec, _ = _preemption_runs(600)
    off, _, _ = _run(wl, {**eng, "cpu_offload": True})
    assert off.steps["offload_us"].sum() > 0 and rec.steps["offload_us"].sum() == 0
    assert off.steps["prefill_tokens"].sum() < rec.steps["prefill_tokens"].sum()


def test_replay_is_time_scaled_to_the_target_rate():
    for trace in ("azure_conv", "mooncake"):
        wl = make_workload({"arrival": "replay", "trace": trace, "rate": 7.0, "num_requests": 400},
                           np.random.default_rng(0), 32768)
        rate = (len(wl) - 1) / ((wl.arrival_us[-1] - wl.arrival_us[0]) / 1e6)
        assert rate == pytest.approx(7.0, rel=1e-6)
    mk = make_workload({"arrival": "replay", "trace": "mooncake", "rate": 1.0, "num_requests": 200},
                       np.random.default_rng(0), 32768)
    keys = np.concatenate(mk.keys)
    assert keys.size > 0 and np.unique(keys).size < keys.size  # hash_ids are shared between requests


def test_gamma_arrivals_are_burstier_than_poisson():
    rng = np.random.default_rng(1)
    p = make_workload({"arrival": "poisson", "rate": 10, "num_requests": 4000}, rng, 8192)
    g = make_workload({"arrival": "gamma", "rate": 10, "cv": 3.0, "num_requests": 4000}, rng, 8192)
    cv = lambda w: np.std(np.diff(w.arrival_us)) / np.mean(np.diff(w.arrival_us))  # noqa: E731
    assert cv(p) == pytest.approx(1.0, abs=0.1)
    assert cv(g) > 2.0


def test_bad_workload_is_a_clear_error():
    with pytest.raises(ValueError, match="arrival rate must be > 0"):
        make_workload({"arrival": "poisson", "rate": 0, "num_requests": 5}, np.random.default_rng(0), 4096)
    with pytest.raises(KeyError, match="unknown trace 'nope'"):
        make_workload({"arrival": "replay", "trace": "nope", "rate": 1, "num_requests": 5}, np.random.default_rng(0), 4096)


@pytest.mark.parametrize("spec,engine", [
    ({"arrival": "poisson", "rate": 8, "prompt_mean": 600, "output_mean": 200}, {"num_gpu_blocks": 20000, "max_num_batched_tokens": 2048}),
    ({"arrival": "poisson", "rate": 20, "prompt_mean": 1200, "output_mean": 300}, {"num_gpu_blocks": 600, "max_num_batched_tokens": 512}),
    ({"arrival": "poisson", "rate": 10, "prompt_mean": 300, "output_mean": 100, "sessions": {"turns": 4}},
     {"num_gpu_blocks": 800, "max_num_batched_tokens": 256}),
    ({"arrival": "gamma", "cv": 3.0, "rate": 20, "prompt_mean": 1200, "output_mean": 300},
     {"num_gpu_blocks": 600, "max_num_batched_tokens": 512, "cpu_offload": True, "abort_after_s": 20.0}),
])
def test_vectorised_decode_segments_match_the_per_step_reference(spec, engine):
    """The fast path is an optimisation only: without noise it reproduces the step-by-step simulation."""
    from molerd.synth.engine import Engine, EngineConfig
    from molerd.synth.oracle import get_oracle

    oracle = get_oracle("H100", "llama-3.1-8b-instruct", 1)
    out = []
    for vec in (True, False):
        rng = np.random.default_rng(0)
        wl = make_workload({**spec, "num_requests": 120}, rng, 8192)
        cfg = EngineConfig(noise_sigma=0.0, sample_rate=1.0, vectorise=vec, **engine)
        out.append(Engine(cfg, oracle, wl, rng).run())
    fast, ref = out
    assert fast.stats["segment_steps"] > 0 and ref.stats["segment_steps"] == 0
    for c in ("prefill_tokens", "decode_tokens", "kv_used_blocks", "num_preempted", "num_finished", "running_depth",
              "waiting_depth", "num_evictions"):
        np.testing.assert_array_equal(fast.steps[c], ref.steps[c], err_msg=c)
    for c in ("ts_start_us", "duration_us", "sum_decode_context", "fragmentation", "offload_us"):
        np.testing.assert_allclose(fast.steps[c], ref.steps[c], rtol=1e-9, err_msg=c)
    np.testing.assert_array_equal(fast.req["status"], ref.req["status"])
