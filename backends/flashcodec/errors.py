"""FlashCodec's one exception type for the client's fault.

Everything the caller can fix (corrupt, truncated or non-video input, an unsupported codec, an input over
the deployment's limits, bad sampling parameters) raises VideoDecodeError with a message that says what is
wrong in words a user can act on. The Triton adapter maps it to INVALID_ARG. Anything else escaping from
FlashCodec is our bug (INTERNAL) — which is why PyAV's own exceptions are always translated, never passed
through.
"""


class VideoDecodeError(ValueError):
    """The request's video or sampling parameters cannot be served (the client's fault)."""
