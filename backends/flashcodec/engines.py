"""Decode engines behind one interface, chosen by DecoderConfig.engine.

An engine turns (bytes, index, frames wanted) into decoded frames, spreading the work over its
decoder instances. Engines register a *factory*, so a GPU engine's libraries are imported only when it
is first asked for (PyNvVideoCodec fails at import without a driver). ``auto`` takes the first engine
in AUTO_ORDER whose factory succeeds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .index import VideoIndex


@dataclass(frozen=True)
class DecodeResult:
    frames: dict[int, np.ndarray]  # presentation index -> uint8 [H, W, 3] RGB (target size if given)
    num_decoded_frames: int  # frames the decoders produced, including ones thrown away
    num_segments: int  # runs decoded, over all instances


class DecodeEngine(Protocol):
    name: str

    def decode(self, data: bytes, index: VideoIndex, frames: Sequence[int], num_instances: int,
               target_size: tuple[int, int] | None) -> DecodeResult:
        """Decode presentation frames ``frames`` (unique) on up to ``num_instances`` instances,
        resized to ``target_size`` (height, width) with resize_frames when given."""
        ...


class EngineUnavailable(RuntimeError):
    """The engine cannot run here (library or device missing). A deployment problem, not the client's."""


AUTO_ORDER = ("nvdec", "pyav")  # nvdec registers itself later; until then auto = pyav

_factories: dict[str, Callable[[], DecodeEngine]] = {}
_engines: dict[str, DecodeEngine] = {}
_lock = threading.Lock()


def register_engine(name: str, factory: Callable[[], DecodeEngine]) -> None:
    """Make ``name`` selectable; ``factory`` runs on first use and may raise EngineUnavailable."""
    with _lock:
        _factories[name] = factory
        _engines.pop(name, None)


def get_engine(name: str) -> DecodeEngine:
    """The engine called ``name`` ("auto": the first usable one in AUTO_ORDER), created once."""
    if name == "auto":
        reasons = []
        for candidate in AUTO_ORDER:
            if candidate not in _factories:
                continue
            try:
                return get_engine(candidate)
            except EngineUnavailable as exc:
                reasons.append(f"{candidate}: {exc}")
        raise EngineUnavailable("no decode engine is usable here: " + "; ".join(reasons))
    with _lock:
        engine = _engines.get(name)
        if engine is None:
            factory = _factories.get(name)
            if factory is None:
                raise EngineUnavailable(f"decode engine {name!r} is not available in this build "
                                        f"(registered: {sorted(_factories)})")
            engine = _engines[name] = factory()
        return engine


def _pyav_factory() -> DecodeEngine:
    from .decode_pyav import PyAVEngine

    return PyAVEngine()


register_engine("pyav", _pyav_factory)
