"""The animatable avatar bundle: `persona export --bundle [--motion M] --out avatar_bundle.npz`.

One npz (format in docs/EXPORT.md; `persona/export/bundle_loader.py` reads and re-poses it with
numpy + torch only) holding the canonical Gaussians, the 55-joint skeleton, the per-Gaussian
skinning weights persona uses and, for a motion, per-frame canonical-space offsets.

What comes from persona, and from where (nothing of the posing is re-implemented here):
- canonical Gaussians: `system.posed_state` at the canonical pose (`canonical_base`, the
  pose-independent scales and colours);
- skinning weights: `persona.avatar.posing.skinning_weights` at the canonical means, with the
  system's template, skinning settings and field (the "base" weights of `posed_state`);
- skeleton: the body's parents, identity-shaped rest joints, hand pose mean and big-pose
  transforms;
- per-frame offsets: from the system's own posed means (`posed_gaussians`) and the body's
  transforms (`transforms_from_canonical`), as the canonical displacement that the bundle's LBS
  maps exactly onto them (`exact_canonical_offsets`). It holds the pose deformer's offset, the
  expression offset and the effect of the weights persona looks up again at the refined position
  (`skinning.refined_lookup`): the raw deformer offsets skinned with the fixed weights miss
  persona's posed means by up to 30 mm on the tiny test avatar (`dance`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from persona.avatar import posing as posing_lib
from persona.body.types import NUM_JOINTS, SMPLX_JOINT_NAMES, PoseParams
from persona.export.ply import write_gaussians_npz
from persona.export.poses import (
    avatar_device,
    canonical_pose,
    frame_count,
    motion_pose,
    pose_to,
)
from persona.render.types import Gaussians

BUNDLE_FORMAT = "persona_avatar_bundle"  # the bundle's "format" entry (bundle_loader checks it)
BUNDLE_VERSION = 1  # the bundle's "version"; bump on an incompatible change
BUNDLE_SUFFIX = ".npz"
POSE_DEPENDENT_APPEARANCE = ("mean_scale", "mean_rgb")  # deformer modes the bundle cannot carry


class BundleSource(Protocol):
    """What a bundle needs from an avatar (PersonaSystem has it all)."""

    template: Any  # persona.avatar.template.AvatarTemplate
    body: Any  # persona.body.model.BodyModel
    identity: Any  # persona.body.types.Identity
    skinning_cfg: posing_lib.SkinningConfig
    frozen: Any  # .field: the skinning field (or None)

    def posed_state(self, pose: PoseParams, body_pose_6d: Tensor
                    ) -> posing_lib.AvatarState: ...

    def posed_gaussians(self, pose: PoseParams, variant: str = "refined"
                        ) -> tuple[Gaussians, dict[str, Tensor]]: ...


@dataclass
class BundleResult:
    path: Path
    num_gaussians: int
    num_frames: int  # motion frames with offsets (0 without --motion)


def exact_canonical_offsets(canon: Tensor, weights: Tensor, transforms: Tensor,
                            posed: Tensor) -> Tensor:
    """Canonical offsets d [N, 3] with LBS(canon + d; weights, transforms) == posed.

    canon [N, 3] canonical means, weights [N, 55], transforms [55, 4, 4] canonical -> world,
    posed [N, 3] world means. Solves the blended affine map per Gaussian in float64.
    """
    num_joints = transforms.shape[0]
    blended = (weights.double() @ transforms.double().reshape(num_joints, 16)
               ).reshape(-1, 4, 4)  # [N, 4, 4]
    rhs = posed.double() - blended[:, :3, 3]  # [N, 3]
    local = torch.linalg.solve(blended[:, :3, :3], rhs[..., None])[..., 0]  # [N, 3]
    offsets = local - canon.double()
    if not torch.isfinite(offsets).all():
        raise ValueError("bundle offsets: a blended skinning transform is singular")
    return offsets.float()


def canonical_arrays(source: BundleSource) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """({means, scales, opacities, rgb, weights}, canonical means [N, 3], weights [N, 55]) of
    the avatar in its canonical (big) pose."""
    pose = pose_to(canonical_pose(source.body.num_expression), avatar_device(source))
    with torch.no_grad():
        state = source.posed_state(pose, posing_lib.body_pose_6d(pose))
        canon = state.canonical_base  # [N, 3]
        gaussians = posing_lib.state_gaussians(state, "base")
        colours = posing_lib.state_colours(state, "base")
        # the weights posed_state computes for these means (its "base" weights)
        weights = posing_lib.skinning_weights(source.template, canon, state.scales["base"][:, 0],
                                              source.skinning_cfg, source.frozen.field)
    arrays = {"means": canon, "scales": gaussians.scales, "opacities": gaussians.opacities,
              "rgb": colours["rgb"], "weights": weights}
    return arrays, canon, weights


def skeleton_arrays(source: BundleSource) -> dict[str, Tensor | np.ndarray]:
    """Parents [55], rest joints [55, 3], canonical joints [55, 3] and transforms
    [55, 4, 4], the big pose [55, 3] and the pose mean [55, 3] of the avatar's body."""
    body, identity = source.body, source.identity
    with torch.no_grad():
        canonical = body.canonical(identity)
        rest_joints = body.rest_joints(identity)
    return {"parents": body.parents, "joint_names": np.asarray(SMPLX_JOINT_NAMES),
            "rest_joints": rest_joints, "canonical_joints": canonical.joints,
            "canonical_transforms": canonical.transforms, "canonical_pose": body.big_pose(),
            "pose_mean": body.pose_mean}


def motion_offsets(source: BundleSource, motion, canon: Tensor, weights: Tensor,
                   total: int, variant: str) -> np.ndarray:
    """[T, N, 3] canonical offsets reproducing the avatar's own posed means at each of the
    first `total` frames of `motion`."""
    offsets = np.empty((total, canon.shape[0], 3), np.float32)
    device = avatar_device(source)
    for t in range(total):
        pose = pose_to(motion_pose(motion.poses, motion.transl, motion.expression, t,
                                   f"motion {motion.name!r}"), device)
        with torch.no_grad():
            gaussians, _ = source.posed_gaussians(pose, variant)
            transforms = source.body.transforms_from_canonical(source.identity, pose)[0]
        offsets[t] = exact_canonical_offsets(canon, weights, transforms,
                                             gaussians.means).cpu().numpy()
    return offsets


def bundle_arrays(source: BundleSource, motion=None, variant: str = "refined",
                  max_frames: int | None = None) -> dict[str, Any]:
    """Every array of a bundle (see docs/EXPORT.md); offsets only with a motion."""
    if variant == "refined" and getattr(getattr(source, "deformer", None), "mode",
                                        "mean") in POSE_DEPENDENT_APPEARANCE:
        warnings.warn(f"bundle: the deformer also predicts pose-dependent "
                      f"{source.deformer.mode.split('_')[1]} offsets; the bundle carries the "
                      "pose-independent scales and colours only", stacklevel=2)
    canonical, canon, weights = canonical_arrays(source)
    arrays: dict[str, Any] = {"format": np.asarray(BUNDLE_FORMAT),
                              "version": np.asarray(BUNDLE_VERSION), "variant": np.asarray(variant),
                              **canonical, **skeleton_arrays(source)}
    if motion is not None:
        total = frame_count(motion.num_frames, max_frames, f"motion {motion.name!r}")
        arrays.update({
            "offsets": motion_offsets(source, motion, canon, weights, total, variant),
            "motion_name": np.asarray(motion.name), "fps": np.asarray(float(motion.fps)),
            "motion_poses": np.asarray(motion.poses[:total], np.float32),
            "motion_transl": np.asarray(motion.transl[:total], np.float32)})
        if motion.expression is not None:
            arrays["motion_expression"] = np.asarray(motion.expression[:total], np.float32)
    return arrays


def check_bundle_path(out: str | os.PathLike) -> Path:
    """The bundle's path; ValueError unless it ends in .npz."""
    path = Path(out)
    if path.suffix != BUNDLE_SUFFIX:
        raise ValueError(f"--out {path}: a bundle is one {BUNDLE_SUFFIX} file "
                         f"(e.g. avatar_bundle.npz)")
    return path


def write_bundle(source: BundleSource, out: str | os.PathLike, motion=None,
                 variant: str = "refined", max_frames: int | None = None) -> BundleResult:
    """Build and write the bundle npz atomically."""
    path = check_bundle_path(out)
    arrays = bundle_arrays(source, motion, variant, max_frames)
    if arrays["weights"].shape[1] != NUM_JOINTS:
        raise ValueError(f"bundle weights: expected [N, {NUM_JOINTS}], got "
                         f"{list(arrays['weights'].shape)}")
    write_gaussians_npz(path, arrays)
    frames = arrays["offsets"].shape[0] if "offsets" in arrays else 0
    return BundleResult(path, int(arrays["means"].shape[0]), frames)
