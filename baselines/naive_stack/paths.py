"""sys.path set-up for the model.py files (the Python backend stub ignores PYTHONPATH)."""

from __future__ import annotations

import sys
from pathlib import Path

BASELINES = Path(__file__).resolve().parents[1]


def add_project_paths() -> None:
    """backends/ (our packages, when not pip-installed) and baselines/ (this package)."""
    for path in (BASELINES.parent / "backends", BASELINES):
        if path.is_dir() and str(path) not in sys.path:
            sys.path.insert(0, str(path))
