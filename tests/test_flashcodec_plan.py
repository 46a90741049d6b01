"""Decode planning on synthetic indexes: GOP mapping (B-frames, open GOP), costs, skipping, balancing."""

from __future__ import annotations

from fractions import Fraction

import flashcodec_fixtures  # noqa: F401  (puts backends/ on sys.path)
import pytest

from flashcodec.index import PacketInfo, build_index
from flashcodec.plan import (
    Segment,
    balance,
    decode_start,
    earlier_start,
    merge_runs,
    plan_cost,
    plan_decode,
    segments_for,
)


def closed_gop_index(num_frames: int, gop: int, bframes: int):
    """Presentation frames 0..N-1 in closed GOPs of ``gop`` frames, encoded I P B B P B B ... in decode
    order (each P before the B-frames it closes), like x264 with ``bframes`` B-frames."""
    decode_order = []
    for g0 in range(0, num_frames, gop):
        g1 = min(g0 + gop, num_frames)
        decode_order.append(g0)
        i = g0 + 1
        while i < g1:
            p = min(i + bframes, g1 - 1)
            decode_order += [p] + list(range(i, p))
            i = p + 1
    packets = [PacketInfo(pts=f, dts=d - 2, is_keyframe=f % gop == 0, pos=d, duration=1)
               for d, f in enumerate(decode_order)]
    return build_index(packets, codec="h264", width=64, height=64, time_base=Fraction(1, 30))


def open_gop_index():
    """Two GOPs; the second keyframe (pts 6) is followed in decode order by leading B-frames 4, 5 that
    are shown before it (they reference the first GOP), then by 7, 8.

    decode order: I0 P3 B1 B2 | I6 B4 B5 P8 B7
    """
    order = [(0, True), (3, False), (1, False), (2, False), (6, True), (4, False), (5, False), (8, False),
             (7, False)]
    packets = [PacketInfo(pts=p, dts=d, is_keyframe=k, pos=d, duration=1) for d, (p, k) in enumerate(order)]
    return build_index(packets, codec="hevc", width=64, height=64, time_base=Fraction(1, 30))


def test_index_presentation_order_is_pts_order() -> None:
    index = closed_gop_index(12, gop=6, bframes=2)
    assert index.pts.tolist() == list(range(12))
    assert index.keyframes.tolist() == [0, 6]
    # Frame 1 is a B-frame decoded third (after I0 and P3).
    assert index.decode_index[1] == 2 and index.decode_index[3] == 1
    assert index.presentation_index[index.decode_index].tolist() == list(range(12))


def test_frames_map_to_their_gop_keyframe() -> None:
    index = closed_gop_index(24, gop=12, bframes=2)
    assert [decode_start(index, f) for f in (0, 1, 5, 11)] == [0, 0, 0, 0]
    assert [decode_start(index, f) for f in (12, 13, 23)] == [12, 12, 12]


def test_cost_counts_decode_order_up_to_the_last_sampled_frame() -> None:
    index = closed_gop_index(24, gop=12, bframes=2)
    # Frame 1 is a B-frame: decoding it needs I0, P3, B1 -> 3 packets.
    (seg,) = segments_for(index, [1])
    assert (seg.start, seg.end, seg.cost, seg.frames) == (0, 2, 3, (1,))
    # Frames 0 and 4 (B-frame after P6, decode index 5): 6 packets, one segment.
    (seg,) = segments_for(index, [4, 0])
    assert (seg.start, seg.end, seg.cost, seg.frames) == (0, 5, 6, (0, 4))


def test_gops_without_sampled_frames_are_skipped() -> None:
    index = closed_gop_index(60, gop=12, bframes=2)
    segments = segments_for(index, [2, 50, 51])
    assert [s.start for s in segments] == [0, 48]
    total, _ = plan_cost(plan_decode(index, [2, 50, 51], 2))
    assert total == sum(s.cost for s in segments) < 60


def test_open_gop_leading_pictures_start_one_keyframe_earlier() -> None:
    index = open_gop_index()
    assert decode_start(index, 4) == 0 and decode_start(index, 5) == 0  # leading: previous GOP
    assert decode_start(index, 6) == 4 and decode_start(index, 7) == 4 and decode_start(index, 8) == 4
    segments = segments_for(index, [1, 5, 7])
    assert [(s.start, s.end, s.frames) for s in segments] == [(0, 6, (1, 5)), (4, 8, (7,))]


def test_all_keyframes_gop_of_one_frame() -> None:
    index = closed_gop_index(10, gop=1, bframes=0)
    segments = segments_for(index, [0, 3, 4, 9])
    assert [(s.start, s.cost) for s in segments] == [(0, 1), (3, 1), (4, 1), (9, 1)]
    runs = merge_runs(segments)  # 3 and 4 touch: one run
    assert [(r.start, r.end, r.frames) for r in runs] == [(0, 0, (0,)), (3, 4, (3, 4)), (9, 9, (9,))]


def test_one_gop_for_the_whole_video_is_one_segment() -> None:
    index = closed_gop_index(90, gop=250, bframes=2)
    plan = plan_decode(index, [0, 30, 60, 89], num_instances=3)
    assert len(plan) == 1 and len(plan[0]) == 1
    assert plan[0][0].start == 0 and plan[0][0].end == index.decode_index[89]


def test_balance_longest_processing_time_first() -> None:
    segments = [Segment(start=s, end=s + c - 1, frames=(s,)) for s, c in
                [(0, 10), (100, 7), (200, 5), (300, 4), (400, 3), (500, 1)]]
    assigned = balance(segments, 2)
    loads = [sum(s.cost for s in a) for a in assigned]
    assert sorted(loads) == [15, 15]  # 10+4+1 and 7+5+3
    assert all(a == sorted(a, key=lambda s: s.start) for a in assigned)
    assert balance(segments, 1)[0] == sorted(segments, key=lambda s: s.start)
    spread = balance(segments, 8)
    assert sum(1 for a in spread if a) == 6 and max(sum(s.cost for s in a) for a in spread) == 10
    assert balance(segments, 3) == balance(segments, 3)  # deterministic
    with pytest.raises(ValueError):
        balance(segments, 0)


def test_plan_spreads_gops_over_instances() -> None:
    index = closed_gop_index(120, gop=30, bframes=2)
    frames = list(range(0, 120, 10))  # 3 frames in each of 4 GOPs
    plan1, plan2, plan4 = (plan_decode(index, frames, k) for k in (1, 2, 4))
    assert len(plan1) == 1 and len(plan2) == 2 and len(plan4) == 4
    total1, busiest1 = plan_cost(plan1)
    total4, busiest4 = plan_cost(plan4)
    assert total1 == total4 and busiest4 * 4 == total4 and busiest1 == total1
    covered = sorted(f for runs in plan4 for run in runs for f in run.frames)
    assert covered == frames


def test_merge_runs_overlapping_and_adjacent() -> None:
    a, b, c = Segment(0, 5, (1,)), Segment(4, 9, (7,)), Segment(10, 12, (11,))
    assert merge_runs([c, a, b]) == [Segment(0, 12, (1, 7, 11))]
    assert merge_runs([a, Segment(7, 8, (8,))]) == [a, Segment(7, 8, (8,))]


def test_earlier_start() -> None:
    index = closed_gop_index(36, gop=12, bframes=2)
    assert earlier_start(index, 24) == 12 and earlier_start(index, 12) == 0
    assert earlier_start(index, 0) is None
