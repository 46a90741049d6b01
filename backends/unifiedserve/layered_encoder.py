"""The vision tower, resumable block by block: encoder work cut finer than one temporal group.

UnifiedServe time-slices the encoder around LLM steps. Temporal groups already split a video exactly
(attention never crosses them), but one group of a large frame pair can cost more than a decode step.
Running the tower's blocks in several steps is exact too: it is the same computation, paused between
blocks with its hidden state kept. This mirrors the HF forward of Qwen2-VL and Qwen2.5-VL
(patch_embed -> [window permute] -> rotary -> blocks -> merger -> [un-permute]) using the model's own
modules; tests check it equals `model.visual(...)` bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils.generic import get_max_seqlen
from transformers.vision_utils import get_vision_attention_seqlens, get_vision_position_ids, get_vision_window_index


@dataclass
class EncoderPiece:
    """One group range of one video on its way through the tower."""

    hidden: torch.Tensor  # [patches, hidden] after the blocks run so far (window-permuted on Qwen2.5-VL)
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    cu_seqlens: torch.Tensor
    max_seqlen: int | None
    cu_window_seqlens: torch.Tensor | None
    max_window_seqlen: int | None
    window_index: torch.Tensor | None
    next_block: int = 0


class LayeredVisionEncoder:
    def __init__(self, visual: torch.nn.Module) -> None:
        self.visual = visual
        self.depth = len(visual.blocks)
        self.windowed = hasattr(visual, "fullatt_block_indexes")  # Qwen2.5-VL

    @torch.inference_mode()
    def start(self, pixels: torch.Tensor, grid_thw: torch.Tensor) -> EncoderPiece:
        v = self.visual
        pixels = pixels.to(v.dtype)
        position_ids = get_vision_position_ids(grid_thw, v.spatial_merge_size, kwargs={})
        cu_seqlens, max_seqlen = get_vision_attention_seqlens(grid_thw, v.config, kwargs={})
        hidden = v.patch_embed(pixels)
        window_index = cu_window = max_window = None
        if self.windowed:
            window_index, cu_window = get_vision_window_index(
                grid_thw, spatial_merge_size=v.spatial_merge_size, window_size=v.window_size,
                patch_size=v.patch_size, kwargs={})
            max_window = get_max_seqlen(cu_window, v.config, kwargs={}, kwarg_name="max_window_seqlen")
            seq_len = hidden.shape[0]
            hidden = v.permute_input_for_window_attn(hidden, window_index, seq_len=seq_len)
            pos = v.rotary_pos_emb(hidden, position_ids)
            pos = tuple(v.permute_input_for_window_attn(f, window_index, seq_len=seq_len) for f in pos)
        else:
            pos = v.rotary_pos_emb(hidden, position_ids)
        return EncoderPiece(hidden, pos, cu_seqlens, max_seqlen, cu_window, max_window, window_index)

    @torch.inference_mode()
    def run_blocks(self, piece: EncoderPiece, num_blocks: int) -> None:
        v = self.visual
        end = min(self.depth, piece.next_block + num_blocks)
        for i in range(piece.next_block, end):
            full = not self.windowed or i in v.fullatt_block_indexes
            piece.hidden = v.blocks[i](
                piece.hidden,
                cu_seqlens=piece.cu_seqlens if full else piece.cu_window_seqlens,
                max_seqlen=piece.max_seqlen if full else piece.max_window_seqlen,
                position_embeddings=piece.position_embeddings,
            )
        piece.next_block = end

    def done(self, piece: EncoderPiece) -> bool:
        return piece.next_block >= self.depth

    @torch.inference_mode()
    def finish(self, piece: EncoderPiece) -> torch.Tensor:
        """Merged visual tokens [tokens, out_hidden] in the LLM's order."""
        merged = self.visual.merger(piece.hidden)
        if piece.window_index is not None:
            merged = merged[torch.argsort(piece.window_index), :]
        return merged

    def encode(self, pixels: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        piece = self.start(pixels, grid_thw)
        self.run_blocks(piece, self.depth)
        return self.finish(piece)
