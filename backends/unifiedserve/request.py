"""The one state carrier per request: status plus progress counters (nano-vllm `Sequence`, vLLM `Request`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import IntEnum

import torch

from unifiedserve.sampling_params import SamplingParams


class RequestStatus(IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5
    FINISHED_ERROR = 6

    @property
    def finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED


FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
    RequestStatus.FINISHED_ERROR: "error",
}


@dataclass(eq=False)  # identity semantics: requests are compared by object, never by tensor contents
class VideoItem:
    """One video of a prompt: its patches, where its tokens sit, and how much of it is encoded.

    The vision tower attends within one temporal patch group only, so the encoder can run on any
    contiguous range of groups and the results are exact; `num_encoded_groups` is that progress.
    """

    pixel_values: torch.Tensor  # [grid_t * grid_h * grid_w, C * tps * ps * ps]
    grid_thw: tuple[int, int, int]
    offset: int  # index of the first video token in the prompt
    tokens_per_group: int  # merged tokens per temporal group
    second_per_grid_t: float
    content_key: str | None = None
    embeddings: torch.Tensor | None = None  # [num_tokens, hidden], filled group by group
    num_encoded_groups: int = 0  # groups whose tokens are ready (they left the tower's last block)
    encoder_depth: int = 1  # blocks of the vision tower (1: the planner treats the tower as one unit)
    # Attention work of one group through each block (encoder_planner.block_attention_work); () prices tokens only.
    block_attention: tuple[float, ...] = ()
    piece_groups: tuple[int, int] | None = None  # groups part-way through the tower
    piece_blocks_done: int = 0  # blocks that piece has been through
    encoder_state: object = None  # the runner's hidden state of that piece (opaque to the scheduler)
    ready_event: object = None  # CUDA event: the encoder stream finished this video's latest piece
    cache_ref: bool = False  # this request holds a reference to `content_key` in the encoder cache

    @property
    def num_groups(self) -> int:
        return self.grid_thw[0]

    @property
    def patches_per_group(self) -> int:
        return self.grid_thw[1] * self.grid_thw[2]

    @property
    def num_tokens(self) -> int:
        return self.num_groups * self.tokens_per_group

    @property
    def num_encoded_tokens(self) -> int:
        return self.num_encoded_groups * self.tokens_per_group

    @property
    def end(self) -> int:
        return self.offset + self.num_tokens

    @property
    def fully_encoded(self) -> bool:
        return self.num_encoded_groups >= self.num_groups


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    videos: list[VideoItem] = field(default_factory=list)
    mrope_positions: torch.Tensor | None = None  # [3, num_prompt_tokens] or None for text-only
    rope_delta: int = 0  # position of token i past the prompt = i + rope_delta (all 3 sections)
    priority: int = 0  # Triton convention: 1 most urgent, larger less urgent, 0 = default level
    ttft_slo_ms: float | None = None
    tpot_slo_ms: float | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    eos_token_ids: frozenset[int] = frozenset()

    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0  # tokens whose KV is in the cache
    block_ids: list[int] = field(default_factory=list)
    num_preemptions: int = 0
    first_token_time: float | None = None
    finish_time: float | None = None
    max_total_tokens: int = 0  # prompt + generated may not exceed this (max_model_len)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def remaining_tokens(self) -> int:
        """Tokens not yet in the KV cache (1 while decoding, more during (re)prefill)."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_decoding(self) -> bool:
        return self.status == RequestStatus.RUNNING and self.remaining_tokens == 1 and self.num_output_tokens > 0

    @property
    def finish_reason(self) -> str | None:
        return FINISH_REASONS.get(self.status)

    def token_id(self, index: int) -> int:
        n = len(self.prompt_token_ids)
        return self.prompt_token_ids[index] if index < n else self.output_token_ids[index - n]

    def visual_ready_limit(self) -> int:
        """Highest end index a prefill chunk may reach: tokens past the first un-encoded video token wait."""
        for item in self.videos:
            if not item.fully_encoded:
                return item.offset + item.num_encoded_tokens
        return self.num_tokens

    def pending_encoder_groups(self) -> list[tuple[int, VideoItem]]:
        return [(i, v) for i, v in enumerate(self.videos) if not v.fully_encoded]
