"""scripts/make_tiny_model.py: generated checkpoints load like real Qwen2(.5)-VL ones, offline, deterministically."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch the hub
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import make_tiny_model  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoConfig, AutoTokenizer  # noqa: E402
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD  # noqa: E402

ARCH_CLASSES = {
    "qwen2.5-vl": transformers.Qwen2_5_VLForConditionalGeneration,
    "qwen2-vl": transformers.Qwen2VLForConditionalGeneration,
}
CLIP_MEAN = torch.tensor(OPENAI_CLIP_MEAN)
CLIP_STD = torch.tensor(OPENAI_CLIP_STD)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    paths = {arch: root / arch for arch in ARCH_CLASSES}
    for arch, path in paths.items():
        assert make_tiny_model.main(["--out", str(path), "--arch", arch]) == 0
    return paths


@pytest.fixture(params=list(ARCH_CLASSES))
def arch(request) -> str:
    return request.param


def _video_inputs(frames: torch.Tensor, patch: int = 14, merge: int = 2, temporal: int = 2):
    """uint8 [T, H, W, 3] -> (pixel_values_videos, video_grid_thw) with Qwen2VLVideoProcessor.patchify's layout."""
    video = (frames.permute(0, 3, 1, 2).float() / 255 - CLIP_MEAN[:, None, None]) / CLIP_STD[:, None, None]
    t, c, h, w = video.shape
    gt, gh, gw = t // temporal, h // patch, w // patch
    patches = video.view(gt, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (gt, gh/m, gw/m, m, m, C, tp, p, p)
    return patches.reshape(gt * gh * gw, c * temporal * patch * patch), torch.tensor([[gt, gh, gw]])


def _video_prompt(tok, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def test_loads_offline_with_matching_ids(models, arch):
    path = models[arch]
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    model = ARCH_CLASSES[arch].from_pretrained(path, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    assert isinstance(model, ARCH_CLASSES[arch]) and model.dtype == torch.float32
    assert type(tok).__name__ == "Qwen2Tokenizer" and len(tok) == make_tiny_model.NUM_TRAINED_TOKENS + 14

    ids = {t: tok.convert_tokens_to_ids(t) for t in make_tiny_model.SPECIAL_TOKENS}
    assert list(ids.values()) == list(range(len(tok) - 14, len(tok)))  # consecutive, in Qwen's order
    for t in make_tiny_model.SPECIAL_TOKENS:
        assert tok(t, add_special_tokens=False).input_ids == [ids[t]]  # atomic, never split
    assert config.image_token_id == ids["<|image_pad|>"] and config.video_token_id == ids["<|video_pad|>"]
    assert config.vision_start_token_id == ids["<|vision_start|>"]
    assert config.vision_end_token_id == ids["<|vision_end|>"]
    text = config.text_config
    assert (text.eos_token_id, text.bos_token_id, text.pad_token_id) == (
        ids["<|im_end|>"], ids["<|endoftext|>"], ids["<|endoftext|>"])  # fmt: skip
    assert tok.eos_token_id == ids["<|im_end|>"] and tok.pad_token_id == ids["<|endoftext|>"]
    assert text.vocab_size >= len(tok) and text.vocab_size % 64 == 0
    assert not config.tie_word_embeddings
    assert sum(text.rope_parameters["mrope_section"]) * 2 == text.hidden_size // text.num_attention_heads
    gen = model.generation_config
    assert gen.eos_token_id == [ids["<|im_end|>"], ids["<|endoftext|>"]] and gen.do_sample is False


def test_processor_configs(models, arch):
    for name, key in (("preprocessor_config.json", "image_processor_type"),
                      ("video_preprocessor_config.json", "video_processor_type")):  # fmt: skip
        cfg = json.loads((models[arch] / name).read_text())
        assert cfg[key] in ("Qwen2VLImageProcessor", "Qwen2VLVideoProcessor")
        assert (cfg["patch_size"], cfg["temporal_patch_size"], cfg["merge_size"]) == (14, 2, 2)
        assert cfg["image_mean"] == list(OPENAI_CLIP_MEAN) and cfg["image_std"] == list(OPENAI_CLIP_STD)
        assert cfg["min_pixels"] <= cfg["max_pixels"] == cfg["size"]["longest_edge"]
    video = json.loads((models[arch] / "video_preprocessor_config.json").read_text())
    assert video["max_pixels"] == 64 * 28 * 28  # tiny: 224x224 frames at most


def test_chat_template(models, arch):
    tok = AutoTokenizer.from_pretrained(models[arch], local_files_only=True)
    text = _video_prompt(tok, "What happens?")
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|video_pad|><|vision_end|>What happens?<|im_end|>\n<|im_start|>assistant\n"
    )
    image = [{"role": "system", "content": "Be brief."},
             {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]  # fmt: skip
    text = tok.apply_chat_template(image, add_generation_prompt=False, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n"
    )
    assert (models[arch] / "chat_template.jinja").read_text() == make_tiny_model.CHAT_TEMPLATE


def test_utf8_round_trip(models):
    tok = AutoTokenizer.from_pretrained(models["qwen2.5-vl"], local_files_only=True)
    text = "Héllo wörld — 中文视频 😀🎬 naïve café ✓ Ω≈ç√\n\ttabs  and  spaces, 12345.678 <|im_start|>"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text
    assert max(ids) < len(tok)
    assert len(ids) < len(text.encode())  # merges were learned: fewer tokens than bytes


def test_deterministic_and_idempotent(models, tmp_path, capsys):
    again = tmp_path / "again"
    assert make_tiny_model.main(["--out", str(again)]) == 0
    original = models["qwen2.5-vl"]
    assert make_tiny_model.folder_sha256(again) == make_tiny_model.folder_sha256(original)
    assert sorted(p.name for p in again.iterdir()) == sorted(p.name for p in original.iterdir())

    mtime = (again / "model.safetensors").stat().st_mtime_ns
    assert make_tiny_model.main(["--out", str(again)]) == 0  # complete -> skipped
    assert "skipped" in capsys.readouterr().out
    assert (again / "model.safetensors").stat().st_mtime_ns == mtime

    assert make_tiny_model.main(["--out", str(again), "--seed", "1"]) == 0  # other recipe -> rebuilt
    assert (again / "model.safetensors").read_bytes() != (original / "model.safetensors").read_bytes()
    assert (again / "tokenizer.json").read_bytes() == (original / "tokenizer.json").read_bytes()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a model")
    assert make_tiny_model.main(["--out", str(foreign)]) == 1  # never deletes what it did not write
    assert (foreign / "notes.txt").exists()


def test_generate_on_a_video(models, arch):
    path = models[arch]
    model = ARCH_CLASSES[arch].from_pretrained(path, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    config = model.config
    gen = torch.Generator().manual_seed(0)
    outputs = []
    for frames in (torch.randint(0, 256, (8, 112, 112, 3), generator=gen, dtype=torch.uint8),
                   torch.zeros(8, 112, 112, 3, dtype=torch.uint8)):  # fmt: skip
        pixel_values, grid_thw = _video_inputs(frames)
        assert grid_thw.tolist() == [[4, 8, 8]] and pixel_values.shape == (256, 3 * 2 * 14 * 14)
        num_video_tokens = int(grid_thw.prod()) // 4
        prompt = _video_prompt(tok, "Describe the video.")
        prompt = prompt.replace("<|video_pad|>", "<|video_pad|>" * num_video_tokens)  # what the processor does
        input_ids = tok(prompt, return_tensors="pt").input_ids
        # transformers 5 only applies M-RoPE when mm_token_type_ids (0 text, 1 image, 2 video) is passed.
        extra = {"mm_token_type_ids": (input_ids == config.video_token_id).int() * 2}
        if arch == "qwen2.5-vl":
            extra["second_per_grid_ts"] = torch.tensor([1.0])
        with torch.inference_mode():
            out = model.generate(input_ids, pixel_values_videos=pixel_values, video_grid_thw=grid_thw,
                                 max_new_tokens=6, do_sample=False, **extra)  # fmt: skip
        new_tokens = out[0, input_ids.shape[1] :]
        assert len(new_tokens) >= 1 and int(new_tokens.max()) < len(tok)
        # 64 video tokens span 1 + max(t, h, w) positions: M-RoPE shifted the text after the video back.
        assert int(model.model.rope_deltas) < 0
        outputs.append(new_tokens.tolist())
    assert outputs[0] != outputs[1]  # the video content reaches the logits


def test_7b_dry_run(capsys):
    assert make_tiny_model.main(["--preset", "7b", "--dry-run"]) == 0
    line = capsys.readouterr().out
    assert "text=7,615,616,512" in line and "vision=676,550,144" in line and "bfloat16" in line
