"""The fused text decoder against HF's own layers: same logits (prefill chunks and decodes over the paged cache,
both weight layouts, Qwen2-VL and Qwen2.5-VL), weights held once, and the fallback where it does not apply."""

from __future__ import annotations

import logging

import pytest
import torch

from unifiedserve.fused_decoder import FusedTextDecoder, HFTextDecoder, build_text_decoder
from unifiedserve.model_loader import load_model
from unifiedserve.paged_attention import AttentionMetadata, PagedKVCache, forward_context


def _language_model(loaded):
    return loaded.model.model.language_model


def _run_sequence(decoder, cache: PagedKVCache, embeds: torch.Tensor, positions: torch.Tensor,
                  cuts: list[int]) -> list[torch.Tensor]:
    """Feed one sequence in chunks ending at `cuts` (a prefill, later chunks, single-token decodes); the
    logits of every chunk's tokens."""
    out, start = [], 0
    slots = torch.arange(embeds.shape[0]) + 5 * cache.block_size  # not at slot 0: the mapping is exercised
    for end in cuts:
        meta = AttentionMetadata(slots[start:end], [0, end - start], [slots[:end]])
        with torch.inference_mode(), forward_context(cache, meta):
            out.append(decoder.logits(decoder(embeds[start:end], positions[:, start:end])))
        start = end
    return out


def _cache(lm) -> PagedKVCache:
    c = lm.config
    return PagedKVCache(c.num_hidden_layers, 32, 16, c.num_key_value_heads, c.hidden_size // c.num_attention_heads,
                        torch.float32, torch.device("cpu"))


@pytest.mark.parametrize("on_cpu", [True, False], ids=["transposed-wide-weights", "standard-layout"])
@pytest.mark.parametrize("which", ["qwen2.5-vl", "qwen2-vl"])
def test_fused_logits_match_hf_layers(tiny_model_path, tiny_qwen2_vl_path, which, on_cpu):
    path = tiny_model_path if which == "qwen2.5-vl" else tiny_qwen2_vl_path
    ref, mine = load_model(path, "cpu", "float32"), load_model(path, "cpu", "float32")
    hf = HFTextDecoder(_language_model(ref), ref.model.lm_head)
    fused = FusedTextDecoder(_language_model(mine), mine.model.lm_head, on_cpu=on_cpu)
    torch.manual_seed(0)
    n = 70
    embeds = torch.randn(n, _language_model(ref).config.hidden_size)
    # M-RoPE: the three sections get different ids (as a video's t/h/w grid does).
    positions = torch.stack([torch.arange(n), torch.arange(n) // 3, torch.arange(n) % 5])
    cuts = [40, 60, 61, 62, 70]  # prefill, a later chunk over a cached prefix, two decodes, a last chunk
    expected = _run_sequence(hf, _cache(_language_model(ref)), embeds, positions, cuts)
    got = _run_sequence(fused, _cache(_language_model(mine)), embeds, positions, cuts)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-4)
    assert expected[0].std() > 0.1  # a degenerate model would pass any comparison


@pytest.mark.parametrize("num_streams", [2, 3, 5])
def test_batched_decode_matches_hf_layers(tiny_model_path, num_streams):
    """Several sequences decoding in one forward: on CPU their projections run on the oneDNN-packed weights (two
    rows padded to three), one row on MKL; the logits must still be HF's."""
    ref, mine = load_model(tiny_model_path, "cpu", "float32"), load_model(tiny_model_path, "cpu", "float32")
    hf = HFTextDecoder(_language_model(ref), ref.model.lm_head)
    fused = FusedTextDecoder(_language_model(mine), mine.model.lm_head, on_cpu=True)
    assert all(lin.packed is not None for lin in (fused.layers[0].qkv, fused.layers[0].down, fused.lm_head))
    torch.manual_seed(num_streams)
    hidden = _language_model(ref).config.hidden_size
    lengths = [9 + 7 * i for i in range(num_streams)]
    embeds = [torch.randn(n + 1, hidden) for n in lengths]
    slots = [torch.arange(n + 1) + 64 * i for i, n in enumerate(lengths)]
    logits = []
    for decoder, cache in ((hf, _cache(_language_model(ref))), (fused, _cache(_language_model(mine)))):
        for e, s, n in zip(embeds, slots, lengths, strict=True):  # each prompt on its own
            meta = AttentionMetadata(s[:n], [0, n], [s[:n]])
            with torch.inference_mode(), forward_context(cache, meta):
                decoder(e[:n], torch.arange(n).expand(3, -1))
        meta = AttentionMetadata(torch.stack([s[n] for s, n in zip(slots, lengths, strict=True)]),
                                 list(range(num_streams + 1)), slots)
        positions = torch.tensor(lengths).expand(3, -1)
        with torch.inference_mode(), forward_context(cache, meta):
            logits.append(decoder.logits(decoder(torch.stack([e[n] for e, n in zip(embeds, lengths, strict=True)]),
                                                 positions)))
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-5, atol=1e-4)
    assert logits[0].std() > 0.1


def test_fused_weights_are_views_not_copies(tiny_model_path):
    loaded = load_model(tiny_model_path, "cpu", "float32")
    lm = _language_model(loaded)
    before = sum(p.numel() for p in loaded.model.parameters())
    decoder = FusedTextDecoder(lm, loaded.model.lm_head, on_cpu=True)
    attn, mlp = lm.layers[0].self_attn, lm.layers[0].mlp
    fused = decoder.layers[0]
    assert fused.qkv.transposed and fused.gate_up.transposed and not fused.down.transposed
    for module in (attn.q_proj, attn.k_proj, attn.v_proj):
        assert module.weight.untyped_storage().data_ptr() == fused.qkv.weight.untyped_storage().data_ptr()
        assert module.bias.untyped_storage().data_ptr() == fused.qkv.bias.untyped_storage().data_ptr()
    for module in (mlp.gate_proj, mlp.up_proj):
        assert module.weight.untyped_storage().data_ptr() == fused.gate_up.weight.untyped_storage().data_ptr()
    head = loaded.model.lm_head.weight
    assert head.untyped_storage().data_ptr() == decoder.lm_head.weight.untyped_storage().data_ptr()
    assert sum(p.numel() for p in loaded.model.parameters()) == before
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in loaded.model.parameters()}
    assert sum(storages.values()) == before * 4  # every float32 weight held exactly once


def test_tied_head_keeps_the_embedding_layout(tiny_model_path):
    loaded = load_model(tiny_model_path, "cpu", "float32")
    lm = _language_model(loaded)
    loaded.model.lm_head.weight = lm.embed_tokens.weight  # as in checkpoints with tie_word_embeddings
    decoder = FusedTextDecoder(lm, loaded.model.lm_head, on_cpu=True)
    assert not decoder.lm_head.transposed
    assert lm.embed_tokens.weight.is_contiguous()
    assert lm.embed_tokens.weight.untyped_storage().data_ptr() == decoder.lm_head.weight.untyped_storage().data_ptr()


def test_unsupported_checkpoint_falls_back_to_hf_layers(tiny_model_path, caplog):
    loaded = load_model(tiny_model_path, "cpu", "float32")
    lm = _language_model(loaded)
    lm.config.hidden_act = "gelu"
    with caplog.at_level(logging.WARNING):
        decoder = build_text_decoder(lm, loaded.model.lm_head, fused=True, on_cpu=True)
    assert isinstance(decoder, HFTextDecoder)
    assert "hidden_act 'gelu'" in caplog.text
    lm.config.hidden_act = "silu"
    assert isinstance(build_text_decoder(lm, loaded.model.lm_head, fused=True, on_cpu=True), FusedTextDecoder)
    assert isinstance(build_text_decoder(lm, loaded.model.lm_head, fused=False, on_cpu=True), HFTextDecoder)


def test_forward_benchmark_script_runs(tiny_model_path, capsys):
    """scripts/bench_decoder_forward.py (the A/B behind the fused decoder's numbers) runs and finds no logit gap."""
    import re
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import bench_decoder_forward

    bench_decoder_forward.main(["--model", tiny_model_path, "--context", "40", "--chunk", "16", "--reps", "5",
                                "--threads", str(torch.get_num_threads())])  # leaves the process as it was
    out = capsys.readouterr().out
    assert float(re.search(r"max \|logit diff\| (\S+)", out).group(1)) < 1e-3
    assert re.search(r"decode step .*: hf-layers [\d.]+ ms, fused [\d.]+ ms", out)
