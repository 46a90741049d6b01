"""The one map from exceptions to Triton error codes (the client's fault, overload, or ours)."""

from __future__ import annotations

import triton_python_backend_utils as pb_utils

from unifiedserve.errors import InvalidRequestError, OverloadedError


def _is_client_error(exc: BaseException) -> bool:
    try:
        from flashcodec import VideoDecodeError
    except ImportError:  # pragma: no cover - flashcodec is part of this distribution
        VideoDecodeError = InvalidRequestError  # noqa: N806
    return isinstance(exc, (InvalidRequestError, VideoDecodeError))


def to_triton_error(exc: BaseException) -> pb_utils.TritonError:
    if _is_client_error(exc):
        return pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
    if isinstance(exc, OverloadedError):
        return pb_utils.TritonError(str(exc), pb_utils.TritonError.UNAVAILABLE)
    return pb_utils.TritonError(f"internal error: {type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL)


def cancelled_error() -> pb_utils.TritonError:
    return pb_utils.TritonError("request was cancelled", pb_utils.TritonError.CANCELLED)
