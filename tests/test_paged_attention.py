"""paged_attention over scattered cache slots equals plain causal attention over the whole sequence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unifiedserve.paged_attention import AttentionMetadata, PagedKVCache, forward_context, paged_attention


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of the last q.shape[0] positions over all of k/v ([tokens, heads, d] layouts)."""
    n_q, n_ctx = q.shape[0], k.shape[0]
    mask = torch.arange(n_ctx)[None, :] <= torch.arange(n_ctx - n_q, n_ctx)[:, None]
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask,
                                         scale=scale, enable_gqa=True)
    return out.transpose(0, 1)


@pytest.mark.parametrize("context", [1, 37, 700])
def test_decode_and_chunk_match_reference_over_scattered_blocks(context: int) -> None:
    torch.manual_seed(context)
    heads, kv_heads, d, block = 8, 2, 16, 16
    total = context + 5  # a decode token for sequence A, a 5-token prefill chunk for sequence B
    cache = PagedKVCache(1, 2 * (total // block + 2), block, kv_heads, d, torch.float32, torch.device("cpu"))
    blocks = torch.randperm(2 * (total // block + 2))
    slots_a = (blocks[: total // block + 1, None] * block + torch.arange(block)).reshape(-1)[:context + 1]
    slots_b = (blocks[total // block + 1:, None] * block + torch.arange(block)).reshape(-1)[:context + 5]
    q_a, k_a, v_a = (torch.randn(context + 1, h, d) for h in (heads, kv_heads, kv_heads))
    q_b, k_b, v_b = (torch.randn(context + 5, h, d) for h in (heads, kv_heads, kv_heads))
    cache.key[0, slots_a[:context]], cache.value[0, slots_a[:context]] = k_a[:context], v_a[:context]
    cache.key[0, slots_b[:context]], cache.value[0, slots_b[:context]] = k_b[:context], v_b[:context]
    meta = AttentionMetadata(torch.cat([slots_a[context:], slots_b[context:]]), [0, 1, 6], [slots_a, slots_b])
    with forward_context(cache, meta):
        out = paged_attention(0, torch.cat([q_a[context:], q_b[context:]]), torch.cat([k_a[context:], k_b[context:]]),
                              torch.cat([v_a[context:], v_b[context:]]), 0.25)
    torch.testing.assert_close(out[:1], _reference(q_a[context:], k_a, v_a, 0.25), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1:], _reference(q_b[context:], k_b, v_b, 0.25), atol=1e-5, rtol=1e-5)
