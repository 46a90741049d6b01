"""Encoder slicing is exact: by temporal groups, and block by block through the vision tower."""

from __future__ import annotations

import pytest
import torch
import transformers
from engine_helpers import synthetic_frames

from unifiedserve.layered_encoder import LayeredVisionEncoder
from unifiedserve.vision import load_vision_spec, patchify_frames

ARCHS = {"qwen2.5-vl": transformers.Qwen2_5_VLForConditionalGeneration,
         "qwen2-vl": transformers.Qwen2VLForConditionalGeneration}


@pytest.fixture(scope="module", params=sorted(ARCHS))
def model_and_spec(request, tiny_model_path, tiny_qwen2_vl_path):
    path = tiny_model_path if request.param == "qwen2.5-vl" else tiny_qwen2_vl_path
    model = ARCHS[request.param].from_pretrained(path, dtype=torch.float32).eval()
    return model, load_vision_spec(path)


def _video(spec, frames=8, h=112, w=168):
    pixels, grid = patchify_frames(torch.from_numpy(synthetic_frames(frames, h, w, seed=3)), spec)
    return pixels, grid


def test_block_by_block_equals_whole_tower(model_and_spec):
    model, spec = model_and_spec
    pixels, grid = _video(spec)
    grid_t = torch.tensor([grid])
    with torch.inference_mode():
        reference = model.model.visual(pixels, grid_thw=grid_t).pooler_output
    encoder = LayeredVisionEncoder(model.model.visual)
    for step in (1, 2, encoder.depth):
        piece = encoder.start(pixels, grid_t)
        while not encoder.done(piece):
            encoder.run_blocks(piece, step)
        assert torch.equal(encoder.finish(piece), reference)


def test_temporal_groups_slice_exactly(model_and_spec):
    model, spec = model_and_spec
    pixels, (t, h, w) = _video(spec, frames=8)
    encoder = LayeredVisionEncoder(model.model.visual)
    whole = encoder.encode(pixels, torch.tensor([[t, h, w]]))
    per_group = h * w
    parts = [encoder.encode(pixels[g * per_group:(g + n) * per_group], torch.tensor([[n, h, w]]))
             for g, n in ((0, 1), (1, 2), (3, 1))]
    assert torch.equal(torch.cat(parts), whole)


def test_the_engine_loads_the_patch_embedding_as_a_matmul_equal_to_the_conv3d(model_and_spec, tiny_model_path,
                                                                               tiny_qwen2_vl_path):
    """model_loader fuses the stride == kernel Conv3d into a Linear (60x faster on CPU bf16): same weights, same
    tower output up to rounding order."""
    from unifiedserve.model_loader import load_model

    stock, spec = model_and_spec
    path = tiny_model_path if isinstance(stock, transformers.Qwen2_5_VLForConditionalGeneration) else tiny_qwen2_vl_path
    loaded = load_model(path, "cpu", "float32")
    visual = loaded.model.model.visual
    assert not any(isinstance(m, torch.nn.Conv3d) for m in visual.modules())
    pixels, grid = _video(spec)
    grid_t = torch.tensor([grid])
    with torch.inference_mode():
        fused = LayeredVisionEncoder(visual).encode(pixels, grid_t)
        reference = stock.model.visual(pixels, grid_thw=grid_t).pooler_output
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)
