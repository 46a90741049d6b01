"""Shared helpers and fixtures for the FlashCodec tests (imported by the test files; not a conftest).

Sample videos come from scripts/make_sample_videos.py: ``artifacts/videos`` is reused when it holds the
whole default set, otherwise the set is generated once per session into a pytest temp folder.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path

import av
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "backends") not in sys.path:  # works before `pip install -e .` too
    sys.path.insert(0, str(REPO / "backends"))


@functools.cache
def sample_script():
    """scripts/make_sample_videos.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("make_sample_videos", REPO / "scripts" / "make_sample_videos.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_generated: dict[str, Path] = {}


def default_video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder holding every default sample video (generated at most once per session)."""
    if "dir" not in _generated:
        script = sample_script()
        artifacts = REPO / "artifacts" / "videos"
        if all((artifacts / spec.filename).exists() for spec in script.DEFAULT_SET):
            _generated["dir"] = artifacts
        else:
            out = tmp_path_factory.mktemp("videos")
            script.generate(out, script.DEFAULT_SET, verbose=False)
            _generated["dir"] = out
    return _generated["dir"]


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return default_video_dir(tmp_path_factory)


def default_specs():
    return sample_script().DEFAULT_SET


def reference_frames(path: Path, wanted: Iterable[int]) -> dict[int, np.ndarray]:
    """Sequential full decode (what any plain decoder does); the i-th frame out is presentation frame i.

    Independent of FlashCodec's index: frames are numbered by output order, and output pts must rise.
    """
    wanted = {int(i) for i in wanted}
    frames: dict[int, np.ndarray] = {}
    last_pts = None
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            assert last_pts is None or frame.pts > last_pts, "decoder output is not in pts order"
            last_pts = frame.pts
            if i in wanted:
                frames[i] = frame.to_ndarray(format="rgb24")
    return frames
