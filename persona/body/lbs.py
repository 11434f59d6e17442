"""Linear blend skinning: the rigid kinematic chain and skinning of points (axis-angle to
rotation: persona.ops.rotations.axis_angle_to_matrix).

Everything is batched, differentiable and device-agnostic. The maths follows SMPL/SMPL-X
(Loper et al. 2015; Pavlakos et al. 2019); `tests/body/test_lbs.py` checks it against the
`smplx` package's own forward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor


def make_transform(rotation: Tensor, translation: Tensor) -> Tensor:
    """Rotation [..., 3, 3] and translation [..., 3] to homogeneous transforms [..., 4, 4]."""
    top = torch.cat([rotation, translation[..., None]], dim=-1)  # [..., 3, 4]
    bottom = torch.zeros_like(top[..., :1, :])  # [..., 1, 4]
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


def rigid_chain(rotations: Tensor, joints: Tensor, parents: Tensor) -> tuple[Tensor, Tensor]:
    """Compose local joint rotations along the kinematic tree.

    rotations [B, J, 3, 3] local rotations, joints [B, J, 3] rest joint positions, parents [J]
    (root -1, parents before children). Returns the posed joint positions [B, J, 3] and the
    relative transforms [B, J, 4, 4] that map rest-pose points to posed points (SMPL's `A`).
    """
    parent_list = parents.tolist()
    relative_joints = joints.clone()  # [B, J, 3]
    relative_joints[:, 1:] = joints[:, 1:] - joints[:, parent_list[1:]]
    local = make_transform(rotations, relative_joints)  # [B, J, 4, 4]
    chain = [local[:, 0]]
    for joint in range(1, len(parent_list)):
        chain.append(chain[parent_list[joint]] @ local[:, joint])
    world = torch.stack(chain, dim=1)  # [B, J, 4, 4]
    posed_joints = world[..., :3, 3]  # [B, J, 3]
    # Remove the rest joint position: A = world @ [I, -j; 0, 1].
    offset = (world[..., :3, :3] @ joints[..., None])[..., 0]  # [B, J, 3]
    relative = world.clone()
    relative[..., :3, 3] = world[..., :3, 3] - offset
    return posed_joints, relative


def skin_points(points: Tensor, weights: Tensor, transforms: Tensor) -> Tensor:
    """Blend per-joint transforms and apply them to points.

    points [N, 3] or [B, N, 3], weights [N, J] or [B, N, J], transforms [B, J, 4, 4].
    Returns [B, N, 3].
    """
    batch = transforms.shape[0]
    if points.ndim == 2:
        points = points.expand(batch, -1, -1)  # [B, N, 3]
    if weights.ndim == 2:
        weights = weights.expand(batch, -1, -1)  # [B, N, J]
    num_joints = transforms.shape[1]
    blended = (weights @ transforms.reshape(batch, num_joints, 16)).reshape(batch, -1, 4, 4)
    rotated = (blended[..., :3, :3] @ points[..., None])[..., 0]  # [B, N, 3]
    return rotated + blended[..., :3, 3]


def blend_shapes(coefficients: Tensor, directions: Tensor) -> Tensor:
    """Linear blend shapes: coefficients [..., K] x directions [V, 3, K] -> offsets [..., V, 3]."""
    return torch.einsum("...k,vck->...vc", coefficients, directions)


def invert_rigid(transforms: Tensor) -> Tensor:
    """Inverse of rigid homogeneous transforms [..., 4, 4] (rotation part orthonormal)."""
    rotation_t = transforms[..., :3, :3].transpose(-1, -2)
    translation = -(rotation_t @ transforms[..., :3, 3:])[..., 0]
    return make_transform(rotation_t, translation)
