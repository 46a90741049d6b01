"""One LLM forward of the engine, HF's text layers vs the fused decoder, side by side in one process.

    .venv/bin/python scripts/bench_decoder_forward.py [--model-preset small|tiny | --model PATH] [--threads 1]
        [--context 200] [--chunk 64] [--streams 2,4] [--reps 100] [--dtype float32|bfloat16]

Both decoders run over the same paged KV cache and metadata the engine builds (prompts of `--context` tokens
already cached), on two copies of the same checkpoint: a decode step (one token + the LM head), a decode step of
each `--streams` count of sequences (one token each, as a continuous batch decodes), and a prefill chunk of `--chunk`
tokens. Prints medians, their ratio, and the largest logit difference (the fused decoder must compute what HF's
layers compute). Interleaved rounds, so drift on a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "backends"))
sys.path.insert(0, str(REPO / "scripts"))

from bench_serving import MODEL_DIRS, model_path  # noqa: E402  (the same presets and model generation)

from unifiedserve.fused_decoder import FusedTextDecoder, HFTextDecoder  # noqa: E402
from unifiedserve.model_loader import load_model  # noqa: E402
from unifiedserve.paged_attention import AttentionMetadata, PagedKVCache, forward_context  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-preset", choices=sorted(MODEL_DIRS), default="small")
    ap.add_argument("--model", type=Path, help="checkpoint folder (overrides --model-preset)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the served engine decodes on 1 of 2 cores)")
    ap.add_argument("--context", type=int, default=200)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--streams", default="2,4", help="comma-separated stream counts of batched decode steps")
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                    help="weights, activations and KV cache (bfloat16: what a bf16 checkpoint runs in)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = model_path(args)
    dtype = getattr(torch, args.dtype)
    ref, mine = load_model(str(path), "cpu", args.dtype), load_model(str(path), "cpu", args.dtype)
    decoders = {
        "hf-layers": HFTextDecoder(ref.model.model.language_model, ref.model.lm_head),
        "fused": FusedTextDecoder(mine.model.model.language_model, mine.model.lm_head, on_cpu=True),
    }
    config = ref.model.model.language_model.config
    head_dim = config.hidden_size // config.num_attention_heads
    n = args.context + 1
    streams = [int(x) for x in args.streams.split(",") if x]
    most = max([1, *streams])
    blocks = most * (-(-n // 16) + 1)
    caches = {name: PagedKVCache(config.num_hidden_layers, blocks, 16, config.num_key_value_heads, head_dim,
                                 dtype, torch.device("cpu")) for name in decoders}
    torch.manual_seed(0)
    embeds = torch.randn(n, config.hidden_size, dtype=dtype)
    positions = torch.arange(n).expand(3, -1)
    seq_slots = [torch.arange(n) + i * (blocks // most) * 16 for i in range(most)]  # each sequence its own blocks

    def forward(name: str, lo: int, hi: int, num_seqs: int = 1) -> torch.Tensor:
        """Sequences 0..num_seqs-1 (the same prompt, own cache slots) each run tokens lo..hi."""
        meta = AttentionMetadata(torch.cat([s[lo:hi] for s in seq_slots[:num_seqs]]),
                                 [i * (hi - lo) for i in range(num_seqs + 1)], [s[:hi] for s in seq_slots[:num_seqs]])
        with torch.inference_mode(), forward_context(caches[name], meta):
            hidden = decoders[name](embeds[lo:hi].repeat(num_seqs, 1), positions[:, lo:hi].repeat(1, num_seqs))
            return decoders[name].logits(hidden[hi - lo - 1::hi - lo])

    logits = {name: (forward(name, 0, args.context, most), forward(name, args.context, n, most))
              for name in decoders}
    diff = max((a - b).abs().max().item() for a, b in zip(*logits.values(), strict=True))
    cases = {"decode step (1 token + LM head)": (args.context, n, 1, args.reps)}
    cases |= {f"decode step of {k} streams": (args.context, n, k, args.reps) for k in streams}
    chunk_reps = max(5, args.reps // 10)
    cases[f"prefill chunk ({args.chunk} tokens)"] = (args.context - args.chunk, args.context, 1, chunk_reps)
    print(f"model {path.name} ({args.dtype}), {args.threads} thread(s), context {args.context}; "
          f"max |logit diff| {diff:.2e}")
    for label, (lo, hi, num_seqs, reps) in cases.items():
        times: dict[str, list[float]] = {name: [] for name in decoders}
        for _ in range(5):
            for name in decoders:
                forward(name, lo, hi, num_seqs)
        for _ in range(reps):  # interleaved: both see the same machine
            for name in decoders:
                t0 = time.perf_counter()
                forward(name, lo, hi, num_seqs)
                times[name].append(time.perf_counter() - t0)
        med = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
        print(f"  {label}: hf-layers {med['hf-layers']:.2f} ms, fused {med['fused']:.2f} ms "
              f"({med['hf-layers'] / med['fused']:.2f}x)")


if __name__ == "__main__":
    main()
