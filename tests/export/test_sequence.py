"""`persona export --motion M --out DIR/`: a numbered 3DGS PLY sequence plus sequence.json,
equal frame by frame to the avatar's own posed Gaussians, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from plyfile import PlyData

from persona.data.motions import resolve_motion
from persona.export import sequence as sequence_module
from persona.export.cli import export_main, motion_pose
from persona.export.ply import SH_C0
from persona.export.sequence import SEQUENCE_INDEX, frame_name, write_ply_sequence
from persona.render.types import Gaussians

SEQUENCE_FRAMES = 4  # frames of the built-in motion exported from the tiny avatar
ATOL = 1e-6  # activated values read back from the PLY vs the posed Gaussians
MM = 1e-3  # metres


def _activated(path: Path) -> dict[str, np.ndarray]:
    """Activated Gaussians of a 3DGS PLY, read with plyfile (float64)."""
    vertex = PlyData.read(str(path))["vertex"].data

    def columns(*names: str) -> np.ndarray:
        return np.stack([np.asarray(vertex[n], np.float64) for n in names], axis=1)

    return {"means": columns("x", "y", "z"),
            "scales": np.exp(columns("scale_0", "scale_1", "scale_2")),
            "opacities": 1.0 / (1.0 + np.exp(-columns("opacity")[:, 0])),
            "rgb": columns("f_dc_0", "f_dc_1", "f_dc_2") * SH_C0 + 0.5}


def test_sequence_of_a_builtin_motion_reads_back_as_the_posed_gaussians(
        tiny_ckpt: Path, tiny_system, tmp_path: Path) -> None:
    out = tmp_path / "wave_frames"
    assert export_main(["--ckpt", str(tiny_ckpt), "--motion", "wave", "--out", f"{out}/",
                        "--max-frames", str(SEQUENCE_FRAMES), "--device", "cpu"]) == 0
    index = json.loads((out / SEQUENCE_INDEX).read_text())
    files = [f"frame_{t:05d}.ply" for t in range(SEQUENCE_FRAMES)]
    assert index["files"] == files and index["num_frames"] == SEQUENCE_FRAMES
    assert index["motion"] == "wave" and index["fps"] == 30.0 and index["variant"] == "refined"
    assert sorted(os.listdir(out)) == sorted([*files, SEQUENCE_INDEX])  # nothing else
    motion = resolve_motion("wave")
    previous = None
    for t, name in enumerate(files):
        pose = motion_pose(motion.poses, motion.transl, motion.expression, t)
        with torch.no_grad():
            gaussians, colours = tiny_system.posed_gaussians(pose, "refined")
            base, _ = tiny_system.posed_gaussians(pose, "base")
        assert index["num_gaussians"] == gaussians.means.shape[0]
        ply = _activated(out / name)
        np.testing.assert_allclose(ply["means"], gaussians.means.numpy(), atol=ATOL)
        np.testing.assert_allclose(ply["scales"], gaussians.scales.numpy(), atol=ATOL)
        np.testing.assert_allclose(ply["opacities"], gaussians.opacities.numpy(), atol=ATOL)
        np.testing.assert_allclose(ply["rgb"], colours["rgb"].numpy(), atol=ATOL)
        # the pose-dependent offsets are in: the base means (no offsets) are millimetres away
        assert np.abs(ply["means"] - base.means.numpy()).max() > MM
        # each file is its own frame (an off-by-one or a repeated frame differs from persona's)
        if previous is not None:
            assert np.abs(ply["means"] - previous).max() > MM
        previous = ply["means"]


class _BoxAvatar:
    """A box of Gaussians that follows the root translation (no trained system needed)."""

    def __init__(self, n: int = 64) -> None:
        self.points = torch.rand(n, 3, generator=torch.Generator().manual_seed(0))

    def posed_gaussians(self, pose, variant: str = "refined"):
        n = self.points.shape[0]
        means = self.points + pose.transl[0] + pose.full_pose[0, 1]  # moves with the pose
        return (Gaussians(means, torch.full((n, 3), 0.02), torch.full((n,), 0.9)),
                {"rgb": self.points.clone()})


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_an_interrupted_sequence_write_leaves_no_partial_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    motion = resolve_motion("wave")
    avatar = _BoxAvatar()
    real_export = sequence_module.export_gaussians
    calls = {"n": 0}

    def failing_export(path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the third frame: two are already on disk
            raise RuntimeError("simulated crash while writing a frame")
        return real_export(path, *args, **kwargs)

    monkeypatch.setattr(sequence_module, "export_gaussians", failing_export)
    out = tmp_path / "seq"
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_ply_sequence(avatar, motion, out, max_frames=5)
    assert calls["n"] == 3
    assert not out.exists()
    assert os.listdir(tmp_path) == []  # no temporary folder left beside it either

    # an earlier complete sequence survives a failed rewrite untouched ...
    monkeypatch.setattr(sequence_module, "export_gaussians", real_export)
    write_ply_sequence(avatar, motion, out, max_frames=2)
    before = _snapshot(out)
    assert sorted(before) == [frame_name(0, 2), frame_name(1, 2), SEQUENCE_INDEX]
    calls["n"] = 0
    monkeypatch.setattr(sequence_module, "export_gaussians", failing_export)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_ply_sequence(avatar, motion, out, max_frames=5)
    assert _snapshot(out) == before and os.listdir(tmp_path) == ["seq"]

    # ... and a successful rewrite replaces it whole
    monkeypatch.setattr(sequence_module, "export_gaussians", real_export)
    result = write_ply_sequence(avatar, motion, out, max_frames=3)
    assert result.num_frames == 3 and len(os.listdir(out)) == 4
    assert json.loads((out / SEQUENCE_INDEX).read_text())["num_frames"] == 3
    assert os.listdir(tmp_path) == ["seq"]


def test_a_sequence_never_replaces_other_files(tmp_path: Path) -> None:
    keep = tmp_path / "notes"
    keep.mkdir()
    (keep / "todo.txt").write_text("mine")
    with pytest.raises(ValueError, match="refusing"):
        write_ply_sequence(_BoxAvatar(), resolve_motion("wave"), keep, max_frames=1)
    assert _snapshot(keep) == {"todo.txt": b"mine"}
    assert sorted(os.listdir(tmp_path)) == ["notes"]


def test_frame_names_and_option_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert frame_name(7, 90) == "frame_00007.ply"
    assert frame_name(7, 123456) == "frame_000007.ply"  # wide enough for every frame
    ckpt = str(tmp_path / "none.ckpt")
    for argv, message in (
            (["--motion", "wave", "--pose", "canonical", "--pose", "motion:wave:3"], "--pose"),
            (["--motion", "wave", "--format", "npz"], "--format"),
            (["--max-frames", "3"], "also give --motion"),
            (["--motion", "wave", "--max-frames", "0"], "positive"),
            (["--bundle"], ".npz file"),
            (["--motion", "nosuch"], "unknown built-in motion")):
        assert export_main(["--ckpt", ckpt, "--out", str(tmp_path / "x"), *argv]) == 1
        assert message in capsys.readouterr().err
    assert export_main(["--ckpt", ckpt, "--motion", "wave", "--out", str(tmp_path / "x")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == []
