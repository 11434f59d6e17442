"""The renderer contract: a pinhole camera, the Gaussians to draw and the channel groups.

Every backend (``TorchRenderer`` on any device, ``GsplatRenderer`` on CUDA, the dense reference)
implements ``Renderer.render`` with exactly these conventions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

NEAR_PLANE = 0.01  # metres; Gaussians closer than this (camera z) are culled (METHOD.md section 4)
FAR_PLANE = 100.0  # metres; Gaussians farther than this are culled
EPS2D = 0.1  # Mip-Splatting screen-space filter variance added to the 2D covariance (pixels^2)


@dataclass
class Camera:
    """Pinhole camera. World to camera: x_cam = R @ x_world + t; OpenCV axes (x right, y down,
    z forward); pixel (u, v) = (fx x/z + cx, fy y/z + cy), pixel centres at integer + 0.5."""

    K: Tensor  # [3, 3] intrinsics (fx, fy, cx, cy)
    R: Tensor  # [3, 3] world-to-camera rotation
    t: Tensor  # [3] world-to-camera translation
    width: int
    height: int
    near: float = NEAR_PLANE
    far: float = FAR_PLANE

    def to(self, device: torch.device | str) -> Camera:
        return Camera(self.K.to(device), self.R.to(device), self.t.to(device),
                      self.width, self.height, self.near, self.far)


@dataclass
class Gaussians:
    """Activated Gaussian parameters in world space."""

    means: Tensor  # [N, 3]
    scales: Tensor  # [N, 3] standard deviations (an isotropic scale is expanded to 3 columns)
    opacities: Tensor  # [N] in [0, 1]
    quats: Tensor | None = None  # [N, 4] unit quaternions (w, x, y, z); None = identity rotation


@dataclass
class ChannelGroup:
    """Per-Gaussian values composited into one image.

    ``geometry_grad=False`` composites with detached blending weights: the values still get
    gradient but means, scales, rotations and opacities receive none through this group.
    """

    values: Tensor  # [N, C]
    geometry_grad: bool = True


@dataclass
class RenderSettings:
    """Switches shared by every backend."""

    depth: bool = True  # also output "depth": expected camera z, blending weights detached
    extra: dict = field(default_factory=dict)  # backend-specific knobs (tile size, budget, ...)


class Renderer(Protocol):
    """One call renders every requested channel group plus alpha in a single pass.

    Returns a dict with one entry per channel group name, each [H, W, C] (composited on black:
    sum_i w_i c_i), plus "alpha" [H, W, 1] (geometry gradient on) and, when settings.depth,
    "depth" [H, W, 1] (sum_i w_i z_i with w detached, z differentiable).
    """

    def render(
        self,
        gaussians: Gaussians,
        camera: Camera,
        channels: dict[str, ChannelGroup],
        settings: RenderSettings | None = None,
    ) -> dict[str, Tensor]: ...
