"""Where a video comes from: raw bytes, a `data:` URI, a `file://` path under configured roots, or http(s)."""

from __future__ import annotations

import base64
import binascii
import os
import urllib.parse
import urllib.request
from dataclasses import dataclass

from flashcodec.errors import VideoDecodeError


@dataclass(frozen=True)
class SourcePolicy:
    media_roots: tuple[str, ...] = ()  # file:// is refused unless the path is under one of these
    allow_http: bool = False
    max_bytes: int = 512 * 2**20
    http_timeout_s: float = 30.0


def load_video_source(video_bytes: bytes | None, video_url: str | None, policy: SourcePolicy) -> bytes | None:
    """The compressed video's bytes, or None when the request carries no video."""
    if video_bytes is not None and video_url:
        raise VideoDecodeError("give either video_bytes or video_url, not both")
    if video_bytes is not None and len(video_bytes) == 0:
        raise VideoDecodeError("video_bytes is empty: send the contents of a video file")
    if video_bytes:
        data = video_bytes
    elif video_url:
        data = _fetch(video_url.strip(), policy)
    else:
        return None
    if len(data) > policy.max_bytes:
        raise VideoDecodeError(f"video is {len(data)} bytes; the limit is {policy.max_bytes}")
    return data


def _fetch(url: str, policy: SourcePolicy) -> bytes:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return _data_uri(url)
    if scheme == "file":
        return _local_file(urllib.parse.unquote(urllib.parse.urlparse(url).path), policy)
    if scheme in ("http", "https"):
        if not policy.allow_http:
            raise VideoDecodeError("http(s) video URLs are disabled on this server (flashcodec allow_http)")
        with urllib.request.urlopen(url, timeout=policy.http_timeout_s) as resp:  # noqa: S310 - scheme checked
            data = resp.read(policy.max_bytes + 1)
        return data
    raise VideoDecodeError(f"unsupported video_url scheme {scheme!r}: use data:, file:// or http(s)://")


def _data_uri(url: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or ";base64" not in header:
        raise VideoDecodeError("data: video URLs must be base64 (data:video/mp4;base64,...)")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise VideoDecodeError(f"video_url data: payload is not valid base64: {exc}") from exc


def _local_file(path: str, policy: SourcePolicy) -> bytes:
    real = os.path.realpath(path)
    roots = [os.path.realpath(r) for r in policy.media_roots if r]
    if not any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots):
        raise VideoDecodeError("file:// video URLs must point under the server's media roots (flashcodec media_roots)")
    if not os.path.isfile(real):
        raise VideoDecodeError(f"no such video file: {path}")
    if os.path.getsize(real) > policy.max_bytes:
        raise VideoDecodeError(f"video file is {os.path.getsize(real)} bytes; the limit is {policy.max_bytes}")
    with open(real, "rb") as f:
        return f.read()
