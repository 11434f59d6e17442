"""Rendering one frame of the ground-truth avatar: image, albedo and the geometry maps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from persona.body.types import LEFT_HAND_JOINTS, RIGHT_HAND_JOINTS, PoseParams
from persona.data.palette import GOLIATH_PALETTE, class_index
from persona.data.synth.avatar import (
    _J,
    GroundTruthAvatar,
    albedo_colours,
    garment_regions,
    posed_means,
)
from persona.data.synth.cameras import HAND_MIN_DEPTH
from persona.data.synth.config import SynthConfig
from persona.ops.mesh import vertex_normals
from persona.render.projection import project_points
from persona.render.types import Camera, ChannelGroup, Gaussians, RenderSettings


@dataclass
class FrameRender:
    """Everything rendered for one frame (float32 numpy, [H, W, C])."""

    image: np.ndarray  # [H, W, 3] composited on the background
    albedo: np.ndarray  # [H, W, 3] composited on the background
    mask: np.ndarray  # [H, W] uint8 {0, 255}
    depth: np.ndarray  # [H, W] metres, 0 = invalid
    normal: np.ndarray  # [H, W, 3] unit, camera frame, 0 = invalid
    seg: np.ndarray  # [H, W, 3] uint8 palette
    hand_pixels: np.ndarray  # [2, 2] (u, v) of the left and right hand centres
    hand_radius_px: np.ndarray  # [2] pixels
    garment_mask: np.ndarray  # [H, W] uint8 {0, 255}: the garment Gaussians' share > 0.5


def render_frame(body: Any, avatar: GroundTruthAvatar, pose: PoseParams, camera: Camera,
                 renderer: Any, config: SynthConfig, colours: Tensor | None = None
                 ) -> FrameRender:
    """Render the avatar (true geometry) with ``colours`` [N, 3] (default: the true identity)."""
    with torch.no_grad():
        means = posed_means(body, avatar, pose, config.garment)[0]  # [N, 3]
        normals_world = vertex_normals(means, avatar.faces)  # [N, 3]
        normals_cam = normals_world @ camera.R.T  # [N, 3]
        albedo = albedo_colours(avatar) if colours is None else colours
        shaded = albedo * avatar.shading[:, None]
        classes_present = torch.unique(avatar.seg_class)
        onehot = (avatar.seg_class[:, None] == classes_present[None]).float()  # [N, K]
        n = means.shape[0]
        gaussians = Gaussians(means, avatar.scales[:, None].expand(n, 3).contiguous(),
                              torch.ones(n))
        out = renderer.render(gaussians, camera, {
            "rgb": ChannelGroup(shaded), "albedo": ChannelGroup(albedo, False),
            "normal": ChannelGroup(normals_cam, False), "seg": ChannelGroup(onehot, False),
            "garment": ChannelGroup(garment_regions(avatar)["garment"].float()[:, None], False),
        }, RenderSettings(depth=True))
        alpha = out["alpha"][..., 0]  # [H, W]
        valid = alpha > 0.5
        background = config.background
        image = out["rgb"] + background * (1 - out["alpha"])
        albedo_image = out["albedo"] + background * (1 - out["alpha"])
        depth = torch.where(valid, out["depth"][..., 0] / alpha.clamp(min=1e-6), 0.0)
        normal = torch.where(valid[..., None], F.normalize(out["normal"], dim=-1), 0.0)
        labels = classes_present[out["seg"].argmax(dim=-1)]  # [H, W]
        labels = torch.where(valid, labels, class_index("Background"))
        seg = torch.tensor(GOLIATH_PALETTE, dtype=torch.uint8)[labels]
        hand_pixels, hand_radius = _hand_pixels(body, means, avatar, camera, config)
        garment = valid & (out["garment"][..., 0] > 0.5 * alpha)  # [H, W]
    return FrameRender(image.numpy(), albedo_image.numpy(),
                       (valid.numpy() * 255).astype(np.uint8), depth.numpy(), normal.numpy(),
                       seg.numpy(), hand_pixels, hand_radius,
                       (garment.numpy() * 255).astype(np.uint8))


def _hand_pixels(body: Any, means: Tensor, avatar: GroundTruthAvatar, camera: Camera,
                 config: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    centres, radii = [], []
    for side in ("left", "right"):
        fingers = LEFT_HAND_JOINTS if side == "left" else RIGHT_HAND_JOINTS
        hand = torch.isin(avatar.dominant, torch.tensor([_J[f"{side}_wrist"]] + list(fingers)))
        centre = means[hand].mean(0) if hand.any() else means.mean(0)
        uv, z = project_points(centre[None], camera, HAND_MIN_DEPTH)  # [1, 2], [1]
        centres.append(uv[0].numpy())
        depth = z[0].clamp(min=HAND_MIN_DEPTH)
        radii.append(float(config.faults.hand_radius * camera.K[0, 0] / depth))
    return np.stack(centres), np.array(radii)
