"""How much of a synthetic garment's pose dependence can the training images see?

For each generated frame of a synthetic subject: the world-space displacement of every garment
Gaussian between the truth (its true offset in the frame's true pose) and the pose-blind truth
(the offset's mean over the training poses, posed the same way), both skinned with the truth's
template weights, split in the frame's camera into the part along the viewing axis (seen only
through depth and normals) and the part in the image plane (mm and px at the subject's
distance at the training resolution). Printed as JSON per garment part and training motion:
means over frames and Gaussians.

    .venv/bin/python experiments/garment_visibility.py SUBJECT [--resolution-scale 0.5]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

MM_PER_M = 1000.0


def camera_split(displacement: Tensor, rotation: Tensor) -> tuple[Tensor, Tensor]:
    """displacement [G, 3] world -> (|along the viewing axis| [G], |in the image plane| [G]) for
    a world-to-camera rotation [3, 3] (OpenCV axes: z is the viewing axis)."""
    in_camera = displacement @ rotation.T  # [G, 3]
    return in_camera[:, 2].abs(), in_camera[:, :2].norm(dim=-1)


def pixels_per_metre(focal_px: float, depth_m: float, scale: float) -> float:
    """Image-plane metres -> pixels at depth_m for a focal length in native pixels."""
    return focal_px * scale / depth_m


def visibility(subject: Path, resolution_scale: float) -> dict[str, Any]:
    from persona.body.lbs import skin_points
    from persona.data import synth
    from persona.data.subject import read_frame_records
    from persona.metrics import deformation as D

    config = D.synth_config(subject)
    body = synth.load_synth_body(config)
    identity = synth.subject_identity(body, config.seed)
    avatar = synth.build_avatar(body, identity, config)
    regions = synth.garment_regions(avatar)
    poses, lengths = D.true_training_poses(body, identity, config)
    records = [r for k in range(len(lengths))
               for r in read_frame_records(subject, [synth.generated_split(k)],
                                           body.num_expression)]
    if len(records) != poses.full_pose.shape[0]:
        raise ValueError(f"{subject}: {len(records)} generated frames, but the synth settings "
                         f"give {poses.full_pose.shape[0]} training poses")
    with torch.no_grad():
        truth = synth.garment_offsets(body, avatar, poses, config.garment)  # [K, N, 3]
        transforms = body.transforms_from_canonical(avatar.identity, poses)
        posed_truth = skin_points(avatar.canonical + truth, avatar.weights, transforms)
        blind = (avatar.canonical + truth.mean(0)).expand_as(truth)
        displacement = posed_truth - skin_points(blind, avatar.weights, transforms)  # [K, N, 3]
    report: dict[str, Any] = {"subject": str(subject), "resolution_scale": resolution_scale,
                              "frames": len(records), "parts": {}}
    for part, mask in regions.items():
        mask = mask.bool()
        rows = []
        for k, record in enumerate(records):
            axis, plane = camera_split(displacement[k, mask], record.camera.R)
            depth = float((posed_truth[k, mask] @ record.camera.R.T + record.camera.t)[:, 2]
                          .mean())
            px = pixels_per_metre(float(record.camera.K[0, 0]), depth, resolution_scale)
            rows.append((float(axis.mean()), float(plane.mean()), float(plane.mean()) * px,
                         float(plane.max()) * px))
        entry, start = {}, 0
        for motion, count in [("all", len(rows)), *zip(config.motions, lengths, strict=True)]:
            chunk = rows if motion == "all" else rows[start:start + count]
            start += 0 if motion == "all" else count
            entry[motion] = {
                "view_axis_mm": round(sum(r[0] for r in chunk) / len(chunk) * MM_PER_M, 2),
                "image_plane_mm": round(sum(r[1] for r in chunk) / len(chunk) * MM_PER_M, 2),
                "image_plane_px": round(sum(r[2] for r in chunk) / len(chunk), 2),
                "image_plane_max_px": round(max(r[3] for r in chunk), 2)}
        report["parts"][part] = entry
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("subject", type=Path)
    parser.add_argument("--resolution-scale", type=float, default=0.5,
                        help="training resolution / native (configs/demo.yaml: 0.5)")
    args = parser.parse_args(argv)
    print(json.dumps(visibility(args.subject, args.resolution_scale), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
