"""One decoder instance's loop over its runs, with the fallback for frames a run did not produce.

Shared by the CPU (decode_pyav) and GPU (decode_nvdec) engines, which differ only in how they decode
one run. A run that ends without some of its sampled frames (a decoder that drops frames it cannot
reconstruct after a jump) is decoded again for those frames from the previous keyframe (retry level 1),
then from the start of the stream (level 2); after that, or when the data ran out before the run's last
packet, the frame is undecodable. Bounded, so a damaged file costs at most a few extra decodes, never
one per GOP. Retries go before the instance's next run.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass

from .index import VideoIndex
from .plan import Segment, earlier_start, merge_runs, segments_for


@dataclass
class RunOutcome:
    produced: int = 0  # frames the decoder put out
    bad_packets: int = 0  # packets the decoder refused as invalid data (skipped, as ffmpeg's CLI does)
    reached_end: bool = False  # the demuxer delivered the run's last packet


def decode_runs(index: VideoIndex, next_run: Callable[[], Segment | None],
                decode_run: Callable[[Segment, int], RunOutcome], delivered: Container[int],
                undecodable: Callable[[int, RunOutcome], Exception]) -> tuple[int, int]:
    """Decode runs from ``next_run`` (None: no more) until none is left.

    ``decode_run(run, level)`` decodes one run (level 0 as planned, 1 and 2 the retries) and puts its
    frames where ``delivered`` sees them; ``undecodable(frame, outcome)`` is the error to raise for a
    frame no retry can produce. Returns (frames the decoder produced, runs decoded).
    """
    produced = num_runs = 0
    retries: list[tuple[Segment, int]] = []
    while True:
        if retries:
            run, level = retries.pop(0)
        else:
            run, level = next_run(), 0
            if run is None:
                return produced, num_runs
        num_runs += 1
        outcome = decode_run(run, level)
        produced += outcome.produced
        missing = [f for f in run.frames if f not in delivered]
        if not missing:
            continue
        start = earlier_start(index, run.start) if level == 0 else (0 if run.start > 0 else None)
        if not outcome.reached_end or start is None:
            raise undecodable(missing[0], outcome)
        retry = merge_runs(segments_for(index, missing, start_of=dict.fromkeys(missing, start)))
        retries = [(r, level + 1) for r in retry] + retries
