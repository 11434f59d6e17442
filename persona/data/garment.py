"""The synthetic subject's loose garment: a pose-driven offset field that is a KNOWN function of
the 21 body joints, and the file to edit for another garment.

Two parts, each a smooth weight field over the rest (zero-pose) surface that falls to 0 at every
edge, so that one Gaussian surface can follow it without tearing:

- a knee-length skirt: between the waist and below the knees the surface lags behind the legs.
  Its posed position is pulled, by ``skirt_lag x weight``, from where the legs put it towards
  where it would be if hips and knees hung straight (their rotations zero), so a kick swings the
  skirt less than the thigh and the cloth between the legs follows both;
- loose sleeves: from the upper arm to past the elbow the surface sags by ``sleeve_sag x weight``
  along the part of gravity perpendicular to the posed upper arm (none with the arm hanging down,
  the full sag with it horizontal).

Offsets are built in the pelvis frame (root orientation and translation zeroed) and taken to
canonical space through the inverse of each Gaussian's blended skinning rotation, so that linear
blend skinning of (canonical + offset) lands exactly on the posed garment: the posed field is
continuous, and so is its canonical version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from persona.body.lbs import skin_points
from persona.body.types import SMPLX_JOINT_NAMES, PoseParams

_J = {name: i for i, name in enumerate(SMPLX_JOINT_NAMES)}
HANGING_JOINTS = ("left_hip", "right_hip", "left_knee", "right_knee")  # zeroed: the skirt's rest
GRAVITY = (0.0, -1.0, 0.0)  # pelvis frame, y up


@dataclass
class GarmentSettings:
    """The pose-driven deformation; lengths in metres on the rest (zero-pose) body."""

    skirt_lag: float = 0.4  # share of the legs' swing the skirt does not follow (0: skin-tight)
    skirt_waist: float = 0.06  # m above the hip joints: the skirt's weight starts rising here
    skirt_full: float = 0.32  # m below the hip joints: the weight reaches 1 here
    skirt_hem: float = 0.44  # m below the hip joints: the hem (about knee height); weight 1 above
    skirt_fade: float = 0.2  # m: below the hem the weight falls smoothly to 0 over this length
    sleeve_sag: float = 0.12  # m: sleeve sag with the upper arm horizontal
    sleeve_start: float = 0.1  # arm progress (0 shoulder, 1 elbow, 2 wrist): weight starts rising
    sleeve_full: float = 1.0  # arm progress where the weight reaches 1
    sleeve_end: float = 1.3  # arm progress of the sleeve opening: weight 1 up to here
    sleeve_fade: float = 0.6  # arm progress over which the weight falls to 0 past the opening
    sleeve_radius: float = 0.10  # m from the arm's bones: full weight within (the arm, not hips)
    sleeve_radius_fade: float = 0.05  # m: beyond the radius the weight falls to 0 over this

    def __post_init__(self) -> None:
        for name in ("skirt_lag", "skirt_hem", "sleeve_sag", "sleeve_radius"):
            if getattr(self, name) < 0:
                raise ValueError(f"GarmentSettings.{name}: expected >= 0, "
                                 f"got {getattr(self, name)}")
        for name in ("skirt_fade", "sleeve_fade", "sleeve_radius_fade"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GarmentSettings.{name}: expected > 0 (the width of a smooth "
                                 f"fall to 0), got {getattr(self, name)}")
        if not -self.skirt_waist < self.skirt_full <= self.skirt_hem:
            raise ValueError(f"GarmentSettings: the skirt needs -skirt_waist < skirt_full <= "
                             f"skirt_hem, got {-self.skirt_waist}, {self.skirt_full}, "
                             f"{self.skirt_hem}")
        if not self.sleeve_start < self.sleeve_full <= self.sleeve_end:
            raise ValueError(f"GarmentSettings: the sleeves need sleeve_start < sleeve_full <= "
                             f"sleeve_end, got {self.sleeve_start}, {self.sleeve_full}, "
                             f"{self.sleeve_end}")


@dataclass
class GarmentField:
    """Per-Gaussian weights of the garment parts (each [N] in [0, 1])."""

    skirt: Tensor  # [N]
    sleeves: Tensor  # [2, N]: left arm, right arm

    def parts(self) -> dict[str, Tensor]:
        """{part name: [N] weight} for metrics and masks."""
        return {"skirt": self.skirt, "sleeves": self.sleeves.amax(0)}


def smoothstep(edge0: float | Tensor, edge1: float | Tensor, x: Tensor) -> Tensor:
    """0 at edge0, 1 at edge1 (either order), C1-smooth in between."""
    t = ((x - edge0) / (edge1 - edge0)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def arm_progress(rest: Tensor, shoulder: Tensor, elbow: Tensor, wrist: Tensor
                 ) -> tuple[Tensor, Tensor]:
    """(progress [N]: 0 at the shoulder, 1 at the elbow, 2 at the wrist, by projection on the
    arm's two bones; distance [N] m from the nearer bone segment). rest [N, 3], joints [3]."""
    upper, lower = elbow - shoulder, wrist - elbow
    s_upper = ((rest - shoulder) @ upper) / upper.dot(upper)
    s_lower = ((rest - elbow) @ lower) / lower.dot(lower)
    near_upper = shoulder + s_upper.clamp(0.0, 1.0)[:, None] * upper  # [N, 3]
    near_lower = elbow + s_lower.clamp(0.0, 1.0)[:, None] * lower  # [N, 3]
    distance = torch.minimum((rest - near_upper).norm(dim=-1), (rest - near_lower).norm(dim=-1))
    return torch.where(s_upper < 1.0, s_upper, 1.0 + s_lower), distance


def bump(x: Tensor, start: float, full: float, end: float, fade: float) -> Tensor:
    """Weight 0 below ``start``, rising to 1 at ``full``, 1 up to ``end``, 0 again at end + fade."""
    return smoothstep(start, full, x) * (1.0 - smoothstep(end, end + fade, x))


def garment_field(rest: Tensor, rest_joints: Tensor, settings: GarmentSettings) -> GarmentField:
    """Weights of the garment parts from rest positions [N, 3] and rest joints [55, 3]."""
    hip_y = rest_joints[[_J["left_hip"], _J["right_hip"]], 1].mean()
    below_hip = hip_y - rest[:, 1]  # [N] m, positive below the hip joints
    skirt = bump(below_hip, -settings.skirt_waist, settings.skirt_full, settings.skirt_hem,
                 settings.skirt_fade)
    sleeves = []
    for side in ("left", "right"):
        progress, distance = arm_progress(rest, *(rest_joints[_J[f"{side}_{joint}"]]
                                                  for joint in ("shoulder", "elbow", "wrist")))
        along = bump(progress, settings.sleeve_start, settings.sleeve_full, settings.sleeve_end,
                     settings.sleeve_fade)
        around = 1.0 - smoothstep(settings.sleeve_radius,
                                  settings.sleeve_radius + settings.sleeve_radius_fade, distance)
        sleeves.append(along * around)
    return GarmentField(skirt, torch.stack(sleeves))  # sleeves [2, N]


def pelvis_frame(pose: PoseParams) -> PoseParams:
    """The same pose with root orientation and translation zeroed."""
    full_pose = pose.full_pose.clone()
    full_pose[:, 0] = 0.0
    return PoseParams(full_pose, pose.expression, torch.zeros_like(pose.transl))


def hanging(pose: PoseParams) -> PoseParams:
    """The same pose with the hips and knees straight (the skirt's hanging reference)."""
    full_pose = pose.full_pose.clone()
    full_pose[:, [_J[name] for name in HANGING_JOINTS]] = 0.0
    return PoseParams(full_pose, pose.expression, pose.transl)


def posed_joints(transforms: Tensor, canonical_joints: Tensor) -> Tensor:
    """Joint positions [B, 55, 3] in the pose of ``transforms`` [B, 55, 4, 4] (canonical ->
    posed), from canonical joints [55, 3]."""
    return (transforms[..., :3, :3] @ canonical_joints[None, :, :, None])[..., 0] \
        + transforms[..., :3, 3]


def garment_offsets(body: Any, identity: Any, canonical: Tensor, canonical_joints: Tensor,
                    weights: Tensor, field: GarmentField, pose: PoseParams,
                    settings: GarmentSettings) -> Tensor:
    """Canonical mean offsets [B, N, 3] of the garment in ``pose`` (batch B).

    canonical [N, 3] and canonical_joints [55, 3]: big-pose Gaussians and joints; weights
    [N, 55] skinning weights. Skinning canonical + offset with the pose's transforms gives the
    skinned surface plus the posed garment offset (exactly: the offset is taken back through the
    inverse of each Gaussian's blended rotation)."""
    frame = pelvis_frame(pose)
    transforms = body.transforms_from_canonical(identity, frame)  # [B, 55, 4, 4]
    skinned = skin_points(canonical, weights, transforms)  # [B, N, 3]
    straight = skin_points(canonical, weights,
                           body.transforms_from_canonical(identity, hanging(frame)))
    skirt = settings.skirt_lag * field.skirt[None, :, None] * (straight - skinned)  # [B, N, 3]
    joints = posed_joints(transforms, canonical_joints)  # [B, 55, 3]
    gravity = torch.tensor(GRAVITY, dtype=canonical.dtype)
    sleeve = torch.zeros_like(skirt)
    for side, name in enumerate(("left", "right")):
        arm = joints[:, _J[f"{name}_elbow"]] - joints[:, _J[f"{name}_shoulder"]]  # [B, 3]
        arm = arm / arm.norm(dim=-1, keepdim=True)
        sag = gravity - (arm @ gravity)[:, None] * arm  # [B, 3] perpendicular part of gravity
        sleeve = sleeve + settings.sleeve_sag * field.sleeves[side][None, :, None] * sag[:, None]
    posed = skirt + sleeve  # [B, N, 3] in the pelvis frame
    blended = torch.einsum("nj,bjxy->bnxy", weights, transforms[..., :3, :3])  # [B, N, 3, 3]
    # float64: blended rotations of strongly bent joints are ill-conditioned in float32
    offsets = torch.linalg.solve(blended.double(), posed.double()[..., None])[..., 0]
    return offsets.to(canonical.dtype)
