"""Instrumented vLLM OTEL traces (``traces.json``, OTLP JSON lines) -> canonical ``steps`` and ``requests``.

Format read (see the project's vllm-traces reference). One OTLP export object per line. Attribute values are
OTLP-encoded (``intValue`` is a string). Three scopes are used:

* ``vllm.scheduler.step``: ``step.BATCH_SUMMARY`` events become step rows (only steps with a summary become
  rows); optional ``step.REQUEST_SNAPSHOT`` events give exact per-request scheduled tokens of a step.
* ``vllm.scheduler`` / span ``llm_core`` (attr ``gen_ai.request.id``): journey events QUEUED, SCHEDULED
  (``schedule.kind`` FIRST or RESUME), FIRST_TOKEN, PREEMPTED, FINISHED (``finish.status``).
* ``vllm.api`` / span ``llm_request``: ``api.ARRIVED``, ``api.DEPARTED``, ``api.ABORTED``. The API request id is
  the journey id without its ``-0-<hash>`` suffix.

Semantics assumed when rebuilding batch membership from journey events (what a writer must follow):

* ``scheduler.step`` of SCHEDULED = the step that computes the request's first (re)scheduled chunk; its
  ``prefill.done_tokens`` = tokens already computed before that chunk, i.e. prefix-cache hits (the computed
  count is reset on preemption, so on RESUME it is again the cache hit).
* FIRST_TOKEN at step s = the step that computed the last prompt chunk (prefill spans SCHEDULED..FIRST_TOKEN,
  inclusive). Decode steps follow, one token each; the first decode step's context is ``prompt + 1``.
* FINISHED at step s (status stop/length/finished) = last decode step, inclusive. An aborted FINISHED and a
  PREEMPTED at step s mean the request is not in step s's batch.
* After PREEMPTED (with ``decode.done_tokens`` = d outputs), SCHEDULED(RESUME) recomputes ``prompt + d`` tokens
  as prefill chunks (counted as prefill tokens/requests), then decode resumes with context ``prompt + d + 1``.
* Each step, decodes take their one token first; the rest of ``max_num_batched_tokens`` goes to prefill
  chunks in first-come order (earlier start step first). A prefill known to end at a FIRST_TOKEN step takes
  all its remaining tokens there.

A step's rebuilt membership is trusted only if it reproduces the summary's ``num_decode_reqs``,
``num_prefill_reqs`` and ``prefill_tokens``; otherwise (e.g. requests that started before the trace) the
reconstructed columns are NaN. A ``step.REQUEST_SNAPSHOT`` for a step overrides the reconstruction: decode
context = ``num_computed_tokens + scheduled_tokens_this_step``; prefill chunk = scheduled tokens with prior
context ``num_computed_tokens`` (``num_computed_tokens`` = state before the step).

Clocks: step and journey times are engine monotonic (``step.ts_start_ns``, ``ts.monotonic_ns`` or
``ts.monotonic``). API times (``event.ts.monotonic``) are on the API process clock. Both processes stamp
``timeUnixNano`` from the host wall clock, so each clock's offset to the wall clock is the median of
``timeUnixNano - monotonic`` over its events, and arrival (engine µs) = api_monotonic + api_offset −
engine_offset. Without wall-clock stamps on both sides, the offset is chosen so the smallest arrival→queued
gap over matched requests is zero (a lower bound on API overhead; documented on the result's ``attrs``).

The file is streamed line by line into compact typed arrays (``array.array``), never per-event dicts.
"""

from __future__ import annotations

import heapq
import logging
import re
from array import array
from pathlib import Path

import numpy as np
import pandas as pd

from molerd.ingest._common import (
    IngestError,
    IngestResult,
    add_scope,
    join_engine_state,
    json_values,
    load_settings,
    quarantine_frame,
    scope_from_settings,
    step_columns,
)

try:  # orjson is ~3x faster; the stdlib parser gives identical values
    import orjson as _json

    _loads = _json.loads
    _DecodeError: tuple = (_json.JSONDecodeError,)
except ImportError:  # pragma: no cover
    import json as _json

    _loads = _json.loads
    _DecodeError = (_json.JSONDecodeError,)

log = logging.getLogger(__name__)

NAN = float("nan")
QUEUED, SCHEDULED, FIRST_TOKEN, PREEMPTED, FINISHED = range(5)
_JOURNEY = {"journey.QUEUED": QUEUED, "journey.SCHEDULED": SCHEDULED, "journey.FIRST_TOKEN": FIRST_TOKEN,
            "journey.PREEMPTED": PREEMPTED, "journey.FINISHED": FINISHED}  # fmt: skip
ARRIVED, DEPARTED, ABORTED = range(3)
_API = {"api.ARRIVED": ARRIVED, "api.DEPARTED": DEPARTED, "api.ABORTED": ABORTED}
_STATUS = {"stop": "stop", "length": "length", "finished": "finished", "abort": "aborted", "aborted": "aborted",
           "finished_stopped": "stop", "finished_length_capped": "length", "finished_aborted": "aborted"}  # fmt: skip
_API_SUFFIX = re.compile(r"-0-[^-]+$")

# BATCH_SUMMARY attribute -> (column, expected OTLP type). Optional ones are read when present.
_SUMMARY = [
    ("step.id", "step_id", "int"),
    ("step.ts_start_ns", "ts_start_ns", "int"),
    ("step.duration_us", "step_duration_us", "float"),
    ("queue.running_depth", "running_depth", "int"),
    ("queue.waiting_depth", "waiting_depth", "int"),
    ("batch.num_prefill_reqs", "num_prefill_reqs", "int"),
    ("batch.num_decode_reqs", "num_decode_reqs", "int"),
    ("batch.prefill_tokens", "prefill_tokens", "int"),
    ("batch.decode_tokens", "decode_tokens", "int"),
    ("batch.num_finished", "num_finished", "int"),
    ("batch.num_preempted", "num_preempted", "int"),
    ("kv.usage_gpu_ratio", "kv_usage_ratio", "float"),
    ("kv.blocks_total_gpu", "kv_blocks_total_gpu", "int"),
    ("kv.blocks_free_gpu", "kv_blocks_free", "int"),
    ("kv.fragmentation_ratio", "kv_fragmentation_ratio", "float"),
    ("kv.num_evictions", "num_evictions", "float"),
    ("kv.offload_transfer_us", "offload_transfer_us", "float"),
]
_OPTIONAL_SUMMARY = {"kv_fragmentation_ratio", "num_evictions", "offload_transfer_us"}
_JOURNEY_ATTRS = [
    ("ts.monotonic_ns", "int"),
    ("ts.monotonic", "float"),
    ("scheduler.step", "int"),
    ("prefill.done_tokens", "int"),
    ("prefill.total_tokens", "int"),
    ("decode.done_tokens", "int"),
    ("num_preemptions", "int"),
]
_SNAPSHOT = [
    ("step.id", "int"),
    ("request.num_computed_tokens", "int"),
    ("request.scheduled_tokens_this_step", "int"),
    ("request.num_prompt_tokens", "int"),
]


class _WrongType(ValueError):
    pass


def _value(key: str, v: dict, want: str):
    """Decode one OTLP AnyValue as the expected type, or raise _WrongType naming the attribute."""
    try:  # fast path for the well-typed common case; anything unusual takes the careful path below
        if want == "int":
            return int(v["intValue"])
        if want == "float" and "doubleValue" in v:
            return float(v["doubleValue"])
        if want == "str":
            r = v["stringValue"]
            if isinstance(r, str):
                return r
    except (KeyError, TypeError, ValueError):
        pass
    return _value_checked(key, v, want)


def _value_checked(key: str, v: dict, want: str):
    if not isinstance(v, dict) or len(v) != 1:
        raise _WrongType(f"attribute {key!r}: malformed OTLP value {v!r}")
    ((kind, raw),) = v.items()
    try:
        if want == "int":
            if kind == "intValue":
                return int(raw)
            if kind == "doubleValue" and float(raw).is_integer():
                return int(float(raw))
        elif want == "float":
            if kind in ("doubleValue", "intValue"):
                return float(raw)
        elif want == "str":
            if kind == "stringValue":
                return str(raw)
        elif want == "bool" and kind == "boolValue" and isinstance(raw, bool):
            return raw
    except (TypeError, ValueError):
        pass
    raise _WrongType(f"otlp_value_type: attribute {key!r} expected {want}, got {kind}={raw!r}")


def _attrs(items) -> dict:
    return {a.get("key"): a.get("value") for a in items or () if isinstance(a, dict)}


def _get(attrs: dict, key: str, want: str, default=NAN):
    v = attrs.get(key)
    return default if v is None else _value(key, v, want)


def _raw_values(attrs: dict, extra: dict | None = None) -> str:
    vals = {k: (next(iter(v.values())) if isinstance(v, dict) and v else v) for k, v in attrs.items()}
    vals.update(extra or {})
    return json_values(vals)


class _Reader:
    """Streaming accumulator: one typed array per field, strings interned to integer ids."""

    def __init__(self, path: Path):
        self.path = path
        self.sum_cols = {col: array("d") for _, col, _ in _SUMMARY}
        self.sum_line = array("q")
        self.sum_has_opt = {c: False for c in _OPTIONAL_SUMMARY}
        self.req_ids: dict[str, int] = {}
        self.j = {k: array("d") for k in ["req", "kind", "ts_us", "unix_us", "step", "pdone", "ptotal", "ddone",
                                          "npre", "resume", "status", "seq"]}  # fmt: skip
        self.statuses: dict[str, int] = {}
        self.api_ids: dict[str, int] = {}
        self.api_prompt: dict[int, float] = {}
        self.a = {k: array("d") for k in ["req", "kind", "ts_us", "unix_us"]}
        self.snap = {k: array("d") for k in ["step", "req", "computed", "sched", "prompt", "is_decode"]}
        self.rejected: list[dict] = []
        self.bad_requests: dict[int, list[str]] = {}
        self.bad_api: dict[int, list[str]] = {}
        self.seq = 0

    # -- line-level -------------------------------------------------------------------------------------
    def feed(self, obj: dict, lineno: int) -> None:
        if not isinstance(obj, dict) or "resourceSpans" not in obj:
            raise IngestError(f"{self.path}: line {lineno}: not an OTLP export object (no 'resourceSpans' key)")
        for rs in obj.get("resourceSpans") or ():
            for ss in rs.get("scopeSpans") or ():
                scope = (ss.get("scope") or {}).get("name")
                for span in ss.get("spans") or ():
                    name = span.get("name", "")
                    if scope == "vllm.scheduler.step":
                        for ev in span.get("events") or ():
                            en = ev.get("name")
                            if en == "step.BATCH_SUMMARY":
                                self._summary(ev, lineno)
                            elif en == "step.REQUEST_SNAPSHOT":
                                self._snapshot(ev, lineno)
                    elif scope == "vllm.scheduler" and name == "llm_core":
                        self._journey(span, lineno)
                    elif scope == "vllm.api" and name == "llm_request":
                        self._api(span, lineno)

    def _summary(self, ev: dict, lineno: int) -> None:
        at = _attrs(ev.get("attributes"))
        try:
            vals = [float(_get(at, key, want)) for key, _, want in _SUMMARY]
        except _WrongType as exc:
            self.rejected.append({"source": str(self.path), "table": "steps", "row": None, "line": lineno,
                                  "failed_checks": str(exc), "values": _raw_values(at)})  # fmt: skip
            return
        for (key, col, _), v in zip(_SUMMARY, vals):
            self.sum_cols[col].append(v)
            if col in _OPTIONAL_SUMMARY and key in at:
                self.sum_has_opt[col] = True
        self.sum_line.append(lineno)

    def _snapshot(self, ev: dict, lineno: int) -> None:
        at = _attrs(ev.get("attributes"))
        rid_v = at.get("request.id")
        try:
            rid = _value("request.id", rid_v, "str") if rid_v is not None else None
            step, computed, sched, prompt = (_get(at, k, w) for k, w in _SNAPSHOT)
            phase = _get(at, "request.phase", "str", default="")
        except _WrongType as exc:
            self.rejected.append({"source": str(self.path), "table": "snapshots", "row": None, "line": lineno,
                                  "failed_checks": str(exc), "values": _raw_values(at)})  # fmt: skip
            return
        if rid is None:
            return
        req = self.req_ids.setdefault(rid, len(self.req_ids))
        if phase:
            is_dec = 1.0 if phase.lower().startswith("decod") else 0.0
        else:
            is_dec = 1.0 if sched == 1 and computed >= prompt else 0.0
        for k, v in (("step", step), ("req", req), ("computed", computed), ("sched", sched),
                     ("prompt", prompt), ("is_decode", is_dec)):  # fmt: skip
            self.snap[k].append(v)

    def _journey(self, span: dict, lineno: int) -> None:
        sat = _attrs(span.get("attributes"))
        try:
            rid = _value("gen_ai.request.id", sat["gen_ai.request.id"], "str")
        except (KeyError, _WrongType) as exc:
            self.rejected.append({"source": str(self.path), "table": "requests", "row": None, "line": lineno,
                                  "failed_checks": f"journey span without a valid gen_ai.request.id ({exc})",
                                  "values": _raw_values(sat)})  # fmt: skip
            return
        req = self.req_ids.setdefault(rid, len(self.req_ids))
        for ev in span.get("events") or ():
            kind = _JOURNEY.get(ev.get("name"))
            if kind is None:
                continue
            at = _attrs(ev.get("attributes"))
            try:
                ns, mono, step, pdone, ptotal, ddone, npre = (_get(at, k, w) for k, w in _JOURNEY_ATTRS)
                resume = _get(at, "schedule.kind", "str", default="FIRST").upper() == "RESUME"
                status = _get(at, "finish.status", "str", default="") if kind == FINISHED else ""
                unix = float(ev["timeUnixNano"]) / 1e3 if ev.get("timeUnixNano") is not None else NAN
            except (_WrongType, ValueError, TypeError) as exc:
                self.bad_requests.setdefault(req, []).append(f"line {lineno} {ev.get('name')}: {exc}")
                continue
            ts = ns / 1e3 if ns == ns else mono * 1e6
            st = self.statuses.setdefault(status, len(self.statuses)) if status else -1
            self.seq += 1
            for k, v in (("req", req), ("kind", kind), ("ts_us", ts), ("unix_us", unix), ("step", step),
                         ("pdone", pdone), ("ptotal", ptotal), ("ddone", ddone), ("npre", npre),
                         ("resume", float(resume)), ("status", st), ("seq", self.seq)):  # fmt: skip
                self.j[k].append(v)

    def _api(self, span: dict, lineno: int) -> None:
        sat = _attrs(span.get("attributes"))
        try:
            rid = _value("gen_ai.request.id", sat["gen_ai.request.id"], "str")
        except (KeyError, _WrongType) as exc:
            self.rejected.append({"source": str(self.path), "table": "requests", "row": None, "line": lineno,
                                  "failed_checks": f"API span without a valid gen_ai.request.id ({exc})",
                                  "values": _raw_values(sat)})  # fmt: skip
            return
        req = self.api_ids.setdefault(rid, len(self.api_ids))
        try:
            prompt = _get(sat, "gen_ai.usage.prompt_tokens", "int")
            if prompt == prompt:
                self.api_prompt[req] = float(prompt)
        except _WrongType as exc:
            self.bad_api.setdefault(req, []).append(f"line {lineno} llm_request: {exc}")
        for ev in span.get("events") or ():
            kind = _API.get(ev.get("name"))
            if kind is None:
                continue
            at = _attrs(ev.get("attributes"))
            try:
                mono = _get(at, "event.ts.monotonic", "float")
                unix = float(ev["timeUnixNano"]) / 1e3 if ev.get("timeUnixNano") is not None else NAN
            except (_WrongType, ValueError, TypeError) as exc:
                self.bad_api.setdefault(req, []).append(f"line {lineno} {ev.get('name')}: {exc}")
                continue
            for k, v in (("req", req), ("kind", kind), ("ts_us", mono * 1e6), ("unix_us", unix)):
                self.a[k].append(v)


def _np(arr: array) -> np.ndarray:
    return np.frombuffer(arr, dtype="float64") if len(arr) else np.zeros(0)


def _stream(path: Path, reader: _Reader) -> list[dict]:
    """Feed complete lines; a malformed LAST line is reported (quarantine), a malformed earlier one is fatal."""
    pending: tuple[int, str] | None = None
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            if pending is not None:
                raise IngestError(
                    f"{path}: line {pending[0]}: malformed JSON ({pending[1]}) followed by more data; "
                    "only a truncated last line can be recovered"
                )
            try:
                obj = _loads(raw)
            except _DecodeError as exc:
                pending = (lineno, str(exc).splitlines()[0] if str(exc) else "decode error")
                continue
            reader.feed(obj, lineno)
    if pending is not None:
        return [{"source": str(path), "table": "traces", "row": None, "line": pending[0],
                 "failed_checks": f"truncated_line: line {pending[0]} is not complete JSON ({pending[1]}); "
                                  "the complete lines before it were kept",
                 "values": json_values({"line": pending[0]})}]  # fmt: skip
    return []


def ingest_otel(
    traces_path: str | Path,
    settings: dict | None = None,
    *,
    preemption_window_us: float = 1_000_000.0,
    service_window_us: float = 10_000_000.0,
) -> IngestResult:
    """Read one instrumented-vLLM ``traces.json`` into canonical tables plus its ingest-time rejects.

    Parameters
    ----------
    traces_path : path to ``traces.json``; ``engine_settings.json`` beside it supplies the scope columns.
    settings : dict, optional
        Overrides for the engine settings (vLLM or canonical key names), e.g. ``{"hardware": "H100"}``.
    preemption_window_us : float, default 1 s
        ``recent_preemptions`` counts PREEMPTED journey events in this window before a request was queued.
    service_window_us : float, default 10 s
        ``avg_service_time_us`` averages ``finished − scheduled`` of requests finishing in this window.

    Raises
    ------
    IngestError
        The file cannot be read at all (empty, not OTLP, malformed line before the last one).
    """
    path = Path(traces_path)
    if not path.exists():
        raise IngestError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise IngestError(f"{path}: empty file (expected OTLP JSON lines)")
    file_settings = load_settings(path.parent)
    scope = scope_from_settings(file_settings, path.parent.name, settings)
    reader = _Reader(path)
    rejected = _stream(path, reader)
    if not len(reader.sum_line) and not len(reader.j["req"]) and not len(reader.a["req"]) and not reader.rejected:
        if rejected:
            raise IngestError(f"{path}: no complete OTLP line ({rejected[0]['failed_checks']})")
        raise IngestError(f"{path}: no vLLM scheduler/API spans found (is this an instrumented vLLM trace?)")
    rejected = reader.rejected + rejected

    steps = _build_steps(reader, scope)
    requests, req_rejects, clock_note = _build_requests(reader, steps, preemption_window_us, service_window_us)
    rejected += req_rejects
    _reconstruct(reader, steps, requests, scope)

    if scope["kv_blocks_total"] is None and len(steps):
        totals = steps["kv_blocks_total_gpu"].dropna()
        if len(totals):
            scope["kv_blocks_total"] = int(totals.iloc[0])
    steps = steps.drop(columns=["kv_blocks_total_gpu", "ts_start_ns"])
    cols = [c for c in step_columns() if c not in ("trace_id", "hardware", "model", "tp", "max_num_seqs",
            "max_num_batched_tokens", "kv_blocks_total", "block_size", "prefix_caching", "cpu_offload")]  # fmt: skip
    cols = [c for c in cols if c not in _OPTIONAL_SUMMARY or reader.sum_has_opt[c]]
    steps = add_scope(steps[cols], scope)
    requests = add_scope(requests, scope)
    for q in rejected:
        q.setdefault("source", str(path))
    res = IngestResult(steps=steps, requests=requests, source=str(path), rejected=quarantine_frame(rejected))
    res.requests.attrs["arrival_clock"] = clock_note
    return res


def read_otel(traces_path: str | Path, settings: dict | None = None, **kwargs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stable entry point: ``(steps, requests)`` canonical (unvalidated) tables from one ``traces.json``.

    Rows the adapter could not decode are logged as warnings; use :func:`ingest_otel` to get them as a
    quarantine table. Raises :class:`IngestError` when the file cannot be read at all.
    """
    res = ingest_otel(traces_path, settings, **kwargs)
    for _, r in res.rejected.iterrows():
        log.warning("%s line %s: %s", r["source"], r["line"], r["failed_checks"])
    return res.steps, res.requests


# ---------------------------------------------------------------------------------------------------------
def _build_steps(reader: _Reader, scope: dict) -> pd.DataFrame:
    cols = {col: _np(arr).copy() for col, arr in reader.sum_cols.items()}
    df = pd.DataFrame(cols)
    df["ts_start_us"] = df["ts_start_ns"] / 1e3
    for c in ["sum_decode_context", "sum_prefill_attention", "max_context", "prefix_cache_hit_tokens"]:
        df[c] = np.nan
    return df


def _first_per_req(req: np.ndarray, mask: np.ndarray, values: np.ndarray, n: int, last: bool = False) -> np.ndarray:
    """Value of the first (or last) masked event of each request, in (request, time) order; NaN if none."""
    out = np.full(n, np.nan)
    r, v = req[mask].astype(np.int64), values[mask]
    if last:
        out[r] = v  # later assignments win
    else:
        out[r[::-1]] = v[::-1]
    return out


def _build_requests(reader: _Reader, steps: pd.DataFrame, pre_win: float, svc_win: float):
    raw = reader.j
    order = np.lexsort([_np(raw[k]) for k in ("seq", "ts_us", "req")]) if len(raw["req"]) else np.zeros(0, dtype=int)
    # The sorted columns replace the reader's unsorted ones one at a time (each is freed once copied), so the
    # sort costs one extra column, not a second copy of every journey column for the rest of the ingest.
    j = {k: _np(raw.pop(k))[order] for k in list(raw)}
    reader.j_sorted = j
    n = len(reader.req_ids)
    ids = np.array(list(reader.req_ids), dtype=object)
    req, kind = j["req"], j["kind"]
    ts = j["ts_us"]
    has_events = np.zeros(n, dtype=bool)
    has_events[req.astype(np.int64)] = True
    queued = _first_per_req(req, kind == QUEUED, ts, n)
    scheduled = _first_per_req(req, kind == SCHEDULED, ts, n)
    first_tok = _first_per_req(req, kind == FIRST_TOKEN, ts, n)
    finished = _first_per_req(req, kind == FINISHED, ts, n, last=True)
    status_code = _first_per_req(req, kind == FINISHED, j["status"], n, last=True)
    prompt = _first_per_req(req, ~np.isnan(j["ptotal"]) & (j["resume"] == 0), j["ptotal"], n)
    out_tok = np.fmax(_first_per_req(req, kind == FINISHED, j["ddone"], n, last=True),
                      _first_per_req(req, ~np.isnan(j["ddone"]), j["ddone"], n, last=True))  # fmt: skip
    cached = _first_per_req(req, (kind == SCHEDULED) & (j["resume"] == 0), j["pdone"], n)
    n_pre = np.bincount(req[kind == PREEMPTED].astype(np.int64), minlength=n).astype("float64")
    n_pre = np.fmax(n_pre, _first_per_req(req, ~np.isnan(j["npre"]), j["npre"], n, last=True))
    status_names = {v: k for k, v in reader.statuses.items()}
    status = np.array(["unknown"] * n, dtype=object)
    for code, name in status_names.items():
        status[status_code == code] = _STATUS.get(name.lower(), name.lower())

    # API side: map API ids onto journey requests; API-only requests still become rows (nothing lost).
    a = {k: _np(v) for k, v in reader.a.items()}
    api_ids = list(reader.api_ids)
    journey_api = {}
    for rid, i in reader.req_ids.items():
        journey_api.setdefault(_API_SUFFIX.sub("", rid), []).append(i)
    m = len(api_ids)
    api_arr = _first_per_req(a["req"], a["kind"] == ARRIVED, a["ts_us"], m) if m else np.zeros(0)
    api_dep = _first_per_req(a["req"], a["kind"] == DEPARTED, a["ts_us"], m, last=True) if m else np.zeros(0)
    api_abort = _first_per_req(a["req"], a["kind"] == ABORTED, a["ts_us"], m, last=True) if m else np.zeros(0)
    eng_off = np.nanmedian(j["unix_us"] - ts) if np.any(~np.isnan(j["unix_us"])) else np.nan
    api_off = np.nanmedian(a["unix_us"] - a["ts_us"]) if np.any(~np.isnan(a["unix_us"])) else np.nan
    arrived = np.full(n, np.nan)
    departed = np.full(n, np.nan)
    extra_rows = []
    api_for_req = np.full(n, -1)
    for aid, ai in reader.api_ids.items():
        targets = journey_api.get(aid, [])
        for t in targets:
            api_for_req[t] = ai
        if not targets:
            extra_rows.append(ai)
    matched = api_for_req >= 0
    raw_arr = np.where(matched, api_arr[np.maximum(api_for_req, 0)] if m else np.nan, np.nan)
    if not np.isnan(eng_off) and not np.isnan(api_off):
        shift = api_off - eng_off
        note = f"arrival: API clock mapped via timeUnixNano, shift {shift:.1f} us"
    else:
        gaps = queued - raw_arr
        shift = -np.nanmin(gaps) if np.any(~np.isnan(gaps)) else 0.0
        shift = -shift
        note = f"arrival: no wall-clock stamps; shifted {shift:.1f} us so min(queued - arrived) = 0"
    arrived = raw_arr + shift
    dep_raw = np.where(matched, np.fmax(api_dep, api_abort)[np.maximum(api_for_req, 0)] if m else np.nan, np.nan)
    departed = dep_raw + shift
    status = np.where(matched & (status == "unknown") & ~np.isnan(np.where(matched, api_abort[np.maximum(api_for_req, 0)] if m else np.nan, np.nan)), "aborted", status)  # noqa: E501
    prompt = np.where(np.isnan(prompt) & matched,
                      [reader.api_prompt.get(int(x), np.nan) for x in api_for_req], prompt)  # fmt: skip

    pre_ts = ts[kind == PREEMPTED] if len(ts) else np.zeros(0)
    state_steps = pd.DataFrame({
        "ts": steps["ts_start_us"].to_numpy(), "waiting_depth": steps["waiting_depth"].to_numpy(),
        "running_depth": steps["running_depth"].to_numpy(), "kv_usage_ratio": steps["kv_usage_ratio"].to_numpy(),
    }).dropna(subset=["ts"])  # fmt: skip
    state = join_engine_state(queued, state_steps, pre_ts, scheduled, finished, pre_win, svc_win)
    df = pd.DataFrame({
        "request_id": ids.astype(str) if n else np.array([], dtype=str),
        "arrived_us": arrived, "queued_us": queued, "scheduled_us": scheduled, "first_token_us": first_tok,
        "finished_us": finished, "departed_us": departed, "prompt_tokens": prompt, "output_tokens": out_tok,
        "cached_prompt_tokens": cached, "num_preemptions": n_pre, "status": status, **state,
    })  # fmt: skip
    df = df[has_events | matched]
    # API-only requests (never reached the engine): rows with what the API knows.
    if extra_rows:
        ex = pd.DataFrame({
            "request_id": [api_ids[i] for i in extra_rows],
            "arrived_us": [api_arr[i] + shift for i in extra_rows],
            "departed_us": [np.fmax(api_dep[i], api_abort[i]) + shift for i in extra_rows],
            "prompt_tokens": [reader.api_prompt.get(i, np.nan) for i in extra_rows],
            "output_tokens": 0.0, "num_preemptions": 0.0,
            "status": ["aborted" if not np.isnan(api_abort[i]) else "unknown" for i in extra_rows],
        })  # fmt: skip
        df = pd.concat([df, ex.reindex(columns=df.columns)], ignore_index=True)
    # Requests with an undecodable event: quarantined whole, with every reason.
    rejects = []
    bad = dict(reader.bad_requests)
    for ai, reasons in reader.bad_api.items():
        for t in journey_api.get(api_ids[ai], []):
            bad.setdefault(t, []).extend(reasons)
    if bad:
        bad_ids = {ids[i] for i in bad}
        mask = df["request_id"].isin(bad_ids)
        for i, reasons in sorted(bad.items()):
            rows = df[df["request_id"] == ids[i]]
            vals = rows.iloc[0].to_dict() if len(rows) else {"request_id": ids[i]}
            rejects.append({"table": "requests", "row": None, "line": None,
                            "failed_checks": "; ".join(reasons), "values": json_values(vals)})  # fmt: skip
        df = df[~mask]
        reader.excluded = {i for i in bad}
    else:
        reader.excluded = set()
    return df.reset_index(drop=True), rejects, note


def _reconstruct(reader: _Reader, steps: pd.DataFrame, requests: pd.DataFrame, scope: dict) -> None:
    """Rebuild per-step batch membership from journey events (see module docstring) and fill the context
    columns of ``steps`` in place; NaN where the rebuild disagrees with the step's own summary counts."""
    j = reader.j_sorted
    if not len(steps):
        return
    sum_steps = steps["step_id"].to_numpy()
    budget = scope.get("max_num_batched_tokens")
    jsteps = j["step"][~np.isnan(j["step"])]
    valid_sum = sum_steps[~np.isnan(sum_steps)]
    if not len(valid_sum):
        return
    s_min = int(min(valid_sum.min(), jsteps.min() if len(jsteps) else np.inf))
    s_max = int(max(valid_sum.max(), jsteps.max() if len(jsteps) else -np.inf))
    S = s_max - s_min + 2
    # A corrupt step id (e.g. 1.6e10 or 2**63) would make the step-by-step replay allocate and loop over an
    # absurd span (a crash or a hang): leave membership unknown (context columns stay NaN) and say why.
    if S > 4 * (len(valid_sum) + len(jsteps)) + 100_000:
        msg = (f"step ids span {s_min}..{s_max} ({S} steps) for {len(valid_sum)} summaries: batch membership not "
               "rebuilt (context columns left NaN)")
        log.warning("%s: %s", reader.path, msg)
        steps.attrs.update(membership_rebuilt=0, membership_unknown=int(len(steps)), membership_note=msg)
        return
    rec = {k: np.zeros(S) for k in ["dcnt", "dctx", "pcnt", "ptok", "pattn", "maxc", "hit"]}
    known = np.zeros(S, dtype=bool)
    if len(jsteps) and budget is not None and not isinstance(budget, str):
        known[:] = True
        _simulate(reader, j, s_min, s_max, float(budget), rec)
    # Snapshots override the rebuilt membership for the steps they cover.
    snap = {k: _np(v) for k, v in reader.snap.items()}
    snap_steps = set()
    if len(snap["step"]):
        sdf = pd.DataFrame(snap).dropna(subset=["step", "sched", "computed"])
        sdf = sdf[(sdf["step"] >= s_min) & (sdf["step"] <= s_max)]
        sdf["ctx"] = sdf["computed"] + sdf["sched"]
        sdf["attn"] = np.where(sdf["is_decode"] == 1, 0.0, sdf["sched"] * (sdf["computed"] + sdf["sched"] / 2))
        sdf["dctx"] = np.where(sdf["is_decode"] == 1, sdf["ctx"], 0.0)
        g = sdf.groupby("step")
        agg = pd.DataFrame({"dctx": g["dctx"].sum(), "attn": g["attn"].sum(), "maxc": g["ctx"].max()})
        pos = agg.index.to_numpy().astype(np.int64) - s_min
        rec["dctx"][pos] = agg["dctx"].to_numpy()
        rec["pattn"][pos] = agg["attn"].to_numpy()
        rec["maxc"][pos] = agg["maxc"].to_numpy()
        snap_steps = set(agg.index.astype(np.int64).tolist())
    ok = ~np.isnan(sum_steps)
    pos = np.where(ok, sum_steps, s_min).astype(np.int64) - s_min
    agree = (
        known[pos]
        & (rec["dcnt"][pos] == steps["num_decode_reqs"].to_numpy())
        & (rec["pcnt"][pos] == steps["num_prefill_reqs"].to_numpy())
        & (rec["ptok"][pos] == steps["prefill_tokens"].to_numpy())
    )
    has_snap = np.array([int(s) in snap_steps for s in np.where(ok, sum_steps, -1)], dtype=bool)
    use = ok & (agree | has_snap)
    for col, key in [("sum_decode_context", "dctx"), ("sum_prefill_attention", "pattn"), ("max_context", "maxc"),
                     ("prefix_cache_hit_tokens", "hit")]:  # fmt: skip
        steps[col] = np.where(use, rec[key][pos], np.nan)
    steps.attrs["membership_rebuilt"] = int(use.sum())
    steps.attrs["membership_unknown"] = int((~use).sum())


def _simulate(reader: _Reader, j: dict, s_min: int, s_max: int, budget: float, rec: dict) -> None:
    """Step-by-step replay of the journey: prefill jobs share the token budget left after decodes."""
    jobs = []  # (start, order, req, prior, remaining, forced_end, cut, decode_c0, decode_b)
    req = j["req"].astype(np.int64)
    bounds = np.flatnonzero(np.diff(req)) + 1 if len(req) else np.zeros(0, dtype=int)
    starts = np.concatenate([[0], bounds]) if len(req) else np.zeros(0, dtype=int)
    ends = np.concatenate([bounds, [len(req)]]) if len(req) else np.zeros(0, dtype=int)
    kind, step, pdone, ptotal, ddone, resume, ts, status = (
        j["kind"], j["step"], j["pdone"], j["ptotal"], j["ddone"], j["resume"], j["ts_us"], j["status"])
    aborted_codes = {c for name, c in reader.statuses.items() if _STATUS.get(name.lower()) == "aborted"}
    for a, b in zip(starts, ends):
        r = int(req[a])
        if r in reader.excluded:
            continue
        P = np.nan
        for i in range(a, b):
            if not np.isnan(ptotal[i]) and resume[i] == 0:
                P = ptotal[i]
                break
        if np.isnan(P):
            continue
        i = a
        while i < b:
            if kind[i] == SCHEDULED and not np.isnan(step[i]):
                s0 = int(step[i])
                d = 0.0 if resume[i] == 0 or np.isnan(ddone[i]) else ddone[i]
                target = P + d
                prior = 0.0 if np.isnan(pdone[i]) else min(pdone[i], target)
                forced, cut, dec_b = None, s_max + 1, s_max
                k = i + 1
                while k < b and kind[k] not in (SCHEDULED,):
                    if kind[k] == FIRST_TOKEN and forced is None and not np.isnan(step[k]):
                        forced = int(step[k])
                    elif kind[k] in (PREEMPTED, FINISHED) and not np.isnan(step[k]):
                        excl = kind[k] == PREEMPTED or status[k] in aborted_codes
                        end = int(step[k]) - (1 if excl else 0)
                        dec_b = end
                        cut = end + 1
                        break
                    k += 1
                jobs.append((s0, ts[i], r, prior, target - prior, forced, cut, target + 1, dec_b))
                i = k
            else:
                i += 1
    jobs.sort(key=lambda x: (x[0], x[1], x[2]))
    cdiff = np.zeros(s_max - s_min + 3)
    kdiff = np.zeros(s_max - s_min + 3)
    heap: list = []  # (-(c0 - a), b) for decode segments
    pending_heap: list = []  # segments not yet started: (a, -(c0-a), b)
    active: list = []
    ji = 0
    cnt = 0.0
    kacc = 0.0
    for s in range(s_min, s_max + 1):
        p = s - s_min
        cnt += cdiff[p]
        kacc += kdiff[p]
        while pending_heap and pending_heap[0][0] <= s:
            _, negk, bb = heapq.heappop(pending_heap)
            heapq.heappush(heap, (negk, bb))
        while ji < len(jobs) and jobs[ji][0] <= s:
            jb = jobs[ji]
            active.append([jb[2], jb[3], jb[4], jb[5], jb[6], jb[7], jb[8]])
            rec["hit"][p] += jb[3]
            ji += 1
        rec["dcnt"][p] = cnt
        rec["dctx"][p] = kacc + s * cnt
        while heap and heap[0][1] < s:
            heapq.heappop(heap)
        maxc = (-heap[0][0] + s) if heap else 0.0
        left = budget - cnt
        still = []
        for job in active:
            r, prior, rem, forced, cut, c0, db = job
            if s >= cut:
                continue
            chunk = rem if forced == s else min(rem, max(left, 0.0))
            if chunk > 0:
                left -= chunk
                rec["pcnt"][p] += 1
                rec["ptok"][p] += chunk
                rec["pattn"][p] += chunk * (prior + chunk / 2)
                maxc = max(maxc, prior + chunk)
                job[1] = prior + chunk
                job[2] = rem - chunk
            if job[2] <= 0 and (forced is None or forced <= s):
                a0, b0 = s + 1, db
                if b0 >= a0:
                    cdiff[a0 - s_min] += 1
                    cdiff[b0 + 1 - s_min] -= 1
                    kdiff[a0 - s_min] += c0 - a0
                    kdiff[b0 + 1 - s_min] -= c0 - a0
                    heapq.heappush(pending_heap, (a0, -(c0 - a0), b0))
                continue
            still.append(job)
        active = still
        rec["maxc"][p] = maxc
