"""M-RoPE position ids follow the Qwen reference rule (and agree with HF where HF 5.23 is consistent)."""

from __future__ import annotations

import torch
import transformers

from unifiedserve.mrope import hf_compatible_rope_index, mrope_positions

V = 99  # video token id in these tests


def test_reference_example_from_the_qwen25_docstring():
    # 3 temporal patches of 2x2 merged tokens at 1 fps, tokens_per_second 25 -> t ids 0, 50, 100;
    # text after the video continues at the largest id + 1 = 101.
    ids = [V] * 12 + [1, 2, 3, 4, 5]
    pos, delta = mrope_positions(ids, V, [((3, 4, 4), 2.0)], spatial_merge_size=2, tokens_per_second=25)
    assert pos[0, :12].tolist() == [0] * 4 + [50] * 4 + [100] * 4
    assert pos[1, :12].tolist() == [0, 0, 1, 1] * 3 and pos[2, :12].tolist() == [0, 1, 0, 1] * 3
    assert pos[:, 12:].tolist() == [[101, 102, 103, 104, 105]] * 3
    assert delta == 106 - len(ids)  # a generated token i (0-based from the prompt's end) gets id len + i + delta


def test_fractional_intervals_quantize_after_multiplying():
    # 4 fps sampling: 0.5 s per temporal grid, tokens_per_second 2 -> ids 0, 1, 2, 3 (not all 0).
    pos, _ = mrope_positions([V] * 4, V, [((4, 2, 2), 0.5)], spatial_merge_size=2, tokens_per_second=2)
    assert pos[0].tolist() == [0, 1, 2, 3]


def test_qwen2_vl_uses_plain_temporal_index_and_text_only_is_arange():
    pos, _ = mrope_positions([7, V, V, 8], V, [((2, 2, 2), 9.0)], spatial_merge_size=2, tokens_per_second=None)
    assert pos.tolist() == [[0, 1, 2, 3], [0, 1, 1, 3], [0, 1, 1, 3]]
    pos, delta = mrope_positions([5, 6, 7], V, [], 2, None)
    assert pos.tolist() == [[0, 1, 2]] * 3 and delta == 0


def test_agrees_with_hf_when_the_video_is_wider_than_long(tiny_model_path):
    """Where HF 5.23's rule coincides with the reference (temporal span below the spatial one), the
    HF-compatible wrapper returns exactly HF's positions and deltas."""
    config = transformers.AutoConfig.from_pretrained(tiny_model_path)
    model = transformers.Qwen2_5_VLModel(config)
    vid = config.video_token_id
    grid = torch.tensor([[2, 16, 16]])  # 2 temporal groups, 8x8 merged tokens; t span 0..2 < 8
    ids = torch.tensor([[1, 2] + [vid] * (2 * 8 * 8) + [3, 4, 5]])
    kwargs = {"mm_token_type_ids": (ids == vid).int() * 2, "video_grid_thw": grid,
              "second_per_grid_ts": torch.tensor([1.0])}
    hf_pos, hf_delta = model.get_rope_index(ids, **kwargs)
    ours, our_delta = hf_compatible_rope_index(config)(ids, **kwargs)
    assert torch.equal(ours, hf_pos) and torch.equal(our_delta.view(-1), hf_delta.view(-1))
