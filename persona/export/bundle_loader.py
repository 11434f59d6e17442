"""Load and re-pose a PERSONA avatar bundle (`persona export --bundle`): numpy + torch only.

This file imports nothing else from PERSONA: copy it into another project as it is.

    from bundle_loader import load_bundle, pose_gaussians
    bundle = load_bundle("avatar_bundle.npz")
    full_pose, transl = bundle.motion_frame(10)          # or your own [55, 3] and [3]
    g = pose_gaussians(bundle, full_pose, transl, frame=10)  # frame: apply its offsets
    g["means"]  # [N, 3] world positions (metres); g["scales"], g["opacities"], g["rgb"]

Posing (SMPL-X linear blend skinning from the avatar's canonical "big" pose):
    A(p)  = forward kinematics of rotations Rodrigues(p_j + pose_mean_j) about rest_joints
            (SMPL's relative transforms: zero pose -> pose p), [55, 4, 4]
    T_j   = A_j(full_pose) @ inverse(canonical_transforms_j), translation += transl
    x'    = sum_j weights[i, j] T_j (means_i + offsets[frame, i])
The Gaussians are isotropic: their scales, opacities and colours do not change with the pose.
Bundle format: docs/EXPORT.md in the PERSONA repository.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

BUNDLE_FORMAT = "persona_avatar_bundle"  # the "format" entry of a bundle
SUPPORTED_VERSIONS = (1,)  # bundle versions this loader reads
NUM_JOINTS = 55  # SMPL-X: root, 21 body, jaw, 2 eyes, 2 x 15 finger joints
ANGLE_EPSILON = 1e-16  # added under the square root of a squared angle: zero rotation -> identity

# key -> shape ("N": Gaussians, "T": motion frames, "E": expression coefficients)
REQUIRED: dict[str, tuple[str | int, ...]] = {
    "means": ("N", 3), "scales": ("N", 3), "opacities": ("N",), "rgb": ("N", 3),
    "weights": ("N", NUM_JOINTS), "parents": (NUM_JOINTS,), "rest_joints": (NUM_JOINTS, 3),
    "canonical_transforms": (NUM_JOINTS, 4, 4), "pose_mean": (NUM_JOINTS, 3),
}
OPTIONAL: dict[str, tuple[str | int, ...]] = {
    "canonical_joints": (NUM_JOINTS, 3), "canonical_pose": (NUM_JOINTS, 3),
    "offsets": ("T", "N", 3), "motion_poses": ("T", NUM_JOINTS, 3), "motion_transl": ("T", 3),
    "motion_expression": ("T", "E"),
}


@dataclass
class AvatarBundle:
    """The arrays of a bundle (numpy, as stored)."""

    means: np.ndarray  # [N, 3] canonical (big pose) means, metres
    scales: np.ndarray  # [N, 3] standard deviations, metres
    opacities: np.ndarray  # [N] in [0, 1]
    rgb: np.ndarray  # [N, 3] colours in [0, 1]
    weights: np.ndarray  # [N, 55] skinning weights (rows sum to 1)
    parents: np.ndarray  # [55] parent joint (root: -1), parents before children
    rest_joints: np.ndarray  # [55, 3] zero-pose joint positions (identity-shaped)
    canonical_transforms: np.ndarray  # [55, 4, 4] zero pose -> canonical big pose
    pose_mean: np.ndarray  # [55, 3] added to every axis-angle pose (SMPL-X hand mean)
    canonical_joints: np.ndarray | None = None  # [55, 3] joints in the canonical pose
    canonical_pose: np.ndarray | None = None  # [55, 3] the canonical big pose (axis-angle)
    offsets: np.ndarray | None = None  # [T, N, 3] canonical offsets per motion frame
    motion_poses: np.ndarray | None = None  # [T, 55, 3] the motion the offsets belong to
    motion_transl: np.ndarray | None = None  # [T, 3]
    motion_expression: np.ndarray | None = None  # [T, E]
    motion_name: str = ""
    fps: float = 0.0
    variant: str = ""

    @property
    def num_gaussians(self) -> int:
        return int(self.means.shape[0])

    @property
    def num_frames(self) -> int:
        """Motion frames with offsets (0 when the bundle has none)."""
        return 0 if self.offsets is None else int(self.offsets.shape[0])

    def motion_frame(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(full_pose [55, 3], transl [3]) of frame t of the bundled motion."""
        if self.motion_poses is None or self.motion_transl is None:
            raise ValueError("bundle: no motion in this bundle (export it with --motion)")
        return self.motion_poses[t], self.motion_transl[t]


def _check_shape(path: str, key: str, array: np.ndarray, shape: tuple[str | int, ...],
                 sizes: dict[str, int]) -> None:
    if array.ndim != len(shape):
        raise ValueError(f"{path}: '{key}' expected {len(shape)} dimensions {list(shape)}, "
                         f"got shape {list(array.shape)}")
    for axis, want in zip(array.shape, shape, strict=True):
        if isinstance(want, str):
            want = sizes.setdefault(want, axis)
        if axis != want:
            raise ValueError(f"{path}: '{key}' expected shape {list(shape)} with "
                             f"{sizes}, got {list(array.shape)}")


def load_bundle(path: str | os.PathLike) -> AvatarBundle:
    """Read and check a bundle npz; errors name the file and the key."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"bundle not found: {path}")
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: np.asarray(data[key]) for key in data.files}
    if str(arrays.get("format", "")) != BUNDLE_FORMAT:
        raise ValueError(f"{path}: 'format' is not {BUNDLE_FORMAT!r} (not an avatar bundle)")
    version = int(arrays.get("version", -1))
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"{path}: 'version' {version} not supported (this loader reads "
                         f"{SUPPORTED_VERSIONS})")
    sizes: dict[str, int] = {}
    fields: dict[str, object] = {}
    for key, shape in REQUIRED.items():
        if key not in arrays:
            raise ValueError(f"{path}: missing key '{key}'")
        _check_shape(path, key, arrays[key], shape, sizes)
        fields[key] = arrays[key]
    for key, shape in OPTIONAL.items():
        if key in arrays:
            _check_shape(path, key, arrays[key], shape, sizes)
            fields[key] = arrays[key]
    for key in ("motion_name", "variant"):
        if key in arrays:
            fields[key] = str(arrays[key])
    if "fps" in arrays:
        fields["fps"] = float(arrays["fps"])
    fields["parents"] = arrays["parents"].astype(np.int64)
    return AvatarBundle(**fields)


def rodrigues(rotvecs: Tensor) -> Tensor:
    """Axis-angle vectors [..., 3] -> rotation matrices [..., 3, 3]."""
    angle = torch.sqrt((rotvecs * rotvecs).sum(-1, keepdim=True) + ANGLE_EPSILON)  # [..., 1]
    rx, ry, rz = (rotvecs / angle).unbind(-1)
    zeros = torch.zeros_like(rx)
    skew = torch.stack([zeros, -rz, ry, rz, zeros, -rx, -ry, rx, zeros], dim=-1)
    skew = skew.reshape(*rotvecs.shape[:-1], 3, 3)  # [..., 3, 3]
    eye = torch.eye(3, dtype=rotvecs.dtype, device=rotvecs.device)
    return eye + torch.sin(angle)[..., None] * skew \
        + (1.0 - torch.cos(angle))[..., None] * (skew @ skew)


def relative_transforms(rotations: Tensor, rest_joints: Tensor, parents: list[int]) -> Tensor:
    """Forward kinematics: local rotations [J, 3, 3] about rest joints [J, 3] -> transforms
    [J, 4, 4] mapping zero-pose points to posed points (SMPL's A)."""
    num = rest_joints.shape[0]
    offsets = rest_joints.clone()  # [J, 3] joint position relative to its parent
    offsets[1:] = rest_joints[1:] - rest_joints[parents[1:]]
    local = torch.zeros(num, 4, 4, dtype=rotations.dtype, device=rotations.device)
    local[:, :3, :3] = rotations
    local[:, :3, 3] = offsets
    local[:, 3, 3] = 1.0
    chain = [local[0]]
    for joint in range(1, num):
        chain.append(chain[parents[joint]] @ local[joint])
    world = torch.stack(chain)  # [J, 4, 4]
    relative = world.clone()
    relative[:, :3, 3] = world[:, :3, 3] - (world[:, :3, :3] @ rest_joints[..., None])[..., 0]
    return relative


def _tensor(value: np.ndarray | Tensor, dtype: torch.dtype, device: torch.device | str
            ) -> Tensor:
    return torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value,
                           dtype=dtype, device=device)


def joint_transforms(bundle: AvatarBundle, full_pose: np.ndarray | Tensor,
                     transl: np.ndarray | Tensor, dtype: torch.dtype = torch.float64,
                     device: torch.device | str = "cpu") -> Tensor:
    """[55, 4, 4] canonical -> world transforms for SMPL-X axis-angle full_pose [55, 3] (root,
    21 body, jaw, 2 eyes, 2 x 15 fingers) and root translation transl [3] (metres)."""
    pose = _tensor(full_pose, dtype, device).reshape(NUM_JOINTS, 3)
    rest = _tensor(bundle.rest_joints, dtype, device)
    parents = [int(p) for p in bundle.parents]
    posed = relative_transforms(rodrigues(pose + _tensor(bundle.pose_mean, dtype, device)),
                                rest, parents)  # [55, 4, 4]
    canonical = torch.linalg.inv(_tensor(bundle.canonical_transforms, dtype, device))
    transforms = posed @ canonical
    transforms[:, :3, 3] += _tensor(transl, dtype, device).reshape(3)
    return transforms


def pose_means(bundle: AvatarBundle, full_pose: np.ndarray | Tensor,
               transl: np.ndarray | Tensor, frame: int | None = None,
               dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> Tensor:
    """World means [N, 3] in a pose (full_pose [55, 3], transl [3]); frame: add that motion
    frame's canonical offsets first (None: the canonical means as they are)."""
    means = _tensor(bundle.means, dtype, device)  # [N, 3]
    if frame is not None:
        if bundle.offsets is None:
            raise ValueError("bundle: no offsets in this bundle (export it with --motion)")
        means = means + _tensor(bundle.offsets[frame], dtype, device)
    transforms = joint_transforms(bundle, full_pose, transl, dtype, device)  # [55, 4, 4]
    weights = _tensor(bundle.weights, dtype, device)  # [N, 55]
    blended = (weights @ transforms.reshape(NUM_JOINTS, 16)).reshape(-1, 4, 4)  # [N, 4, 4]
    return (blended[:, :3, :3] @ means[..., None])[..., 0] + blended[:, :3, 3]


def pose_gaussians(bundle: AvatarBundle, full_pose: np.ndarray | Tensor,
                   transl: np.ndarray | Tensor, frame: int | None = None,
                   dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
                   ) -> dict[str, Tensor]:
    """{"means" [N, 3], "scales" [N, 3], "opacities" [N], "rgb" [N, 3]} in a pose."""
    return {"means": pose_means(bundle, full_pose, transl, frame, dtype, device),
            "scales": _tensor(bundle.scales, dtype, device),
            "opacities": _tensor(bundle.opacities, dtype, device),
            "rgb": _tensor(bundle.rgb, dtype, device)}
