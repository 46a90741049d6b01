"""What the engine hands back: per-step deltas (streaming) and whole completions (offline API)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestOutput:
    """One delta for one request, produced by a step (or an error / cancellation)."""

    request_id: str
    text_delta: str = ""
    token_ids_delta: list[int] = field(default_factory=list)
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    error: Exception | None = None
    ttft_s: float | None = None  # set on the finished output: arrival -> first token
    tpot_s: float | None = None  # set on the finished output: mean gap between output tokens


@dataclass
class CompletionOutput:
    """A finished request, as `Engine.generate` returns it."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str | None
    arrival_time: float
    first_token_time: float | None
    finish_time: float | None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time
