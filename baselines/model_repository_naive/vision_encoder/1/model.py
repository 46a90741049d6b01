"""Thin shim: the model lives in baselines/naive_stack/vision_model.py."""

import sys
from pathlib import Path

# The Python backend stub ignores PYTHONPATH: make baselines/ (and backends/, for a plain checkout) importable.
_BASELINES = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(_BASELINES))

from naive_stack.paths import add_project_paths  # noqa: E402

add_project_paths()

from naive_stack.vision_model import TritonPythonModel  # noqa: E402, F401
