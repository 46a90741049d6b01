"""Paged KV-cache block accounting: which physical blocks each request owns (no tensors here)."""

from __future__ import annotations

from collections import deque

from unifiedserve.request import Request


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks <= 0:
            raise ValueError("the KV cache has no blocks: raise kv_cache_memory_bytes or num_kv_blocks")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self._free) / self.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def num_new_blocks(self, request: Request, num_new_tokens: int) -> int:
        needed = self.blocks_for(request.num_computed_tokens + num_new_tokens)
        return max(0, needed - len(request.block_ids))

    def can_allocate(self, request: Request, num_new_tokens: int) -> bool:
        return self.num_new_blocks(request, num_new_tokens) <= len(self._free)

    def allocate(self, request: Request, num_new_tokens: int) -> bool:
        """Give `request` room for `num_new_tokens` more tokens; False (and nothing taken) if it does not fit."""
        n = self.num_new_blocks(request, num_new_tokens)
        if n > len(self._free):
            return False
        request.block_ids.extend(self._free.popleft() for _ in range(n))
        return True

    def free(self, request: Request) -> None:
        # Most recently used blocks go back last so that reuse order stays FIFO (easier to debug).
        self._free.extend(request.block_ids)
        request.block_ids = []

    def fits_ever(self, num_tokens: int) -> bool:
        return self.blocks_for(num_tokens) <= self.num_blocks
