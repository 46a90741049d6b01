"""What a caller hands the engine: text and/or videos (decoded frames), or ready prompt token ids."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class VideoInput:
    """Decoded, sampled frames of one video.

    frames: uint8 [T, H, W, 3] (numpy or torch, any device). If H/W are not multiples of the model's
    patch_size * merge_size the engine resizes them with Qwen's smart_resize rules.
    sample_fps: sampled frames per second of video time (Qwen2.5-VL uses it for temporal M-RoPE ids).
    content_key: identifies the frames (video hash + sampling + size) for the encoder output cache.
    """

    frames: Any
    sample_fps: float = 2.0
    content_key: str | None = None


@dataclass(frozen=True)
class GenerationInput:
    """One prompt.

    Either `text` (the user's message; the engine applies the chat template and inserts one video
    placeholder per video before it), or `prompt_token_ids` that already went through a template and
    hold one `<|video_pad|>` token per video (expanded by the engine to the video's token count).
    """

    text: str | None = None
    videos: tuple[VideoInput, ...] = ()
    prompt_token_ids: tuple[int, ...] | None = None
    system_prompt: str | None = None
    extra: dict = field(default_factory=dict, compare=False)
