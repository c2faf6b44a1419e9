"""The data contract: the canonical ``steps`` and ``requests`` tables (units: µs and tokens).

One ``DataFrameModel`` per table. Every rule a row can break is a *named* check, so the quarantine can
say which rule each rejected row broke. Columns that only some trace formats carry (reconstructed batch
membership, fragmentation, engine state at queue time) are optional and nullable: NaN there means "the
trace did not carry it", never a made-up value. Infinite values are never allowed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from molerd.specs import hardware_names

# Candidate names used by code to refer to columns without repeating literals.
STEP_KEY = ["trace_id", "step_id"]
REQUEST_KEY = ["trace_id", "request_id"]
REQUEST_TIMESTAMPS = ["arrived_us", "queued_us", "scheduled_us", "first_token_us", "finished_us"]


def _finite_or_nan(df: pd.DataFrame) -> pd.Series:
    """True where no numeric cell of the row is +/-inf (NaN is judged by each column's nullability)."""
    num = df.select_dtypes(include=[np.number])
    if num.shape[1] == 0:
        return pd.Series(True, index=df.index)
    return pd.Series(~np.isinf(num.to_numpy(dtype="float64", na_value=np.nan)).any(axis=1), index=df.index)


def _first_occurrence(df: pd.DataFrame, key: list[str]) -> pd.Series:
    """True for the first row of each key; later duplicates fail (the first one is kept, nothing is lost)."""
    if not set(key) <= set(df.columns):
        return pd.Series(True, index=df.index)
    return ~df.duplicated(subset=key, keep="first")


class ScopeColumns(pa.DataFrameModel):
    """Columns shared by both tables: which run, on what hardware, model, parallelism and engine settings."""

    trace_id: Series[str] = pa.Field(description="experiment/run the row belongs to; held-out splits group by it")
    hardware: Series[str] = pa.Field(description="GPU name as in BLIS's hardware_config.json (H100, H200, A100-80, ...)")
    model: Series[str] = pa.Field(description="model name (folder under data/model_configs)")
    tp: Series[int] = pa.Field(ge=1, description="tensor-parallel degree")
    max_num_seqs: Series[int] = pa.Field(ge=1, description="engine limit on running requests")
    max_num_batched_tokens: Series[int] = pa.Field(ge=1, description="engine token budget per step")
    kv_blocks_total: Series[int] = pa.Field(ge=1, description="GPU KV-cache blocks")
    block_size: Series[int] = pa.Field(ge=1, description="tokens per KV block")
    prefix_caching: Series[bool] = pa.Field(description="prefix caching enabled")
    cpu_offload: Series[bool] = pa.Field(description="KV offload to CPU enabled")

    @pa.check("hardware", name="known_hardware")
    def _known_hardware(cls, s: Series[str]) -> Series[bool]:
        return s.isin(hardware_names())

    @pa.dataframe_check(name="finite_numbers")
    def _finite(cls, df: pd.DataFrame) -> Series[bool]:
        return _finite_or_nan(df)


class StepsSchema(ScopeColumns):
    """One row per engine step that carries a measured duration (vLLM ``step.BATCH_SUMMARY``)."""

    step_id: Series[int] = pa.Field(ge=0, description="engine step counter (vLLM step.id)")
    ts_start_us: Series[float] = pa.Field(description="step start, engine monotonic clock, µs")
    step_duration_us: Series[float] = pa.Field(description="GPU forward time of the step, µs (the beta target)")
    prefill_tokens: Series[int] = pa.Field(ge=0, description="prefill tokens scheduled this step")
    decode_tokens: Series[int] = pa.Field(ge=0, description="decode tokens scheduled this step")
    num_prefill_reqs: Series[int] = pa.Field(ge=0, description="requests prefilling this step")
    num_decode_reqs: Series[int] = pa.Field(ge=0, description="requests decoding this step")
    running_depth: Series[int] = pa.Field(ge=0, description="running requests after scheduling")
    waiting_depth: Series[int] = pa.Field(ge=0, description="waiting requests after scheduling")
    kv_usage_ratio: Series[float] = pa.Field(description="fraction of GPU KV blocks in use, [0, 1]")
    kv_blocks_free: Series[int] = pa.Field(ge=0, description="free GPU KV blocks")
    num_preempted: Series[int] = pa.Field(ge=0, description="requests preempted this step")
    num_finished: Series[int] = pa.Field(ge=0, description="requests finished this step")
    # Reconstructed from journey events where the batch membership is known; NaN where it is not.
    sum_decode_context: Series[float] = pa.Field(nullable=True, ge=0, description="Σ context length of decoding requests, tokens (KV reads)")
    sum_prefill_attention: Series[float] = pa.Field(
        nullable=True, ge=0, description="Σ chunk·(prior_context + chunk/2) over prefill chunks, token² (attention cost)"
    )
    max_context: Series[float] = pa.Field(nullable=True, ge=0, description="longest context in the batch, tokens")
    prefix_cache_hit_tokens: Series[float] = pa.Field(nullable=True, ge=0, description="prompt tokens served from the prefix cache this step")
    # Only some traces carry these (the synthesizer does; stock vLLM does not).
    kv_fragmentation_ratio: Series[float] = pa.Field(nullable=True, ge=0, le=1, required=False, description="unused fraction of allocated KV slots")
    num_evictions: Series[float] = pa.Field(nullable=True, ge=0, required=False, description="KV blocks evicted this step")
    offload_transfer_us: Series[float] = pa.Field(nullable=True, ge=0, required=False, description="CPU<->GPU KV transfer time this step, µs")

    @pa.check("step_duration_us", name="positive_step_duration")
    def _positive_duration(cls, s: Series[float]) -> Series[bool]:
        return s > 0

    @pa.check("kv_usage_ratio", name="kv_usage_ratio_in_unit_interval")
    def _kv_ratio(cls, s: Series[float]) -> Series[bool]:
        return (s >= 0) & (s <= 1)

    @pa.dataframe_check(name="kv_blocks_free_within_total")
    def _kv_free(cls, df: pd.DataFrame) -> Series[bool]:
        return df["kv_blocks_free"] <= df["kv_blocks_total"]

    @pa.dataframe_check(name="scheduled_tokens_within_budget")
    def _token_budget(cls, df: pd.DataFrame) -> Series[bool]:
        return (df["prefill_tokens"] + df["decode_tokens"]) <= df["max_num_batched_tokens"]

    @pa.dataframe_check(name="running_within_max_num_seqs")
    def _max_seqs(cls, df: pd.DataFrame) -> Series[bool]:
        batch = df["num_prefill_reqs"] + df["num_decode_reqs"]
        return (df["running_depth"] <= df["max_num_seqs"]) & (batch <= df["max_num_seqs"])

    @pa.dataframe_check(name="unique_step_id")
    def _unique(cls, df: pd.DataFrame) -> Series[bool]:
        return _first_occurrence(df, STEP_KEY)

    class Config:
        name = "steps"
        coerce = True
        strict = "filter"


class RequestsSchema(ScopeColumns):
    """One row per request, with the engine state at the moment it was queued."""

    request_id: Series[str] = pa.Field(description="engine request id")
    arrived_us: Series[float] = pa.Field(nullable=True, description="API arrival, µs, aligned to the engine clock (NaN if unknown)")
    queued_us: Series[float] = pa.Field(description="entered the waiting queue, engine monotonic µs")
    scheduled_us: Series[float] = pa.Field(nullable=True, description="first scheduled, µs (NaN: aborted while waiting)")
    first_token_us: Series[float] = pa.Field(nullable=True, description="first output token, µs")
    finished_us: Series[float] = pa.Field(nullable=True, description="finished or aborted in the engine, µs")
    departed_us: Series[float] = pa.Field(nullable=True, description="API response complete, µs (NaN if unknown)")
    prompt_tokens: Series[int] = pa.Field(ge=1, description="prompt length, tokens")
    output_tokens: Series[int] = pa.Field(ge=0, description="generated tokens")
    cached_prompt_tokens: Series[float] = pa.Field(nullable=True, ge=0, description="prompt tokens served from the prefix cache")
    num_preemptions: Series[int] = pa.Field(ge=0, description="times this request was preempted")
    status: Series[str] = pa.Field(isin=["finished", "aborted", "length", "stop", "unknown"], description="finish status")
    # Engine state joined at queued_us (NaN where the trace has no engine state).
    waiting_depth: Series[float] = pa.Field(nullable=True, ge=0, description="waiting requests when this one was queued")
    running_depth: Series[float] = pa.Field(nullable=True, ge=0, description="running requests when this one was queued")
    kv_usage_ratio: Series[float] = pa.Field(nullable=True, description="KV usage when this one was queued, [0, 1]")
    recent_preemptions: Series[float] = pa.Field(nullable=True, ge=0, description="preemptions in the window before queueing")
    avg_service_time_us: Series[float] = pa.Field(nullable=True, ge=0, description="recent mean request service time, µs")

    @pa.check("kv_usage_ratio", name="kv_usage_ratio_in_unit_interval")
    def _kv_ratio(cls, s: Series[float]) -> Series[bool]:
        return s.isna() | ((s >= 0) & (s <= 1))

    @pa.dataframe_check(name="timestamps_ordered")
    def _ordered(cls, df: pd.DataFrame) -> Series[bool]:
        """arrived ≤ queued ≤ scheduled ≤ first token ≤ finished, skipping the ones a request lacks."""
        ts = df[REQUEST_TIMESTAMPS].to_numpy(dtype="float64", na_value=np.nan)
        ok = np.ones(len(df), dtype=bool)
        running_max = np.full(len(df), -np.inf)
        for j in range(ts.shape[1]):
            col = ts[:, j]
            present = ~np.isnan(col)
            ok &= ~present | (col >= running_max)
            running_max = np.where(present, np.maximum(running_max, col), running_max)
        return pd.Series(ok, index=df.index)

    @pa.dataframe_check(name="positive_request_duration")
    def _positive_duration(cls, df: pd.DataFrame) -> Series[bool]:
        return df["finished_us"].isna() | (df["finished_us"] > df["queued_us"])

    @pa.dataframe_check(name="unique_request_id")
    def _unique(cls, df: pd.DataFrame) -> Series[bool]:
        return _first_occurrence(df, REQUEST_KEY)

    class Config:
        name = "requests"
        coerce = True
        strict = "filter"


SCHEMAS = {"steps": StepsSchema, "requests": RequestsSchema}
