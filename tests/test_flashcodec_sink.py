"""FrameSink (the request's output, filled in place by the decoders) and resize_frames(out=...)."""

from __future__ import annotations

import threading

import flashcodec_fixtures  # noqa: F401  (puts backends/ on sys.path)
import numpy as np
import pytest
import torch

from flashcodec import VideoDecodeError, resize_frames
from flashcodec.frame_sink import FrameSink


def _frame(value: int, height: int = 36, width: int = 52) -> np.ndarray:
    rng = np.random.default_rng(value)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_frames_land_in_sampled_order_with_repeats() -> None:
    order = np.array([7, 3, 3, 9])  # frame 3 sampled twice (a window shorter than the temporal patch)
    sink = FrameSink(order, None)
    for f in (9, 3, 7):  # decode order differs from sampled order
        sink.put(f, _frame(f))
    out = sink.result()
    assert isinstance(out, np.ndarray) and out.shape == (4, 36, 52, 3) and out.dtype == np.uint8
    for t, f in enumerate(order):
        np.testing.assert_array_equal(out[t], _frame(int(f)))
    assert 3 in sink and 4 not in sink


def test_resized_into_the_slot_equals_the_reference_resize() -> None:
    sink = FrameSink([1, 0], (56, 84))
    for f in (0, 1):
        sink.put(f, _frame(f, 100, 150)[:, :140])  # a strided view, like PyAV's padded planes
    expected = resize_frames(np.stack([_frame(1, 100, 150)[:, :140], _frame(0, 100, 150)[:, :140]]), 56, 84)
    np.testing.assert_array_equal(sink.result(), expected)


def test_a_frame_of_another_size_is_refused_unless_resized() -> None:
    sink = FrameSink([0, 1], None)
    sink.put(0, _frame(0))
    with pytest.raises(VideoDecodeError, match="change size"):
        sink.put(1, _frame(1, 40, 52))


def test_a_missing_frame_is_an_error() -> None:
    sink = FrameSink([0, 1], None)
    sink.put(0, _frame(0))
    with pytest.raises(RuntimeError, match="no frame 1"):
        sink.result()


def test_torch_frames_give_a_tensor_on_their_device() -> None:
    sink = FrameSink([0, 1], (28, 28))
    for f in (0, 1):
        sink.put(f, torch.from_numpy(_frame(f)))
    sink.synchronize()  # a no-op on the CPU
    out = sink.result()
    assert isinstance(out, torch.Tensor) and out.device.type == "cpu" and tuple(out.shape) == (2, 28, 28, 3)
    expected = resize_frames(torch.from_numpy(np.stack([_frame(0), _frame(1)])), 28, 28)
    assert torch.equal(out, expected)


def test_threads_fill_one_output() -> None:
    order = list(range(32))
    sink = FrameSink(order, (28, 56))
    threads = [threading.Thread(target=lambda fs=fs: [sink.put(f, _frame(f)) for f in fs])
               for fs in (order[0::2], order[1::2])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = resize_frames(np.stack([_frame(f) for f in order]), 28, 56)
    np.testing.assert_array_equal(sink.result(), expected)


def test_resize_into_out_is_the_same_as_a_new_array() -> None:
    frames = np.stack([_frame(i, 362, 642) for i in range(3)])
    out = np.zeros((3, 336, 616, 3), dtype=np.uint8)
    assert resize_frames(frames, 336, 616, out=out) is out
    np.testing.assert_array_equal(out, resize_frames(frames, 336, 616))
    same = np.zeros_like(frames)
    resize_frames(frames, 362, 642, out=same)  # same size: the identity, copied
    np.testing.assert_array_equal(same, frames)
    with pytest.raises(ValueError, match="out must be"):
        resize_frames(frames, 336, 616, out=np.zeros((3, 336, 615, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="same kind"):
        resize_frames(frames, 336, 616, out=torch.zeros((3, 336, 616, 3), dtype=torch.uint8))
