"""Decode engines behind one interface, chosen by DecoderConfig.engine.

An engine turns (bytes, index, frames wanted) into decoded frames, spreading the work over its
decoder instances, and puts every frame into the request's output (a FrameSink) as soon as it has it.
Engines register a *factory*, so a GPU engine's libraries are imported only when it is first asked for
(PyNvVideoCodec fails at import without a driver; importing flashcodec never imports PyNvVideoCodec or
DALI). ``auto`` takes the first engine in AUTO_ORDER whose factory succeeds.

A factory gets the DecoderConfig and builds the engine from the fields its ``settings`` function picks
(the GPU engines: gpu_ids, sessions_per_gpu); one engine is kept per (name, settings). A factory that
raises EngineUnavailable is not retried for the same settings: the answer does not change while the
process lives, and ``auto`` asks on every request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .config import DecoderConfig
from .errors import VideoDecodeError
from .index import VideoIndex

if TYPE_CHECKING:
    from .frame_sink import FrameSink


@dataclass(frozen=True)
class DecodeResult:
    """What a decode cost; the frames themselves are in the FrameSink the engine was given."""

    num_decoded_frames: int  # frames the decoders produced, including ones thrown away
    num_segments: int  # runs decoded, over all instances


class DecodeEngine(Protocol):
    name: str

    def decode(self, data: bytes, index: VideoIndex, frames: Sequence[int], num_instances: int,
               out: FrameSink) -> DecodeResult:
        """Decode presentation frames ``frames`` (unique) on up to ``num_instances`` instances and put
        each one, uint8 [H, W, 3] RGB, into ``out`` (which resizes it to ``out.target_size`` with
        resize_frames; a GPU engine may resize on its device first): numpy from CPU engines, torch
        tensors from GPU engines. ``out`` holds every frame when this returns."""
        ...


class EngineUnavailable(RuntimeError):
    """The engine cannot run here (library or device missing). A deployment problem, not the client's."""


class UnsupportedByEngine(VideoDecodeError):
    """This engine cannot decode this video (codec, bit depth, size) although another engine may.

    ``auto`` and ``fallback_to_cpu`` hand the request to pyav; otherwise the client gets the message.
    """


AUTO_ORDER = ("nvdec", "pyav")  # nvdec when a GPU and PyNvVideoCodec are usable, else pyav


def _no_settings(config: DecoderConfig) -> Hashable:
    return None


def gpu_settings(config: DecoderConfig) -> Hashable:
    """What a GPU engine is built from."""
    return (config.gpu_ids, config.sessions_per_gpu)


@dataclass(frozen=True)
class _Registration:
    factory: Callable[[DecoderConfig], DecodeEngine]
    settings: Callable[[DecoderConfig], Hashable]


_registry: dict[str, _Registration] = {}
_engines: dict[tuple[str, Any], DecodeEngine | EngineUnavailable] = {}
_lock = threading.Lock()
_DEFAULT_CONFIG = DecoderConfig()


def register_engine(name: str, factory: Callable[[DecoderConfig], DecodeEngine],
                    settings: Callable[[DecoderConfig], Hashable] = _no_settings) -> None:
    """Make ``name`` selectable. ``factory(config)`` runs on first use and may raise EngineUnavailable;
    ``settings(config)`` names the config fields the engine depends on (one engine per distinct value)."""
    with _lock:
        _registry[name] = _Registration(factory, settings)
        for key in [k for k in _engines if k[0] == name]:
            del _engines[key]


def get_engine(name: str, config: DecoderConfig | None = None) -> DecodeEngine:
    """The engine called ``name`` ("auto": the first usable one in AUTO_ORDER), created once per settings."""
    config = config or _DEFAULT_CONFIG
    if name == "auto":
        reasons = []
        for candidate in AUTO_ORDER:
            if candidate not in _registry:
                continue
            try:
                return get_engine(candidate, config)
            except EngineUnavailable as exc:
                reasons.append(f"{candidate}: {exc}")
        raise EngineUnavailable("no decode engine is usable here: " + "; ".join(reasons))
    with _lock:
        registration = _registry.get(name)
        if registration is None:
            raise EngineUnavailable(f"decode engine {name!r} is not available in this build "
                                    f"(registered: {sorted(_registry)})")
        key = (name, registration.settings(config))
        engine = _engines.get(key)
        if engine is None:
            try:
                engine = registration.factory(config)
            except EngineUnavailable as exc:
                engine = exc
            _engines[key] = engine
    if isinstance(engine, EngineUnavailable):
        raise EngineUnavailable(str(engine))
    return engine


def _pyav_factory(config: DecoderConfig) -> DecodeEngine:
    from .decode_pyav import PyAVEngine

    return PyAVEngine()


def _full_factory(config: DecoderConfig) -> DecodeEngine:
    from .decode_full import FullDecodeEngine

    return FullDecodeEngine()


def _nvdec_factory(config: DecoderConfig) -> DecodeEngine:
    from .decode_nvdec import create_engine

    return create_engine(config)


def _dali_factory(config: DecoderConfig) -> DecodeEngine:
    from .decode_dali import create_engine

    return create_engine(config)


register_engine("pyav", _pyav_factory)
register_engine("pyav_full", _full_factory)  # baseline: sequential full decode (decode_full.py)
register_engine("nvdec", _nvdec_factory, gpu_settings)
register_engine("dali", _dali_factory, gpu_settings)
