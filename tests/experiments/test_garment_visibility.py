"""experiments/garment_visibility.py: the split of a displacement in the camera, and the report
on a tiny synthetic subject."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from experiment_scripts import load_script

from persona.data.synth import preset_config, synthesize
from persona.ops.rotations import axis_angle_to_matrix

visibility = load_script("garment_visibility.py")


def test_camera_split_of_known_displacements() -> None:
    identity = torch.eye(3)
    along, plane = visibility.camera_split(torch.tensor([[0.0, 0.0, -0.02], [0.03, 0.04, 0.0]]),
                                           identity)
    assert along.tolist() == pytest.approx([0.02, 0.0]) and plane.tolist() == pytest.approx(
        [0.0, 0.05])
    # a camera turned 90 degrees about y sees world x along its viewing axis
    side = axis_angle_to_matrix(torch.tensor([0.0, math.pi / 2, 0.0]))
    along, plane = visibility.camera_split(torch.tensor([[0.01, 0.0, 0.0]]), side)
    assert float(along[0]) == pytest.approx(0.01, abs=1e-7) and float(plane[0]) < 1e-7
    assert visibility.pixels_per_metre(500.0, 5.0, 0.5) == 50.0


def test_report_on_a_tiny_subject(tmp_path: Path) -> None:
    subject = tmp_path / "subject"
    config = preset_config("tiny", seed=4)
    synthesize(subject, config)
    report = visibility.visibility(subject, 0.5)
    assert report["frames"] > 0 and "garment" in report["parts"]
    for part, entry in report["parts"].items():
        motions = [m for m in entry if m != "all"]
        assert motions == list(config.motions), part
        # "all" is the frame-weighted mean of the motions (equal frame counts here)
        mean = sum(entry[m]["image_plane_mm"] for m in motions) / len(motions)
        assert entry["all"]["image_plane_mm"] == pytest.approx(mean, abs=0.02), part
        assert entry["all"]["image_plane_max_px"] == max(entry[m]["image_plane_max_px"]
                                                         for m in motions)
    garment = report["parts"]["garment"]["all"]
    assert garment["view_axis_mm"] > 0.1 and garment["image_plane_px"] > 0
