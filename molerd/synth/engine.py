"""Discrete-event model of the vLLM V1 scheduler with a kernel-table step-time oracle.

One engine step: running requests first (in admission order; a decode takes 1 token, an unfinished prefill
the rest of its prompt), then waiting requests FCFS while the ``max_num_batched_tokens`` budget, the
``max_num_seqs`` limit and free KV blocks allow (chunked prefill). KV lives in 16-token blocks; when a running
request cannot get a block, the most recently admitted running request is preempted (blocks freed,
recomputed later; with ``cpu_offload`` its KV is copied to host memory and back instead). Full prompt blocks
with a shared key are prefix-cached; freed cached blocks stay reusable until evicted (LRU) by allocations.

Speed: runs of pure-decode steps whose batch cannot change (no arrival due, waiting queue empty or blocked,
no finish, enough free blocks) are simulated in one vectorised segment; only steps where the batch changes
run per-request Python.

Where the model departs from vLLM: freed never-cached blocks are reused before evicting cached ones (vLLM
uses one LRU queue); only prompt blocks are cached (not generated ones); CPU offload covers preempted
requests only (not evicted prefix blocks); the API server shares the engine's monotonic clock.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np

from molerd.synth.oracle import StepOracle
from molerd.synth.workloads import Workload

STEP_COLUMNS = (
    "step_id", "sched_us", "ts_start_us", "duration_us", "oracle_us", "cpu_us", "prefill_tokens", "decode_tokens",
    "num_prefill_reqs", "num_decode_reqs", "running_depth", "waiting_depth", "kv_used_blocks", "num_preempted",
    "num_finished", "sum_decode_context", "sum_prefill_attention", "max_context", "prefix_hit_tokens",
    "fragmentation", "num_evictions", "offload_us", "sampled",
)


@dataclass(frozen=True)
class EngineConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    num_gpu_blocks: int = 10000
    block_size: int = 16
    enable_prefix_caching: bool = True
    cpu_offload: bool = False
    pcie_bytes_per_us: float = 64e3  # host<->device copy bandwidth (bytes/µs)
    kv_bytes_per_token_gpu: float = 131072.0  # per GPU (already divided by TP)
    sched_base_us: float = 300.0  # CPU: scheduler + input preparation + output processing per step
    sched_per_req_us: float = 4.0  # CPU per scheduled request
    sched_per_new_req_us: float = 40.0  # CPU per newly admitted/resumed request (block tables, sampling params)
    api_base_us: float = 800.0  # API server: request parsing before the engine queues it
    api_per_prompt_token_us: float = 0.05  # tokenization
    api_departure_us: float = 300.0  # detokenize + response after the engine finishes
    noise_sigma: float = 0.03  # multiplicative lognormal noise on the GPU time
    sample_rate: float = 0.2  # fraction of steps that emit BATCH_SUMMARY with a duration
    abort_after_s: float = 0.0  # clients abort requests still waiting after this long (0: never)
    preemption_window_us: float = 5e6  # "recent preemptions" window at queue time
    segment_cap: int = 4096
    vectorise: bool = True  # False: every step through the per-request path (reference for tests)


@dataclass
class SimResult:
    steps: dict  # column -> ndarray
    req: dict  # per-request arrays
    events: list  # per-request list of (name, t_us, step_id, attrs)
    num_blocks: int
    stats: dict = field(default_factory=dict)


class Engine:
    """Simulate one run. ``run()`` returns a :class:`SimResult`; the object is single-use."""

    def __init__(self, cfg: EngineConfig, oracle: StepOracle, wl: Workload, rng: np.random.Generator):
        self.cfg, self.oracle, self.wl, self.rng = cfg, oracle, wl, rng
        n = len(wl)
        self.P = wl.prompt.astype(np.int64)
        self.O = wl.output.astype(np.int64)
        self.comp = np.zeros(n, np.int64)  # computed tokens
        self.outd = np.zeros(n, np.int64)  # output tokens produced
        self.nb = np.zeros(n, np.int64)  # blocks held
        self.npre = np.zeros(n, np.int64)
        self.saved = np.zeros(n, np.int64)  # tokens offloaded to CPU (cpu_offload)
        self.hit = np.zeros(n, np.int64)  # prefix-cache hit tokens (first schedule)
        api = cfg.api_base_us + cfg.api_per_prompt_token_us * self.P
        self.arrived = wl.arrival_us.astype(np.float64)
        self.queued = self.arrived + api
        order = np.argsort(self.queued, kind="stable")
        self.qorder = order
        nan = np.full(n, np.nan)
        self.sched_first, self.first_tok, self.finish = nan.copy(), nan.copy(), nan.copy()
        self.status = np.array(["unknown"] * n, dtype=object)
        self.q_wait, self.q_run, self.q_kv, self.q_pre = nan.copy(), nan.copy(), nan.copy(), nan.copy()
        self.events = [[] for _ in range(n)]
        self.refs: list[list] = [[] for _ in range(n)]
        # plain int lists: dict lookups with Python ints are several times faster than with numpy scalars
        self.keys = [k.tolist() for k in wl.keys] if cfg.enable_prefix_caching else [[] for _ in range(n)]
        self.running: list[int] = []
        self.waiting: deque[int] = deque()
        self.deadlines: deque = deque()
        self.total = int(cfg.num_gpu_blocks)
        self.free_plain = self.total
        self.evictable: OrderedDict = OrderedDict()
        self.cached: dict = {}
        self._cache_version = 0  # bumped on every prefix-cache change; memoises _lookup
        self._lookup_memo: dict = {}
        self.pre_times: list[float] = []
        self.step_id = 0
        self.now = 0.0
        self.cols = {c: [] for c in STEP_COLUMNS}
        self.chunks: list[dict] = []
        self._nbuf: list[float] = []  # pre-drawn standard normals / uniforms for the per-step path
        self._ubuf: list[float] = []
        self._decode_only = False  # hint: after the last step no running request had prefill left
        self.stats = {"general_steps": 0, "segment_steps": 0, "segments": 0}

    # ---------------------------------------------------------------- KV pool
    def _free_total(self) -> int:
        return self.free_plain + len(self.evictable)

    def _alloc(self, n: int) -> int:
        """Take ``n`` free blocks (plain first, then evict LRU cached); returns evictions."""
        take = min(n, self.free_plain)
        self.free_plain -= take
        ev = n - take
        if ev:
            self._cache_version += 1
        for _ in range(ev):
            k, _ = self.evictable.popitem(last=False)
            del self.cached[k]
        return ev

    def _release(self, r: int) -> None:
        if self.refs[r]:
            self._cache_version += 1
        for k in self.refs[r]:
            c = self.cached[k] - 1
            self.cached[k] = c
            if c == 0:
                self.evictable[k] = None
        self.free_plain += int(self.nb[r]) - len(self.refs[r])
        self.refs[r] = []
        self.nb[r] = 0

    def _lookup(self, r: int) -> tuple[int, int]:
        """(hit blocks, how many of them sit in the evictable pool): leading prompt blocks of ``r`` already in
        the prefix cache, leaving at least one token to compute."""
        ks = self.keys[r]
        if not ks:
            return 0, 0
        memo = self._lookup_memo.get(r)
        if memo is not None and memo[0] == self._cache_version and memo[1] == self.outd[r]:
            return memo[2]
        limit = (int(self.P[r] + self.outd[r]) - 1) // 16
        h = pool = 0
        cached = self.cached
        for k in ks[:limit]:
            c = cached.get(k)
            if c is None:
                break
            h += 1
            if c == 0:
                pool += 1
        self._lookup_memo[r] = (self._cache_version, int(self.outd[r]), (h, pool))
        return h, pool

    def _insert_keys(self, r: int, c0: int, c1: int) -> None:
        """Register prompt blocks completed between computed tokens c0 and c1 in the prefix cache."""
        ks = self.keys[r]
        b0, b1 = c0 // 16, min(c1 // 16, len(ks))
        for b in range(max(b0, len(self.refs[r])), b1):
            k = ks[b]
            if k not in self.cached and b == len(self.refs[r]):
                self._cache_version += 1
                self.cached[k] = 1
                self.refs[r].append(k)

    # ---------------------------------------------------------------- helpers
    def _ev(self, r: int, name: str, t: float, attrs: dict | None = None) -> None:
        self.events[r].append((name, t, self.step_id, attrs, int(self.comp[r]), int(self.outd[r]), int(self.npre[r])))

    def _admit_arrivals(self, upto: float) -> None:
        q = self.queued
        while self.next_arr < self.qorder.size and q[self.qorder[self.next_arr]] <= upto:
            r = int(self.qorder[self.next_arr])
            self.next_arr += 1
            t = q[r]
            self.q_wait[r] = len(self.waiting)
            self.q_run[r] = len(self.running)
            self.q_kv[r] = (self.total - self._free_total()) / self.total
            lo = bisect.bisect_left(self.pre_times, t - self.cfg.preemption_window_us)
            self.q_pre[r] = len(self.pre_times) - lo
            self._ev(r, "QUEUED", t)
            self.waiting.append(r)
            if self.cfg.abort_after_s > 0:
                self.deadlines.append((t + self.cfg.abort_after_s * 1e6, r))

    def _aborts(self) -> None:
        while self.deadlines and self.deadlines[0][0] <= self.now:
            t, r = self.deadlines.popleft()
            if np.isnan(self.sched_first[r]) and self.status[r] == "unknown":
                self.waiting.remove(r)
                self.status[r] = "aborted"
                self.finish[r] = t
                self._ev(r, "FINISHED", t, {"finish.status": "aborted"})

    def _next_event_time(self) -> float:
        t = np.inf
        if self.next_arr < self.qorder.size:
            t = self.queued[self.qorder[self.next_arr]]
        if self.deadlines:
            t = min(t, self.deadlines[0][0])
        return t

    def _head_blocked(self, budget_left: int) -> tuple[bool, bool]:
        """(blocked, fragile): can the waiting head be admitted now; fragile = blocked only because its
        prefix-cache hits sit in the evictable pool, so an eviction could unblock it (no fast path then)."""
        if not self.waiting:
            return True, False
        if len(self.running) >= self.cfg.max_num_seqs or budget_left <= 0:
            return True, False
        r = self.waiting[0]
        h, in_pool = (0, 0) if self.saved[r] else self._lookup(r)
        comp = int(self.saved[r]) if self.saved[r] else 16 * h
        new = min(int(self.P[r] + self.outd[r]) - comp, budget_left)
        blocked = -(-(comp + new) // 16) - h > self._free_total() - in_pool
        return blocked, blocked and in_pool > 0

    # ---------------------------------------------------------------- main loop
    def run(self) -> SimResult:
        self.next_arr = 0
        n = len(self.wl)
        done = 0
        cfg = self.cfg
        guard = 0
        while True:
            self._admit_arrivals(self.now)
            if cfg.abort_after_s > 0:
                self._aborts()
            if not self.running and not self.waiting:
                if self.next_arr >= n:
                    break
                self.now = max(self.now, self.queued[self.qorder[self.next_arr]])
                continue
            if self.running and cfg.vectorise and self._try_segment():
                continue
            progressed = self._general_step()
            if not progressed:
                guard += 1
                # nothing could be scheduled with nothing running: the head can never fit in the KV cache
                r = self.waiting.popleft()
                self.status[r] = "aborted"
                self.finish[r] = self.now
                self._ev(r, "FINISHED", self.now, {"finish.status": "aborted"})
        self._flush()
        steps = {c: np.concatenate([ch[c] for ch in self.chunks]) if self.chunks else np.empty(0) for c in STEP_COLUMNS}
        req = dict(prompt=self.P, output=self.O, out_done=self.outd, arrived=self.arrived, queued=self.queued,
                   scheduled=self.sched_first, first_token=self.first_tok, finished=self.finish, status=self.status,
                   num_preemptions=self.npre, cached=self.hit, q_wait=self.q_wait, q_run=self.q_run, q_kv=self.q_kv,
                   q_pre=self.q_pre)
        self.stats["steps"] = int(steps["step_id"].size)
        return SimResult(steps=steps, req=req, events=self.events, num_blocks=self.total, stats=self.stats)

    def _flush(self) -> None:
        if self.cols["step_id"]:
            self.chunks.append({c: np.asarray(v) for c, v in self.cols.items()})
            self.cols = {c: [] for c in STEP_COLUMNS}

    def _noisy(self, oracle: np.ndarray, floor: np.ndarray) -> np.ndarray:
        s = self.cfg.noise_sigma
        noise = np.exp(self.rng.normal(-s * s / 2, s, oracle.shape)) if s > 0 else 1.0
        return np.maximum(oracle * noise, floor)

    def _normal(self) -> float:
        if not self._nbuf:
            self._nbuf = self.rng.standard_normal(1024).tolist()[::-1]
        return self._nbuf.pop()

    def _uniform(self) -> float:
        if not self._ubuf:
            self._ubuf = self.rng.random(1024).tolist()[::-1]
        return self._ubuf.pop()

    # ---------------------------------------------------------------- fast path
    def _try_segment(self) -> bool:
        cfg = self.cfg
        if not self._decode_only:
            return False
        blocked, fragile = self._head_blocked(cfg.max_num_batched_tokens - len(self.running))
        if not blocked:
            return False
        ids = np.fromiter(self.running, np.int64, len(self.running))
        B = ids.size
        c = self.comp[ids]
        if not np.all(self.P[ids] + self.outd[ids] - c == 1) or not np.all(self.outd[ids] >= 1):
            return False
        if B > cfg.max_num_batched_tokens:
            return False
        rem = self.O[ids] - self.outd[ids]
        K = int(min(rem.min(), cfg.segment_cap))
        nb = self.nb[ids]
        first = 16 * nb - c  # the step (1-based) that needs the next block is first+1... slots c+j > 16nb
        f = first + 1
        a = np.bincount(f[f <= K], minlength=K + 1)[: K + 1].astype(np.int64)
        rows = -(-(K + 1) // 16)
        a2 = np.zeros(rows * 16, np.int64)
        a2[: K + 1] = a
        new_at = np.cumsum(a2.reshape(rows, 16), axis=0).reshape(-1)[1: K + 1]
        cum = np.cumsum(new_at)
        free0 = self._free_total()
        # a fragile block must not change under the segment: stop before the first eviction
        k_alloc = int(np.searchsorted(cum, self.free_plain if fragile else free0, side="right"))
        if k_alloc == 0:
            return False
        K = min(K, k_alloc)
        js = np.arange(1, K + 1, dtype=np.float64)
        sc0 = float(c.sum())
        sumctx = sc0 + B * js
        oracle = self.oracle.decode_step_us(B, sumctx)
        floor = self.oracle.roofline_us(np.full(K, B), sumctx, np.full(K, B))
        dur = self._noisy(oracle, floor)
        cpu = cfg.sched_base_us + cfg.sched_per_req_us * B
        sched = self.now + np.concatenate(([0.0], np.cumsum(cpu + dur)[:-1]))
        t_next = self._next_event_time()
        k_time = int(np.searchsorted(sched, t_next, side="left"))  # steps scheduled strictly before the event
        k = max(1, min(K, k_time))
        self.stats["segments"] += 1
        self.stats["segment_steps"] += k
        self._flush()
        cum_k = cum[:k]
        ev = np.diff(np.concatenate(([0], np.maximum(0, cum_k - self.free_plain))))
        used0 = self.total - free0
        held = nb.sum() + np.concatenate(([0], cum_k))[:k] + new_at[:k]
        finishing = ids[rem == k]
        chunk = {
            "step_id": self.step_id + np.arange(k), "sched_us": sched[:k], "ts_start_us": sched[:k] + cpu,
            "duration_us": dur[:k], "oracle_us": oracle[:k], "cpu_us": np.full(k, cpu),
            "prefill_tokens": np.zeros(k, np.int64), "decode_tokens": np.full(k, B), "num_prefill_reqs": np.zeros(k, np.int64),
            "num_decode_reqs": np.full(k, B), "running_depth": np.full(k, B), "waiting_depth": np.full(k, len(self.waiting)),
            "kv_used_blocks": used0 + cum_k, "num_preempted": np.zeros(k, np.int64),
            "num_finished": np.where(np.arange(k) == k - 1, finishing.size, 0),
            "sum_decode_context": sumctx[:k], "sum_prefill_attention": np.zeros(k), "max_context": c.max() + js[:k],
            "prefix_hit_tokens": np.zeros(k), "fragmentation": 1.0 - sumctx[:k] / (16.0 * held),
            "num_evictions": ev, "offload_us": np.zeros(k), "sampled": self.rng.random(k) < cfg.sample_rate,
        }
        self.chunks.append(chunk)
        total_new = int(cum_k[-1]) if k else 0
        self._alloc(total_new)
        self.comp[ids] = c + k
        self.outd[ids] += k
        self.nb[ids] = np.maximum(nb, -(-(c + k) // 16))
        end = sched[k - 1] + cpu + dur[k - 1]
        self.step_id += k
        self.now = end
        if finishing.size:
            self.step_id -= 1
            fin = set(finishing.tolist())
            for r in finishing.tolist():
                self._finish(r, end)
            self.running = [r for r in self.running if r not in fin]
            self.step_id += 1
        return True

    def _finish(self, r: int, t: float) -> None:
        self.status[r] = "stop"
        self.finish[r] = t
        self._ev(r, "FINISHED", t, {"finish.status": "stop"})
        self._release(r)

    # ---------------------------------------------------------------- general step
    def _preempting_running_pass(self, budget: int, t: float):
        """V1's running-request loop with preemption (per request; only used when blocks run out)."""
        cfg = self.cfg
        out_ids, out_new, out_c = [], [], []
        preempted, evictions, offload_bytes = 0, 0, 0.0
        i = 0
        while i < len(self.running) and budget > 0:
            r = self.running[i]
            c = int(self.comp[r])
            num_new = min(int(self.P[r] + self.outd[r]) - c, budget)
            need = -(-(c + num_new) // 16) - int(self.nb[r])
            ok = True
            while need > self._free_total():
                v = self.running.pop()
                preempted += 1
                self.npre[v] += 1
                self.pre_times.append(t)
                if cfg.cpu_offload and self.comp[v] > 0:
                    self.saved[v] = self.comp[v]
                    offload_bytes += float(self.comp[v]) * cfg.kv_bytes_per_token_gpu
                self._release(v)
                self.comp[v] = 0
                self.waiting.appendleft(v)
                self._ev(v, "PREEMPTED", t)
                if v == r:
                    ok = False
                    break
            if not ok:
                break
            if need > 0:
                evictions += self._alloc(need)
                self.nb[r] += need
            out_ids.append(r)
            out_new.append(num_new)
            out_c.append(c)
            budget -= num_new
            i += 1
        return (np.array(out_ids, np.int64), np.array(out_new, np.int64), np.array(out_c, np.int64),
                budget, preempted, evictions, offload_bytes)

    def _general_step(self) -> bool:
        cfg = self.cfg
        budget = cfg.max_num_batched_tokens
        preempted = 0
        evictions = 0
        offload_bytes = 0.0
        t = self.now
        # ---- running requests (vectorised unless a block allocation would fail)
        ids = np.fromiter(self.running, np.int64, len(self.running))
        c = self.comp[ids]
        tot_run = self.P[ids] + self.outd[ids]
        need_tok = tot_run - c
        start = np.cumsum(need_tok) - need_tok
        num_new = np.minimum(np.maximum(budget - start, 0), need_tok)
        nb_need = np.maximum(0, -(-(c + num_new) // 16) - self.nb[ids])
        tot = int(nb_need.sum())
        if tot <= self._free_total():
            sel = num_new > 0
            ids, num_new, c = ids[sel], num_new[sel], c[sel]
            evictions += self._alloc(tot)
            self.nb[ids] += nb_need[sel]
            budget -= int(num_new.sum())
        else:
            ids, num_new, c, budget, preempted, ev, offload_bytes = self._preempting_running_pass(budget, t)
            evictions += ev
        # ---- waiting requests (FCFS) when nothing was preempted
        adm_ids, adm_new, adm_c = [], [], []
        hit_tokens = 0
        if preempted == 0:
            while self.waiting and budget > 0 and len(self.running) < cfg.max_num_seqs:
                r = self.waiting[0]
                resume = self.npre[r] > 0
                if self.saved[r]:
                    comp, h, in_pool = int(self.saved[r]), 0, 0
                else:
                    h, in_pool = self._lookup(r)  # hit blocks in the evictable pool leave it when referenced
                    comp = 16 * h
                nn = min(int(self.P[r] + self.outd[r]) - comp, budget)
                need = -(-(comp + nn) // 16) - h
                if need > self._free_total() - in_pool:
                    break
                self.waiting.popleft()
                if h:
                    self._cache_version += 1
                for k in self.keys[r][:h]:
                    cnt = self.cached[k]
                    if cnt == 0:
                        del self.evictable[k]
                    self.cached[k] = cnt + 1
                    self.refs[r].append(k)
                evictions += self._alloc(need)
                self.nb[r] = need + h
                if self.saved[r]:
                    offload_bytes += float(self.saved[r]) * cfg.kv_bytes_per_token_gpu
                    self.saved[r] = 0
                self.comp[r] = comp
                if not resume:
                    self.hit[r] = comp
                    self.sched_first[r] = t
                hit_tokens += 16 * h
                self._ev(r, "SCHEDULED", t, {"schedule.kind": "RESUME" if resume else "FIRST"})
                self.running.append(r)
                adm_ids.append(r)
                adm_new.append(nn)
                adm_c.append(comp)
                budget -= nn
        if adm_ids:
            ids = np.concatenate((ids, np.array(adm_ids, np.int64)))
            num_new = np.concatenate((num_new, np.array(adm_new, np.int64)))
            c = np.concatenate((c, np.array(adm_c, np.int64)))
        if ids.size == 0:
            return preempted > 0
        tot_tok = self.P[ids] + self.outd[ids]
        c1 = c + num_new
        is_dec = (self.outd[ids] >= 1) & (num_new == 1) & (c == tot_tok - 1)
        is_dec[len(ids) - len(adm_ids):] = False
        pref = ~is_dec
        pre_chunks = num_new[pref].astype(np.float64)
        pre_prior = c[pref].astype(np.float64)
        nd = int(is_dec.sum())
        sum_dec = float(c[is_dec].sum() + nd)
        complete = c1 == tot_tok
        n_samp = int(complete.sum())
        ptok = int(pre_chunks.sum())
        oracle = self.oracle.step_us(pre_chunks, pre_prior, nd, sum_dec, n_samp)
        offload_us = offload_bytes / cfg.pcie_bytes_per_us
        oracle += offload_us
        floor = self.oracle.roofline_scalar(ptok + nd, sum_dec, n_samp)
        s = cfg.noise_sigma
        dur = max(oracle * (math.exp(-s * s / 2 + s * self._normal()) if s > 0 else 1.0), floor)
        cpu = cfg.sched_base_us + cfg.sched_per_req_us * ids.size + cfg.sched_per_new_req_us * len(adm_ids)
        start_t = t + cpu
        end = start_t + dur
        used = self.total - self._free_total()
        held = int(self.nb[ids].sum())
        slots = int(c1.sum())
        # ---- apply
        self.comp[ids] = c1
        for j in np.flatnonzero(pref).tolist():
            r = int(ids[j])
            if self.keys[r]:
                self._insert_keys(r, int(c[j]), int(c1[j]))
        done_ids = ids[complete]
        self.outd[done_ids] += 1
        for r in done_ids[self.outd[done_ids] == 1].tolist():
            self.first_tok[r] = end
            self._ev(r, "FIRST_TOKEN", end)
        fin = done_ids[self.outd[done_ids] >= self.O[done_ids]].tolist()
        for r in fin:
            self._finish(r, end)
        if fin:
            fs = set(fin)
            self.running = [r for r in self.running if r not in fs]
        n_live = ids.size - len(fin)
        self._decode_only = n_samp == ids.size and len(self.running) == n_live
        row = (self.step_id, t, start_t, dur, oracle, cpu, ptok, nd, int(pref.sum()), nd, len(self.running) + len(fin),
               len(self.waiting), used, preempted, len(fin), sum_dec,
               float(np.sum(pre_chunks * (pre_prior + pre_chunks / 2))), float(c1.max()), float(hit_tokens),
               1.0 - slots / (16.0 * held) if held else 0.0, evictions, offload_us,
               self._uniform() < cfg.sample_rate)
        for cname, v in zip(STEP_COLUMNS, row):
            self.cols[cname].append(v)
        self.step_id += 1
        self.now = end
        self.stats["general_steps"] += 1
        return True
