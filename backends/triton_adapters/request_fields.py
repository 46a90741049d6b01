"""Triton request tensors/parameters -> engine dataclasses. Pure Python (no Triton import), unit-tested.

The adapters hand in `{input name: numpy array}` plus the request's JSON parameters. Names follow the
public contract (DESIGN.md 3), which follows the TRT-LLM / vLLM Triton backends.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from unifiedserve.errors import InvalidRequestError
from unifiedserve.sampling_params import SamplingParams

SCHEDULING_HINTS = ("priority", "ttft_slo_ms", "tpot_slo_ms")


@dataclass(frozen=True)
class ParsedGenerateRequest:
    text: str
    sampling: SamplingParams
    stream: bool
    priority: int
    ttft_slo_ms: float | None
    tpot_slo_ms: float | None


def scalar(tensors: Mapping[str, np.ndarray], name: str, kind: type, default: Any = None) -> Any:
    """First element of an optional input, converted to `kind`; `default` when absent."""
    arr = tensors.get(name)
    if arr is None:
        return default
    flat = np.asarray(arr).reshape(-1)
    if flat.size == 0:
        return default
    value = flat[0]
    if kind is str:
        return _utf8(name, value)
    if kind is bool:
        return bool(value)
    try:
        converted = kind(value)
    except (TypeError, ValueError, OverflowError) as exc:  # Fix: OverflowError (int of inf) was not caught
        raise InvalidRequestError(f"{name} must be a {kind.__name__}, got {value!r}") from exc
    if kind is float and not math.isfinite(converted):
        raise InvalidRequestError(f"{name} must be a finite number, got {value!r}")
    return converted


def strings(tensors: Mapping[str, np.ndarray], name: str) -> tuple[str, ...]:
    arr = tensors.get(name)
    if arr is None:
        return ()
    return tuple(_utf8(name, v) for v in np.asarray(arr).reshape(-1) if v)


def _utf8(name: str, value: Any) -> str:
    # Fix: a non-UTF-8 `stop` (or `video_key`) raised a bare UnicodeDecodeError, which the error map reports
    # as INTERNAL; it is the client's fault (INVALID_ARG), like a non-UTF-8 text_input.
    if not isinstance(value, bytes):
        return str(value)
    try:
        return value.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(f"{name} is not valid UTF-8") from exc


def hint(tensors: Mapping[str, np.ndarray], parameters: Mapping[str, Any], name: str, kind: type) -> Any:
    """Scheduling hints come as request parameters, or as same-named optional inputs (for /generate JSON)."""
    if name in parameters:
        value = parameters[name]
        # Fix: JSON `true` became priority 1 (the most urgent level), 2.9 became 2, 1e400 (inf) raised a bare
        # OverflowError (reported as INTERNAL), and "nan" passed. Only exact numbers of the right kind pass.
        try:
            if isinstance(value, bool):
                raise TypeError("a boolean is not a number")
            converted = kind(value)
            if (kind is int and isinstance(value, float) and converted != value) or (
                    kind is float and not math.isfinite(converted)):
                raise ValueError("not an exact, finite number")
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidRequestError(f"request parameter {name} must be a {kind.__name__}, got {value!r}") from exc
        return converted
    return scalar(tensors, name, kind)


def parse_generate_request(tensors: Mapping[str, np.ndarray], parameters: Mapping[str, Any],
                           default_max_tokens: int) -> ParsedGenerateRequest:
    text = scalar(tensors, "text_input", str)  # not UTF-8: InvalidRequestError "text_input is not valid UTF-8"
    if text is None:
        raise InvalidRequestError("text_input is required")
    sampling = SamplingParams(
        max_tokens=scalar(tensors, "max_tokens", int, default_max_tokens),
        temperature=scalar(tensors, "temperature", float, 0.0),
        top_p=scalar(tensors, "top_p", float, 1.0),
        top_k=scalar(tensors, "top_k", int, 0),
        seed=scalar(tensors, "seed", int, None),
        stop=strings(tensors, "stop"),
        ignore_eos=scalar(tensors, "ignore_eos", bool, False),
    )
    return ParsedGenerateRequest(
        text=text,
        sampling=sampling,
        stream=scalar(tensors, "stream", bool, False),
        priority=hint(tensors, parameters, "priority", int) or 0,
        ttft_slo_ms=hint(tensors, parameters, "ttft_slo_ms", float),
        tpot_slo_ms=hint(tensors, parameters, "tpot_slo_ms", float),
    )
