"""GenerationInput -> Request: chat template, video placeholder expansion, patches, M-RoPE positions.

Runs on the caller's thread (Triton's execute thread), off the engine loop, so preprocessing of new
requests overlaps the running steps. Everything it touches is read-only.
"""

from __future__ import annotations

import math

import torch

from unifiedserve.encoder_planner import block_attention_work
from unifiedserve.errors import InvalidRequestError
from unifiedserve.inputs import GenerationInput, VideoInput
from unifiedserve.mrope import mrope_positions
from unifiedserve.request import Request, VideoItem
from unifiedserve.sampling_params import SamplingParams
from unifiedserve.vision import VisionSpec, as_uint8_tensor, patchify_frames


class InputProcessor:
    def __init__(
        self,
        tokenizer,
        model_config,
        vision: VisionSpec,
        max_model_len: int,
        max_tokens_limit: int,
        eos_token_ids: frozenset[int],
    ) -> None:
        self.tokenizer = tokenizer
        self.vision = vision
        self.max_model_len = max_model_len
        self.max_tokens_limit = max_tokens_limit
        self.eos_token_ids = eos_token_ids
        self.video_token_id: int = model_config.video_token_id
        self.tokens_per_second: float | None = getattr(model_config.vision_config, "tokens_per_second", None)
        vc = model_config.vision_config
        self.encoder_depth: int = vc.depth
        # Which blocks attend over the whole group (all of Qwen2-VL's; Qwen2.5-VL's fullatt_block_indexes) and the
        # windows of the others, in merged tokens (HF: window_size // spatial_merge_size // patch_size).
        full = getattr(vc, "fullatt_block_indexes", None)
        self.full_attention_blocks = tuple(full is None or i in full for i in range(vc.depth))
        self.window_merged = max(1, getattr(vc, "window_size", 0) // vision.merge_size // vision.patch_size)

    def process(
        self,
        request_id: str,
        gen_input: GenerationInput,
        params: SamplingParams,
        priority: int = 0,
        ttft_slo_ms: float | None = None,
        tpot_slo_ms: float | None = None,
    ) -> Request:
        params.validate(self.max_tokens_limit)
        _check_slo("ttft_slo_ms", ttft_slo_ms)
        _check_slo("tpot_slo_ms", tpot_slo_ms)
        if priority < 0:
            raise InvalidRequestError(f"priority must be >= 0 (1 is the most urgent, 0 the default), got {priority}")
        ids = self._template_ids(gen_input)
        placeholders = [i for i, t in enumerate(ids) if t == self.video_token_id]
        if len(placeholders) != len(gen_input.videos):
            raise InvalidRequestError(
                f"prompt has {len(placeholders)} video placeholder(s) but {len(gen_input.videos)} video(s) were given"
            )
        videos: list[VideoItem] = []
        expanded: list[int] = []
        last = 0
        for pos, video in zip(placeholders, gen_input.videos, strict=False):
            expanded.extend(ids[last:pos])
            item = self._video_item(video, offset=len(expanded))
            expanded.extend([self.video_token_id] * item.num_tokens)
            videos.append(item)
            last = pos + 1
        expanded.extend(ids[last:])
        if len(expanded) >= self.max_model_len:
            raise InvalidRequestError(
                f"prompt is {len(expanded)} tokens (video tokens included) but the model's context is "
                f"{self.max_model_len}; ask for fewer frames, a smaller max_pixels, or a shorter text"
            )
        positions, delta = self._mrope(expanded, videos)
        return Request(
            request_id=request_id,
            prompt_token_ids=expanded,
            sampling_params=params,
            videos=videos,
            mrope_positions=positions,
            rope_delta=delta,
            priority=priority,
            ttft_slo_ms=ttft_slo_ms,
            tpot_slo_ms=tpot_slo_ms,
            eos_token_ids=frozenset() if params.ignore_eos else self.eos_token_ids | set(params.stop_token_ids),
            max_total_tokens=self.max_model_len,
        )

    # ------------------------------------------------------------------------------------------
    def _template_ids(self, gen_input: GenerationInput) -> list[int]:
        if gen_input.prompt_token_ids is not None:
            if gen_input.text is not None:
                raise InvalidRequestError("give either text or prompt_token_ids, not both")
            ids = [int(t) for t in gen_input.prompt_token_ids]
            vocab = len(self.tokenizer)
            if not ids or min(ids) < 0 or max(ids) >= max(vocab, self.video_token_id + 1):
                raise InvalidRequestError("prompt_token_ids is empty or holds ids outside the vocabulary")
            return ids
        if (gen_input.text is None or not gen_input.text.strip()) and not gen_input.videos:
            raise InvalidRequestError("text_input is empty: ask a question")
        content = [{"type": "video"} for _ in gen_input.videos]
        content.append({"type": "text", "text": gen_input.text or ""})
        messages = []
        if gen_input.system_prompt:
            messages.append({"role": "system", "content": [{"type": "text", "text": gen_input.system_prompt}]})
        messages.append({"role": "user", "content": content})
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(self.tokenizer.encode(prompt, add_special_tokens=False))

    def _video_item(self, video: VideoInput, offset: int) -> VideoItem:
        try:
            frames = as_uint8_tensor(video.frames)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"bad video frames: {exc}") from exc
        frames = self._fit_size(frames)
        pixel_values, grid = patchify_frames(frames, self.vision)  # on the frames' device (GPU from NVDEC)
        if not video.sample_fps > 0:
            raise InvalidRequestError(f"video sample_fps must be > 0, got {video.sample_fps}")
        return VideoItem(
            pixel_values=pixel_values,
            grid_thw=grid,
            offset=offset,
            tokens_per_group=grid[1] * grid[2] // self.vision.merge_size**2,
            second_per_grid_t=self.vision.temporal_patch_size / video.sample_fps,
            content_key=video.content_key,
            encoder_depth=self.encoder_depth,
            block_attention=block_attention_work(grid[1], grid[2], self.vision.merge_size, self.full_attention_blocks,
                                                 self.window_merged),
        )

    def _fit_size(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames from FlashCodec are already at a valid size; others are resized with the same rules."""
        _, h, w, _ = frames.shape
        f = self.vision.size_factor
        if h % f == 0 and w % f == 0 and self.vision.min_pixels <= h * w <= self.vision.max_pixels:
            return frames
        from flashcodec import resize_frames, smart_resize  # same reference resize as the decoder

        th, tw = smart_resize(h, w, factor=f, min_pixels=self.vision.min_pixels, max_pixels=self.vision.max_pixels)
        return resize_frames(frames, th, tw)

    def _mrope(self, ids: list[int], videos: list[VideoItem]) -> tuple[torch.Tensor | None, int]:
        if not videos:
            return None, 0
        return mrope_positions(ids, self.video_token_id, [(v.grid_thw, v.second_per_grid_t) for v in videos],
                               self.vision.merge_size, self.tokens_per_second)


def _check_slo(name: str, value: float | None) -> None:
    if value is not None and (not math.isfinite(value) or value <= 0):
        raise InvalidRequestError(f"{name} must be a positive number of milliseconds, got {value}")
