"""Executes a scheduler plan: encoder slices, then one packed LLM forward over all chunks, then logits."""

from __future__ import annotations

import time

import torch

from unifiedserve.config import EngineConfig
from unifiedserve.cpu_threads import CpuThreads
from unifiedserve.encoder_planner import EncoderWork
from unifiedserve.fused_decoder import build_text_decoder
from unifiedserve.layered_encoder import LayeredVisionEncoder
from unifiedserve.model_loader import LoadedModel
from unifiedserve.paged_attention import AttentionMetadata, PagedKVCache, forward_context
from unifiedserve.scheduler import SchedulerOutput, TokenChunk


class ModelRunner:
    def __init__(self, config: EngineConfig, loaded: LoadedModel) -> None:
        self.model = loaded.model
        self.device = loaded.device
        self.dtype = loaded.dtype
        self.threads = CpuThreads(config.cpu_threads, config.cpu_burst_threads, config.cpu_burst_min_tokens,
                                  on_cpu=self.device.type == "cpu")
        text = self.model.config.text_config
        self.num_layers = text.num_hidden_layers
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        per_block = PagedKVCache.bytes_per_block(self.num_layers, config.block_size, text.num_key_value_heads,
                                                 head_dim, self.dtype)
        self.num_kv_blocks = config.num_kv_blocks or max(1, config.kv_cache_memory_bytes // per_block)
        self.kv = PagedKVCache(self.num_layers, self.num_kv_blocks, config.block_size, text.num_key_value_heads,
                               head_dim, self.dtype, self.device)
        self.inner = self.model.model  # Qwen2(_5)_VLModel: .visual, .language_model, get_video_features
        self.embed = self.inner.get_input_embeddings()
        self.encoder = LayeredVisionEncoder(self.inner.visual)
        self.decoder = build_text_decoder(self.inner.language_model, self.model.lm_head, config.fused_decoder,
                                          on_cpu=self.device.type == "cpu")
        self.overlap = None
        if self.device.type == "cuda" and config.overlap_encoder:
            from unifiedserve.device_streams import OverlappedExecution

            self.overlap = OverlappedExecution(self.device)

    # ---- encoder --------------------------------------------------------------------------------
    @torch.inference_mode()
    def run_encoder(self, work: list[EncoderWork]) -> None:
        """Run each slice: whole temporal groups (exact: attention never crosses groups) through a range
        of the tower's blocks (exact: the same computation, paused); a finished piece fills embeddings."""
        for w in work:
            video = w.video
            if w.block_start == 0:
                ppg = video.patches_per_group
                pixels = video.pixel_values[w.group_start * ppg: w.group_end * ppg].to(self.device)
                grid = torch.tensor([[w.group_end - w.group_start, *video.grid_thw[1:]]], device=self.device)
                video.encoder_state = self.encoder.start(pixels, grid)
            self.encoder.run_blocks(video.encoder_state, w.num_blocks)
            if not w.completes:
                continue
            embeds = self.encoder.finish(video.encoder_state)
            video.encoder_state = None
            if video.embeddings is None:
                video.embeddings = torch.empty(video.num_tokens, embeds.shape[-1], dtype=self.dtype,
                                               device=self.device)
            tpg = video.tokens_per_group
            video.embeddings[w.group_start * tpg: w.group_end * tpg] = embeds

    # ---- LLM --------------------------------------------------------------------------------------
    @torch.inference_mode()
    def run_llm(self, chunks: list[TokenChunk]) -> torch.Tensor:
        """One forward over all chunks; returns float32 logits [num_sampling_chunks, vocab] in chunk order."""
        token_ids: list[int] = []
        positions: list[torch.Tensor] = []
        slot_mapping: list[torch.Tensor] = []
        context_slots: list[torch.Tensor] = []
        query_starts = [0]
        for c in chunks:
            req = c.request
            token_ids.extend(req.token_id(i) for i in range(c.start, c.end))
            positions.append(_positions(c))
            slots = self.kv.slots(req.block_ids, 0, c.end, self.device)
            context_slots.append(slots)
            slot_mapping.append(slots[c.start:c.end])
            query_starts.append(query_starts[-1] + c.num_tokens)
        ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)
        embeds = self.embed(ids)
        for c, start in zip(chunks, query_starts, strict=False):
            _scatter_video_embeddings(embeds, c, start)
        pos = torch.cat(positions, dim=1).to(self.device)
        meta = AttentionMetadata(torch.cat(slot_mapping), query_starts, context_slots)
        with forward_context(self.kv, meta):
            hidden = self.decoder(embeds, pos)
        last = [query_starts[i + 1] - 1 for i, c in enumerate(chunks) if c.samples]
        if not last:
            return torch.empty(0, device=self.device)
        return self.decoder.logits(hidden[last]).float()

    def execute(self, plan: SchedulerOutput) -> tuple[torch.Tensor, float, float]:
        """Run the plan; returns (logits of sampling chunks, encoder seconds, LLM seconds)."""
        if self.overlap is not None:
            return self.overlap.execute(plan, self.run_encoder, self.run_llm)
        t0 = time.perf_counter()
        with self.threads.bursting(bool(plan.encoder_work)):
            self.run_encoder(plan.encoder_work)
        t1 = time.perf_counter()
        with self.threads.bursting(self.threads.llm_bursts(plan.num_prefill_tokens)):
            logits = self.run_llm(plan.chunks) if plan.chunks else torch.empty(0)
        t2 = time.perf_counter()
        return logits, t1 - t0, t2 - t1


def _positions(c: TokenChunk) -> torch.Tensor:
    """[3, n] M-RoPE ids: from get_rope_index inside the prompt, text-style (i + delta) after it."""
    req = c.request
    n_prompt = req.num_prompt_tokens
    parts = []
    if req.mrope_positions is not None and c.start < n_prompt:
        parts.append(req.mrope_positions[:, c.start:min(c.end, n_prompt)])
        tail_start = n_prompt
    else:
        tail_start = c.start
    if c.end > tail_start:
        tail = torch.arange(tail_start, c.end) + (req.rope_delta if req.mrope_positions is not None else 0)
        parts.append(tail.view(1, -1).expand(3, -1))
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def _scatter_video_embeddings(embeds: torch.Tensor, c: TokenChunk, row0: int) -> None:
    for item in c.request.videos:
        lo, hi = max(c.start, item.offset), min(c.end, item.end)
        if lo >= hi:
            continue
        assert item.embeddings is not None, "scheduler let a chunk consume video tokens that are not encoded"
        embeds[row0 + lo - c.start: row0 + hi - c.start] = item.embeddings[lo - item.offset: hi - item.offset]
