"""One HF `model.generate()` over a whole static batch, with precomputed video embeddings.

This is what a Triton user gets from stock pieces: the batch is fixed when generate() starts, runs until its
longest request is done, and new requests wait. transformers 5.23 accepts encoder outputs computed elsewhere
(`mm_encoder_outputs={"video": BaseModelOutputWithPooling(pooler_output=(emb, ...))}`): its forward
scatters them at the video placeholder tokens, and `get_rope_index` (fed `mm_token_type_ids`,
`video_grid_thw`, `second_per_grid_ts`) gives the M-RoPE positions, exactly as when it encodes pixels itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.modeling_outputs import BaseModelOutputWithPooling

from unifiedserve.sampling_params import SamplingParams

VIDEO_TOKEN_TYPE = 2  # HF mm_token_type_ids: text 0, image 1, video 2


@dataclass
class BatchItem:
    prompt_ids: list[int]
    sampling: SamplingParams
    video_embeds: torch.Tensor | None = None  # [num_video_tokens, hidden]
    grid_thw: tuple[int, int, int] | None = None
    second_per_grid_t: float | None = None


class RowTemperature(LogitsProcessor):
    """Per-request temperature inside one sampled batch; a greedy row keeps only its argmax.

    HF applies custom processors before its own top-k/top-p warpers, so this is the usual order.
    """

    def __init__(self, temperatures: list[float]) -> None:
        self.temperatures = temperatures

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = scores.clone()
        for row, temp in enumerate(self.temperatures):
            if temp == 0.0:
                keep = out[row].argmax()
                value = out[row, keep].clone()
                out[row].fill_(float("-inf"))
                out[row, keep] = value
            else:
                out[row] = out[row] / temp
        return out


class StopWhen(StoppingCriteria):
    """Ends generate() early once every request of the batch is done (stop strings, EOS rows)."""

    def __init__(self, all_done: Callable[[], bool]) -> None:
        self.all_done = all_done

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.all_done(), dtype=torch.bool, device=input_ids.device)


def generate_batch(model, items: list[BatchItem], video_token_id: int, pad_token_id: int,
                   eos_token_ids: list[int], streamer, all_done: Callable[[], bool]) -> None:
    """Run one generate() for `items`; `streamer.put` gets each step's tokens ([B]) in item order."""
    width = max(len(it.prompt_ids) for it in items)
    ids = torch.full((len(items), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, it in enumerate(items):  # left padding: every row's last prompt token is at the same column
        ids[row, width - len(it.prompt_ids):] = torch.tensor(it.prompt_ids, dtype=torch.long)
        mask[row, width - len(it.prompt_ids):] = 1
    kwargs: dict = {"input_ids": ids, "attention_mask": mask}
    videos = [it for it in items if it.video_embeds is not None]
    if videos:
        kwargs["mm_token_type_ids"] = ((ids == video_token_id) & (mask == 1)).to(torch.int32) * VIDEO_TOKEN_TYPE
        kwargs["video_grid_thw"] = torch.tensor([it.grid_thw for it in videos], dtype=torch.long)
        kwargs["second_per_grid_ts"] = torch.tensor([it.second_per_grid_t for it in videos], dtype=torch.float32)
        kwargs["mm_encoder_outputs"] = {"video": BaseModelOutputWithPooling(
            pooler_output=tuple(it.video_embeds.to(model.dtype) for it in videos))}

    first = items[0].sampling
    sampled = any(it.sampling.temperature > 0 for it in items)
    # A request's ignore_eos cannot stop another row of the same generate() at EOS, so with any ignore_eos
    # in the batch generate() ignores EOS and the streamer ends the other rows at their EOS itself.
    ignore_eos = any(it.sampling.ignore_eos for it in items)
    config = GenerationConfig(
        max_new_tokens=max(it.sampling.max_tokens for it in items),
        do_sample=sampled,
        # One generate() has one top_p/top_k/seed: the batch takes the first request's (a stock limitation).
        top_p=first.top_p if sampled else None,
        top_k=first.top_k if sampled else None,
        temperature=None,
        pad_token_id=pad_token_id,
        eos_token_id=None if ignore_eos else eos_token_ids,
    )
    processors = LogitsProcessorList([RowTemperature([it.sampling.temperature for it in items])] if sampled else [])
    if sampled and first.seed is not None:
        torch.manual_seed(first.seed)
    with torch.inference_mode():
        model.generate(**kwargs, generation_config=config, logits_processor=processors,
                       stopping_criteria=StoppingCriteriaList([StopWhen(all_done)]), streamer=streamer)
