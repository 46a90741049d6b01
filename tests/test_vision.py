"""Frames -> vision-tower input: `patchify_frames` against a plain numpy re-implementation of
transformers' Qwen2VLImageProcessor video patch math, temporal padding, grid_thw, frame validation,
`load_vision_spec`, and the exactness of encoding a video in temporal slices (what the scheduler relies on)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from engine_helpers import synthetic_frames

from unifiedserve.vision import VisionSpec, as_uint8_tensor, load_vision_spec, patchify_frames

TINY_SPEC = VisionSpec()  # Qwen2.5-VL: patch 14, temporal 2, merge 2, CLIP mean/std


def hf_video_patches(frames: np.ndarray, spec: VisionSpec) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Qwen2VLImageProcessor._preprocess for a list of frames, without resizing, in numpy (float64)."""
    patches = frames.astype(np.float64) * (1 / 255)  # rescale (do_rescale)
    patches = (patches - np.array(spec.image_mean)) / np.array(spec.image_std)  # normalize, channels last
    patches = patches.transpose(0, 3, 1, 2)  # -> [T, C, H, W] (data_format=channels_first)
    tps, ps, m = spec.temporal_patch_size, spec.patch_size, spec.merge_size
    if patches.shape[0] % tps != 0:
        repeats = np.repeat(patches[-1][np.newaxis], tps - (patches.shape[0] % tps), axis=0)
        patches = np.concatenate([patches, repeats], axis=0)
    channel = patches.shape[1]
    grid_t = patches.shape[0] // tps
    grid_h, grid_w = patches.shape[2] // ps, patches.shape[3] // ps
    patches = patches.reshape(grid_t, tps, channel, grid_h // m, m, ps, grid_w // m, m, ps)
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = patches.reshape(grid_t * grid_h * grid_w, channel * tps * ps * ps)
    return flat, (grid_t, grid_h, grid_w)


@pytest.mark.parametrize(
    ("spec", "shape"),
    [
        (TINY_SPEC, (4, 56, 84)),
        (TINY_SPEC, (3, 28, 28)),  # odd T
        (TINY_SPEC, (1, 84, 56)),  # a single frame
        (TINY_SPEC, (7, 112, 28)),
        (VisionSpec(patch_size=4, temporal_patch_size=2, merge_size=2), (5, 16, 24)),
        (VisionSpec(patch_size=2, temporal_patch_size=3, merge_size=1), (4, 6, 4)),  # T padded by 2
        (VisionSpec(patch_size=3, temporal_patch_size=1, merge_size=3, image_mean=(0.5, 0.5, 0.5),
                    image_std=(0.5, 0.25, 1.0)), (2, 9, 18)),
    ],
)
def test_patchify_matches_hf_math(spec, shape) -> None:
    t, h, w = shape
    frames = synthetic_frames(t, h, w, seed=t * 31 + h)
    pixels, grid = patchify_frames(torch.from_numpy(frames), spec)
    expected, expected_grid = hf_video_patches(frames, spec)
    assert grid == expected_grid
    assert grid == (-(-t // spec.temporal_patch_size), h // spec.patch_size, w // spec.patch_size)
    assert pixels.dtype == torch.float32 and pixels.is_contiguous()
    assert tuple(pixels.shape) == expected.shape
    np.testing.assert_allclose(pixels.numpy(), expected, rtol=0, atol=2e-6)


def test_odd_frame_count_repeats_the_last_frame() -> None:
    frames = torch.from_numpy(synthetic_frames(5, 56, 56, seed=4))
    padded = torch.cat([frames, frames[-1:]])
    odd, grid_odd = patchify_frames(frames, TINY_SPEC)
    even, grid_even = patchify_frames(padded, TINY_SPEC)
    assert grid_odd == grid_even == (3, 4, 4)
    assert torch.equal(odd, even)


def test_temporal_groups_are_contiguous_rows() -> None:
    """Group g of a video is rows [g * h * w, (g + 1) * h * w): the runner slices the encoder input so."""
    frames = torch.from_numpy(synthetic_frames(6, 28, 56, seed=5))
    whole, (gt, gh, gw) = patchify_frames(frames, TINY_SPEC)
    for g in range(gt):
        part, _ = patchify_frames(frames[2 * g: 2 * g + 2], TINY_SPEC)
        assert torch.equal(whole[g * gh * gw: (g + 1) * gh * gw], part)


def test_patchify_rejects_sizes_that_are_not_multiples() -> None:
    with pytest.raises(ValueError, match="multiple of 28"):
        patchify_frames(torch.zeros(2, 30, 28, 3, dtype=torch.uint8), TINY_SPEC)


def test_as_uint8_tensor_accepts_numpy_torch_and_single_images() -> None:
    frames = synthetic_frames(2, 28, 28, seed=0)
    assert torch.equal(as_uint8_tensor(frames), torch.from_numpy(frames))
    assert torch.equal(as_uint8_tensor(torch.from_numpy(frames)), torch.from_numpy(frames))
    assert as_uint8_tensor(frames[0]).shape == (1, 28, 28, 3)
    strided = np.ascontiguousarray(frames.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)  # not C-contiguous
    assert torch.equal(as_uint8_tensor(strided), torch.from_numpy(frames))


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 28, 28, 3), dtype=np.float32),
        np.zeros((2, 28, 28, 4), dtype=np.uint8),
        np.zeros((2, 3, 28, 28), dtype=np.uint8),
        np.zeros((28, 28), dtype=np.uint8),
        np.zeros((1, 2, 28, 28, 3), dtype=np.uint8),
        torch.zeros(2, 28, 28, 3, dtype=torch.int64),
    ],
)
def test_as_uint8_tensor_rejects_bad_frames(bad) -> None:
    with pytest.raises(ValueError, match=r"uint8 \[T, H, W, 3\]"):
        as_uint8_tensor(bad)


def test_as_uint8_tensor_rejects_non_arrays() -> None:
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        as_uint8_tensor([[[[0, 0, 0]]]])


def test_load_vision_spec_reads_the_tiny_model(tiny_model_path) -> None:
    spec = load_vision_spec(tiny_model_path)
    with open(f"{tiny_model_path}/video_preprocessor_config.json") as f:
        video = json.load(f)
    assert (spec.patch_size, spec.temporal_patch_size, spec.merge_size) == (14, 2, 2)
    assert spec.image_mean == tuple(video["image_mean"]) and spec.image_std == tuple(video["image_std"])
    # video_preprocessor_config.json is read last and wins over preprocessor_config.json (images).
    assert (spec.min_pixels, spec.max_pixels) == (video["min_pixels"], video["max_pixels"])
    assert spec.size_factor == 28


def test_load_vision_spec_fallbacks(tmp_path) -> None:
    assert load_vision_spec(str(tmp_path)) == VisionSpec()  # no files: Qwen defaults
    (tmp_path / "config.json").write_text(json.dumps(
        {"vision_config": {"patch_size": 16, "temporal_patch_size": 2, "spatial_merge_size": 2}}))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 1024, "longest_edge": 4096}, "image_mean": [0.5, 0.5, 0.5]}))
    spec = load_vision_spec(str(tmp_path))
    assert (spec.patch_size, spec.merge_size, spec.size_factor) == (16, 2, 32)
    assert (spec.min_pixels, spec.max_pixels) == (1024, 4096)  # from "size" when min/max_pixels are absent
    assert spec.image_mean == (0.5, 0.5, 0.5) and spec.image_std == VisionSpec().image_std


def test_encoding_in_temporal_slices_is_exact(tiny_model_path) -> None:
    """DESIGN.md 5: the vision tower attends within one temporal group, so 2+2 groups == 4 groups at once."""
    import transformers

    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_path, dtype=torch.float32)
    model.eval()
    spec = load_vision_spec(tiny_model_path)
    pixels, grid = patchify_frames(torch.from_numpy(synthetic_frames(8, 56, 84, seed=9)), spec)
    per_group = grid[1] * grid[2]
    with torch.inference_mode():
        whole = model.model.get_video_features(pixels, torch.tensor([grid])).pooler_output[0]
        parts = [model.model.get_video_features(pixels[a * per_group: b * per_group],
                                                torch.tensor([[b - a, grid[1], grid[2]]])).pooler_output[0]
                 for a, b in ((0, 2), (2, 3), (3, 4))]
    assert torch.allclose(whole, torch.cat(parts), atol=1e-5, rtol=0)
