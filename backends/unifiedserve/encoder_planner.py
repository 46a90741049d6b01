"""Plans encoder work for one request under a budget: which temporal groups, through how many blocks.

Size unit: "encoder tokens" = merged visual tokens carried through the whole vision tower. One temporal
group through one of the tower's `depth` blocks is tokens_per_group / depth of them. A video is encoded in
pieces: a piece is a range of whole groups that goes through the blocks over one or more steps (the
runner keeps its hidden state in between); its tokens become usable when it leaves the last block.

Time is not proportional to encoder tokens: a full-attention block attends over all of a group's patches
(quadratic in the frame's area), a windowed block over 8x8-patch windows. Measured on the 2-core VM, small
model, 2 threads: one 720p frame pair took 17 ms through a windowed block and 42 ms through a full one; a 240p
pair 2.1 and 1.8 ms. So each piece of work also carries its attention work (`attention_work`, thousands of
query x key patch pairs, per block as the tower runs it) and, on timed steps, the budget is seconds at the
cost model's prices (`EncoderBudget`), not tokens at one average price: priced by tokens alone, 720p slices
ran 3-5x over their step's target and the text questions behind them missed their TTFT (served, 2026-12-06).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from unifiedserve.request import Request, VideoItem


@dataclass
class EncoderWork:
    request: Request
    video: VideoItem
    group_start: int
    group_end: int
    block_start: int = 0  # 0: the runner starts a new piece (patch embedding) before the blocks
    num_blocks: int = 0  # 0 means all of them (a whole-tower piece)

    def __post_init__(self) -> None:
        if self.num_blocks == 0:
            self.num_blocks = self.video.encoder_depth - self.block_start

    @property
    def completes(self) -> bool:
        """The piece leaves the last block in this step: its tokens are ready for prefill afterwards."""
        return self.block_start + self.num_blocks >= self.video.encoder_depth

    @property
    def num_tokens(self) -> float:
        groups = self.group_end - self.group_start
        return groups * self.video.tokens_per_group * self.num_blocks / self.video.encoder_depth

    @property
    def attention_work(self) -> float:
        """Thousands of query x key patch pairs the work's blocks attend over (0 when the video has no per-block
        figures)."""
        per_group = self.video.block_attention[self.block_start:self.block_start + self.num_blocks]
        return (self.group_end - self.group_start) * sum(per_group)


def block_attention_work(grid_h: int, grid_w: int, merge: int, full_blocks: Sequence[bool],
                         window_merged: int) -> tuple[float, ...]:
    """Attention work of one temporal group through each block of the tower, in thousands of patch pairs.

    A full-attention block: every patch of the group attends to every other. A windowed one (Qwen2.5-VL): windows
    of `window_merged` x `window_merged` merged tokens tile the group from its top left corner (HF's
    get_vision_window_index pads at the bottom and right), each of merge**2 patches per merged token."""
    patches = grid_h * grid_w
    full = patches * patches / 1000.0
    rows, cols = grid_h // merge, grid_w // merge

    def squares(n: int) -> int:  # sum of squared window extents along one axis
        return (n // window_merged) * window_merged**2 + (n % window_merged) ** 2

    windowed = merge**4 * squares(rows) * squares(cols) / 1000.0
    return tuple(full if f else windowed for f in full_blocks)


class EncoderBudget:
    """What one request may still plan in this step: encoder tokens (the configured cap), and on timed steps
    seconds, each piece of work priced by `price` (the cost model: piece start, tokens, attention)."""

    def __init__(self, tokens: float, time_s: float = math.inf,
                 price: Callable[[EncoderWork], float] | None = None) -> None:
        self.tokens, self.time_s, self.price = tokens, time_s, price

    def fits(self, work: EncoderWork) -> bool:
        if work.num_tokens > self.tokens + 1e-9:
            return False
        return self.price is None or self.price(work) <= self.time_s + 1e-12

    def take(self, work: EncoderWork) -> None:
        self.tokens -= work.num_tokens
        if self.price is not None:
            self.time_s -= self.price(work)

    def largest(self, n: int, make: Callable[[int], EncoderWork]) -> int:
        """The largest k in [0, n] whose work make(k) fits (the price grows with k)."""
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.fits(make(mid)):
                lo = mid
            else:
                hi = mid - 1
        return lo


def plan_encoder(req: Request, budget: EncoderBudget | float, slices: bool, allow_minimum: bool
                 ) -> list[EncoderWork]:
    """Work for `req` within `budget` (a float: that many encoder tokens), in prompt order (prefill consumes
    videos in order).

    slices=False (blocking/fcfs policies): every remaining group through every block, budget or not.
    allow_minimum: when nothing else is encoded this step, one group through one block may exceed the
    budget, so a video never starves behind a budget smaller than its smallest unit.
    """
    if not isinstance(budget, EncoderBudget):
        budget = EncoderBudget(float(budget))
    work: list[EncoderWork] = []

    def add(w: EncoderWork) -> None:
        work.append(w)
        budget.take(w)

    for item in req.videos:
        if item.fully_encoded:
            continue
        if not slices:
            work.extend(_finish_piece(req, item))
            if _next_group(item) < item.num_groups:
                work.append(EncoderWork(req, item, _next_group(item), item.num_groups))
            continue
        first = allow_minimum and not work
        if item.piece_groups is not None:  # continue the piece in flight
            g0, g1 = item.piece_groups
            done, left = item.piece_blocks_done, item.encoder_depth - item.piece_blocks_done
            blocks = budget.largest(left, functools.partial(EncoderWork, req, item, g0, g1, done))
            if blocks <= 0 and first:
                blocks = 1
            if blocks <= 0:
                break
            add(EncoderWork(req, item, g0, g1, done, blocks))
            if blocks < left:
                break
        start = _next_group(item)
        remaining = item.num_groups - start
        if remaining <= 0:
            continue
        groups = budget.largest(remaining, _whole_groups_from(req, item, start))
        if groups >= 1:  # whole groups through the whole tower fit
            add(EncoderWork(req, item, start, start + groups))
            if groups == remaining:
                continue
            start += groups
        # The next group does not fit whole: start it through as many blocks as the rest of the budget allows.
        blocks = budget.largest(item.encoder_depth, functools.partial(EncoderWork, req, item, start, start + 1, 0))
        if blocks <= 0 and allow_minimum and not work:
            blocks = 1
        if blocks > 0:
            add(EncoderWork(req, item, start, start + 1, 0, blocks))
        break
    return work


def _whole_groups_from(req: Request, item: VideoItem, start: int) -> Callable[[int], EncoderWork]:
    return lambda groups: EncoderWork(req, item, start, start + groups)


def _next_group(item: VideoItem) -> int:
    return item.piece_groups[1] if item.piece_groups is not None else item.num_encoded_groups


def _finish_piece(req: Request, item: VideoItem) -> list[EncoderWork]:
    if item.piece_groups is None:
        return []
    g0, g1 = item.piece_groups
    return [EncoderWork(req, item, g0, g1, item.piece_blocks_done)]
