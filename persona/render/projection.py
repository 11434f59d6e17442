"""EWA projection of 3D Gaussians to screen space, with gsplat's conventions.

Shared by every PyTorch backend (the fast pairs renderer and the dense oracle) so that they differ
only in how pixels are enumerated and composited. The maths follows gsplat 1.5.3
(``ProjectionEWA3DGSFused.cu`` / ``_torch_impl._fully_fused_projection``):

- camera space ``x_c = R x + t``; culled unless ``near <= z <= far``;
- the Jacobian of the pinhole projection is evaluated at the mean with x/z and y/z clamped to
  1.3 x the field of view (gsplat's ``lim_x_pos``, ``lim_x_neg``, ...), so Gaussians far off-screen
  do not get huge footprints;
- Mip-Splatting's screen-space filter (gsplat ``rasterize_mode="antialiased"``): ``eps2d`` is added
  to the 2D covariance diagonal and the opacity is multiplied by ``sqrt(det_before / det_after)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from persona.render.types import EPS2D, Camera, Gaussians

FOV_CLAMP_MARGIN = 0.3  # gsplat: the Jacobian is clamped to the field of view + 0.3 x tan(fov/2)
MIN_DET = 1e-10  # gsplat clamps the blurred 2D covariance determinant to this before inverting


@dataclass
class Projected:
    """Per-Gaussian screen-space quantities (all differentiable except ``valid``)."""

    mean2d: Tensor  # [N, 2] pixel coordinates (u, v)
    conic: Tensor  # [N, 3] inverse blurred 2D covariance (a, b, c): [[a, b], [b, c]]
    cov_diag: Tensor  # [N, 2] blurred 2D covariance diagonal (sxx, syy), pixels^2
    opacity: Tensor  # [N] opacity times the antialiasing compensation
    compensation: Tensor  # [N] sqrt(det(cov2d) / det(cov2d + eps2d I))
    depth: Tensor  # [N] camera-space z
    valid: Tensor  # [N] bool: inside [near, far] and a positive blurred determinant


def check_inputs(gaussians: Gaussians, camera: Camera) -> None:
    """Raise ValueError naming the field when shapes do not match the contract."""
    means = gaussians.means
    if means.dim() != 2 or means.shape[1] != 3:
        raise ValueError(f"Gaussians.means must be [N, 3], got {tuple(means.shape)}")
    n = means.shape[0]
    if tuple(gaussians.scales.shape) != (n, 3):
        raise ValueError(f"Gaussians.scales must be [{n}, 3], got {tuple(gaussians.scales.shape)}")
    if tuple(gaussians.opacities.shape) != (n,):
        raise ValueError(
            f"Gaussians.opacities must be [{n}], got {tuple(gaussians.opacities.shape)}")
    if gaussians.quats is not None and tuple(gaussians.quats.shape) != (n, 4):
        raise ValueError(f"Gaussians.quats must be [{n}, 4], got {tuple(gaussians.quats.shape)}")
    if tuple(camera.K.shape) != (3, 3):
        raise ValueError(f"Camera.K must be [3, 3], got {tuple(camera.K.shape)}")
    if tuple(camera.R.shape) != (3, 3):
        raise ValueError(f"Camera.R must be [3, 3], got {tuple(camera.R.shape)}")
    if tuple(camera.t.shape) != (3,):
        raise ValueError(f"Camera.t must be [3], got {tuple(camera.t.shape)}")
    if camera.width <= 0 or camera.height <= 0:
        raise ValueError(
            f"Camera.width/height must be positive, got {camera.width}x{camera.height}")


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Unit-normalised (w, x, y, z) quaternions [N, 4] to rotation matrices [N, 3, 3]."""
    q = quats / quats.norm(dim=-1, keepdim=True)  # [N, 4]
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(quats.shape[:-1] + (3, 3))


def covariance_3d(scales: Tensor, quats: Tensor | None) -> Tensor:
    """World covariance R S S R^T [N, 3, 3] from std devs [N, 3] and quaternions [N, 4] | None."""
    if quats is None:
        return torch.diag_embed(scales * scales)  # [N, 3, 3]
    m = quat_to_rotmat(quats) * scales[:, None, :]  # [N, 3, 3] = R diag(s)
    return m @ m.transpose(1, 2)


def project(gaussians: Gaussians, camera: Camera, eps2d: float = EPS2D) -> Projected:
    """Project every Gaussian (no culling of tensors: invalid ones are flagged in ``valid``)."""
    dtype = gaussians.means.dtype
    rot = camera.R.to(dtype)  # [3, 3]
    means_c = gaussians.means @ rot.T + camera.t.to(dtype)  # [N, 3]
    cov_c = rot @ covariance_3d(gaussians.scales, gaussians.quats) @ rot.T  # [N, 3, 3]
    fx, fy = camera.K[0, 0].item(), camera.K[1, 1].item()
    cx, cy = camera.K[0, 2].item(), camera.K[1, 2].item()
    width, height = camera.width, camera.height

    x, y, z = means_c.unbind(-1)  # [N] each
    valid = (z >= camera.near) & (z <= camera.far)
    z_safe = torch.where(valid, z, torch.ones_like(z))  # avoid inf/nan in culled rows
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + FOV_CLAMP_MARGIN * tan_fovx
    lim_x_neg = cx / fx + FOV_CLAMP_MARGIN * tan_fovx
    lim_y_pos = (height - cy) / fy + FOV_CLAMP_MARGIN * tan_fovy
    lim_y_neg = cy / fy + FOV_CLAMP_MARGIN * tan_fovy
    rz = 1.0 / z_safe
    tx = z_safe * torch.clamp(x * rz, -lim_x_neg, lim_x_pos)
    ty = z_safe * torch.clamp(y * rz, -lim_y_neg, lim_y_pos)
    zero = torch.zeros_like(z)
    jac = torch.stack([fx * rz, zero, -fx * tx * rz * rz,
                       zero, fy * rz, -fy * ty * rz * rz], dim=-1).reshape(-1, 2, 3)  # [N, 2, 3]
    cov2d = jac @ cov_c @ jac.transpose(1, 2)  # [N, 2, 2]
    mean2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)  # [N, 2]

    sxx, sxy, syy = cov2d[:, 0, 0], 0.5 * (cov2d[:, 0, 1] + cov2d[:, 1, 0]), cov2d[:, 1, 1]
    det_orig = sxx * syy - sxy * sxy
    sxx_b, syy_b = sxx + eps2d, syy + eps2d
    det = sxx_b * syy_b - sxy * sxy
    valid = valid & (det > 0)
    det_c = det.clamp(min=MIN_DET)
    compensation = torch.sqrt(torch.clamp(det_orig / det_c, min=0.0))
    conic = torch.stack([syy_b / det_c, -sxy / det_c, sxx_b / det_c], dim=-1)  # [N, 3]
    return Projected(
        mean2d=mean2d,
        conic=conic,
        cov_diag=torch.stack([sxx_b, syy_b], dim=-1),
        opacity=gaussians.opacities * compensation,
        compensation=compensation,
        depth=z,
        valid=valid,
    )


MIN_PROJECTION_DEPTH = 1e-6  # m: camera z is clamped to this before the pinhole division


def pinhole(points: Tensor, K: Tensor, R: Tensor, t: Tensor,
            min_depth: float = MIN_PROJECTION_DEPTH) -> tuple[Tensor, Tensor]:
    """The one pinhole projection, for one camera or a batch of them: world points [..., N, 3]
    with K, R [..., 3, 3] and t [..., 3] (leading dims broadcast with the points') -> pixel
    coordinates uv [..., N, 2] (u = fx x / z + cx, pixel centres at integer + 0.5) and
    camera-space z [..., N] (not clamped; clamped to ``min_depth`` only for the division)."""
    cam = (points @ R.transpose(-1, -2)) + t[..., None, :]  # [..., N, 3]
    z = cam[..., 2]  # [..., N]
    z_div = z.clamp(min=min_depth)
    fx, fy = K[..., 0, 0, None], K[..., 1, 1, None]  # [..., 1]
    cx, cy = K[..., 0, 2, None], K[..., 1, 2, None]
    uv = torch.stack([fx * cam[..., 0] / z_div + cx, fy * cam[..., 1] / z_div + cy], dim=-1)
    return uv, z


def project_points(points: Tensor, camera: Camera, min_depth: float = MIN_PROJECTION_DEPTH
                   ) -> tuple[Tensor, Tensor]:
    """`pinhole` with one Camera: world points [..., N, 3] -> uv [..., N, 2], z [..., N]. The
    camera's tensors are cast to the points' dtype and device; gradients flow to ``points``."""
    return pinhole(points, camera.K.to(points), camera.R.to(points), camera.t.to(points),
                   min_depth)
