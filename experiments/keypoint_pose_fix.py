"""Can the generated frames' 2D keypoints undo the written pose noise that stops the deformer?

A synthetic subject's generated frames are rendered in true poses and written with simulated
pose noise (persona/data/synth/faults.py `noisy_pose`: 3.6 deg per body joint, 16 mm), the
stand-in for a video model that does not follow its driving pose exactly (the authors keep the
driving SMPL-X and fix only the ankles, METHOD.md section 8; data_prep/footfix.py). A keypoint
detector run on the frames sees the pose the frame shows. This script makes such keypoints from
the truth (COCO-WholeBody body + feet, 0-22: the true pose's landmarks projected by the frame's
camera, plus Gaussian pixel noise of `--noise` px at a 1024-pixel image height, a detector's
error) and fits every generated frame's root, 21 body joints and translation to them from the
written pose:

    E = sum_k rho(|pi(X_k) - u_k|^2 s^2) / K + w_pose |theta - theta_written|^2
        + w_depth (z - z_written)^2

(rho Geman-McClure, s the scale to 1024 px; the prior keeps what 2D cannot see: twist about a
bone and depth). It prints the body-joint angle error (deg) and translation error (mm) against
the truth, written and fitted, for each noise level and prior weight: the deformer learned the
skirt with exact SMPL-X and a quarter of the noise (0.9 deg), not at half (1.8 deg)
(docs/ABLATIONS.md, "Which fault").

    .venv/bin/python experiments/keypoint_pose_fix.py SUBJECT [--noise 0 1 3]
        [--prior 10] [--iterations 400] [--lr 1e-2] [--out F.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pose_refinement as refinement  # noqa: E402  (pose error measures)

from data_prep.fitting import REFERENCE_HEIGHT, geman_mcclure  # noqa: E402
from data_prep.footfix import FootFixSettings, project_per_frame  # noqa: E402
from data_prep.keypoints import landmark_table, posed_landmarks, smplx_to_coco133  # noqa: E402
from persona.atomic import atomic_write_json  # noqa: E402
from persona.body.types import PoseParams  # noqa: E402
from persona.data import synth  # noqa: E402
from persona.data.subject import read_frame_record  # noqa: E402
from persona.metrics.deformation import synth_config, true_training_poses  # noqa: E402
from persona.track.fit import NUM_FIT_KEYPOINTS  # noqa: E402  (COCO body + feet, 0-22)

FIT_JOINTS = 22  # root + 21 body joints are fitted; jaw, eyes and fingers keep the written pose
ROBUST_SIGMA = FootFixSettings().robust_sigma  # px at 1024 height: the foot fix's Geman-McClure


def keypoints_of(body: Any, identity: Any, pose: PoseParams, table: Any, K: Tensor, R: Tensor,
                 t: Tensor) -> Tensor:
    """The 23 COCO body + feet keypoints [F, 23, 2] (px) of poses [F] seen by per-frame cameras."""
    landmarks = posed_landmarks(body, identity, pose, table)  # [F, 144, 3]
    coco, _ = smplx_to_coco133(landmarks, table.valid)  # [F, 133, 3]
    return project_per_frame(coco[:, :NUM_FIT_KEYPOINTS], K, R, t)


def fit_to_keypoints(body: Any, identity: Any, written: PoseParams, targets: Tensor,
                     cameras: tuple[Tensor, Tensor, Tensor], scale: float, prior: float,
                     depth_prior: float, iterations: int, lr: float, table: Any) -> PoseParams:
    """written [F] fitted to targets [F, 23, 2] (px): root, body joints and translation."""
    base = written.full_pose.detach()
    delta = torch.zeros_like(base[:, :FIT_JOINTS]).requires_grad_(True)  # [F, 22, 3]
    transl = written.transl.detach().clone().requires_grad_(True)  # [F, 3]
    optimiser = torch.optim.Adam([delta, transl], lr=lr)
    rest = base[:, FIT_JOINTS:]
    for _ in range(iterations):
        optimiser.zero_grad(set_to_none=True)
        pose = PoseParams(torch.cat([base[:, :FIT_JOINTS] + delta, rest], 1),
                          written.expression, transl)
        pixels = keypoints_of(body, identity, pose, table, *cameras)  # [F, 23, 2]
        squared = ((pixels - targets) ** 2).sum(-1) * scale**2  # [F, 23]
        data = geman_mcclure(squared, ROBUST_SIGMA).mean(-1)  # [F]
        pull = prior * (delta ** 2).sum((-1, -2))
        depth = depth_prior * (transl[:, 2] - written.transl[:, 2]) ** 2
        (data + pull + depth).sum().backward()
        optimiser.step()
    with torch.no_grad():
        return PoseParams(torch.cat([base[:, :FIT_JOINTS] + delta, rest], 1),
                          written.expression, transl.detach().clone())


def keypoint_error_px(pixels: Tensor, targets: Tensor, scale: float) -> float:
    """Mean distance (px at 1024 height) between keypoints [F, 23, 2] and targets."""
    return float((pixels - targets).norm(dim=-1).mean()) * scale


def keypoint_fix_report(subject: Path, noises: list[float], priors: list[float],
                        iterations: int, lr: float, depth_prior: float = 1e4, seed: int = 0
                        ) -> dict[str, Any]:
    """The written and keypoint-fitted poses of a synthetic subject's generated frames against
    the truth (module docstring), one row per (noise, prior)."""
    config = synth_config(subject)
    body = synth.load_synth_body(config)
    identity = synth.subject_identity(body, config.seed)
    table = landmark_table(body)
    true_poses, lengths = true_training_poses(body, identity, config)
    records = [read_frame_record(subject, synth.generated_split(k), i, body.num_expression)
               for k, n in enumerate(lengths) for i in range(n)]
    written = PoseParams(torch.cat([r.pose.full_pose for r in records]),
                         torch.cat([r.pose.expression for r in records]),
                         torch.cat([r.pose.transl for r in records]))
    cameras = (torch.stack([r.camera.K.float() for r in records]),
               torch.stack([r.camera.R.float() for r in records]),
               torch.stack([r.camera.t.float().reshape(3) for r in records]))
    scale = REFERENCE_HEIGHT / records[0].camera.height
    with torch.no_grad():
        clean = keypoints_of(body, identity, true_poses, table, *cameras)  # [F, 23, 2]
        at_written = keypoints_of(body, identity, written, table, *cameras)

    def errors(pose: PoseParams, pixels: Tensor) -> dict[str, float]:
        out = refinement.pose_errors(true_poses.full_pose, true_poses.transl, pose.full_pose,
                                     pose.transl)
        out["keypoints_px"] = keypoint_error_px(pixels, clean, scale)  # against the truth's
        return out

    report: dict[str, Any] = {"subject": str(subject), "frames": len(records),
                              "iterations": iterations, "lr": lr, "depth_prior": depth_prior,
                              "written": errors(written, at_written)}
    generator = torch.Generator().manual_seed(seed)
    for noise in noises:
        targets = clean + (noise / scale) * torch.randn(clean.shape, generator=generator)
        for prior in priors:
            fitted = fit_to_keypoints(body, identity, written, targets, cameras, scale, prior,
                                      depth_prior, iterations, lr, table)
            with torch.no_grad():
                pixels = keypoints_of(body, identity, fitted, table, *cameras)
            report[f"noise_{noise:g}px_prior_{prior:g}"] = errors(fitted, pixels)
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("subject", type=Path)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 1.0, 3.0])
    parser.add_argument("--prior", type=float, nargs="+", default=[10.0])
    parser.add_argument("--depth-prior", type=float, default=1e4)  # px^2 / m^2
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    report = keypoint_fix_report(args.subject, args.noise, args.prior, args.iterations, args.lr,
                                 args.depth_prior, args.seed)
    for key, row in report.items():
        if isinstance(row, dict):
            print(f"{key}: body {row['body']:.2f} deg, transl {row['transl_mm']:.1f} mm, "
                  f"keypoints {row['keypoints_px']:.1f} px")
    if args.out is not None:
        atomic_write_json(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
