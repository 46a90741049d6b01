"""M-RoPE position ids of a prompt with videos, as the Qwen2-VL / Qwen2.5-VL reference code computes them.

Each video token gets (t, h, w) ids; text gets the same id on all three. Text after a video starts at the
largest id the video used plus one, and generated tokens continue from the prompt's largest id plus one
(`delta`). Qwen2.5-VL spaces temporal ids by time: t * second_per_grid * tokens_per_second, quantized
after the multiplication (transformers PR #48669); Qwen2-VL uses t.

Why not transformers' `get_rope_index`: in 5.23 it starts text after a video at max(h, w) instead of
after the video's largest id, while decoding continues after the largest id (its rope_deltas), so prompt
text and generated text get inconsistent positions for any video longer than it is wide (see
transformers issue #45381 and PR #45400 for the same code's earlier breakages). Real checkpoints were
trained with the reference rule, so the engine follows the reference.
"""

from __future__ import annotations

import torch


def mrope_positions(token_ids: list[int], video_token_id: int, videos: list[tuple[tuple[int, int, int], float]],
                    spatial_merge_size: int, tokens_per_second: float | None) -> tuple[torch.Tensor, int]:
    """([3, len(token_ids)] long position ids, delta) for one prompt.

    videos: per video in prompt order, (grid_thw in patches, seconds per temporal grid).
    tokens_per_second: Qwen2.5-VL's vision_config.tokens_per_second; None for Qwen2-VL.
    """
    chunks: list[torch.Tensor] = []
    start = 0
    i, n = 0, len(token_ids)
    video_iter = iter(videos)
    while i < n:
        if token_ids[i] == video_token_id:
            (t, h, w), second_per_grid = next(video_iter)
            h, w = h // spatial_merge_size, w // spatial_merge_size
            if tokens_per_second is None:
                t_ids = torch.arange(t)
            else:
                t_ids = (torch.arange(t, dtype=torch.float32) * second_per_grid * tokens_per_second).long()
            grid = torch.stack([
                t_ids.view(-1, 1, 1).expand(t, h, w),
                torch.arange(h).view(1, -1, 1).expand(t, h, w),
                torch.arange(w).view(1, 1, -1).expand(t, h, w),
            ]).reshape(3, -1)
            chunk = grid + start
            i += t * h * w
        else:
            j = i
            while j < n and token_ids[j] != video_token_id:
                j += 1
            chunk = torch.arange(start, start + j - i).view(1, -1).expand(3, -1)
            i = j
        chunks.append(chunk)
        start = int(chunk.max()) + 1
    positions = torch.cat(chunks, dim=1) if chunks else torch.zeros(3, 0, dtype=torch.long)
    return positions.contiguous(), start - n


def hf_compatible_rope_index(model_config):
    """A drop-in for HF's `get_rope_index` (batch of prompts) that uses the reference rule above."""
    vision = model_config.vision_config
    tokens_per_second = getattr(vision, "tokens_per_second", None)

    def get_rope_index(input_ids, mm_token_type_ids=None, image_grid_thw=None, video_grid_thw=None,
                       second_per_grid_ts=None, attention_mask=None, **_):
        grids = [tuple(int(x) for x in g) for g in (video_grid_thw if video_grid_thw is not None else [])]
        seconds = [float(s) for s in second_per_grid_ts] if second_per_grid_ts is not None else [1.0] * len(grids)
        all_pos, deltas, used = [], [], 0
        for row in input_ids.tolist():
            count = _count_videos(row, model_config.video_token_id, grids[used:], vision.spatial_merge_size)
            pos, delta = mrope_positions(row, model_config.video_token_id,
                                         list(zip(grids[used:used + count], seconds[used:used + count],
                                                  strict=True)),
                                         vision.spatial_merge_size, tokens_per_second)
            used += count
            all_pos.append(pos)
            deltas.append(delta)
        return torch.stack(all_pos, dim=1).to(input_ids.device), torch.tensor(deltas).view(-1, 1)

    return get_rope_index


def _count_videos(row: list[int], video_token_id: int, grids: list, merge: int) -> int:
    tokens = sum(1 for t in row if t == video_token_id)
    count = 0
    while tokens > 0:
        t, h, w = grids[count]
        tokens -= t * (h // merge) * (w // merge)
        count += 1
    return count
