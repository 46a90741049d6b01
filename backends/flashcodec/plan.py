"""Decode plan: which GOP segments to decode, and which decoder instance decodes each.

A sampled frame can only be decoded by starting at a keyframe at or before it in decode order. Its
segment starts at the last such keyframe — or one keyframe earlier when the frame is a *leading
picture* (after the keyframe in decode order but shown before it, as in open GOPs: x265's CRA, x264
--open-gop), because those reference the previous GOP and a decoder that starts at the keyframe drops
them. A segment's cost is the number of packets decoded: from its start to its last sampled frame in
decode order (B-frames included). GOPs without a sampled frame are never touched.

Pure functions over a VideoIndex; no decoding here.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .index import VideoIndex


@dataclass(frozen=True)
class Segment:
    """Decode packets [start, end] (decode order, inclusive); keep frames ``frames``."""

    start: int  # decode index decoding starts at: a keyframe, or 0 (the stream's first packet)
    end: int  # decode index of the last packet that must be decoded
    frames: tuple[int, ...]  # presentation indices to keep, ascending, unique

    @property
    def cost(self) -> int:
        return self.end - self.start + 1


def _keyframe_pts(index: VideoIndex, decode_idx: int) -> int:
    return int(index.pts[index.presentation_index[decode_idx]])


def decode_start(index: VideoIndex, frame: int) -> int:
    """Decode index where decoding must start to produce presentation frame ``frame``."""
    decode_idx = int(index.decode_index[frame])
    gop = int(np.searchsorted(index.keyframes, decode_idx, side="right")) - 1
    if gop < 0:
        return 0  # before the first keyframe: only a decode from the stream's start can try
    keyframe = int(index.keyframes[gop])
    if index.pts[frame] < _keyframe_pts(index, keyframe):  # leading picture of an open GOP
        return int(index.keyframes[gop - 1]) if gop > 0 else 0
    return keyframe


def earlier_start(index: VideoIndex, start: int) -> int | None:
    """The start point before ``start`` (previous keyframe, else 0); None when already at 0."""
    if start <= 0:
        return None
    gop = int(np.searchsorted(index.keyframes, start, side="left")) - 1
    return int(index.keyframes[gop]) if gop >= 0 else 0


def segments_for(index: VideoIndex, frames: Sequence[int],
                 start_of: dict[int, int] | None = None) -> list[Segment]:
    """One segment per start point that has sampled frames, sorted by start.

    ``start_of`` overrides the start for some frames (the decoder's fallback after a miss).
    """
    by_start: dict[int, list[int]] = {}
    for frame in sorted({int(f) for f in frames}):
        start = start_of[frame] if start_of and frame in start_of else decode_start(index, frame)
        by_start.setdefault(start, []).append(frame)
    segments = []
    for start, kept in sorted(by_start.items()):
        end = int(max(index.decode_index[f] for f in kept))
        segments.append(Segment(start=start, end=end, frames=tuple(kept)))
    return segments


def balance(segments: Sequence[Segment], num_instances: int) -> list[list[Segment]]:
    """Longest-processing-time-first: biggest segment to the least-loaded instance.

    Returns ``num_instances`` lists (some may be empty), each sorted by start. Ties go to the lowest
    instance number, so the plan is deterministic.
    """
    if num_instances < 1:
        raise ValueError(f"num_instances must be >= 1, got {num_instances}")
    loads = [(0, i) for i in range(num_instances)]
    assigned: list[list[Segment]] = [[] for _ in range(num_instances)]
    for seg in sorted(segments, key=lambda s: (-s.cost, s.start)):
        load, i = heapq.heappop(loads)
        assigned[i].append(seg)
        heapq.heappush(loads, (load + seg.cost, i))
    return [sorted(a, key=lambda s: s.start) for a in assigned]


def merge_runs(segments: Sequence[Segment]) -> list[Segment]:
    """Join an instance's segments that touch or overlap into one run: decoding straight on through
    the next keyframe is exactly what a sequential decode does, and saves a seek."""
    runs: list[Segment] = []
    for seg in sorted(segments, key=lambda s: s.start):
        if runs and seg.start <= runs[-1].end + 1:
            prev = runs[-1]
            runs[-1] = Segment(start=prev.start, end=max(prev.end, seg.end),
                               frames=tuple(sorted(set(prev.frames) | set(seg.frames))))
        else:
            runs.append(seg)
    return runs


def plan_decode(index: VideoIndex, frames: Sequence[int], num_instances: int) -> list[list[Segment]]:
    """Per busy decoder instance, its runs in decode order (empty instances dropped)."""
    assigned = balance(segments_for(index, frames), num_instances)
    return [merge_runs(a) for a in assigned if a]


def plan_cost(plan: Sequence[Sequence[Segment]]) -> tuple[int, int]:
    """(total packets decoded, packets decoded by the busiest instance) — the latency proxy."""
    loads = [sum(run.cost for run in runs) for runs in plan]
    return sum(loads), max(loads, default=0)
