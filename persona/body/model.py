"""`BodyModel`: one SMPL-X-format body (real SMPL-X, the open body or the procedural body).

Built from an `smplx.SMPLX` layer (so every body goes through the same `smplx` loading path),
it keeps only the buffers PERSONA needs and does its own LBS (`persona/body/lbs.py`): no pose
correctives, expression added in the zero pose, joints regressed from the identity-shaped mesh
(betas + face offset, without expression) plus the per-joint offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from persona.body.lbs import (
    KinematicChain,
    blend_shapes,
    invert_rigid,
    rigid_chain,
    skin_points,
)
from persona.body.types import (
    NUM_JOINTS,
    Identity,
    PoseParams,
    big_pose,
    check_finite,
    identity_fields,
    pose_fields,
)
from persona.ops.rotations import axis_angle_to_matrix

REGION_NAMES = ("left_hand", "right_hand", "hands", "face", "eyes", "mouth_interior")
OFFICIAL_IDS = "official vertex ids"
DERIVED_FROM_WEIGHTS = "derived from skinning weights"


@dataclass
class Canonical:
    """The identity-shaped body in the canonical big pose."""

    vertices: Tensor  # [V, 3]
    joints: Tensor  # [55, 3] posed joint positions
    transforms: Tensor  # [55, 4, 4] zero pose -> big pose (SMPL's A)


class BodyModel(nn.Module):
    """A SMPL-X-format body with PERSONA's LBS. Build it with `BodyModel.from_smplx_layer` or
    `persona.body.loader.load_body`; no file I/O happens inside."""

    def __init__(self, v_template: Tensor, faces: Tensor, parents: Tensor, lbs_weights: Tensor,
                 shapedirs: Tensor, exprdirs: Tensor, J_regressor: Tensor, pose_mean: Tensor,
                 region_masks: dict[str, Tensor], region_mask_source: str,
                 name: str = "body") -> None:
        """v_template [V,3], faces [F,3], parents [55], lbs_weights [V,55], shapedirs [V,3,nb],
        exprdirs [V,3,ne], J_regressor [55,V], pose_mean [55,3] (added to every full pose, as
        smplx does: the hand mean unless flat_hand_mean), region masks {name: [V] bool}."""
        super().__init__()
        self.name = name
        self.register_buffer("v_template", v_template.float())
        self.register_buffer("faces", faces.long())
        self.register_buffer("parents", parents.long())
        self.register_buffer("lbs_weights", lbs_weights.float())
        self.register_buffer("shapedirs", shapedirs.float())
        self.register_buffer("exprdirs", exprdirs.float())
        self.register_buffer("J_regressor", J_regressor.float())
        self.register_buffer("pose_mean", pose_mean.float().reshape(NUM_JOINTS, 3))
        self.register_buffer("big_pose_buffer", big_pose(), persistent=False)  # [55, 3]
        self.parent_list = tuple(self.parents.tolist())  # [55] on the host
        chain = KinematicChain.from_parents(self.parent_list)
        self.chain_bounds = chain.bounds
        for field in ("order", "inverse", "parent_local", "parent"):
            self.register_buffer(f"chain_{field}", getattr(chain, field), persistent=False)
        missing = [k for k in REGION_NAMES if k not in region_masks]
        if missing:
            raise ValueError(f"region_masks: missing {missing}")
        self.region_mask_names = tuple(REGION_NAMES)
        for key in REGION_NAMES:
            self.register_buffer(f"region_mask_{key}", region_masks[key].bool(), persistent=False)
        self.region_mask_source = region_mask_source

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def from_smplx_layer(cls, layer: nn.Module, region_masks: dict[str, Tensor],
                         region_mask_source: str, name: str = "body") -> BodyModel:
        """Take the buffers of an `smplx.SMPLX` layer (see `smplx_format.build_smplx_layer`)."""
        return cls(
            v_template=layer.v_template.detach(),
            faces=layer.faces_tensor.detach(),
            parents=layer.parents.detach(),
            lbs_weights=layer.lbs_weights.detach(),
            shapedirs=layer.shapedirs.detach(),
            exprdirs=layer.expr_dirs.detach(),
            J_regressor=layer.J_regressor.detach(),
            pose_mean=layer.pose_mean.detach(),
            region_masks=region_masks,
            region_mask_source=region_mask_source,
            name=name,
        )

    # ------------------------------------------------------------------------------- properties
    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    @property
    def num_betas(self) -> int:
        return self.shapedirs.shape[-1]

    @property
    def num_expression(self) -> int:
        return self.exprdirs.shape[-1]

    @property
    def kinematic_chain(self) -> KinematicChain:
        """The kinematic tree by depth, on this body's device (persona.body.lbs.rigid_chain)."""
        return KinematicChain(self.chain_order, self.chain_inverse, self.chain_parent_local,
                              self.chain_parent, self.chain_bounds)

    @property
    def region_masks(self) -> dict[str, Tensor]:
        """{left_hand, right_hand, hands, face, eyes, mouth_interior}: [V] bool each."""
        return {k: getattr(self, f"region_mask_{k}") for k in self.region_mask_names}

    # --------------------------------------------------------------------------------- checking
    def check_identity(self, identity: Identity, finite: bool = True) -> None:
        """ValueError naming the field when an identity does not fit this body (finite: also
        its values, one host synchronisation)."""
        if identity.betas.shape != (self.num_betas,):
            raise ValueError(f"identity.betas: expected shape [{self.num_betas}] for body "
                             f"{self.name!r}, got {list(identity.betas.shape)}")
        if identity.face_offset is not None and identity.face_offset.shape != (
                self.num_vertices, 3):
            raise ValueError(f"identity.face_offset: expected [{self.num_vertices}, 3], got "
                             f"{list(identity.face_offset.shape)}")
        if identity.joint_offset is not None and identity.joint_offset.shape != (NUM_JOINTS, 3):
            raise ValueError(f"identity.joint_offset: expected [55, 3], got "
                             f"{list(identity.joint_offset.shape)}")
        if finite:
            check_finite(identity_fields(identity))

    def check_pose(self, pose: PoseParams, finite: bool = True) -> None:
        pose.validate(finite=finite)
        if pose.expression.shape[1] > self.num_expression:
            raise ValueError(f"pose.expression: {pose.expression.shape[1]} coefficients, body "
                             f"{self.name!r} has {self.num_expression}")

    def check_inputs(self, identity: Identity, pose: PoseParams) -> None:
        """check_identity and check_pose with one host synchronisation for both."""
        self.check_identity(identity, finite=False)
        self.check_pose(pose, finite=False)
        check_finite({**identity_fields(identity), **pose_fields(pose)})

    def zero_identity(self) -> Identity:
        return Identity(torch.zeros(self.num_betas, device=self.v_template.device))

    # ---------------------------------------------------------------------------------- the body
    def expression_offsets(self, expression: Tensor) -> Tensor:
        """expression [B, E] (E <= num_expression) -> offsets [B, V, 3] in the zero pose."""
        num = expression.shape[-1]
        return blend_shapes(expression, self.exprdirs[..., :num])

    def shaped_vertices(self, identity: Identity, expression: Tensor | None = None,
                        check: bool = True) -> Tensor:
        """Zero-pose mesh with identity: [V, 3], or [B, V, 3] with expression [B, E]. check:
        False when the caller has checked the identity."""
        if check:
            self.check_identity(identity)
        vertices = self.v_template + blend_shapes(identity.betas, self.shapedirs)  # [V, 3]
        if identity.face_offset is not None:
            vertices = vertices + identity.face_offset
        if expression is not None:
            vertices = vertices + self.expression_offsets(expression)  # [B, V, 3]
        return vertices

    def rest_joints(self, identity: Identity, check: bool = True) -> Tensor:
        """Zero-pose joints [55, 3]: J_regressor on the shaped mesh + joint offset."""
        joints = self.J_regressor @ self.shaped_vertices(identity, check=check)  # [55, 3]
        if identity.joint_offset is not None:
            joints = joints + identity.joint_offset
        return joints

    def joint_transforms(self, identity: Identity, full_pose: Tensor) -> Tensor:
        """full_pose [B, 55, 3] axis-angle -> [B, 55, 4, 4] zero pose -> pose (no translation)."""
        if full_pose.ndim != 3 or full_pose.shape[1:] != (NUM_JOINTS, 3):
            raise ValueError(f"full_pose: expected [B, 55, 3], got {list(full_pose.shape)}")
        self.check_identity(identity, finite=False)
        check_finite({**identity_fields(identity), "full_pose": full_pose})
        return self.chain_transforms(self.rest_joints(identity, check=False), full_pose)

    def chain_transforms(self, rest_joints: Tensor, full_pose: Tensor) -> Tensor:
        """rest_joints [55, 3], full_pose [B, 55, 3] (checked by the caller) -> [B, 55, 4, 4]."""
        rotations = axis_angle_to_matrix(full_pose + self.pose_mean)  # [B, 55, 3, 3]
        joints = rest_joints.expand(full_pose.shape[0], -1, -1)  # [B, 55, 3]
        _, transforms = rigid_chain(rotations, joints, self.parents, self.kinematic_chain)
        return transforms

    def big_pose(self) -> Tensor:
        """The canonical big pose [55, 3] on this body's device."""
        return self.big_pose_buffer.clone()

    def canonical(self, identity: Identity) -> Canonical:
        """The identity-shaped body in the big pose (the avatar's canonical space)."""
        pose = self.big_pose_buffer[None]  # [1, 55, 3]
        rotations = axis_angle_to_matrix(pose + self.pose_mean)  # [1, 55, 3, 3]
        self.check_identity(identity)
        rest = self.rest_joints(identity, check=False)[None]  # [1, 55, 3]
        joints, transforms = rigid_chain(rotations, rest, self.parents, self.kinematic_chain)
        vertices = skin_points(self.shaped_vertices(identity, check=False), self.lbs_weights,
                               transforms)
        return Canonical(vertices[0], joints[0], transforms[0])

    def transforms_from_canonical(self, identity: Identity, pose: PoseParams) -> Tensor:
        """[B, 55, 4, 4] mapping big-pose points to posed world points (transl included). The
        pose and the big pose go through the chain as one batch [B + 1]."""
        self.check_inputs(identity, pose)
        full_pose = pose.full_pose
        both = torch.cat([full_pose, self.big_pose_buffer.to(full_pose.dtype)[None]])
        rest = self.rest_joints(identity, check=False)  # [55, 3]
        chained = self.chain_transforms(rest, both)  # [B + 1, 55, 4, 4]
        transforms = chained[:-1] @ invert_rigid(chained[-1:])
        translation = torch.zeros_like(transforms)
        translation[..., :3, 3] = pose.transl[:, None, :]
        return transforms + translation

    def forward(self, identity: Identity, pose: PoseParams) -> Tensor:
        """Posed vertices [B, V, 3]: template weights, expression in the zero pose, + transl."""
        self.check_inputs(identity, pose)
        vertices = self.shaped_vertices(identity, pose.expression, check=False)  # [B, V, 3]
        transforms = self.chain_transforms(self.rest_joints(identity, check=False),
                                           pose.full_pose)
        return skin_points(vertices, self.lbs_weights, transforms) + pose.transl[:, None, :]
