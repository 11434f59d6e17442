"""Linear blend skinning: the rigid kinematic chain and skinning of points (axis-angle to
rotation: persona.ops.rotations.axis_angle_to_matrix).

Everything is batched, differentiable and device-agnostic. The maths follows SMPL/SMPL-X
(Loper et al. 2015; Pavlakos et al. 2019); `tests/body/test_lbs.py` checks it against the
`smplx` package's own forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def make_transform(rotation: Tensor, translation: Tensor) -> Tensor:
    """Rotation [..., 3, 3] and translation [..., 3] to homogeneous transforms [..., 4, 4]."""
    top = torch.cat([rotation, translation[..., None]], dim=-1)  # [..., 3, 4]
    bottom = torch.zeros_like(top[..., :1, :])  # [..., 1, 4]
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


@dataclass(frozen=True)
class KinematicChain:
    """A kinematic tree walked by depth: every joint of one depth is composed with its parent in
    one batched product (11 products for SMPL-X's 55 joints instead of 54), with no host
    synchronisation (the index tensors live on the rotations' device)."""

    order: Tensor  # [J] int64 the joints by depth (root first; index order within a depth)
    inverse: Tensor  # [J] int64 each joint's position in `order`
    parent_local: Tensor  # [J] int64 per position in `order`: its parent's position within the
    #                      block of the previous depth (the root: 0)
    parent: Tensor  # [J] int64 each joint's parent (the root: itself)
    bounds: tuple[tuple[int, int], ...]  # [start, stop) of each depth's block in `order`

    @classmethod
    def from_parents(cls, parents: Tensor | Sequence[int],
                     device: torch.device | str | None = None) -> KinematicChain:
        """parents [J]: joint 0 the only root (-1), every parent before its children."""
        parent_list = [int(p) for p in parents]
        if not parent_list or parent_list[0] != -1 or any(
                not 0 <= p < j for j, p in enumerate(parent_list) if j > 0):
            raise ValueError(f"parents: expected joint 0 as the only root (-1) and every parent "
                             f"before its children, got {parent_list}")
        depth = [0] * len(parent_list)
        for joint in range(1, len(parent_list)):
            depth[joint] = depth[parent_list[joint]] + 1
        order = sorted(range(len(parent_list)), key=lambda j: (depth[j], j))
        position = {joint: i for i, joint in enumerate(order)}
        starts = [i for i in range(len(order)) if i == 0 or depth[order[i]] != depth[order[i - 1]]]
        bounds = tuple(zip(starts, starts[1:] + [len(order)], strict=True))
        block_start = {depth[order[start]]: start for start, _ in bounds}
        parent_local = [0] + [position[parent_list[j]] - block_start[depth[j] - 1]
                              for j in order[1:]]

        def tensor(values: list[int]) -> Tensor:
            return torch.tensor(values, dtype=torch.int64, device=device)

        return cls(tensor(order), tensor([position[j] for j in range(len(order))]),
                   tensor(parent_local), tensor([max(p, 0) for p in parent_list]), bounds)


def rigid_chain(rotations: Tensor, joints: Tensor, parents: Tensor | Sequence[int],
                chain: KinematicChain | None = None) -> tuple[Tensor, Tensor]:
    """Compose local joint rotations along the kinematic tree, one depth at a time.

    rotations [B, J, 3, 3] local rotations, joints [B, J, 3] rest joint positions, parents [J]
    (root -1, parents before children); chain: `KinematicChain.from_parents(parents)` on the
    rotations' device (built here when None). Returns the posed joint positions [B, J, 3] and the
    relative transforms [B, J, 4, 4] that map rest-pose points to posed points (SMPL's `A`).
    Equal to `rigid_chain_reference` (tests/body/test_lbs.py).
    """
    if chain is None:
        chain = KinematicChain.from_parents(parents, device=rotations.device)
    relative_joints = joints - joints.index_select(1, chain.parent)  # [B, J, 3] (root: 0)
    relative_joints = torch.cat([joints[:, :1], relative_joints[:, 1:]], dim=1)
    local = make_transform(rotations, relative_joints).index_select(1, chain.order)  # [B,J,4,4]
    blocks = [local[:, :1]]  # world transforms, one block per depth
    for start, stop in chain.bounds[1:]:
        parent_world = blocks[-1].index_select(1, chain.parent_local[start:stop])
        blocks.append(parent_world @ local[:, start:stop])
    world = torch.cat(blocks, dim=1).index_select(1, chain.inverse)  # [B, J, 4, 4]
    return world[..., :3, 3], remove_rest_joints(world, joints)


def rigid_chain_reference(rotations: Tensor, joints: Tensor, parents: Tensor | Sequence[int]
                          ) -> tuple[Tensor, Tensor]:
    """`rigid_chain` walked joint by joint (the form of SMPL's code): the parity reference."""
    parent_list = [int(p) for p in parents]
    relative_joints = joints.clone()  # [B, J, 3]
    relative_joints[:, 1:] = joints[:, 1:] - joints[:, parent_list[1:]]
    local = make_transform(rotations, relative_joints)  # [B, J, 4, 4]
    chain = [local[:, 0]]
    for joint in range(1, len(parent_list)):
        chain.append(chain[parent_list[joint]] @ local[:, joint])
    world = torch.stack(chain, dim=1)  # [B, J, 4, 4]
    return world[..., :3, 3], remove_rest_joints(world, joints)


def remove_rest_joints(world: Tensor, joints: Tensor) -> Tensor:
    """A = world @ [I, -j; 0, 1]: world joint transforms [B, J, 4, 4] to the transforms of rest
    pose points (joints [B, J, 3] the rest joint positions)."""
    offset = (world[..., :3, :3] @ joints[..., None])[..., 0]  # [B, J, 3]
    relative = world.clone()
    relative[..., :3, 3] = world[..., :3, 3] - offset
    return relative


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
