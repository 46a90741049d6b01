"""Host memory for decode outputs, recycled between requests.

Why: a request's output is one fresh uint8 [T, H, W, 3] array of up to hundreds of MB, and the first
write to fresh memory page-faults. Measured on the 2-core dev VM for 331 MB (2 fps of a 60 s 720p clip):
writing into a new array costs 120 ms with 4 KiB pages and 25-780 ms with transparent huge pages
(slow whenever the kernel has to find or reclaim huge pages), against 14 ms for the same copy into
memory that is already mapped — as much as half of that request's decode. Memory an earlier request
used and let go is still mapped, so writing into it costs only the copy.

Lifetime: an output array is made from a pool block through an owner object that numpy keeps as the
array's base (every view and every tensor made from the array keeps it alive too). Only when the last
of them is gone is the owner collected and its block given back, so memory a caller can still reach is
never reused. At most ``max_free_bytes`` of idle blocks are kept (least recently returned dropped
first); an output larger than that is a plain array.

The give-back never takes the pool's lock: it is a finalizer, and the garbage collector may run it on a thread
that already holds the lock (any allocation inside ``_take`` can start a collection that frees an output kept
in a reference cycle, e.g. by an exception's traceback). It only appends the block to ``_returned`` (atomic); the
blocks are filed under the lock by the next ``_take`` or ``free_bytes``. (With the lock in the finalizer, a
decoder thread deadlocked on itself in the truncated-MP4 error test.)
"""

from __future__ import annotations

import math
import threading
import weakref
from collections import deque

import numpy as np


class _Owner:
    """The first ``prod(shape)`` bytes of ``block`` as a uint8 array of ``shape`` (numpy's array interface)."""

    def __init__(self, block: np.ndarray, shape: tuple[int, ...]) -> None:
        self.block = block
        self.__array_interface__ = {"data": (block.ctypes.data, False), "shape": shape, "typestr": "|u1",
                                    "version": 3}


class OutputPool:
    def __init__(self, max_free_bytes: int) -> None:
        self.max_free_bytes = max_free_bytes
        self._free: deque[np.ndarray] = deque()  # idle blocks, most recently returned last
        self._free_bytes = 0
        self._returned: deque[np.ndarray] = deque()  # given back by finalizers, not filed yet (no lock)
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...]) -> np.ndarray:
        """An uninitialised C-contiguous uint8 array of ``shape``, on recycled memory when there is some."""
        nbytes = math.prod(shape)
        if nbytes == 0 or nbytes > self.max_free_bytes:
            return np.empty(shape, dtype=np.uint8)
        block = self._take(nbytes)
        if block is None:
            block = np.empty(nbytes, dtype=np.uint8)
        owner = _Owner(block, shape)
        array = np.asarray(owner)
        weakref.finalize(owner, self._give_back, block).atexit = False
        return array

    @property
    def free_bytes(self) -> int:
        with self._lock:
            self._file_returned()
            return self._free_bytes

    def _take(self, nbytes: int) -> np.ndarray | None:
        """The smallest idle block that fits, unless it wastes more than half of itself."""
        with self._lock:
            self._file_returned()
            fits = [i for i, b in enumerate(self._free) if nbytes <= b.nbytes <= 2 * nbytes]
            if not fits:
                return None
            best = min(fits, key=lambda i: self._free[i].nbytes)
            block = self._free[best]
            del self._free[best]  # by position: arrays compare element-wise, so no remove()
            self._free_bytes -= block.nbytes
            return block

    def _give_back(self, block: np.ndarray) -> None:
        self._returned.append(block)  # a finalizer: no lock (see the module's docstring)

    def _file_returned(self) -> None:
        """Under the lock: the returned blocks become idle ones, the least recently returned dropped past the cap."""
        while self._returned:
            block = self._returned.popleft()
            self._free.append(block)
            self._free_bytes += block.nbytes
        while self._free_bytes > self.max_free_bytes:
            self._free_bytes -= self._free.popleft().nbytes


_pools: dict[int, OutputPool] = {}
_pools_lock = threading.Lock()


def output_pool(max_free_bytes: int) -> OutputPool | None:
    """The process's pool for this cap (one per DecoderConfig.output_pool_bytes value); None when 0."""
    if max_free_bytes <= 0:
        return None
    with _pools_lock:
        pool = _pools.get(max_free_bytes)
        if pool is None:
            pool = _pools[max_free_bytes] = OutputPool(max_free_bytes)
        return pool
