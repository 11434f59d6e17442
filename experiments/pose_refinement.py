"""How far does the per-frame SMPL-X refinement take the written poses back to the true ones?

A synthetic subject's generated frames are rendered in true poses and written with simulated
pose noise (persona/data/synth/faults.py noisy_pose). The fit optimises every frame's SMPL-X
jointly with the avatar (METHOD.md section 7, lr 1e-3, hands 1e-4). For each joint group this
prints the mean rotation angle (deg) between the true pose and the written one, and between the
true pose and the run's fitted one, over the generated frames; and the same for the translation
(mm). `removed` is the share of the written error the refinement took away (1: all of it, 0:
none, < 0: it moved the pose further away). The translation error is also given per camera
axis (mean |error|; z is depth).

    .venv/bin/python experiments/pose_refinement.py RUN_DIR [--subject DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deformer_diagnostics as diag  # noqa: E402  (run and subject loading, true poses)

from persona.body.types import SMPLX_JOINT_NAMES  # noqa: E402
from persona.ops.rotations import axis_angle_to_matrix, geodesic_angle  # noqa: E402

MM_PER_M = diag.MM_PER_M
CAMERA_AXES = ("x", "y", "z")  # the translation's axes in the camera frame (z: depth)
BODY_JOINTS = tuple(range(1, 22))  # the 21 body joints (root excluded): what the deformer sees
# joint groups reported, by SMPL-X name
JOINT_GROUPS: dict[str, tuple[str, ...]] = {
    "root": ("pelvis",),
    "hips": ("left_hip", "right_hip"),
    "knees": ("left_knee", "right_knee"),
    "spine": ("spine1", "spine2", "spine3"),
    "shoulders": ("left_shoulder", "right_shoulder"),
}


def rotation_angle_deg(a: Tensor, b: Tensor) -> Tensor:
    """Angle (deg) of the rotation between axis-angles a and b [..., 3] -> [...]."""
    return torch.rad2deg(geodesic_angle(axis_angle_to_matrix(a.double()),
                                        axis_angle_to_matrix(b.double())))


def group_errors(true: Tensor, other: Tensor) -> dict[str, float]:
    """true, other [F, 55, 3]: mean angle (deg) per group of JOINT_GROUPS and over the body."""
    angle = rotation_angle_deg(true, other)  # [F, 55]
    out = {name: float(angle[:, [SMPLX_JOINT_NAMES.index(j) for j in joints]].mean())
           for name, joints in JOINT_GROUPS.items()}
    out["body"] = float(angle[:, list(BODY_JOINTS)].mean())
    return out


def removed_share(written: float, fitted: float) -> float:
    """The share of the written error the refinement removed (nan when nothing was wrong)."""
    return (written - fitted) / written if written > 0 else math.nan


def refinement_report(run_dir: Path, subject: Path | None) -> dict[str, Any]:
    loaded = diag.load_synth_run(run_dir, subject)
    dm = loaded.dm
    true_poses, lengths = diag.true_training_poses(loaded.body, loaded.identity, loaded.config)
    picks = diag.generated_rows(dm.train_frames, lengths)  # in the order of the true poses
    with torch.no_grad():
        fitted = loaded.system.frame_params(torch.tensor(picks))
    written = [dm.train_frames[row].pose for row in picks]
    written_pose = torch.cat([p.full_pose for p in written])  # [F, 55, 3]
    written_transl = torch.cat([p.transl for p in written])  # [F, 3]
    report: dict[str, Any] = {"run": str(run_dir), "frames": len(picks)}
    for name, pose, transl in (("written", written_pose, written_transl),
                               ("fitted", fitted.full_pose, fitted.transl)):
        errors = group_errors(true_poses.full_pose, pose)
        error = true_poses.transl - transl  # [F, 3] camera frame, m
        errors["transl_mm"] = float(error.norm(dim=-1).mean()) * MM_PER_M
        for axis, letter in enumerate(CAMERA_AXES):  # z: along the view, where a front view is
            errors[f"transl_{letter}_mm"] = float(error[:, axis].abs().mean()) * MM_PER_M  # blind
        report[name] = errors
    report["removed"] = {key: removed_share(report["written"][key], report["fitted"][key])
                         for key in report["written"]}
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--subject", type=Path, default=None)
    args = parser.parse_args(argv)
    print(json.dumps(refinement_report(args.run_dir, args.subject), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
