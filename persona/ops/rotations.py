"""Rotation conversions: axis-angle, rotation matrices and the continuous 6D representation.

Conventions:
- Rotation matrices act on column vectors (x' = R @ x), as SMPL-X's `batch_rodrigues`.
- 6D (Zhou et al., CVPR 2019) is the first two ROWS of the matrix, flattened: ``m[..., :2, :]``,
  exactly pytorch3d's ``matrix_to_rotation_6d``; ``rotation_6d_to_matrix`` rebuilds the rows by
  Gram-Schmidt.
- Axis-angle: direction = axis, norm = angle in radians; ``matrix_to_axis_angle`` returns angles in
  [0, pi].

Every function is batched over leading dimensions, differentiable everywhere (also at the identity
and near a half turn) and device/dtype-agnostic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Below this squared angle (rad^2) the Rodrigues coefficients switch to their Taylor series.
SMALL_ANGLE_SQUARED = 1e-6
# Below this squared sin(angle / 2) the quaternion -> axis-angle factor uses its Taylor series.
SMALL_SIN_HALF_SQUARED = 1e-8
# Guards the Gram-Schmidt normalisations of degenerate 6D inputs.
NORMALIZE_EPS = 1e-8


def _check_last_dims(x: Tensor, dims: tuple[int, ...], name: str) -> None:
    if x.ndim < len(dims) or tuple(x.shape[-len(dims):]) != dims:
        raise ValueError(f"{name}: expected shape [..., {', '.join(map(str, dims))}], "
                         f"got {list(x.shape)}")


def _skew(v: Tensor) -> Tensor:
    """Cross-product matrix [v]_x. v [..., 3] -> [..., 3, 3]."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*v.shape, 3)


def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor:
    """Rodrigues' formula. axis_angle [..., 3] -> rotation matrices [..., 3, 3].

    R = I + a [v]_x + b [v]_x^2 with a = sin(t)/t, b = (1 - cos t)/t^2 (t = |v|), using Taylor
    series for small t so that values and gradients stay finite at t = 0.
    """
    _check_last_dims(axis_angle, (3,), "axis_angle")
    theta_sq = (axis_angle * axis_angle).sum(-1)  # [...]
    small = theta_sq < SMALL_ANGLE_SQUARED
    safe_theta_sq = torch.where(small, torch.ones_like(theta_sq), theta_sq)
    safe_theta = safe_theta_sq.sqrt()
    a_exact = torch.sin(safe_theta) / safe_theta
    b_exact = (1.0 - torch.cos(safe_theta)) / safe_theta_sq
    a_taylor = 1.0 - theta_sq / 6.0 + theta_sq * theta_sq / 120.0
    b_taylor = 0.5 - theta_sq / 24.0 + theta_sq * theta_sq / 720.0
    a = torch.where(small, a_taylor, a_exact)[..., None, None]
    b = torch.where(small, b_taylor, b_exact)[..., None, None]
    skew = _skew(axis_angle)  # [..., 3, 3]
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + a * skew + b * (skew @ skew)


def geodesic_angle(a: Tensor, b: Tensor) -> Tensor:
    """Angle (rad) of the rotation between rotation matrices a and b [..., 3, 3] -> [...]:
    arccos((trace(a^T b) - 1) / 2), the cosine clamped to [-1, 1]."""
    _check_last_dims(a, (3, 3), "a")
    _check_last_dims(b, (3, 3), "b")
    relative = a.transpose(-1, -2) @ b
    cos = ((relative.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1.0, 1.0)
    return torch.arccos(cos)


def _sqrt_positive_part(x: Tensor) -> Tensor:
    """sqrt(max(x, 0)) with a zero (not NaN) gradient where x <= 0."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(),
                       torch.zeros_like(x))


def matrix_to_quaternion(matrix: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] -> unit quaternions (w, x, y, z) [..., 4] with w >= 0.

    Of the four algebraically equivalent formulas, the one with the largest denominator is used
    (Shepperd's method), which is stable for every rotation including half turns.
    """
    _check_last_dims(matrix, (3, 3), "matrix")
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = matrix.reshape(*matrix.shape[:-2], 9).unbind(-1)
    q_abs = _sqrt_positive_part(torch.stack([
        1.0 + m00 + m11 + m22,
        1.0 + m00 - m11 - m22,
        1.0 - m00 + m11 - m22,
        1.0 - m00 - m11 + m22,
    ], dim=-1))  # [..., 4] = 2 |w|, 2 |x|, 2 |y|, 2 |z|
    # Row k: the quaternion scaled by 2 * q_abs[k] (its k-th entry is q_abs[k]^2).
    candidates = torch.stack([
        torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], dim=-1),
        torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], dim=-1),
        torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], dim=-1),
        torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], dim=-1),
    ], dim=-2)  # [..., 4, 4]
    floor = torch.tensor(0.1, dtype=q_abs.dtype, device=q_abs.device)
    candidates = candidates / (2.0 * torch.maximum(q_abs[..., None], floor))
    best = q_abs.argmax(dim=-1)  # [...]
    index = best[..., None, None].expand(*best.shape, 1, 4)
    quaternion = torch.gather(candidates, -2, index).squeeze(-2)  # [..., 4]
    quaternion = F.normalize(quaternion, dim=-1)
    return torch.where(quaternion[..., :1] < 0, -quaternion, quaternion)


def quaternion_to_axis_angle(quaternion: Tensor) -> Tensor:
    """Unit quaternions (w, x, y, z) [..., 4] -> axis-angle [..., 3] with angle in [0, pi]."""
    _check_last_dims(quaternion, (4,), "quaternion")
    quaternion = torch.where(quaternion[..., :1] < 0, -quaternion, quaternion)
    w, xyz = quaternion[..., 0], quaternion[..., 1:]
    sin_half_sq = (xyz * xyz).sum(-1)  # [...]
    small = sin_half_sq < SMALL_SIN_HALF_SQUARED
    safe_sin_half = torch.where(small, torch.ones_like(sin_half_sq), sin_half_sq).sqrt()
    # angle / sin(angle / 2) = 2 atan2(s, w) / s; Taylor at s -> 0: 2 / w - 2 s^2 / (3 w^3).
    factor_exact = 2.0 * torch.atan2(safe_sin_half, w) / safe_sin_half
    safe_w = torch.where(small, w, torch.ones_like(w))
    factor_taylor = 2.0 / safe_w - 2.0 * sin_half_sq / (3.0 * safe_w ** 3)
    factor = torch.where(small, factor_taylor, factor_exact)
    return xyz * factor[..., None]


def matrix_to_axis_angle(matrix: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] -> axis-angle [..., 3] (angle in [0, pi])."""
    return quaternion_to_axis_angle(matrix_to_quaternion(matrix))


def matrix_to_rotation_6d(matrix: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] -> 6D [..., 6]: the first two rows, flattened."""
    _check_last_dims(matrix, (3, 3), "matrix")
    return matrix[..., :2, :].reshape(*matrix.shape[:-2], 6)


def rotation_6d_to_matrix(rotation_6d: Tensor) -> Tensor:
    """6D [..., 6] -> rotation matrices [..., 3, 3] by Gram-Schmidt on the two rows.

    Any 6D vector whose two halves are linearly independent maps to a proper rotation; a valid
    matrix's 6D maps back to that matrix exactly.
    """
    _check_last_dims(rotation_6d, (6,), "rotation_6d")
    a1, a2 = rotation_6d[..., :3], rotation_6d[..., 3:]
    b1 = F.normalize(a1, dim=-1, eps=NORMALIZE_EPS)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1, eps=NORMALIZE_EPS)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-2)


def axis_angle_to_rotation_6d(axis_angle: Tensor) -> Tensor:
    """Axis-angle [..., 3] -> 6D [..., 6]."""
    return matrix_to_rotation_6d(axis_angle_to_matrix(axis_angle))


def rotation_6d_to_axis_angle(rotation_6d: Tensor) -> Tensor:
    """6D [..., 6] -> axis-angle [..., 3]."""
    return matrix_to_axis_angle(rotation_6d_to_matrix(rotation_6d))
