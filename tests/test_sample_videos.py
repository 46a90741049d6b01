"""scripts/make_sample_videos.py: the files are what their names and the manifest say, every frame's bar
code reads back as its presentation index, and generation is idempotent."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from flashcodec_fixtures import default_specs, sample_script, video_dir  # noqa: F401

from flashcodec import DecoderConfig, get_index


def test_barcode_round_trip() -> None:
    script = sample_script()
    for width, height in [(320, 240), (642, 362), (1280, 720)]:
        for i in (0, 1, 2, 255, 1799, 17999, 65535):
            assert script.read_barcode(script.make_frame(i, width, height)) == i
    # Neighbouring frames differ everywhere, not only in the bar code.
    a, b = script.make_frame(10, 320, 240), script.make_frame(11, 320, 240)
    assert np.mean(a[60:] != b[60:]) > 0.9


@pytest.mark.parametrize("spec", default_specs(), ids=lambda s: s.filename)
def test_sample_is_what_it_says(video_dir: Path, spec) -> None:  # noqa: F811
    path = video_dir / spec.filename
    index = get_index(path.read_bytes(), DecoderConfig())
    assert index.codec == spec.codec
    assert (index.width, index.height) == (spec.width, spec.height)
    assert index.num_frames == spec.num_frames
    # A VFR file's last frame lasts what the encoder guessed (x264 does not see our durations).
    assert index.duration_s == pytest.approx(spec.duration_s, abs=0.1 if spec.vfr else 0.002)
    assert index.regular == (not spec.vfr)
    keyframe_pts = index.pts[index.presentation_index[index.keyframes]]
    assert keyframe_pts[0] == index.pts[0]
    if spec.num_frames > 1:
        assert (len(index.keyframes) == 1) == (spec.gop >= spec.num_frames)
        assert np.all(np.diff(np.searchsorted(index.pts, keyframe_pts)) <= spec.gop)
    if spec.bframes and spec.num_frames > 1:  # B-frames: decode order differs from presentation order
        assert np.any(index.decode_index != np.arange(index.num_frames))
    if spec.open_gop:  # some frames follow a keyframe in decode order but are shown before it
        assert any(index.decode_index[f] > k and index.pts[f] < index.pts[index.presentation_index[k]]
                   for k in index.keyframes[1:] for f in range(index.num_frames))
    # A full decode shows each frame's own index in its bar code.
    read = sample_script().read_barcode
    with av.open(str(path)) as container:
        codes = [read(frame.to_ndarray(format="rgb24")) for frame in container.decode(video=0)]
    assert codes == list(range(spec.num_frames))


def test_manifest_lists_every_file(video_dir: Path) -> None:  # noqa: F811
    manifest = json.loads((video_dir / "manifest.json").read_text())
    entries = {entry["file"]: entry for entry in manifest["videos"]}
    for spec in default_specs():
        entry = entries[spec.filename]
        assert (entry["codec"], entry["width"], entry["height"]) == (spec.codec, spec.width, spec.height)
        assert (entry["frames"], entry["gop"], entry["vfr"]) == (spec.num_frames, spec.gop, spec.vfr)
    assert any(e["vfr"] for e in entries.values()) and any(e["frames"] == 1 for e in entries.values())
    assert {e["codec"] for e in entries.values()} >= {"h264", "hevc", "vp9"}


def test_generation_is_idempotent_and_deterministic(tmp_path: Path) -> None:
    script = sample_script()
    tiny = (script.SampleSpec("h264", 64, 48, 10, 12, gop=6, bframes=2),)
    (path,) = script.generate(tmp_path, tiny, verbose=False)
    first = path.read_bytes()
    stamp = path.stat().st_mtime_ns
    manifest = (tmp_path / "manifest.json").read_text()
    script.generate(tmp_path, tiny, verbose=False)
    assert path.stat().st_mtime_ns == stamp  # skipped, not rewritten
    assert (tmp_path / "manifest.json").read_text() == manifest
    path.unlink()
    script.generate(tmp_path, tiny, verbose=False)
    assert path.read_bytes() == first  # same bytes again
    assert not list(tmp_path.glob(".*partial*"))


def test_cli_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = sample_script()
    quick = {spec.filename for spec in script.QUICK_SET}
    for name in quick:  # pretend most exist already so the CLI run stays fast; it must skip them
        (tmp_path / name).write_bytes(b"placeholder")
    smallest = min(script.QUICK_SET, key=lambda s: s.num_frames * s.width * s.height)
    (tmp_path / smallest.filename).unlink()
    assert script.main(["--out", str(tmp_path), "--quick"]) == 0
    assert "skip" in capsys.readouterr().out
    assert get_index((tmp_path / smallest.filename).read_bytes(), DecoderConfig()).num_frames == smallest.num_frames
    assert len(json.loads((tmp_path / "manifest.json").read_text())["videos"]) == len(quick)
