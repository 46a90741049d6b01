"""FrameSink: one request's output array, filled in place by the decoder instances as they decode.

Collecting each instance's frames and ``np.stack``-ing them at the end copied every frame a second time,
on one thread, after the decoders had finished, into freshly allocated memory whose first touch
page-faults: 8-560 ms for 32-120 720p frames on the 2-core dev VM, the gap between the engine's and the
end-to-end efficiency in docs/benchmarks_decode.md. Here the uint8 [T, H, W, 3] output (sampled order)
is allocated once per request and every decoded frame goes straight into its slot — resized into it
when the request resizes — from the instance that made it, while the other instances keep decoding.

The array is allocated when the first frame arrives, like that frame: numpy from the CPU engines (on
recycled host memory from an OutputPool when one is given: output_pool.py says why), a torch tensor on
the frame's device from the GPU engines (decode_video need not know which engine ran, also after a
fallback), and without resizing at that frame's size (frames of another size are refused,
as ``np.stack`` refused them). Instances write disjoint slots, so only the allocation takes the lock.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import VideoDecodeError
from .output_pool import OutputPool
from .resize import resize_frames

if TYPE_CHECKING:
    import torch


class FrameSink:
    def __init__(self, order: Sequence[int] | np.ndarray, target_size: tuple[int, int] | None,
                 host_pool: OutputPool | None = None) -> None:
        """``order``: the presentation index of each output frame (a frame may be sampled twice);
        ``target_size``: (height, width) every frame is resized to with resize_frames, None: kept;
        ``host_pool``: where a numpy output's memory comes from (None: a new array)."""
        self.target_size = target_size
        self._host_pool = host_pool
        self._slots: dict[int, list[int]] = {}
        for t, frame in enumerate(int(i) for i in order):
            self._slots.setdefault(frame, []).append(t)
        if not self._slots:
            raise ValueError("a FrameSink needs at least one output frame")
        self._num = len(order)
        self._frames: np.ndarray | torch.Tensor | None = None
        self._filled: set[int] = set()
        self._lock = threading.Lock()

    def __contains__(self, frame: object) -> bool:
        """Whether presentation frame ``frame`` is in the output already."""
        return frame in self._filled

    def put(self, frame: int, image: np.ndarray | torch.Tensor) -> None:
        """Write presentation frame ``frame`` (uint8 [h, w, 3]) into its slot(s); thread-safe across frames."""
        slots = self._slots[frame]
        out = self._allocate(image)
        first = out[slots[0]]
        if self.target_size is not None:
            resize_frames(image[None], *self.target_size, out=first[None])
        elif tuple(image.shape) != tuple(first.shape):
            raise VideoDecodeError(f"frame {frame} is {image.shape[1]}x{image.shape[0]} but earlier frames are "
                                   f"{first.shape[1]}x{first.shape[0]}: videos that change size mid-stream are "
                                   "not supported unless resized")
        elif isinstance(first, np.ndarray):
            np.copyto(first, image)
        else:
            first.copy_(image)
        for t in slots[1:]:  # the same frame sampled again (a window shorter than the temporal patch)
            out[t] = first
        self._filled.add(frame)

    def synchronize(self) -> None:
        """Wait for the copies into a CUDA output (a GPU engine's frames may be freed after this)."""
        if self._frames is not None and not isinstance(self._frames, np.ndarray) and self._frames.is_cuda:
            import torch

            torch.cuda.current_stream(self._frames.device).synchronize()

    def result(self) -> np.ndarray | torch.Tensor:
        """The filled output; every sampled frame must have been put."""
        missing = [frame for frame in self._slots if frame not in self._filled]
        if missing or self._frames is None:
            raise RuntimeError(f"the decode engine delivered no frame {missing[0]} ({len(missing)} missing)")
        return self._frames

    def _allocate(self, like: Any) -> np.ndarray | torch.Tensor:
        if self._frames is None:
            with self._lock:
                if self._frames is None:
                    height, width = self.target_size or (int(like.shape[0]), int(like.shape[1]))
                    shape = (self._num, height, width, 3)
                    if isinstance(like, np.ndarray):
                        pool = self._host_pool
                        self._frames = pool.empty(shape) if pool else np.empty(shape, dtype=np.uint8)
                    else:
                        import torch

                        self._frames = torch.empty(shape, dtype=torch.uint8, device=like.device)
        return self._frames
