"""Discrete-event model of the vLLM V1 scheduler with a kernel-table step-time oracle.

One engine step: running requests first (in admission order; a decode takes 1 token, an unfinished prefill
the rest of its prompt), then waiting requests FCFS while the ``max_num_batched_tokens`` budget, the
``max_num_seqs`` limit and free KV blocks allow (chunked prefill). KV lives in 16-token blocks; when a running
request cannot get a block, the most recently admitted running request is preempted (blocks freed,
recomputed later; with ``cpu_offload`` its KV is copied to host memory and back instead). Full prompt blocks
with a shared key are prefix-cached; freed cached blocks stay reusable until evicted (LRU) by allocations.

Speed: runs of pure-decode steps whose batch cannot change (no arrival due, waiting queue empty or blocked,
no finish, enough free blocks) are simulated as one segment with no per-request work per step; only steps
where the batch changes run per-request Python. Both paths use scalar Python arithmetic on plain lists (the
batches are small, and numpy's per-call overhead outweighs its vector speed there).

Where the model departs from vLLM: freed never-cached blocks are reused before evicting cached ones (vLLM
uses one LRU queue); only prompt blocks are cached (not generated ones); CPU offload covers preempted
requests only (not evicted prefix blocks); the API server shares the engine's monotonic clock.
"""

from __future__ import annotations

import bisect
import itertools
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
    """Simulate one run. ``run()`` returns a :class:`SimResult`; the object is single-use.

    Per-request counters are plain Python lists: a step touches a few dozen requests, and list indexing and
    arithmetic on Python ints cost a fraction of numpy scalar indexing. Step rows are tuples, turned into
    column arrays once at the end.
    """

    def __init__(self, cfg: EngineConfig, oracle: StepOracle, wl: Workload, rng: np.random.Generator):
        self.cfg, self.oracle, self.wl, self.rng = cfg, oracle, wl, rng
        n = len(wl)
        prompt = wl.prompt.astype(np.int64)
        self._prompt, self._output = prompt, wl.output.astype(np.int64)
        self.P, self.O = prompt.tolist(), self._output.tolist()
        self.comp = [0] * n  # computed tokens
        self.outd = [0] * n  # output tokens produced
        self.nb = [0] * n  # blocks held
        self.npre = [0] * n
        self.saved = [0] * n  # tokens offloaded to CPU (cpu_offload)
        self.hit = [0] * n  # prefix-cache hit tokens (first schedule)
        api = cfg.api_base_us + cfg.api_per_prompt_token_us * prompt
        self.arrived = wl.arrival_us.astype(np.float64)
        self.queued = self.arrived + api
        order = np.argsort(self.queued, kind="stable")
        self._arr_req, self._arr_t = order.tolist(), self.queued[order].tolist()  # engine arrivals, in queue order
        self.next_arr = 0
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
        self._rows: list[tuple] = []  # one STEP_COLUMNS tuple per step, in step order
        self._nbuf: list[float] = []  # pre-drawn standard normals / uniforms for the per-step path
        self._ubuf: list[float] = []
        self._decode_only = False  # hint: after the last step no running request had prefill left
        self.stats = {"general_steps": 0, "segment_steps": 0, "segments": 0}

    # ---------------------------------------------------------------- KV pool
    def _free_total(self) -> int:
        return self.free_plain + len(self.evictable)

    def _alloc(self, n: int) -> int:
        """Take ``n`` free blocks (plain first, then evict LRU cached); returns evictions."""
        if n <= self.free_plain:
            self.free_plain -= n
            return 0
        ev = n - self.free_plain
        self.free_plain = 0
        self._cache_version += 1
        popitem, cached = self.evictable.popitem, self.cached
        for _ in range(ev):
            k, _ = popitem(last=False)
            del cached[k]
        return ev

    def _release(self, r: int) -> None:
        refs = self.refs[r]
        if refs:
            self._cache_version += 1
            cached, evictable = self.cached, self.evictable
            for k in refs:
                c = cached[k] - 1
                cached[k] = c
                if c == 0:
                    evictable[k] = None
        self.free_plain += self.nb[r] - len(refs)
        self.refs[r] = []
        self.nb[r] = 0

    def _lookup(self, r: int) -> tuple[int, int]:
        """(hit blocks, how many of them sit in the evictable pool): leading prompt blocks of ``r`` already in
        the prefix cache, leaving at least one token to compute."""
        ks = self.keys[r]
        if not ks:
            return 0, 0
        outd = self.outd[r]
        memo = self._lookup_memo.get(r)
        if memo is not None and memo[0] == self._cache_version and memo[1] == outd:
            return memo[2]
        limit = min((self.P[r] + outd - 1) // 16, len(ks))
        get = self.cached.get
        h = pool = 0
        while h < limit:  # scan in slices at C speed (map/index/count) instead of key by key
            counts = list(map(get, ks[h:min(h + 128, limit)]))
            if None in counts:
                miss = counts.index(None)
                pool += counts[:miss].count(0)
                h += miss
                break
            pool += counts.count(0)
            h += len(counts)
        self._lookup_memo[r] = (self._cache_version, outd, (h, pool))
        return h, pool

    def _insert_keys(self, r: int, c0: int, c1: int) -> None:
        """Register prompt blocks completed between computed tokens c0 and c1 in the prefix cache. A request
        caches a prefix of its prompt blocks: registration stops at the first block already cached."""
        ks, refs, cached = self.keys[r], self.refs[r], self.cached
        b = start = len(refs)
        if c0 // 16 > b:
            return
        b1 = min(c1 // 16, len(ks))
        while b < b1 and ks[b] not in cached:
            cached[ks[b]] = 1
            b += 1
        if b > start:
            refs.extend(ks[start:b])
            self._cache_version += 1

    def _reference(self, r: int, h: int) -> None:
        """Make the admitted ``r`` hold its ``h`` prefix-cache hit blocks (pulling pooled ones out of the pool)."""
        self._cache_version += 1
        cached, evictable = self.cached, self.evictable
        ks = self.keys[r][:h]
        for k in ks:
            cnt = cached[k]
            if cnt == 0:
                del evictable[k]
            cached[k] = cnt + 1
        self.refs[r].extend(ks)

    # ---------------------------------------------------------------- helpers
    def _ev(self, r: int, name: str, t: float, attrs: dict | None = None) -> None:
        self.events[r].append((name, t, self.step_id, attrs, self.comp[r], self.outd[r], self.npre[r]))

    def _admit_arrivals(self, upto: float) -> None:
        times, i = self._arr_t, self.next_arr
        while i < len(times) and times[i] <= upto:
            r, t = self._arr_req[i], times[i]
            i += 1
            self.next_arr = i
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
        t = self._arr_t[self.next_arr] if self.next_arr < len(self._arr_t) else math.inf
        if self.deadlines:
            t = min(t, self.deadlines[0][0])
        return t

    def _admission(self, r: int, budget: int) -> tuple[int, int, int, int, int]:
        """What admitting the waiting ``r`` with ``budget`` tokens left takes: (computed tokens, prefix-cache
        hit blocks, how many of those sit in the evictable pool, new tokens, blocks to allocate)."""
        saved = self.saved[r]
        if saved:  # offloaded KV comes back from the host instead of hitting the cache
            c, h, in_pool = saved, 0, 0
        else:
            h, in_pool = self._lookup(r)
            c = 16 * h
        nn = min(self.P[r] + self.outd[r] - c, budget)
        return c, h, in_pool, nn, -(-(c + nn) // 16) - h

    def _head_blocked(self, budget_left: int) -> tuple[bool, bool]:
        """(blocked, fragile): can the waiting head be admitted now; fragile = blocked only because its
        prefix-cache hits sit in the evictable pool, so an eviction could unblock it (no fast path then)."""
        if not self.waiting:
            return True, False
        if len(self.running) >= self.cfg.max_num_seqs or budget_left <= 0:
            return True, False
        _, _, in_pool, _, need = self._admission(self.waiting[0], budget_left)
        blocked = need > self._free_total() - in_pool
        return blocked, blocked and in_pool > 0

    # ---------------------------------------------------------------- main loop
    def run(self) -> SimResult:
        n = len(self.wl)
        cfg = self.cfg
        while True:
            self._admit_arrivals(self.now)
            if cfg.abort_after_s > 0:
                self._aborts()
            if not self.running and not self.waiting:
                if self.next_arr >= n:
                    break
                self.now = max(self.now, self._arr_t[self.next_arr])
                continue
            if self.running and cfg.vectorise and self._try_segment():
                continue
            if not self._general_step():
                # nothing could be scheduled with nothing running: the head can never fit in the KV cache
                r = self.waiting.popleft()
                self.status[r] = "aborted"
                self.finish[r] = self.now
                self._ev(r, "FINISHED", self.now, {"finish.status": "aborted"})
        steps = self._step_columns()
        i64 = np.int64
        req = dict(prompt=self._prompt, output=self._output, out_done=np.array(self.outd, i64), arrived=self.arrived,
                   queued=self.queued, scheduled=self.sched_first, first_token=self.first_tok, finished=self.finish,
                   status=self.status, num_preemptions=np.array(self.npre, i64), cached=np.array(self.hit, i64),
                   q_wait=self.q_wait, q_run=self.q_run, q_kv=self.q_kv, q_pre=self.q_pre)
        self.stats["steps"] = int(steps["step_id"].size)
        return SimResult(steps=steps, req=req, events=self.events, num_blocks=self.total, stats=self.stats)

    def _step_columns(self) -> dict:
        """STEP_COLUMNS -> array (numpy infers each column's dtype from its values, as the rows were built)."""
        if not self._rows:
            return {c: np.empty(0) for c in STEP_COLUMNS}
        return {c: np.asarray(v) for c, v in zip(STEP_COLUMNS, zip(*self._rows))}

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
        """Simulate the coming pure-decode steps at once while the batch cannot change; False if it can.

        A running request holds ceil(computed / 16) blocks, so it needs a new block at step f = 16·blocks −
        computed + 1 ∈ [1, 16] of the segment and every 16 steps after: the allocations repeat with period 16.
        Only the noise is drawn as a vector (all K values, as the random stream expects); the steps themselves
        cost a few scalar operations each, which beats numpy's per-call overhead on these short segments.
        """
        cfg = self.cfg
        if not self._decode_only:
            return False
        run = self.running
        B = len(run)
        if B > cfg.max_num_batched_tokens:
            return False
        blocked, fragile = self._head_blocked(cfg.max_num_batched_tokens - B)
        if not blocked:
            return False
        P, O, comp, outd, nb = self.P, self.O, self.comp, self.outd, self.nb
        K = cfg.segment_cap
        sc0 = held0 = cmax = 0
        per16 = [0] * 16  # per16[j % 16]: blocks allocated at step j (1-based) of the segment
        for r in run:
            c, o = comp[r], outd[r]
            if P[r] + o - c != 1 or o < 1:
                return False
            if O[r] - o < K:
                K = O[r] - o
            sc0 += c
            if c > cmax:
                cmax = c
            n = nb[r]
            held0 += n
            spare = 16 * n - c  # free slots in the last block
            assert 0 <= spare < 16, "a running request holds exactly ceil(computed / 16) blocks"
            per16[(spare + 1) & 15] += 1
        # steps whose allocations fit: B blocks per full period, then the period's prefix sums
        # (a fragile block must not change under the segment: stop before the first eviction)
        free0 = self._free_total()
        periods, rest = divmod(self.free_plain if fragile else free0, B)
        K = min(K, 16 * periods + bisect.bisect_right(list(itertools.accumulate(per16[1:])), rest))
        if K == 0:
            return False
        s = cfg.noise_sigma
        noise = np.exp(self.rng.normal(-s * s / 2, s, K)).tolist() if s > 0 else None
        cpu = cfg.sched_base_us + cfg.sched_per_req_us * B
        t_next = self._next_event_time()
        oracle, now, sc0 = self.oracle, self.now, float(sc0)
        sched, durs, orcs = [], [], []
        busy = 0.0  # Σ (cpu + duration) of the segment's steps so far
        for j in range(1, K + 1):
            t = now + busy
            if t >= t_next and j > 1:  # only steps scheduled strictly before the next event (at least one)
                break
            sc = sc0 + B * j
            o = oracle.decode_step_scalar(B, sc)
            d = o * noise[j - 1] if noise is not None else o
            floor = oracle.roofline_scalar(B, sc, B)
            if floor > d:
                d = floor
            busy += cpu + d
            sched.append(t)
            durs.append(d)
            orcs.append(o)
        k = len(durs)
        self.stats["segments"] += 1
        self.stats["segment_steps"] += k
        sampled = (self.rng.random(k) < cfg.sample_rate).tolist()
        finishing = [r for r in run if O[r] - outd[r] == k]
        fp, used0, waiting, sid = self.free_plain, self.total - free0, len(self.waiting), self.step_id
        cum = over = 0  # blocks allocated so far; how many of them had to evict a cached block
        rows = self._rows
        for i in range(k):
            j = i + 1
            cum += per16[j & 15]
            ev = -over
            over = cum - fp if cum > fp else 0
            ev += over
            sc = sc0 + B * j
            rows.append((
                sid + i, sched[i], sched[i] + cpu, durs[i], orcs[i], cpu, 0, B, 0, B, B, waiting, used0 + cum, 0,
                len(finishing) if j == k else 0, sc, 0.0, float(cmax + j), 0.0, 1.0 - sc / (16.0 * (held0 + cum)),
                ev, 0.0, sampled[i],
            ))
        self._alloc(cum)
        for r in run:
            c = comp[r] + k
            comp[r] = c
            outd[r] += k
            if (c + 15) // 16 > nb[r]:
                nb[r] = (c + 15) // 16
        end = sched[k - 1] + cpu + durs[k - 1]
        self.step_id += k
        self.now = end
        if finishing:
            self.step_id -= 1
            for r in finishing:
                self._finish(r, end)
            fin = set(finishing)
            self.running = [r for r in run if r not in fin]
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
        P, comp, outd, nb, running = self.P, self.comp, self.outd, self.nb, self.running
        out_ids, out_new, out_c = [], [], []
        preempted, evictions, offload_bytes = 0, 0, 0.0
        i = 0
        while i < len(running) and budget > 0:
            r = running[i]
            c = comp[r]
            num_new = min(P[r] + outd[r] - c, budget)
            need = -(-(c + num_new) // 16) - nb[r]
            ok = True
            while need > self._free_total():
                v = running.pop()
                preempted += 1
                self.npre[v] += 1
                self.pre_times.append(t)
                if cfg.cpu_offload and comp[v] > 0:
                    self.saved[v] = comp[v]
                    offload_bytes += float(comp[v]) * cfg.kv_bytes_per_token_gpu
                self._release(v)
                comp[v] = 0
                self.waiting.appendleft(v)
                self._ev(v, "PREEMPTED", t)
                if v == r:
                    ok = False
                    break
            if not ok:
                break
            if need > 0:
                evictions += self._alloc(need)
                nb[r] += need
            out_ids.append(r)
            out_new.append(num_new)
            out_c.append(c)
            budget -= num_new
            i += 1
        return out_ids, out_new, out_c, budget, preempted, evictions, offload_bytes

    def _general_step(self) -> bool:
        """One step through the per-request path; False if nothing could be scheduled (or preempted)."""
        cfg = self.cfg
        P, O, comp, outd, nb = self.P, self.O, self.comp, self.outd, self.nb
        budget = cfg.max_num_batched_tokens
        preempted = 0
        offload_bytes = 0.0
        t = self.now
        # ---- running requests, in order, while the token budget lasts (re-run with preemption if blocks run out)
        ids, new, cs, grow = [], [], [], []
        left, blocks = budget, 0  # left: budget minus what the earlier running requests need
        for r in self.running:
            if left <= 0:  # the rest get no tokens (and, holding blocks for what they computed, need none)
                break
            c = comp[r]
            need = P[r] + outd[r] - c
            nn = need if need < left else left
            left -= need
            g = -(-(c + nn) // 16) - nb[r]
            if g > 0:
                blocks += g
            if nn > 0:
                ids.append(r)
                new.append(nn)
                cs.append(c)
                if g > 0:
                    grow.append((r, g))
        if blocks <= self._free_total():
            evictions = self._alloc(blocks)
            for r, g in grow:
                nb[r] += g
            budget -= sum(new)
        else:
            ids, new, cs, budget, preempted, evictions, offload_bytes = self._preempting_running_pass(budget, t)
        n_run = len(ids)
        # ---- waiting requests (FCFS) when nothing was preempted
        hit_tokens = 0
        if preempted == 0:
            waiting, running = self.waiting, self.running
            while waiting and budget > 0 and len(running) < cfg.max_num_seqs:
                r = waiting[0]
                c, h, in_pool, nn, need = self._admission(r, budget)
                if need > self._free_total() - in_pool:  # hit blocks in the evictable pool leave it when referenced
                    break
                waiting.popleft()
                resume = self.npre[r] > 0
                if h:
                    self._reference(r, h)
                evictions += self._alloc(need)
                nb[r] = need + h
                if self.saved[r]:
                    offload_bytes += float(self.saved[r]) * cfg.kv_bytes_per_token_gpu
                    self.saved[r] = 0
                comp[r] = c
                if not resume:
                    self.hit[r] = c
                    self.sched_first[r] = t
                hit_tokens += 16 * h
                self._ev(r, "SCHEDULED", t, {"schedule.kind": "RESUME" if resume else "FIRST"})
                running.append(r)
                ids.append(r)
                new.append(nn)
                cs.append(c)
                budget -= nn
        n_adm = len(ids) - n_run
        if not ids:
            return preempted > 0
        # ---- the batch (decodes: running, one token completing the sequence) and its token bookkeeping
        nd = sum_dc = n_samp = held = slots = max_c = 0
        chunks, priors, pref, first, fin = [], [], [], [], []
        for j, r in enumerate(ids):
            c, nn, o = cs[j], new[j], outd[r]
            c1 = c + nn
            comp[r] = c1
            held += nb[r]
            slots += c1
            if c1 > max_c:
                max_c = c1
            if c1 == P[r] + o:  # complete: the step samples a token for it
                n_samp += 1
                o += 1
                outd[r] = o
                if o == 1:
                    first.append(r)
                if o >= O[r]:
                    fin.append(r)
                if nn == 1 and o > 1 and j < n_run:
                    nd += 1
                    sum_dc += c
                    continue
            chunks.append(nn)
            priors.append(c)
            pref.append(j)
        ptok = sum(chunks)
        sum_dec = float(sum_dc + nd)
        # Σ chunk·(prior + chunk/2): every term and partial sum is an exact multiple of 0.5, so any order is exact
        sum_pre_attn = float(sum(ch * (pr + ch / 2) for ch, pr in zip(chunks, priors)))
        oracle = self.oracle.step_us(chunks, priors, nd, sum_dec, n_samp)
        offload_us = offload_bytes / cfg.pcie_bytes_per_us
        oracle += offload_us
        floor = self.oracle.roofline_scalar(ptok + nd, sum_dec, n_samp)
        s = cfg.noise_sigma
        dur = max(oracle * (math.exp(-s * s / 2 + s * self._normal()) if s > 0 else 1.0), floor)
        cpu = cfg.sched_base_us + cfg.sched_per_req_us * len(ids) + cfg.sched_per_new_req_us * n_adm
        start_t = t + cpu
        end = start_t + dur
        used = self.total - self._free_total()
        # ---- what needs the step's end time or changes the prefix cache
        for j in pref:
            r = ids[j]
            if self.keys[r]:
                self._insert_keys(r, cs[j], cs[j] + new[j])
        for r in first:
            self.first_tok[r] = end
            self._ev(r, "FIRST_TOKEN", end)
        for r in fin:
            self._finish(r, end)
        if fin:
            fs = set(fin)
            self.running = [r for r in self.running if r not in fs]
        self._decode_only = n_samp == len(ids) and len(self.running) == len(ids) - len(fin)
        self._rows.append((
            self.step_id, t, start_t, dur, oracle, cpu, ptok, nd, len(chunks), nd, len(self.running) + len(fin),
            len(self.waiting), used, preempted, len(fin), sum_dec, sum_pre_attn, float(max_c), float(hit_tokens),
            1.0 - slots / (16.0 * held) if held else 0.0, evictions, offload_us, self._uniform() < cfg.sample_rate,
        ))
        self.step_id += 1
        self.now = end
        self.stats["general_steps"] += 1
        return True
