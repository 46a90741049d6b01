"""Thin shim: the adapter lives in backends/triton_adapters (importable, testable without Triton)."""

from triton_adapters.flashcodec_model import TritonPythonModel  # noqa: F401
