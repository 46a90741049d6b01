"""Engine configuration: built once (from Triton `parameters`, env, or code), never mutated."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

POLICIES = ("unified", "blocking", "fcfs")


@dataclass(frozen=True)
class EngineConfig:
    model_path: str
    dtype: str = "auto"  # "auto": bfloat16 on GPU; on CPU a bf16 checkpoint's bf16 where native, else float32
    device: str = "auto"  # "auto": cuda if available, else cpu
    seed: int = 0

    # Scheduling budgets (vLLM names).
    max_num_seqs: int = 16  # requests running at once
    max_num_batched_tokens: int = 2048  # LLM tokens per step (decode + prefill chunks)
    encoder_budget_tokens: int = 4096  # vision tokens (after merge) encoded per step
    max_model_len: int = 0  # 0: the model's max_position_embeddings
    max_waiting_requests: int = 256  # admission queue bound: beyond it requests get UNAVAILABLE
    policy: str = "unified"
    tpot_slo_ms: float = 0.0  # default TPOT target for requests without one (0: none; budgets = maxima)
    tpot_headroom: float = 0.9  # plan steps to this fraction of the TPOT target (noise margin)
    # unified: one step (one gap of every stream) may take up to this many x the TPOT target x headroom while every
    # stream's mean TPOT stays under it (the slack its faster steps banked). The SLO is on the mean; a cap of 1x
    # made prefill beside a decoding stream run in ~8-token chunks that each paid a forward's fixed part and the
    # batch jump (0.6 prefill tokens/ms vs 2.4 in a 70-token chunk, measured 2026-12-05). 1: every gap <= target.
    tpot_max_gap_factor: float = 3.0
    # unified: a stream whose remaining length is certain (ignore_eos, no stop strings) lends a step this fraction
    # of the slack its remaining decode-only steps will earn (tpot_slack.py; 0: only the slack banked so far).
    # Without it a stream behind its mean got decode-only steps until it caught up, while a video's first token
    # waited (serving benchmark, 2026-12-06: 2075 of 21041 steps, a 60 s clip's TTFT 4.7 s against 3.0 s).
    tpot_credit_fraction: float = 0.5
    # unified, streams decoding: prefill/encoder work gets only the share of each step it needs to finish every
    # request's first-token work by this fraction of its TTFT SLO (0: always fill the TPOT target). Filling it
    # at low load made streams overlapping a video encode run at the TPOT SLO instead of their unloaded speed.
    ttft_pace_fraction: float = 0.5
    min_prefill_chunk: int = 16  # forced progress: prefill tokens of the most urgent request in a step with no headroom
    max_idle_step_ms: float = 0.0  # unified, no stream decoding: step time cap (0: 2 x the TPOT target; none without)
    # The packed text decoder (fused_decoder.py: fused q/k/v and gate/up matmuls, one-op norms) instead of HF's
    # layers; the same weights and math. False: HF's layers (an A/B of the forward, or a checkpoint it rejects).
    fused_decoder: bool = True
    overlap_encoder: bool = True  # on CUDA: encoder slices on a low-priority stream beside the LLM step
    encoder_cache_tokens: int = 65536  # encoder output cache (visual tokens) for repeated videos
    # torch intra-op threads on CPU (0: torch's default, one per core). A server leaves a core to its I/O threads
    # (the Triton adapter's "auto" = cores - 1, as vLLM's CPU backend reserves one): measured on 2 cores, two
    # OpenMP threads sharing them with the response thread and tritonserver made decode steps 1.5x slower.
    cpu_threads: int = 0
    # Encoder slices and forwards with >= cpu_burst_min_tokens prefill tokens run on cpu_burst_threads instead
    # (0: no burst; the adapter's "auto" = every core): big matmuls gain from the extra core (cpu_threads.py).
    cpu_burst_threads: int = 0
    cpu_burst_min_tokens: int = 32

    # Paged KV cache.
    block_size: int = 16
    num_kv_blocks: int = 0  # 0: derive from kv_cache_memory_bytes
    kv_cache_memory_bytes: int = 256 * 2**20  # CPU default; on GPU derive from free memory (later)

    step_stats_window: int = 4096  # recent StepStats kept on the engine (metrics, benchmarks)
    trace_path: str = ""  # append a JSON line per arrival and per step here (step_trace.py); "" = off

    # Limits on what one request may ask for.
    max_tokens_limit: int = 4096

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        for name in ("cpu_threads", "cpu_burst_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.tpot_max_gap_factor < 1.0:
            raise ValueError(f"tpot_max_gap_factor must be >= 1, got {self.tpot_max_gap_factor}")
        if not 0.0 <= self.tpot_credit_fraction < 1.0:
            raise ValueError(f"tpot_credit_fraction must be in [0, 1), got {self.tpot_credit_fraction}")
        if not 0.0 <= self.ttft_pace_fraction <= 1.0:
            raise ValueError(f"ttft_pace_fraction must be in [0, 1], got {self.ttft_pace_fraction}")
        for name in ("max_num_seqs", "max_num_batched_tokens", "encoder_budget_tokens", "block_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], **overrides: Any) -> EngineConfig:
        """Build from string key/values (Triton `parameters`, env); unknown keys are an error, not ignored."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, raw in {**values, **overrides}.items():
            if key not in fields:
                raise ValueError(f"unknown engine parameter {key!r}; known: {sorted(fields)}")
            kwargs[key] = _coerce(raw, fields[key].type)
        return cls(**kwargs)


def _coerce(raw: Any, type_name: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    if type_name in ("int", int):
        return int(raw)
    if type_name in ("float", float):
        return float(raw)
    if type_name in ("bool", bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return raw


def default_model_path() -> str:
    """The checkpoint folder: $MLLM_MODEL_PATH, else the generated tiny model of this repository."""
    env = os.environ.get("MLLM_MODEL_PATH")
    if env:
        return env
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(repo, "artifacts", "models", "tiny-qwen2.5-vl")
