"""FrameSink (the request's output, filled in place by the decoders), resize_frames(out=...) and the
recycled host memory outputs are made of (OutputPool)."""

from __future__ import annotations

import threading

import flashcodec_fixtures  # noqa: F401  (puts backends/ on sys.path)
import numpy as np
import pytest
import torch

from flashcodec import VideoDecodeError, resize_frames
from flashcodec.frame_sink import FrameSink
from flashcodec.output_pool import OutputPool, output_pool


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


def test_pool_reuses_memory_only_after_every_view_is_gone() -> None:
    pool = OutputPool(max_free_bytes=10_000)
    first = pool.empty((2, 10, 10, 3))
    address = first.ctypes.data
    view = torch.from_numpy(first[1])  # a tensor on a view keeps the memory taken
    del first
    second = pool.empty((2, 10, 10, 3))
    assert second.ctypes.data != address and pool.free_bytes == 0
    del view
    assert pool.free_bytes == 600  # given back once nothing can reach it
    third = pool.empty((1, 10, 15, 3))  # smaller outputs fit a block up to twice their size
    assert third.ctypes.data == address and third.shape == (1, 10, 15, 3) and third.flags.writeable
    assert pool.free_bytes == 0
    del second, third
    assert pool.free_bytes == 1200


def test_pool_keeps_at_most_its_cap_and_skips_outputs_above_it() -> None:
    pool = OutputPool(max_free_bytes=1000)
    arrays = [pool.empty((100, 3)) for _ in range(4)]
    del arrays
    assert pool.free_bytes == 900  # three of the four blocks (the least recently returned dropped)
    big = pool.empty((1001,))
    assert big.flags.owndata  # a plain array: never pooled
    assert output_pool(0) is None and output_pool(1000) is output_pool(1000)


def test_an_output_freed_while_the_pool_is_locked_does_not_deadlock() -> None:
    """The garbage collector may run an output's finalizer on a thread that holds the pool's lock (inside
    `_take`); giving the block back must not wait for that lock (a decoder thread once deadlocked on itself)."""
    pool = OutputPool(max_free_bytes=10_000)
    out = pool.empty((2, 10, 10, 3))
    done = threading.Event()

    def free_under_the_lock() -> None:
        nonlocal out
        with pool._lock:  # as `_take` holds it when a collection frees an output
            del out  # its finalizer gives the block back here, on this thread
            done.set()

    worker = threading.Thread(target=free_under_the_lock, daemon=True)
    worker.start()
    worker.join(10)
    assert done.is_set(), "the finalizer waited for the lock its own thread holds"
    assert pool.free_bytes == 600  # filed once the lock is free


def test_sink_output_comes_from_the_pool() -> None:
    pool = OutputPool(max_free_bytes=2**20)
    sink = FrameSink([0, 1], None, pool)
    for f in (0, 1):
        sink.put(f, _frame(f))
    out = sink.result()
    assert not out.flags.owndata
    del sink, out
    assert pool.free_bytes == 2 * 36 * 52 * 3
