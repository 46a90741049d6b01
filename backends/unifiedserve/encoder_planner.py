"""Plans encoder work for one request under a budget: which temporal groups, through how many blocks.

Cost unit: "encoder tokens" = merged visual tokens carried through the whole vision tower. One temporal
group through one of the tower's `depth` blocks costs tokens_per_group / depth. A video is encoded in
pieces: a piece is a range of whole groups that goes through the blocks over one or more steps (the
runner keeps its hidden state in between); its tokens become usable when it leaves the last block.
"""

from __future__ import annotations

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


def plan_encoder(req: Request, budget: float, slices: bool, allow_minimum: bool) -> list[EncoderWork]:
    """Work for `req` within `budget` encoder tokens, in prompt order (prefill consumes videos in order).

    slices=False (blocking/fcfs policies): every remaining group through every block, budget or not.
    allow_minimum: when nothing else is encoded this step, one group through one block may exceed the
    budget, so a video never starves behind a budget smaller than its smallest unit.
    """
    work: list[EncoderWork] = []
    used = 0.0
    for item in req.videos:
        if item.fully_encoded:
            continue
        if not slices:
            work.extend(_finish_piece(req, item))
            if _next_group(item) < item.num_groups:
                work.append(EncoderWork(req, item, _next_group(item), item.num_groups))
            continue
        unit = item.tokens_per_group / item.encoder_depth  # one group through one block
        first = allow_minimum and not work
        if item.piece_groups is not None:  # continue the piece in flight
            g0, g1 = item.piece_groups
            left = item.encoder_depth - item.piece_blocks_done
            blocks = min(left, int((budget - used) // ((g1 - g0) * unit)))
            if blocks <= 0 and first:
                blocks = 1
            if blocks <= 0:
                break
            work.append(EncoderWork(req, item, g0, g1, item.piece_blocks_done, blocks))
            used += work[-1].num_tokens
            if blocks < left:
                break
        start = _next_group(item)
        remaining = item.num_groups - start
        if remaining <= 0:
            continue
        groups = min(remaining, int((budget - used) // item.tokens_per_group))
        if groups >= 1:  # whole groups through the whole tower fit
            work.append(EncoderWork(req, item, start, start + groups))
            used += work[-1].num_tokens
            if groups == remaining:
                continue
            start += groups
        # The next group does not fit whole: start it through as many blocks as the rest of the budget allows.
        blocks = min(item.encoder_depth, int((budget - used) // unit))
        if blocks <= 0 and allow_minimum and not work:
            blocks = 1
        if blocks > 0:
            work.append(EncoderWork(req, item, start, start + 1, 0, blocks))
        break
    return work


def _next_group(item: VideoItem) -> int:
    return item.piece_groups[1] if item.piece_groups is not None else item.num_encoded_groups


def _finish_piece(req: Request, item: VideoItem) -> list[EncoderWork]:
    if item.piece_groups is None:
        return []
    g0, g1 = item.piece_groups
    return [EncoderWork(req, item, g0, g1, item.piece_blocks_done)]
