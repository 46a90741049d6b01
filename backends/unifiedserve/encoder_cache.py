"""Encoder output cache: visual tokens of a video kept by content key, so a repeated video skips the encoder.

The key is what the frames are (video content hash + sampled indices + size, from FlashCodec), so the
same file asked about with the same sampling hits. Entries are refcounted by the requests using them and
evicted lazily, least recently used first, only when unreferenced and only when room is needed.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass
class _Entry:
    embeddings: torch.Tensor
    refs: int = 0


class EncoderCache:
    def __init__(self, capacity_tokens: int) -> None:
        self.capacity_tokens = capacity_tokens
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.num_tokens = 0
        self.hits = 0
        self.misses = 0

    def acquire(self, key: str) -> torch.Tensor | None:
        """The cached embeddings (and one more reference to them), or None."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        entry.refs += 1
        self.hits += 1
        return entry.embeddings

    def peek(self, key: str) -> torch.Tensor | None:
        """The embeddings of a key the caller already holds a reference to."""
        entry = self._entries.get(key)
        return None if entry is None else entry.embeddings

    def insert(self, key: str, embeddings: torch.Tensor) -> bool:
        """Store freshly computed embeddings with one reference for the caller; False if there is no room."""
        if key in self._entries:
            self._entries[key].refs += 1
            return True
        size = embeddings.shape[0]
        if size > self.capacity_tokens or not self._evict_for(size):
            return False
        self._entries[key] = _Entry(embeddings, refs=1)
        self.num_tokens += size
        return True

    def release(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.refs > 0:
            entry.refs -= 1

    def _evict_for(self, size: int) -> bool:
        for key in list(self._entries):
            if self.num_tokens + size <= self.capacity_tokens:
                break
            if self._entries[key].refs == 0:
                self.num_tokens -= self._entries.pop(key).embeddings.shape[0]
        return self.num_tokens + size <= self.capacity_tokens
