"""Decoder sessions and the per-GPU pool that keeps them across requests (no GPU imports here).

Creating an NVDEC decoder costs tens of milliseconds and GPU memory, so sessions are created on demand,
up to ``per_gpu`` on each GPU, and reused by later requests of the same codec whose frames fit the
session's maximum size. One request takes up to K sessions spread over all GPUs at once.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

MIN_SESSION_SIZE = (1920, 1088)  # a new session fits at least 1080p, so most later videos can reuse it


class Session:
    """One decoder for one codec on one GPU, able to decode frames up to ``max_size`` (width, height).

    Subclasses implement decode/to_nv12 (decode_nvdec.NvdecSession; tests use an FFmpeg stand-in).
    """

    def __init__(self, gpu_id: Any, codec: str, max_size: tuple[int, int]) -> None:
        self.gpu_id, self.codec, self.max_size = gpu_id, codec, max_size

    def fits(self, codec: str, width: int, height: int) -> bool:
        return codec == self.codec and width <= self.max_size[0] and height <= self.max_size[1]

    def device(self) -> contextlib.AbstractContextManager:
        """Context every call on this session runs in (GPU: its device and CUDA stream)."""
        return contextlib.nullcontext()

    def decode(self, payload: bytes | None, pts: int) -> list[tuple[int, Any]]:
        """Feed one packet (None: end of stream, flush); (pts, frame) for each frame out, display order."""
        raise NotImplementedError

    def to_nv12(self, frame: Any) -> Any:
        """A frame from decode() as a uint8 NV12 torch tensor [H * 3 / 2, W]."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait until the session's GPU work is done."""

    def close(self) -> None:
        """Release the decoder (the session is not used again)."""


class SessionPool:
    """Sessions per GPU, created on demand up to ``per_gpu`` each, shared by all requests of a process."""

    def __init__(self, make_session: Callable[[Any, str, tuple[int, int]], Session], gpu_ids: Sequence[Any],
                 per_gpu: int) -> None:
        if not gpu_ids or per_gpu < 1:
            raise ValueError(f"a session pool needs GPUs and per_gpu >= 1, got {list(gpu_ids)}, {per_gpu}")
        self._make, self._per_gpu = make_session, per_gpu
        self.capacity = per_gpu * len(gpu_ids)
        self._live = dict.fromkeys(gpu_ids, 0)  # sessions (and reserved slots) per GPU
        self._idle: list[Session] = []
        self._cond = threading.Condition()

    def acquire(self, codec: str, width: int, height: int, want: int) -> list[Session]:
        """Between 1 and ``want`` sessions for a ``codec`` video of this size, spread over the GPUs.

        Waits only while none is available: a request never holds some sessions while waiting for more,
        so concurrent requests cannot deadlock; each splits its video over what it got.
        """
        want = max(1, min(want, self.capacity))
        with self._cond:
            while True:
                picks, evicted = self._pick(codec, width, height, want)
                if picks:
                    break
                self._cond.wait()
        for session in evicted:
            session.close()
        size = (max(width, MIN_SESSION_SIZE[0]), max(height, MIN_SESSION_SIZE[1]))
        sessions: list[Session] = []
        try:
            for gpu_id, session in picks:
                sessions.append(session if session is not None else self._make(gpu_id, codec, size))
        except BaseException:
            with self._cond:
                for gpu_id, session in picks[len(sessions):]:
                    if session is None:
                        self._live[gpu_id] -= 1  # reserved slot never filled
                    else:
                        self._idle.append(session)
                self._cond.notify_all()
            self.release(sessions)
            raise
        return sessions

    def release(self, sessions: Sequence[Session], broken: set[int] = frozenset()) -> None:
        """Give sessions back; those whose id() is in ``broken`` are closed instead of reused."""
        closing = []
        with self._cond:
            for session in sessions:
                if id(session) in broken:
                    self._live[session.gpu_id] -= 1
                    closing.append(session)
                else:
                    self._idle.append(session)
            self._cond.notify_all()
        for session in closing:
            session.close()

    def close(self) -> None:
        """Close the idle sessions (at shutdown)."""
        with self._cond:
            idle, self._idle = self._idle, []
            for session in idle:
                self._live[session.gpu_id] -= 1
        for session in idle:
            session.close()

    def _pick(self, codec: str, width: int, height: int, want: int) -> tuple[list, list[Session]]:
        """(gpu, idle session or None = create one) per pick, and idle sessions evicted to make room."""
        picks: list[tuple[Any, Session | None]] = []
        evicted: list[Session] = []
        taken = dict.fromkeys(self._live, 0)
        for _ in range(want):
            for gpu_id in sorted(self._live, key=lambda g: taken[g]):  # GPUs this request uses least first
                match = next((s for s in self._idle if s.gpu_id == gpu_id and s.fits(codec, width, height)), None)
                if match is not None:
                    self._idle.remove(match)
                    picks.append((gpu_id, match))
                elif self._live[gpu_id] < self._per_gpu:
                    self._live[gpu_id] += 1
                    picks.append((gpu_id, None))
                else:  # the GPU is full: replace an idle session of another codec or a smaller size
                    victim = next((s for s in self._idle if s.gpu_id == gpu_id), None)
                    if victim is None:
                        continue
                    self._idle.remove(victim)
                    evicted.append(victim)
                    picks.append((gpu_id, None))
                taken[gpu_id] += 1
                break
            else:
                break  # nothing free on any GPU
        return picks, evicted
