"""Simulated diffusion faults of the generated frames: identity drift, colour shift, blur, swirled
hands, noisy written SMPL-X parameters, and the mild depth/normal noise of every frame."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from persona.body.types import FINGER_JOINTS, NUM_JOINTS, PoseParams
from persona.data import motions as motion_lib
from persona.data.synth.avatar import Drift
from persona.data.synth.config import FaultSettings, SynthConfig
from persona.data.synth.render import FrameRender

BODY_JOINTS = slice(1, 22)  # the 21 body joints (root excluded): what the pose deformer sees


def pose_distance(full_pose: Tensor, reference: Tensor) -> float:
    """Mean geodesic angle (rad) over the 21 body joints. [55, 3], [55, 3] -> float."""
    from persona.ops.rotations import axis_angle_to_matrix, geodesic_angle

    a = axis_angle_to_matrix(full_pose[BODY_JOINTS].double())  # [21, 3, 3]
    b = axis_angle_to_matrix(reference[BODY_JOINTS].double())
    return float(geodesic_angle(a, b).mean())


def drift_for(full_pose: Tensor, input_pose: Tensor, artifacts: float, faults: FaultSettings,
              direction: float) -> Drift:
    """Identity drift growing with the distance from the input pose (0 at the input pose)."""
    strength = artifacts * min(1.0, pose_distance(full_pose, input_pose)
                               / faults.drift_reference_angle)
    return Drift(hue=direction * strength * faults.drift_hue,
                 pattern_phase=strength * faults.drift_pattern_phase,
                 face=strength * faults.drift_face)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of [H, W, C] (replicate border); sigma in pixels."""
    if sigma <= 0.05:
        return image
    radius = max(1, int(math.ceil(3 * sigma)))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = torch.from_numpy(image).permute(2, 0, 1)[:, None]  # [C, 1, H, W]
    x = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x[:, 0].permute(1, 2, 0).numpy()


def swirl(image: np.ndarray, centre: np.ndarray, radius: float, strength: float) -> np.ndarray:
    """Swirl [H, W, C] around ``centre`` (u, v px): rotation strength x (1 - r/R)^2 inside R."""
    if abs(strength) < 1e-6 or radius < 1:
        return image
    h, w = image.shape[:2]
    v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    du, dv = u - float(centre[0]), v - float(centre[1])
    r = torch.sqrt(du * du + dv * dv)
    angle = strength * (1 - r / radius).clamp(min=0) ** 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    src_u = float(centre[0]) + cos * du - sin * dv
    src_v = float(centre[1]) + sin * du + cos * dv
    grid = torch.stack([src_u / w * 2 - 1, src_v / h * 2 - 1], -1)[None]  # [1, H, W, 2]
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    out = F.grid_sample(x, grid.float(), mode="bilinear", padding_mode="border",
                        align_corners=False)
    inside = (r < radius)[..., None].numpy()
    return np.where(inside, out[0].permute(1, 2, 0).numpy(), image)


def apply_image_faults(frame: FrameRender, artifacts: float, faults: FaultSettings,
                       rng: np.random.Generator, width: int) -> np.ndarray:
    """Colour shift (foreground), hand swirls and blur of a rendered frame. -> [H, W, 3]."""
    image = frame.image
    if artifacts <= 0:
        return image
    alpha = (frame.mask[..., None] / 255.0).astype(np.float32)
    gain = 1 + artifacts * rng.normal(0.0, faults.colour_gain_std, 3)
    bias = artifacts * rng.normal(0.0, faults.colour_bias_std, 3)
    image = np.clip(image * (1 + alpha * (gain - 1)) + alpha * bias, 0.0, 1.0).astype(np.float32)
    for side in range(2):
        strength = artifacts * faults.hand_swirl * rng.choice([-1.0, 1.0])
        image = swirl(image, frame.hand_pixels[side], float(frame.hand_radius_px[side]),
                      strength)
    sigma = artifacts * rng.uniform(0.0, faults.blur_sigma_max) * width / \
        motion_lib.VIRTUAL_WIDTH
    return gaussian_blur(image, sigma)


def noisy_pose(pose: PoseParams, artifacts: float, faults: FaultSettings,
               rng: np.random.Generator) -> PoseParams:
    """The SMPL-X parameters written for a generated frame: the rendered pose + small errors."""
    std = np.zeros((NUM_JOINTS, 1))
    std[0] = faults.pose_noise_root
    std[BODY_JOINTS] = faults.pose_noise_body
    std[list(FINGER_JOINTS)] = faults.pose_noise_hands
    noise = torch.from_numpy(artifacts * rng.normal(size=(NUM_JOINTS, 3)) * std).float()
    transl = torch.from_numpy(artifacts * rng.normal(0.0, faults.transl_noise, 3)).float()
    return PoseParams(pose.full_pose + noise[None], pose.expression.clone(),
                      pose.transl + transl[None])


def geometry_noise(frame: FrameRender, config: SynthConfig, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Mild noise on depth and normals (valid pixels only). -> (depth [H,W], normal [H,W,3])."""
    valid = frame.mask > 0
    depth, normal = frame.depth, frame.normal
    if config.depth_noise > 0:
        depth = depth + valid * rng.normal(0.0, config.depth_noise, depth.shape)
        depth = np.maximum(depth, 0.0)
    if config.normal_noise > 0:
        normal = normal + valid[..., None] * rng.normal(0.0, config.normal_noise, normal.shape)
        length = np.linalg.norm(normal, axis=-1, keepdims=True)
        normal = np.where(valid[..., None], normal / np.maximum(length, 1e-8), 0.0)
    return depth.astype(np.float32), normal.astype(np.float32)
