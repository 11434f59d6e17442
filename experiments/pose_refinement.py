"""How far does the per-frame SMPL-X refinement take the written poses back to the true ones?

A synthetic subject's generated frames are rendered in true poses and written with simulated
pose noise (persona/data/synth/faults.py noisy_pose). The fit optimises every frame's SMPL-X
jointly with the avatar (METHOD.md section 7, lr 1e-3, hands 1e-4). For each joint group this
prints the mean rotation angle (deg) between the true pose and the written one, and between the
true pose and the run's fitted one, over the generated frames; and the same for the translation
(mm). `removed` is the share of the written error the refinement took away (1: all of it, 0:
none, < 0: it moved the pose further away). The translation error is also given per camera
axis (mean |error|; z is depth).

--refit N: also fit N evenly spaced generated frames again with the avatar frozen, starting
from the run's fitted poses, with the test-pose fit (persona/metrics/test_pose.py: the run's
eval protocol, --refit-steps / --refit-lr override its steps and lr; a protocol without the
fit gets the fit's defaults), and report the same errors over those frames as "refit" (with
"written" and "fitted" over the same frames as "refit_written", "refit_fitted"): can a
frozen-avatar pose fit undo what the joint refinement does not?

--refit-hold-depth / --refit-prior W: that refit with the translation along the camera's
viewing axis held and / or W x the mean squared change of the body joints' 6D rotations from the
start added to its loss (TestPoseFitSettings.hold_depth / pose_prior): does the refit find the
poses once it cannot push the depth away or drift far from the run's fit?

--smooth W [W ...]: also the written poses box-filtered over W consecutive frames of each
generated video (axis-angles and translations averaged; the window shrinks at a video's ends),
as "smoothed_W": does a temporal filter, a common clean-up of per-frame fits, take the written
poses closer to the truth, or does the motion between frames cost more than the noise it averages?

    .venv/bin/python experiments/pose_refinement.py RUN_DIR [--subject DIR] [--refit N]
        [--refit-steps S] [--refit-lr LR] [--refit-hold-depth] [--refit-prior W] [--smooth W ...]
"""

from __future__ import annotations

import argparse
import dataclasses
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
from persona.metrics.deformation import spread  # noqa: E402
from persona.metrics.test_pose import TestPoseFitSettings  # noqa: E402
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


def pose_errors(true_pose: Tensor, true_transl: Tensor, pose: Tensor,
                transl: Tensor) -> dict[str, float]:
    """Group angle errors (deg, `group_errors`) and translation errors (mm, overall and per
    camera axis) of pose [F, 55, 3] / transl [F, 3] against the truth."""
    errors = group_errors(true_pose, pose)
    error = true_transl - transl  # [F, 3] camera frame, m
    errors["transl_mm"] = float(error.norm(dim=-1).mean()) * MM_PER_M
    for axis, letter in enumerate(CAMERA_AXES):  # z: along the view, where a front view is
        errors[f"transl_{letter}_mm"] = float(error[:, axis].abs().mean()) * MM_PER_M  # blind
    return errors


def box_smooth(values: Tensor, lengths: list[int], window: int) -> Tensor:
    """values [F, ...] stacked video by video (`lengths` frames each): every frame replaced by
    the mean over the `window` frames centred on it within its own video (fewer at its ends)."""
    if sum(lengths) != values.shape[0] or window < 1:
        raise ValueError(f"box_smooth: {values.shape[0]} frames vs lengths summing to "
                         f"{sum(lengths)}, window {window}")
    out = torch.empty_like(values)
    start, half = 0, window // 2
    for length in lengths:
        for i in range(length):
            lo, hi = start + max(0, i - half), start + min(length, i + half + 1)
            out[start + i] = values[lo:hi].mean(dim=0)
        start += length
    return out


def frame_to_frame(pose: Tensor, lengths: list[int]) -> list[float]:
    """pose [F, 55, 3] stacked video by video: per video, the mean body-joint angle (deg)
    between consecutive frames."""
    out, start = [], 0
    for length in lengths:
        video = pose[start:start + length]
        angle = rotation_angle_deg(video[1:], video[:-1])[:, list(BODY_JOINTS)]
        out.append(float(angle.mean()) if length > 1 else 0.0)
        start += length
    return out


def refit_poses(loaded: diag.SynthRun, rows: list[int], steps: int | None,
                lr: float | None, prior: float = 0.0, hold_depth: bool = False
                ) -> tuple[Tensor, Tensor]:
    """Fit the training frames `rows` again with the avatar frozen (the system's test-pose fit,
    starting from the run's fitted poses): full_pose [F, 55, 3], transl [F, 3]. prior and
    hold_depth: the fit's study switches (TestPoseFitSettings.pose_prior / hold_depth)."""
    from persona.data.datamodule import collate_frames

    system, dm = loaded.system, loaded.dm
    base = system.eval_protocol
    default_steps = base.fit_steps or TestPoseFitSettings.steps  # a protocol without the fit
    protocol = dataclasses.replace(base, fit_test_pose=True,
                                   fit_steps=default_steps if steps is None else steps,
                                   fit_lr=base.fit_lr if lr is None else lr)
    settings = dataclasses.replace(protocol.fit_settings(), pose_prior=prior,
                                   hold_depth=hold_depth)
    frames = dm.train_dataset()
    poses, transls = [], []
    for row in rows:
        batch = collate_frames([frames[row]])
        with torch.no_grad():
            start = system.frame_params(torch.tensor([row]))
        batch.update(full_pose=start.full_pose, expression=start.expression,
                     transl=start.transl)
        fitted = system.fit_test_pose(batch, protocol, settings)
        poses.append(fitted.full_pose)
        transls.append(fitted.transl)
    return torch.cat(poses), torch.cat(transls)


def refinement_report(run_dir: Path, subject: Path | None, refit: int = 0,
                      refit_steps: int | None = None, refit_lr: float | None = None,
                      smooth: tuple[int, ...] = (), refit_prior: float = 0.0,
                      refit_hold_depth: bool = False) -> dict[str, Any]:
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
        report[name] = pose_errors(true_poses.full_pose, true_poses.transl, pose, transl)
    report["removed"] = {key: removed_share(report["written"][key], report["fitted"][key])
                         for key in report["written"]}
    if smooth:  # what a filter blurs: the true motion between consecutive frames, per video
        report["true_frame_to_frame_body_deg"] = frame_to_frame(true_poses.full_pose, lengths)
    for window in smooth:  # the generated rows are in the true poses' order, video by video
        report[f"smoothed_{window}"] = pose_errors(
            true_poses.full_pose, true_poses.transl,
            box_smooth(written_pose, lengths, window), box_smooth(written_transl, lengths, window))
    if refit > 0:
        chosen = spread(len(picks), refit)  # positions in picks / the true poses
        pose, transl = refit_poses(loaded, [picks[i] for i in chosen], refit_steps, refit_lr,
                                   refit_prior, refit_hold_depth)
        true_pose, true_transl = true_poses.full_pose[chosen], true_poses.transl[chosen]
        report["refit_frames"] = len(chosen)
        for name, p, t in (("refit_written", written_pose[chosen], written_transl[chosen]),
                           ("refit_fitted", fitted.full_pose[chosen], fitted.transl[chosen]),
                           ("refit", pose, transl)):
            report[name] = pose_errors(true_pose, true_transl, p, t)
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--subject", type=Path, default=None)
    parser.add_argument("--refit", type=int, default=0,
                        help="fit this many generated frames again with the avatar frozen")
    parser.add_argument("--refit-steps", type=int, default=None,
                        help="steps of that fit (default: the run's test protocol)")
    parser.add_argument("--refit-lr", type=float, default=None,
                        help="lr of that fit (default: the run's test protocol)")
    parser.add_argument("--refit-prior", type=float, default=0.0,
                        help="weight of a pull of the body joints' 6D rotations to the start")
    parser.add_argument("--refit-hold-depth", action="store_true",
                        help="hold the translation along the camera's viewing axis")
    parser.add_argument("--smooth", type=int, nargs="+", default=[],
                        help="box-filter windows (frames) for the written poses")
    args = parser.parse_args(argv)
    print(json.dumps(refinement_report(args.run_dir, args.subject, args.refit,
                                       args.refit_steps, args.refit_lr, tuple(args.smooth),
                                       args.refit_prior, args.refit_hold_depth),
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
