"""Posing the avatar (METHOD.md sections 2-3): canonical means -> skinning weights -> the "base"
and "refined" (pose-deformer offset) means -> + expression -> LBS -> world space.

Functions of explicit inputs (template, avatar parameters, deformer, skinning field, body,
identity, pose): no LightningModule, so each is testable on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from persona.avatar.gaussians import GaussianAvatar
from persona.avatar.template import AvatarTemplate
from persona.body.lbs import skin_points
from persona.body.skinning import dominant_joint
from persona.body.types import Identity, PoseParams
from persona.ops.rotations import axis_angle_to_rotation_6d
from persona.render.types import Gaussians

BODY_JOINTS = slice(1, 22)  # the 21 body joints (root excluded): what the pose deformer sees
VARIANTS = ("base", "refined")  # the two render passes of every training step


@dataclass
class SkinningConfig:
    """Where each Gaussian's skinning weights come from (METHOD.md section 2)."""

    method: Literal["volume", "knn", "template"] = "volume"  # diffused volume | k-NN | fixed
    grid_size: int = 128  # skinning volume resolution per axis
    knn: int = 16  # neighbours for the paper's k-nearest-vertex variant
    # The authors' lookup (METHOD.md section 12) is queried at the current canonical mean with
    # gradient (grid_sample passes it into mean_offset); False: the mean is detached (ours before).
    lookup_grad: bool = True
    # True (authors): the refined means are skinned with weights looked up again at the refined
    # canonical position (+ pose offset + expression); False: the base weights serve both.
    refined_lookup: bool = True
    # True (authors): the 4-ring mask's joint is the argmax of the looked-up weights, every
    # forward; False: the template's dominant joint, fixed (ours before).
    dominant_from_lookup: bool = True
    # Outside the volume's box (30 % padding around the template) the lookup reads zeros
    # (authors: grid_sample's default) or the border voxels (ours before).
    padding_mode: Literal["zeros", "border"] = "zeros"


@dataclass
class AvatarState:
    """Everything one pose of the avatar renders from (world space)."""

    means: dict[str, Tensor]  # variant -> [N, 3] posed means ("base", "refined")
    scales: dict[str, Tensor]  # variant -> [N, 3] isotropic standard deviations
    rgb: dict[str, Tensor]  # variant -> [N, 3] colours in [0, 1]
    rgb_aux: Tensor  # [N, 3]
    seg: Tensor  # [N, 3] part-segmentation palette colours
    canonical_base: Tensor  # [N, 3] canonical means (template + mean offset)
    canonical_refined: Tensor  # [N, 3] canonical means + pose-dependent offset


def skinning_weights(template: AvatarTemplate, canon: Tensor, sigma: Tensor,
                     config: SkinningConfig, field: nn.Module | None) -> Tensor:
    """Per-Gaussian LBS weights [N, 55] at canonical means canon [N, 3] with scales sigma [N]
    (detached inside): the template's, k-NN of the body's vertices, or the volume lookup;
    hands and face keep the template's except for "template" (all keep them)."""
    keep = template.region_masks["keep_template_weights"]
    if config.method == "template":
        return template.lbs_weights
    if config.method == "knn":
        from persona.body.skinning import combine_with_template, knn_skinning_weights

        v0 = template.num_original_vertices
        queried = knn_skinning_weights(canon.detach(), template.canonical_vertices[:v0],
                                       template.lbs_weights[:v0], k=config.knn)
        return combine_with_template(queried, template.lbs_weights, keep)
    from persona.body.skinning import field_skinning_weights

    if field is None:
        raise ValueError("skinning.method 'volume' needs a skinning field")
    return field_skinning_weights(field, canon, sigma, template.lbs_weights, keep,
                                  differentiable=config.lookup_grad)


def expression_offsets(template: AvatarTemplate, expression: Tensor) -> Tensor:
    """Canonical expression offsets [N, 3] of expression [E'] (the first min(E, E') terms)."""
    num_e = min(expression.shape[0], template.exprdirs.shape[-1])
    return torch.einsum("nce,e->nc", template.exprdirs[..., :num_e], expression[:num_e])


def posed_state(template: AvatarTemplate, avatar: GaussianAvatar, deformer: nn.Module,
                body: Any, identity: Identity, pose: PoseParams, body_pose_6d: Tensor,
                skinning: SkinningConfig, field: nn.Module | None) -> AvatarState:
    """Pose the avatar: pose with batch 1, body_pose_6d [1, 21, 6]."""
    log_scale = avatar.log_scale  # [N, 1]
    sigma = log_scale.detach().exp().squeeze(-1)  # [N]
    canon = template.canonical_vertices + avatar.mean_offset  # [N, 3]
    weights = skinning_weights(template, canon, sigma, skinning, field)  # [N, 55]
    joints = dominant_joint(weights) if skinning.dominant_from_lookup else template.dominant_joint
    offsets = deformer(template.triplane_positions, joints, body_pose_6d,
                       template.region_masks["no_deform"], template.deform_rows)
    expr_offset = expression_offsets(template, pose.expression[0])  # [N, 3]
    transforms = body.transforms_from_canonical(identity, pose)  # [1, 55, 4, 4]
    base = skin_points(canon + expr_offset, weights, transforms)[0]  # [N, 3]
    refined_canon = canon + offsets.mean_offset[0]  # [N, 3]
    refined_weights = weights
    if skinning.refined_lookup and getattr(deformer, "mode", None) != "off":  # offsets exist
        refined_weights = skinning_weights(template, refined_canon + expr_offset, sigma, skinning,
                                           field)  # [N, 55]
    refined = skin_points(refined_canon + expr_offset, refined_weights, transforms)[0]
    rgb = torch.sigmoid(avatar.rgb)
    scale = log_scale.exp().expand(-1, 3)
    rgbs = {"base": rgb, "refined": rgb}
    scales = {"base": scale, "refined": scale}
    if offsets.rgb_offset is not None:  # ablation: pose-dependent colours (refined only)
        rgbs["refined"] = torch.sigmoid(avatar.rgb + offsets.rgb_offset[0])
    if offsets.scale_offset is not None:  # ablation: pose-dependent scales (refined only)
        scales["refined"] = (log_scale + offsets.scale_offset[0]).exp().expand(-1, 3)
    return AvatarState(means={"base": base, "refined": refined}, scales=scales, rgb=rgbs,
                       rgb_aux=torch.sigmoid(avatar.rgb_aux), seg=torch.sigmoid(avatar.seg),
                       canonical_base=canon, canonical_refined=refined_canon)


def body_pose_6d(pose: PoseParams) -> Tensor:
    """The 21 body joints of a pose (batch 1) as 6D rotations [1, 21, 6]."""
    return axis_angle_to_rotation_6d(pose.full_pose[:, BODY_JOINTS])


def state_gaussians(state: AvatarState, variant: str) -> Gaussians:
    """The opaque isotropic Gaussians of one variant of a posed state."""
    scales = state.scales[variant]  # [N, 3]
    return Gaussians(state.means[variant], scales, scales.new_ones(scales.shape[0]))


def state_colours(state: AvatarState, variant: str) -> dict[str, Tensor]:
    """{"rgb", "seg", "rgb_aux"}: [N, 3] colours of one variant of a posed state."""
    return {"rgb": state.rgb[variant], "seg": state.seg, "rgb_aux": state.rgb_aux}
