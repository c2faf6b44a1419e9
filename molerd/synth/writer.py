"""Write a simulated run in the instrumented-vLLM OTEL format (OTLP JSON lines) plus its ground truth.

Clocks: the engine's monotonic clock starts at ``MONO0_S`` seconds; epoch time (``timeUnixNano``) is
``EPOCH0_S`` + monotonic. The API server uses the same host clock. Request ids follow vLLM: the API id is
``cmpl-<hex>``, the engine (journey) id appends ``-0-<8 hex>``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from molerd.synth.engine import SimResult

EPOCH0_S = 1_767_225_600  # 2026-01-01T00:00:00Z
MONO0_S = 5000.0
STEPS_PER_SPAN = 512
SPANS_PER_LINE = 256


def _i(key: str, v) -> dict:
    return {"key": key, "value": {"intValue": str(int(v))}}


def _d(key: str, v) -> dict:
    return {"key": key, "value": {"doubleValue": float(v)}}


def _s(key: str, v) -> dict:
    return {"key": key, "value": {"stringValue": str(v)}}


def _b(key: str, v) -> dict:
    return {"key": key, "value": {"boolValue": bool(v)}}


def _mono_ns(t_us: float) -> int:
    return int(round(MONO0_S * 1e9 + t_us * 1e3))


def _epoch_ns(t_us: float) -> str:
    return str(EPOCH0_S * 10**9 + _mono_ns(t_us))


def _hex(seed: str, n: int) -> str:
    return hashlib.blake2b(seed.encode(), digest_size=n // 2).hexdigest()


def request_ids(trace_id: str, n: int) -> tuple[list[str], list[str]]:
    """(API ids, engine journey ids) of a run's requests, deterministic in the trace id."""
    stem = _hex(trace_id, 16)[:12]
    api = [f"cmpl-{stem}{i:08x}" for i in range(n)]
    eng = [f"{a}-0-{_hex(a, 8)}" for a in api]
    return api, eng


def _line(scope: str, spans: list, resource: dict) -> str:
    obj = {"resourceSpans": [{"resource": resource, "scopeSpans": [{"scope": {"name": scope}, "spans": spans}]}]}
    return json.dumps(obj, separators=(",", ":"))


def write_traces(path: Path, res: SimResult, trace_id: str, settings: dict) -> None:
    """Write ``traces.json``: scheduler step windows, one ``llm_core`` span per request, one ``llm_request``."""
    st = res.steps
    tid = _hex("trace" + trace_id, 32)
    resource = {"attributes": [_s("service.name", "vllm"), _s("molerd.synthetic_trace_id", trace_id)]}
    total = res.num_blocks
    lines: list[str] = []
    sampled = np.flatnonzero(st["sampled"])
    step_ids = st["step_id"]
    win = step_ids[sampled] // STEPS_PER_SPAN if sampled.size else np.empty(0, np.int64)
    for w in np.unique(win).tolist():
        rows = sampled[win == w]
        events = []
        for j in rows.tolist():
            start, dur = float(st["ts_start_us"][j]), float(st["duration_us"][j])
            used = int(st["kv_used_blocks"][j])
            p, d = int(st["prefill_tokens"][j]), int(st["decode_tokens"][j])
            attrs = [
                _i("step.id", step_ids[j]), _i("step.ts_start_ns", _mono_ns(start)), _i("step.ts_end_ns", _mono_ns(start + dur)),
                _d("step.duration_us", dur), _i("queue.running_depth", st["running_depth"][j]),
                _i("queue.waiting_depth", st["waiting_depth"][j]), _i("batch.num_prefill_reqs", st["num_prefill_reqs"][j]),
                _i("batch.num_decode_reqs", st["num_decode_reqs"][j]), _i("batch.scheduled_tokens", p + d),
                _i("batch.prefill_tokens", p), _i("batch.decode_tokens", d), _i("batch.num_finished", st["num_finished"][j]),
                _i("batch.num_preempted", st["num_preempted"][j]), _d("kv.usage_gpu_ratio", used / total),
                _i("kv.blocks_total_gpu", total), _i("kv.blocks_free_gpu", total - used),
                _d("kv.fragmentation_ratio", min(1.0, max(0.0, float(st["fragmentation"][j])))),
                _i("kv.num_evictions", st["num_evictions"][j]), _d("kv.offload_transfer_us", st["offload_us"][j]),
            ]
            events.append({"timeUnixNano": _epoch_ns(start + dur), "name": "step.BATCH_SUMMARY", "attributes": attrs})
        t0 = float(st["ts_start_us"][rows[0]])
        t1 = float(st["ts_start_us"][rows[-1]] + st["duration_us"][rows[-1]])
        span = {"traceId": tid, "spanId": _hex(f"{trace_id}/steps/{w}", 16), "name": f"scheduler_steps_{w}", "kind": 1,
                "startTimeUnixNano": _epoch_ns(t0), "endTimeUnixNano": _epoch_ns(t1), "attributes": [], "events": events}
        lines.append(_line("vllm.scheduler.step", [span], resource))

    rq = res.req
    n = rq["prompt"].size
    api_ids, eng_ids = request_ids(trace_id, n)
    core_spans, api_spans = [], []
    for r in range(n):
        P, O = int(rq["prompt"][r]), int(rq["output"][r])
        evs = []
        for name, t, step, extra, comp, outd, npre in res.events[r]:
            phase = {"QUEUED": "WAITING", "SCHEDULED": "PREFILL", "FIRST_TOKEN": "DECODE", "PREEMPTED": "WAITING",
                     "FINISHED": "FINISHED"}[name]
            attrs = [
                _d("ts.monotonic", MONO0_S + t / 1e6), _i("ts.monotonic_ns", _mono_ns(t)), _i("scheduler.step", step),
                _s("phase", phase), _i("prefill.done_tokens", min(comp, P)), _i("prefill.total_tokens", P),
                _i("decode.done_tokens", outd), _i("decode.max_tokens", O), _i("num_preemptions", npre),
            ]
            for k, v in (extra or {}).items():
                attrs.append(_s(k, v))
            evs.append({"timeUnixNano": _epoch_ns(t), "name": f"journey.{name}", "attributes": attrs})
        t_end = rq["finished"][r] if not np.isnan(rq["finished"][r]) else res.events[r][-1][1]
        core_spans.append({"traceId": _hex("req" + eng_ids[r], 32), "spanId": _hex(eng_ids[r], 16), "name": "llm_core",
                           "kind": 1, "startTimeUnixNano": _epoch_ns(rq["queued"][r]), "endTimeUnixNano": _epoch_ns(t_end),
                           "attributes": [_s("gen_ai.request.id", eng_ids[r])], "events": evs})
        arrived = float(rq["arrived"][r])
        aevs = [{"timeUnixNano": _epoch_ns(arrived), "name": "api.ARRIVED", "attributes": [_d("event.ts.monotonic", MONO0_S + arrived / 1e6)]}]
        if rq["status"][r] == "aborted":
            ta = float(rq["finished"][r])
            aevs.append({"timeUnixNano": _epoch_ns(ta), "name": "api.ABORTED", "attributes": [_d("event.ts.monotonic", MONO0_S + ta / 1e6)]})
        elif not np.isnan(rq["finished"][r]):
            td = float(rq["finished"][r]) + settings.get("api_departure_us", 300.0)
            aevs.append({"timeUnixNano": _epoch_ns(td), "name": "api.DEPARTED", "attributes": [_d("event.ts.monotonic", MONO0_S + td / 1e6)]})
        api_spans.append({"traceId": _hex("req" + eng_ids[r], 32), "spanId": _hex("api" + api_ids[r], 16), "name": "llm_request",
                          "kind": 2, "startTimeUnixNano": aevs[0]["timeUnixNano"], "endTimeUnixNano": aevs[-1]["timeUnixNano"],
                          "attributes": [_s("gen_ai.request.id", api_ids[r]), _i("gen_ai.usage.prompt_tokens", P)], "events": aevs})
    for i in range(0, n, SPANS_PER_LINE):
        lines.append(_line("vllm.scheduler", core_spans[i:i + SPANS_PER_LINE], resource))
        lines.append(_line("vllm.api", api_spans[i:i + SPANS_PER_LINE], resource))
    Path(path).write_text("\n".join(lines) + "\n")
