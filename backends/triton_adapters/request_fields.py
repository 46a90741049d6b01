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
        return value.decode("utf-8", errors="strict") if isinstance(value, bytes) else str(value)
    if kind is bool:
        return bool(value)
    try:
        converted = kind(value)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"{name} must be a {kind.__name__}, got {value!r}") from exc
    if kind is float and not math.isfinite(converted):
        raise InvalidRequestError(f"{name} must be a finite number, got {value!r}")
    return converted


def strings(tensors: Mapping[str, np.ndarray], name: str) -> tuple[str, ...]:
    arr = tensors.get(name)
    if arr is None:
        return ()
    return tuple(v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(arr).reshape(-1) if v)


def hint(tensors: Mapping[str, np.ndarray], parameters: Mapping[str, Any], name: str, kind: type) -> Any:
    """Scheduling hints come as request parameters, or as same-named optional inputs (for /generate JSON)."""
    if name in parameters:
        try:
            return kind(parameters[name])
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"request parameter {name} must be a {kind.__name__}") from exc
    return scalar(tensors, name, kind)


def parse_generate_request(tensors: Mapping[str, np.ndarray], parameters: Mapping[str, Any],
                           default_max_tokens: int) -> ParsedGenerateRequest:
    try:
        text = scalar(tensors, "text_input", str)
    except UnicodeDecodeError as exc:
        raise InvalidRequestError("text_input is not valid UTF-8") from exc
    if text is None:
        raise InvalidRequestError("text_input is required")
    sampling = SamplingParams(
        max_tokens=scalar(tensors, "max_tokens", int, default_max_tokens),
        temperature=scalar(tensors, "temperature", float, 0.0),
        top_p=scalar(tensors, "top_p", float, 1.0),
        top_k=scalar(tensors, "top_k", int, 0),
        seed=scalar(tensors, "seed", int, None),
        stop=strings(tensors, "stop"),
    )
    return ParsedGenerateRequest(
        text=text,
        sampling=sampling,
        stream=scalar(tensors, "stream", bool, False),
        priority=hint(tensors, parameters, "priority", int) or 0,
        ttft_slo_ms=hint(tensors, parameters, "ttft_slo_ms", float),
        tpot_slo_ms=hint(tensors, parameters, "tpot_slo_ms", float),
    )
