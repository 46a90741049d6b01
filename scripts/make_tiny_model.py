#!/usr/bin/env python
"""Write a seeded, random-weight Qwen2.5-VL / Qwen2-VL checkpoint in Hugging Face format, fully offline.

The folder loads through the same code path as a real checkpoint (``*ForConditionalGeneration.from_pretrained``,
``AutoTokenizer.from_pretrained``): a byte-level BPE tokenizer trained here on a generated corpus, the Qwen2-VL
special tokens and chat template, config / generation / preprocessor files, and safetensors weights.
Same arguments -> byte-identical files (checked by the sha256 printed at the end).

    python scripts/make_tiny_model.py --out artifacts/models/tiny-qwen2.5-vl [--arch qwen2.5-vl|qwen2-vl]
        [--preset tiny|small|7b] [--seed 0] [--dtype float32|bfloat16] [--force] [--dry-run]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

SPECIAL_TOKENS = [  # Qwen2-VL's order: ids are consecutive right after the trained vocabulary, like 151643...
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip
# Qwen2-VL-*-Instruct / Qwen2.5-VL-*-Instruct chat template, verbatim.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
# Qwen2's pre-tokenizer split (transformers/models/qwen2/tokenization_qwen2.py).
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)
NUM_TRAINED_TOKENS = 3000  # 256 byte symbols + merges; + 14 specials = 3014 = len(tokenizer)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]  # OPENAI_CLIP_MEAN / STD, as in the Qwen preprocessor configs
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
PIX = 28 * 28  # one merged 2x2 group of 14-pixel patches = one LLM token

# Sizes per preset. `tiny`: CPU tests (32 frames at 224x224 end to end well under a second).
# `small`: vision encode of one 32-frame ~300x300 video ~ 10-20 batch-4 decode steps on CPU (scheduler bench).
# `7b`: Qwen2.5-VL-7B-Instruct's shapes (random weights, bf16, GPU machines only).
# init_std (text initializer_range) ~ 1.1/sqrt(hidden): attention is not uniform, so greedy outputs depend on the
# context and the video (at 0.02 the tiny model repeats one token whatever the input); lm_head_std ~ 4/sqrt(hidden):
# logit std ~ 4, so top-2 logit gaps are far above float32 noise (batched and unbatched runs agree).
PRESETS = {
    "tiny": {
        "text": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "max_position_embeddings": 8192},
        "vision": {"depth": 4, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4,
                   "fullatt_block_indexes": [1, 3], "mlp_ratio": 2},
        "vocab_size": None, "init_std": 0.1, "lm_head_std": 0.35,
        "image_pixels": (4 * PIX, 256 * PIX), "video_pixels": (16 * PIX, 64 * PIX),
    },
    "small": {
        "text": {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 6, "num_attention_heads": 8,
                 "num_key_value_heads": 2, "max_position_embeddings": 16384},
        "vision": {"depth": 4, "hidden_size": 128, "intermediate_size": 352, "num_heads": 2,
                   "fullatt_block_indexes": [1, 3], "mlp_ratio": 3},
        "vocab_size": None, "init_std": 0.05, "lm_head_std": 0.18,
        "image_pixels": (4 * PIX, 256 * PIX), "video_pixels": (16 * PIX, 128 * PIX),
    },
    "7b": {
        "text": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                 "num_key_value_heads": 4, "max_position_embeddings": 128000},
        "vision": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                   "fullatt_block_indexes": [7, 15, 23, 31], "mlp_ratio": 4},
        "vocab_size": 152064, "init_std": 0.02, "lm_head_std": 0.07,
        "image_pixels": (4 * PIX, 16384 * PIX), "video_pixels": (128 * PIX, 768 * PIX),
    },
}  # fmt: skip
ARCHS = {
    "qwen2.5-vl": ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"),
    "qwen2-vl": ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"),
}


def build_corpus() -> list[str]:
    """Template sentences about videos + pseudo-words (for merges) + multi-byte text; fixed seed, no downloads."""
    rng = random.Random(20240501)
    colors = ["red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white", "gray"]
    things = ["cat", "dog", "car", "ball", "tree", "house", "person", "bird", "boat", "train", "plane", "bicycle",
              "horse", "cup", "chair", "table", "phone", "book", "window", "door", "flower", "robot", "kite", "river",
              "mountain", "road", "city", "street", "beach", "camera", "video", "frame", "scene"]
    verbs = ["runs", "jumps", "moves", "rolls", "flies", "sits", "walks", "turns", "stops", "appears", "spins",
             "falls", "drives", "swims", "waves"]
    adverbs = ["quickly", "slowly", "suddenly", "gently", "smoothly", "twice", "again", "now", "then", "finally"]
    numbers = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twenty"]
    asks = ["What", "Which", "Where", "When", "How many", "Why", "Who", "Describe", "Summarize", "Explain"]
    exotic = ["café", "naïve", "résumé", "über", "señor", "中文", "视频", "你好世界", "日本語", "한국어", "Привет",
              "γειά", "😀", "🎬", "🚗", "🐱", "→", "°C", "€", "™", "…"]
    syllables = [c + v for c in "bdfghklmnprstvwz" for v in "aeiou"] + ["th", "ch", "sh", "str", "qu"]
    lexicon = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(1500)]
    lines = ["You are a helpful assistant.", "system", "user", "assistant", "Describe this video."]
    for _ in range(6000):
        c, o, v, a, n = (rng.choice(x) for x in (colors, things, verbs, adverbs, numbers))
        sec, e1, e2 = rng.randint(0, 9999), rng.choice(exotic), rng.choice(exotic)
        lines.append(rng.choice([
            f"In the video, the {c} {o} {v} {a} at {sec} seconds.",
            f"{rng.choice(asks)} {o}s are {c} in this video? There are {n} ({rng.randint(0, 99)}).",
            f"Frame {sec}: a {c} {o} {v} {a}; the {rng.choice(things)} is {rng.choice(colors)}!",
            f"The camera shows {n} {o}s, {rng.randint(0, 100)}% {c}, {rng.random():.3f} m/s - {e1} {e2}",
            f'Q: {rng.choice(asks)} does the {o} do? A: It {v} {a}. "{c.title()}" {{x: [{sec}, {n}]}} #{sec}',
            f"{e1} {o.upper()} {c.capitalize()}\t{sec:04d}\n  {e2}{e1} 'quote' it's they're we'll I'm",
        ]))  # fmt: skip
    for _ in range(3000):
        words = (rng.choice(lexicon) if rng.random() < 0.8 else rng.choice(things + verbs) for _ in range(12))
        lines.append(" ".join(words) + rng.choice(".?!,"))
    return lines


def train_tokenizer():
    """Byte-level BPE with Qwen2's normalizer / pre-tokenizer / decoder, so any UTF-8 string round-trips."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import BPE

    tok = Tokenizer(BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=NUM_TRAINED_TOKENS, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    # The trainer breaks count ties by pair, so the result does not depend on thread scheduling (checked).
    tok.train_from_iterator(build_corpus(), trainer=trainer)
    if tok.get_vocab_size() != NUM_TRAINED_TOKENS:
        raise RuntimeError(f"corpus too small: {tok.get_vocab_size()} tokens < {NUM_TRAINED_TOKENS}")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def write_tokenizer(tok, out: Path) -> dict[str, int]:
    """tokenizer.json, vocab.json, merges.txt, tokenizer_config.json as in Qwen2.5-VL's repo (loads in 4.x and 5.x)."""
    tok.save(str(out / "tokenizer.json"), pretty=True)
    model = json.loads(tok.to_str())["model"]
    (out / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    config = {
        "add_bos_token": False, "add_prefix_space": False,
        "added_tokens_decoder": {str(i): {"content": t, **flags} for t, i in ids.items()},
        "additional_special_tokens": SPECIAL_TOKENS[1:], "bos_token": None, "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "errors": "replace",
        "model_max_length": 131072, "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }  # fmt: skip
    _write_json(out / "tokenizer_config.json", config)
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")  # transformers 5's location
    return ids


def build_config(arch: str, preset: str, ids: dict[str, int], num_tokens: int, dtype: str):
    import transformers

    p = PRESETS[preset]
    text = dict(p["text"])
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    # M-RoPE splits head_dim/2 rotary pairs into (t, h, w); Qwen's 7B split [16, 24, 24] scaled to head_dim.
    mrope_section = [head_dim // 8, head_dim * 3 // 16, head_dim * 3 // 16]
    assert sum(mrope_section) == head_dim // 2, mrope_section
    text.update(
        vocab_size=p["vocab_size"] or -(-num_tokens // 64) * 64, hidden_act="silu", rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "mrope_section": mrope_section, "rope_theta": 1000000.0},
        use_sliding_window=False, max_window_layers=text["num_hidden_layers"], initializer_range=p["init_std"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        dtype=dtype,
    )  # fmt: skip
    v = dict(p["vision"])
    mlp_ratio = v.pop("mlp_ratio")  # Qwen2-VL only (its 7B: 1280 -> 5120)
    common = {"patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3,
              "initializer_range": 0.02}
    if arch == "qwen2.5-vl":
        vision = dict(v, out_hidden_size=text["hidden_size"], hidden_act="silu", window_size=112,
                      tokens_per_second=2, **common)  # 2 = the released checkpoints' value (class default is 4)
    else:  # Qwen2-VL: embed_dim/mlp_ratio, `hidden_size` is the merger's output (= LLM hidden), no window attention
        vision = dict(depth=v["depth"], embed_dim=v["hidden_size"], hidden_size=text["hidden_size"],
                      mlp_ratio=mlp_ratio, num_heads=v["num_heads"],
                      hidden_act="quick_gelu", **common)  # fmt: skip
    config_cls = getattr(transformers, ARCHS[arch][0])
    return config_cls(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False, dtype=dtype,
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )  # fmt: skip


def build_model(arch: str, config, preset: str, seed: int, ids: dict[str, int], num_tokens: int, dtype: str):
    """Seeded init through the model's own _init_weights, then a wider LM head so logits are not flat."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, ARCHS[arch][1])._from_config(config, dtype=getattr(torch, dtype)).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        head = model.lm_head.weight
        head.copy_(torch.randn(head.shape, generator=gen) * PRESETS[preset]["lm_head_std"])
        for weight in (head, model.get_input_embeddings().weight):
            weight[num_tokens:] = 0  # rows past len(tokenizer) are padding: never the argmax, as in a trained model
        # A trained model never emits placeholders / markup specials; only <|im_end|> and <|endoftext|> may end a reply.
        # (A generated <|video_pad|> would be mistaken for a video slot when positions are recomputed from token ids.)
        never = [ids[t] for t in SPECIAL_TOKENS if t not in ("<|im_end|>", "<|endoftext|>")]
        head[never] = 0
    return model


def write_aux_configs(out: Path, arch: str, preset: str, ids: dict[str, int]) -> None:
    """Image / video processor configs as the Qwen repos have them (pixel caps per preset) + generation config."""
    shared = {"patch_size": 14, "temporal_patch_size": 2, "merge_size": 2, "image_mean": CLIP_MEAN,
              "image_std": CLIP_STD, "do_convert_rgb": True, "do_normalize": True, "do_rescale": True,
              "do_resize": True, "resample": 3, "rescale_factor": 1 / 255, "processor_class": ARCHS[arch][2]}
    video = {"video_processor_type": "Qwen2VLVideoProcessor", "fps": 2.0, "min_frames": 4, "max_frames": 768,
             "do_sample_frames": False}
    image = {"image_processor_type": "Qwen2VLImageProcessor"}
    for name, key, extra in (("preprocessor_config.json", "image_pixels", image),
                             ("video_preprocessor_config.json", "video_pixels", video)):
        lo, hi = PRESETS[preset][key]
        size = {"shortest_edge": lo, "longest_edge": hi}  # transformers 5 reads `size`, 4.x min/max_pixels
        _write_json(out / name, {**shared, "min_pixels": lo, "max_pixels": hi, "size": size, **extra})
    _write_json(out / "generation_config.json", {
        "bos_token_id": ids["<|endoftext|>"], "pad_token_id": ids["<|endoftext|>"], "do_sample": False,
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
    })  # fmt: skip


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def folder_sha256(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def count_params(model) -> tuple[int, int]:
    vision = sum(p.numel() for p in model.model.visual.parameters())
    return sum(p.numel() for p in model.parameters()) - vision, vision


def generate(out: Path, arch: str, preset: str, seed: int, dtype: str) -> tuple[int, int]:
    import transformers

    tok = train_tokenizer()
    ids = write_tokenizer(tok, out)
    config = build_config(arch, preset, ids, tok.get_vocab_size(), dtype)
    model = build_model(arch, config, preset, seed, ids, tok.get_vocab_size(), dtype)
    transformers.utils.logging.disable_progress_bar()
    model.save_pretrained(out, max_shard_size="5GB")  # 7b: shards like the released checkpoints
    write_aux_configs(out, arch, preset, ids)  # after save_pretrained: ours replaces its generation_config.json
    return count_params(model)


RECIPE_VERSION = 2  # bump whenever the files this script writes change, so stale folders get rebuilt


def read_recipe(out: Path) -> dict | None:
    marker = out / "make_tiny_model.json"  # written last: present = everything else was written
    return json.loads(marker.read_text()) if marker.is_file() and (out / "config.json").is_file() else None


def dry_run(arch: str, preset: str, dtype: str) -> None:
    import torch
    import transformers

    tok = train_tokenizer()
    config = build_config(arch, preset, {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}, tok.get_vocab_size(), dtype)
    with torch.device("meta"):  # shapes only, no memory
        text, vision = count_params(getattr(transformers, ARCHS[arch][1])(config))
    size_gb = (text + vision) * (2 if dtype == "bfloat16" else 4) / 1e9
    print(f"dry-run {arch}/{preset}: text={text:,} vision={vision:,} params, {size_gb:.1f} GB in {dtype}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="checkpoint folder to write (required unless --dry-run)")
    ap.add_argument("--arch", choices=sorted(ARCHS), default="qwen2.5-vl")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="default: bfloat16 for 7b")
    ap.add_argument("--force", action="store_true", help="regenerate even if the folder is complete")
    ap.add_argument("--dry-run", action="store_true", help="build the model on the meta device, print sizes")
    args = ap.parse_args(argv)
    dtype = args.dtype or ("bfloat16" if args.preset == "7b" else "float32")
    if args.dry_run:
        dry_run(args.arch, args.preset, dtype)
        return 0
    if args.out is None:
        ap.error("--out is required")
    out: Path = args.out
    recipe = {"arch": args.arch, "preset": args.preset, "seed": args.seed, "dtype": dtype,
              "recipe_version": RECIPE_VERSION}
    if out.exists() and any(out.iterdir()) and not args.force:
        existing = read_recipe(out)
        if existing == recipe:
            print(f"{out}: complete, skipped (sha256 {folder_sha256(out)})")
            return 0
        if existing is None:  # not ours (or half-copied): never delete what we did not write
            print(f"{out} exists and was not written by this script; pass --force to replace it", file=sys.stderr)
            return 1
        print(f"{out}: made by recipe {existing}, rebuilding for {recipe}")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temp folder and rename at the end: a crash never leaves a half-written `out`.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        text, vision = generate(tmp, args.arch, args.preset, args.seed, dtype)
        _write_json(tmp / "make_tiny_model.json", recipe)  # last file: the completeness marker
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; a server may run as another user
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        if out.exists() and (args.force or read_recipe(out) != recipe):
            shutil.rmtree(out)
        try:
            os.replace(tmp, out)
        except OSError:  # a concurrent run finished first: same recipe -> same bytes, keep theirs
            if read_recipe(out) != recipe:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{out}: {args.arch}/{args.preset} {dtype} text={text:,} vision={vision:,} params, "
          f"sha256 {folder_sha256(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
