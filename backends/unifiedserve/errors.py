"""Engine exceptions. Each maps to one Triton error code in `triton_adapters.errors` (one map, one place)."""


class EngineError(Exception):
    """Base class: a failure that is the server's fault (maps to INTERNAL)."""


class InvalidRequestError(EngineError, ValueError):
    """The client's fault: bad parameters, prompt too long, unusable media (maps to INVALID_ARG)."""


class OverloadedError(EngineError):
    """The engine cannot take more work right now (maps to UNAVAILABLE)."""
