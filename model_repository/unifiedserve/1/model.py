"""Thin shim: the adapter lives in backends/triton_adapters (importable, testable without Triton)."""

import sys
from pathlib import Path

# The project is pip-installed (editable) by scripts/bootstrap.sh; this fallback serves a plain checkout.
# (The Python backend stub ignores PYTHONPATH, so the path is added here.)
_BACKENDS = Path(__file__).resolve().parents[3] / "backends"
if _BACKENDS.is_dir() and str(_BACKENDS) not in sys.path:
    sys.path.insert(0, str(_BACKENDS))

from triton_adapters.unifiedserve_model import TritonPythonModel  # noqa: E402, F401
