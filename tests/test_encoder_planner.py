"""Encoder planning priced by time: attention work per block, and budgets in seconds on timed steps."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2_5_VLConfig
from transformers.vision_utils import get_vision_window_index

from unifiedserve.cost_model import StepCostModel
from unifiedserve.encoder_planner import EncoderBudget, EncoderWork, block_attention_work, plan_encoder
from unifiedserve.request import Request, VideoItem
from unifiedserve.sampling_params import SamplingParams

PATCH_DIM = 3 * 2 * 14 * 14


@pytest.mark.parametrize("grid_h,grid_w", [(8, 8), (18, 24), (26, 46), (42, 74), (10, 30)])
def test_windowed_attention_work_is_the_sum_over_hf_windows(grid_h: int, grid_w: int) -> None:
    """The windows are HF's own (get_vision_window_index of Qwen2.5-VL's config, 112-pixel windows): the sum of
    squared window lengths, in thousands; a full-attention block attends over the whole group."""
    vc = Qwen2_5_VLConfig().vision_config
    _, cu_windows = get_vision_window_index(torch.tensor([[1, grid_h, grid_w]]), spatial_merge_size=2,
                                            window_size=vc.window_size, patch_size=vc.patch_size, kwargs={})
    lengths = torch.diff(torch.as_tensor(cu_windows)).double()
    window_merged = vc.window_size // 2 // vc.patch_size
    windowed, full = block_attention_work(grid_h, grid_w, 2, [False, True], window_merged)
    assert windowed == pytest.approx(float((lengths**2).sum()) / 1000.0)
    assert full == pytest.approx((grid_h * grid_w) ** 2 / 1000.0)
    assert full >= windowed  # equal when one window covers the group (8x8 patches)


def _video_request(grid: tuple[int, int, int], block_attention: tuple[float, ...]) -> Request:
    video = VideoItem(torch.zeros(1, PATCH_DIM).expand(grid[0] * grid[1] * grid[2], PATCH_DIM), grid, offset=0,
                      tokens_per_group=grid[1] * grid[2] // 4, second_per_grid_t=1.0,
                      encoder_depth=len(block_attention), block_attention=block_attention)
    return Request("r", [0] * video.num_tokens, SamplingParams(max_tokens=1), videos=[video])


def _cost(piece: float = 1e-3, token: float = 1e-4, attention: float = 1e-6) -> StepCostModel:
    cost = StepCostModel()
    cost.encoder.w[:] = [piece, token, attention]
    return cost


def test_a_timed_budget_buys_fewer_blocks_of_a_big_frame_than_tokens_alone_would():
    """Same time, same encoder-token price: the 720p-sized group's full-attention blocks cost more, so fewer of
    them fit; priced by tokens alone the planner would have taken the same number of blocks."""
    cost = _cost()
    big = _video_request((2, 42, 74), block_attention_work(42, 74, 2, [False, True, False, True], 4))
    per_block_tokens = 42 * 74 // 4 / 4
    time_s = 1e-3 + 2 * per_block_tokens * 1e-4 + 0.5e-3  # two blocks' tokens and the piece start
    work = plan_encoder(big, EncoderBudget(1e9, time_s, cost.encoder_work_s), slices=True, allow_minimum=False)
    assert [(w.group_start, w.group_end, w.block_start, w.num_blocks) for w in work] == [(0, 1, 0, 1)]
    assert cost.encoder_work_s(work[0]) <= time_s
    by_tokens = plan_encoder(big, (time_s - 1e-3) / 1e-4, slices=True, allow_minimum=False)
    assert [w.num_blocks for w in by_tokens] == [2]


def test_a_piece_in_flight_continues_through_as_many_blocks_as_their_price_allows():
    cost = _cost(token=0.0, attention=1e-3)  # only attention costs: windowed 1 kwork, full 10 kwork
    req = _video_request((1, 8, 8), (1.0, 10.0, 1.0, 10.0))
    video = req.videos[0]
    video.piece_groups, video.piece_blocks_done = (0, 1), 1  # the next block is a full one (10 ms)
    assert plan_encoder(req, EncoderBudget(1e9, 9e-3, cost.encoder_work_s), True, allow_minimum=False) == []
    work = plan_encoder(req, EncoderBudget(1e9, 11.5e-3, cost.encoder_work_s), True, allow_minimum=False)
    assert [(w.block_start, w.num_blocks) for w in work] == [(1, 2)]  # full + windowed = 11 ms; the next full won't
    forced = plan_encoder(req, EncoderBudget(1e9, 0.0, cost.encoder_work_s), True, allow_minimum=True)
    assert [(w.block_start, w.num_blocks) for w in forced] == [(1, 1)]  # one block may exceed: the video moves


def test_the_encoder_fit_learns_the_attention_price():
    """Steps mixing small and large frames through windowed and full blocks: the fit separates the price per
    encoder token from the price per patch pair (a token-only fit averaged them and underpriced big frames)."""
    cost = StepCostModel()
    true = (2e-3, 5e-5, 1.5e-6)
    samples = [(1, 27.0, 300.0), (0, 75.0, 1400.0), (0, 300.0, 22000.0), (1, 300.0, 300.0), (0, 27.0, 190.0),
               (0, 150.0, 11000.0), (1, 75.0, 90.0), (0, 600.0, 44000.0)] * 8
    for pieces, tokens, attention in samples:
        cost.encoder.add([float(pieces), tokens, attention], true[0] * pieces + true[1] * tokens + true[2] * attention)
    assert cost.encoder.w == pytest.approx(true, rel=1e-6)
    video = _video_request((3, 42, 74), block_attention_work(42, 74, 2, [False, True, False, True], 4)).videos[0]
    assert cost.encoder_left_s(video) == pytest.approx(
        3 * (true[1] * video.tokens_per_group + true[2] * sum(video.block_attention)))
    whole = EncoderWork(_video_request((3, 42, 74), video.block_attention), video, 0, 3)
    assert cost.encoder_work_s(whole) == pytest.approx(true[0] + cost.encoder_left_s(video))
