"""How far the known garment moves the surface (meta.json "garment_displacement")."""

from __future__ import annotations

from typing import Any

import torch

from persona.body.lbs import skin_points
from persona.body.types import PoseParams
from persona.data import motions as motion_lib
from persona.data.garment import GarmentSettings
from persona.data.synth.avatar import GroundTruthAvatar, garment_regions, posed_means
from persona.data.synth.cameras import HAND_MIN_DEPTH, camera_frame_poses, subsample
from persona.data.synth.config import SynthConfig
from persona.render.projection import project_points
from persona.render.types import Camera

CM_PER_M = 100.0
MIN_EDGE_M = 1e-4  # m: edge length floor of the strain ratio (degenerate edges)


def garment_displacement(body: Any, avatar: GroundTruthAvatar, poses: PoseParams,
                         camera: Camera, garment: GarmentSettings) -> dict[str, Any]:
    """How far the garment moves the surface in ``poses`` (batch B): per garment part, the
    median and max displacement over its Gaussians and the poses (cm, world; px in ``camera``),
    and ``max_edge_strain``: the largest difference of displacement across one mesh edge over
    the edge's canonical length (a tear shows as a large value; 1 = one edge length)."""
    with torch.no_grad():
        transforms = body.transforms_from_canonical(avatar.identity, poses)  # [B, 55, 4, 4]
        plain = skin_points(avatar.canonical, avatar.weights, transforms)  # [B, N, 3]
        dressed = posed_means(body, avatar, poses, garment)  # [B, N, 3]
        moved = (dressed - plain).norm(dim=-1) * CM_PER_M  # [B, N]
        pixels = torch.stack([
            (project_points(dressed[b], camera, HAND_MIN_DEPTH)[0]
             - project_points(plain[b], camera, HAND_MIN_DEPTH)[0]).norm(dim=-1)
            for b in range(dressed.shape[0])])  # [B, N]
        edges = torch.cat([avatar.faces[:, [0, 1]], avatar.faces[:, [1, 2]],
                           avatar.faces[:, [2, 0]]])  # [3F, 2]
        offset = dressed - plain  # [B, N, 3]
        jump = (offset[:, edges[:, 0]] - offset[:, edges[:, 1]]).norm(dim=-1)  # [B, 3F]
        length = (avatar.canonical[edges[:, 0]] - avatar.canonical[edges[:, 1]]).norm(dim=-1)
    report: dict[str, Any] = {}
    for part, inside in garment_regions(avatar).items():
        report[part] = {"median_cm": float(moved[:, inside].median()),
                        "max_cm": float(moved[:, inside].max()),
                        "median_px": float(pixels[:, inside].median()),
                        "max_px": float(pixels[:, inside].max())}
    report["max_edge_strain"] = float((jump / length.clamp(min=MIN_EDGE_M)).max())
    return report


def motion_displacements(body: Any, avatar: GroundTruthAvatar, config: SynthConfig,
                         camera: Camera) -> dict[str, Any]:
    """garment_displacement of every motion of the subject, at the frames it renders."""
    report = {}
    for name, count in [(m, config.frames) for m in config.motions] + [
            (config.test_motion, config.test_frames)]:
        motion = motion_lib.resolve_motion(name)
        poses = camera_frame_poses(body, avatar.identity, motion.poses, motion.transl,
                                   body.num_expression)
        index = subsample(motion.num_frames, count)
        chosen = PoseParams(poses.full_pose[index], poses.expression[index], poses.transl[index])
        report[name] = garment_displacement(body, avatar, chosen, camera, config.garment)
    return report
