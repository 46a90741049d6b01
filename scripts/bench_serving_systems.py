"""bench_serving: the systems it can serve and compare (each a model repository plus the environment it runs with).

Every one loads the same checkpoint and videos; the encoder output cache and the decoder's index cache are off
everywhere (NO_CACHES): every request pays its own work."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NO_CACHES = {"MLLM_ENGINE_ENCODER_CACHE_TOKENS": "0", "MLLM_FLASHCODEC_INDEX_CACHE_ENTRIES": "0"}


@dataclass(frozen=True)
class System:
    name: str
    repository: Path
    env: dict[str, str] = field(default_factory=dict)
    description: str = ""


SYSTEMS = {s.name: s for s in (
    System("ours", REPO / "model_repository", {}, "FlashCodec + UnifiedServe (unified policy)"),
    System("ours-blocking", REPO / "model_repository", {"MLLM_ENGINE_POLICY": "blocking"},
           "FlashCodec + UnifiedServe, blocking policy (whole encoder pass in one step, vLLM-like)"),
    System("ours-fulldecode", REPO / "model_repository",
           {"MLLM_FLASHCODEC_ENGINE": "pyav_full", "MLLM_FLASHCODEC_NUM_INSTANCES": "1"},
           "sequential full decode + UnifiedServe (unified policy)"),
    # Ablation, not in the default run: every forward on cpu_threads (no burst threads for encoder / prefill).
    System("ours-noburst", REPO / "model_repository", {"MLLM_ENGINE_CPU_BURST_THREADS": "0"},
           "FlashCodec + UnifiedServe without CPU burst threads"),
    # Ablation: waiting work always fills each step up to the TPOT target (no pacing to the TTFT deadlines).
    System("ours-nopace", REPO / "model_repository", {"MLLM_ENGINE_TTFT_PACE_FRACTION": "0"},
           "FlashCodec + UnifiedServe, steps always filled to the TPOT target"),
    # Ablation: every gap under the TPOT target x headroom (no banked slack spent on longer steps).
    System("ours-gap1", REPO / "model_repository", {"MLLM_ENGINE_TPOT_MAX_GAP_FACTOR": "1"},
           "FlashCodec + UnifiedServe, every step capped at the per-gap TPOT target"),
    # Ablation: a stream behind its mean TPOT gets decode-only steps until it caught up, even when its remaining
    # length is certain (no TPOT credit, unifiedserve/tpot_slack.py).
    System("ours-nocredit", REPO / "model_repository", {"MLLM_ENGINE_TPOT_CREDIT_FRACTION": "0"},
           "FlashCodec + UnifiedServe without the TPOT credit of streams of certain length"),
    # Ablation: FlashCodec's CPU decoders at the engine's OS priority (flashcodec/cpu_priority.py).
    System("ours-nonice", REPO / "model_repository", {"MLLM_FLASHCODEC_CPU_NICE": "0"},
           "FlashCodec + UnifiedServe, CPU decoders not niced below the engine"),
    # Ablation: HF's own text layers instead of the fused decoder (unifiedserve/fused_decoder.py).
    System("ours-hflayers", REPO / "model_repository", {"MLLM_ENGINE_FUSED_DECODER": "0"},
           "FlashCodec + UnifiedServe on HF's text layers (no fused q/k/v, gate/up, CPU weight layout)"),
    # Ablation: the engine in float32 whatever the checkpoint's dtype (the precision's share of a bf16 run's gain).
    System("ours-fp32", REPO / "model_repository", {"MLLM_ENGINE_DTYPE": "float32"},
           "FlashCodec + UnifiedServe computing in float32"),
    System("naive", REPO / "baselines" / "model_repository_naive", {},
           "stock Triton: full decode -> vision encoder (dynamic_batching) -> HF generate() per batch"),
    # The same stack told to load float32: on a CPU, HF's bf16 attention is slower than its float32 one, so this is
    # the naive stack's faster choice for a bf16 checkpoint (equal to `naive` for a float32 one).
    System("naive-fp32", REPO / "baselines" / "model_repository_naive", {"MLLM_NAIVE_DTYPE": "float32"},
           "stock Triton stack as `naive`, loading the checkpoint in float32"),
)}
