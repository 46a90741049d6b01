"""THE reference frame resize. FlashCodec and the engine both call this one function, so a frame resized
on either side of the pipeline is the same bytes.

Math: torch bicubic with antialias on float32 (what qwen-vl-utils / HF's video processor do), then
round and clamp back to uint8. Works on numpy arrays and on torch tensors on any device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

FramesT = TypeVar("FramesT", np.ndarray, "torch.Tensor")

# Frames per interpolate call: bounds the float32 working copy (about 64 MiB of input pixels per chunk)
# without changing results — interpolate treats every frame independently.
_CHUNK_PIXELS = 16 * 2**20 // 3


def resize_frames(frames: FramesT, height: int, width: int, out: FramesT | None = None) -> FramesT:
    """uint8 [T, H, W, 3] -> uint8 [T, height, width, 3], same type (and device) as the input.

    ``out``: an array of that shape and type (a numpy view is fine) to write the result into instead
    of a new one — decoders resize straight into their slot of a request's output (frame_sink.py).
    """
    import torch
    import torch.nn.functional as F

    is_numpy = isinstance(frames, np.ndarray)
    video = torch.from_numpy(frames) if is_numpy else frames
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {video.dtype} {tuple(video.shape)}")
    if height < 1 or width < 1:
        raise ValueError(f"target size must be positive, got {height}x{width}")
    num, src_h, src_w = int(video.shape[0]), int(video.shape[1]), int(video.shape[2])
    target = _output(out, is_numpy, (num, height, width, 3), video.device)
    if (src_h, src_w) == (height, width):
        # Bicubic at scale 1 samples exactly at pixel centres (weights 1, 0, 0, 0): the identity.
        if target is None:
            return frames.copy() if is_numpy else frames.clone()
        target.copy_(video)
        return out
    if target is None:
        target = torch.empty((num, height, width, 3), dtype=torch.uint8, device=video.device)
    chunk = max(1, _CHUNK_PIXELS // max(src_h * src_w, height * width))
    for lo in range(0, num, chunk):
        x = video[lo:lo + chunk].permute(0, 3, 1, 2).to(torch.float32)
        y = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
        # Cast while still NCHW-contiguous, then one strided copy into the slot: measured faster than
        # casting during the transposing copy.
        target[lo:lo + chunk] = y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    if out is not None:
        return out
    return target.numpy() if is_numpy else target


def _output(out: FramesT | None, is_numpy: bool, shape: tuple[int, ...], device: object) -> torch.Tensor | None:
    """``out`` as a tensor sharing its memory, after checking it can take the result."""
    if out is None:
        return None
    import torch

    if isinstance(out, np.ndarray) != is_numpy:
        raise ValueError(f"out must be the same kind of array as the frames, got {type(out).__name__}")
    target = torch.from_numpy(out) if is_numpy else out
    if tuple(target.shape) != shape or target.dtype != torch.uint8 or target.device != device:
        raise ValueError(f"out must be uint8 {shape} on {device}, got {target.dtype} {tuple(target.shape)} "
                         f"on {target.device}")
    return target
