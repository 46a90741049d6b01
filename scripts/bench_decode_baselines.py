"""bench_decode: the baselines a server runs today, (a) sequential full decode then sample and (b) seek per frame, and
the one-core decode rate that sets the bound."""

from __future__ import annotations

import io

import av
import numpy as np

from flashcodec.plan import decode_start


def _open(data: bytes, index) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    container = av.open(io.BytesIO(data), mode="r")
    return container, container.streams[index.stream_index]


def _gather(frames: dict[int, np.ndarray], indices: list[int]) -> np.ndarray:
    """uint8 [T, H, W, 3] in sampled order: the output every method delivers (vLLM's loaders fill a
    preallocated array the same way; FlashCodec's decoders write into theirs)."""
    out = np.empty((len(indices), *frames[indices[0]].shape), dtype=np.uint8)
    for t, i in enumerate(indices):
        out[t] = frames[i]
    return out


def decode_sequential(data: bytes, index, indices: list[int], *, frame_threads: bool = False,
                      convert_all: bool = False) -> np.ndarray:
    """(a): decode every frame in order (the i-th frame out is presentation frame i) up to the last
    sampled one; RGB for the sampled frames (``convert_all``: for every frame, the others dropped)."""
    wanted, last, got = set(indices), max(indices), {}
    container, stream = _open(data, index)
    with container:
        if frame_threads:
            stream.codec_context.thread_type = "AUTO"  # thread_count stays 0 = one per core
        for i, frame in enumerate(container.decode(stream)):
            if convert_all or i in wanted:
                rgb = frame.to_ndarray(format="rgb24")
                if i in wanted:
                    got[i] = rgb
            if i >= last:
                break
    return _gather(got, indices)


def decode_seek_each(data: bytes, index, indices: list[int]) -> np.ndarray:
    """(b): for every sampled frame, seek to the keyframe it needs and decode forward to it."""
    got = {}
    container, stream = _open(data, index)
    with container:
        for f in sorted(set(indices)):
            key = int(index.presentation_index[decode_start(index, f)])
            # The keyframe's pts lands on it with mp4/mkv; its dts (smaller with B-frames) is the fallback
            # for a demuxer that lands after it, and lands a GOP early with mp4 (a GOP decoded for nothing).
            for target in dict.fromkeys((int(index.pts[key]), int(min(index.pts[key], index.dts[key])))):
                container.seek(target, stream=stream, backward=True)
                got[f] = _decode_forward_to(container, stream, int(index.pts[f]))
                if got[f] is not None:
                    break
            if got[f] is None:
                raise RuntimeError(f"seek baseline could not reach frame {f}")
    return _gather(got, indices)


def _decode_forward_to(container, stream, want_pts: int) -> np.ndarray | None:
    for frame in container.decode(stream):  # frames come out in presentation order
        if frame.pts == want_pts:
            return frame.to_ndarray(format="rgb24")
        if frame.pts > want_pts:
            return None  # landed after it
    return None


def full_decode_one_core(data: bytes, index) -> int:
    """Full decode on one thread, no conversion: timed, it gives the bound's single-core rate."""
    container, stream = _open(data, index)
    with container:
        stream.codec_context.thread_count = 1
        return sum(1 for _ in container.decode(stream))
