"""The Gaussian avatar's raw per-Gaussian parameters (METHOD.md section 1).

One isotropic Gaussian per vertex of the subdivided template, opacity 1, no rotation, no
spherical harmonics. Parameters are stored raw and activated at use: exp for the scale, sigmoid
for the colours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor, nn

RGB_CHANNELS = 3
# Smallest distance (metres) used by knn_log_scale, so coincident points give a finite log.
MIN_NEIGHBOUR_DISTANCE = 1e-6
# Clamp for logit inputs, so colours of exactly 0 or 1 give finite raw values.
LOGIT_EPS = 1e-4


def logit(x: Tensor, eps: float = LOGIT_EPS) -> Tensor:
    """Inverse sigmoid of x clamped to [eps, 1 - eps]. Same shape as x."""
    x = x.clamp(eps, 1.0 - eps)
    return torch.log(x / (1.0 - x))


def knn_log_scale(points: Tensor, k: int = 3,
                  min_distance: float = MIN_NEIGHBOUR_DISTANCE) -> Tensor:
    """log sqrt(mean squared distance to the k nearest other points). points [N, 3] -> [N, 1]."""
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"knn_log_scale: points must be [N, 3], got {list(points.shape)}")
    if points.shape[0] <= k:
        raise ValueError(f"knn_log_scale: need more than k={k} points, got {points.shape[0]}")
    array = points.detach().cpu().double().numpy()
    distances, _ = cKDTree(array).query(array, k=k + 1)  # column 0 is the point itself
    mean_squared = np.mean(distances[:, 1:] ** 2, axis=1)
    rms = np.sqrt(np.maximum(mean_squared, min_distance ** 2))
    return torch.from_numpy(np.log(rms)).to(points.dtype).to(points.device)[:, None]


@dataclass
class ActivatedGaussians:
    """Activated canonical attributes of every Gaussian (before skinning)."""

    means: Tensor  # [N, 3] canonical position + mean_offset
    scales: Tensor  # [N, 1] isotropic standard deviation, exp(log_scale)
    opacities: Tensor  # [N] constant 1
    rgb: Tensor  # [N, 3] in (0, 1)
    rgb_aux: Tensor  # [N, 3] in (0, 1)
    seg: Tensor  # [N, S] palette colour in (0, 1)


class GaussianAvatar(nn.Module):
    """Raw per-Gaussian parameters: mean_offset [N, 3] (zeros), log_scale [N, 1], rgb [N, 3],
    rgb_aux [N, 3], seg [N, S]. Before ``initialize_`` the scale is 1 (log 0) and colours are
    0.5 (logit 0)."""

    def __init__(
        self,
        num_gaussians: int,  # one per vertex of the subdivided template
        num_seg_channels: int = 3,  # part-segmentation colour channels (RGB palette)
    ) -> None:
        super().__init__()
        if num_gaussians < 1:
            raise ValueError(f"GaussianAvatar.num_gaussians: expected >= 1, got {num_gaussians}")
        self.num_gaussians = num_gaussians
        self.mean_offset = nn.Parameter(torch.zeros(num_gaussians, 3))
        self.log_scale = nn.Parameter(torch.zeros(num_gaussians, 1))
        self.rgb = nn.Parameter(torch.zeros(num_gaussians, RGB_CHANNELS))
        self.rgb_aux = nn.Parameter(torch.zeros(num_gaussians, RGB_CHANNELS))
        self.seg = nn.Parameter(torch.zeros(num_gaussians, num_seg_channels))

    @torch.no_grad()
    def initialize_(self, log_scale: Tensor | None = None, rgb: Tensor | None = None,
                    rgb_aux: Tensor | None = None, seg: Tensor | None = None) -> None:
        """Copy raw values in (shapes must match the parameters); None leaves one unchanged."""
        for name, value in (("log_scale", log_scale), ("rgb", rgb), ("rgb_aux", rgb_aux),
                            ("seg", seg)):
            if value is None:
                continue
            param = getattr(self, name)
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(f"GaussianAvatar.initialize_: {name} must be "
                                 f"{list(param.shape)}, got {list(value.shape)}")
            if not torch.isfinite(value).all():
                raise ValueError(f"GaussianAvatar.initialize_: {name} has non-finite values")
            param.copy_(value)

    def scales(self) -> Tensor:
        """Isotropic standard deviations [N, 1]."""
        return self.log_scale.exp()

    def activated(self, canonical_positions: Tensor) -> ActivatedGaussians:
        """canonical_positions [N, 3] (the template vertices) -> activated attributes."""
        if canonical_positions.shape != self.mean_offset.shape:
            raise ValueError(f"GaussianAvatar.activated: canonical_positions must be "
                             f"{list(self.mean_offset.shape)}, "
                             f"got {list(canonical_positions.shape)}")
        return ActivatedGaussians(
            means=canonical_positions + self.mean_offset,
            scales=self.scales(),
            opacities=self.mean_offset.new_ones(self.num_gaussians),
            rgb=torch.sigmoid(self.rgb),
            rgb_aux=torch.sigmoid(self.rgb_aux),
            seg=torch.sigmoid(self.seg),
        )
