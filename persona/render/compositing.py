"""Conventions every PyTorch backend shares: the per-pixel alpha of a Gaussian, the cut-offs and
the layout of the stacked channel table.

Per (Gaussian, pixel centre) pair: ``power = -0.5 (a dx^2 + c dy^2) - b dx dy`` with
``dx = u + 0.5 - mean_u`` (pixel centres at +0.5), ``alpha = min(max_alpha, opacity exp(power))``.
A pair is skipped when ``power < -4.5`` (beyond 3 sigma: alpha is set to 0 there so that every
formulation, dense, pairs or tiles, agrees) or ``alpha < 1/255``. Front to back, a pixel stops at
the first Gaussian whose transmittance after it would be ``<= 1e-4`` (gsplat's rule; that Gaussian
is excluded).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from persona.render.types import ChannelGroup

ALPHA_MIN = 1.0 / 255.0  # pairs with a smaller alpha are skipped (gsplat ALPHA_THRESHOLD)
TRANSMITTANCE_MIN = 1e-4  # a pixel terminates before the Gaussian that brings T to <= this
SIGMA_CUTOFF = 3.0  # alpha is 0 beyond this Mahalanobis distance
POWER_MIN = -0.5 * SIGMA_CUTOFF**2  # the same cut-off on the exponent
MAX_ALPHA = 0.99  # Mip-Splatting / 3DGS clamp on alpha (gsplat 1.5.3 uses 0.999)


def gaussian_power(dx: Tensor, dy: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Exponent of the 2D Gaussian at offsets (dx, dy) from its mean; conic (a, b, c)."""
    return -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy


@dataclass
class ChannelLayout:
    """Where each output lives in the stacked value table [N, C_total].

    Columns ``[0, n_geometry)`` are composited with differentiable weights (the geometry-gradient
    groups, then alpha as a column of ones); the rest with detached weights (groups with
    ``geometry_grad=False``, then depth).
    """

    slices: dict[str, tuple[int, int]]  # output name -> (start, stop) column
    n_geometry: int  # number of leading columns whose weights carry geometry gradient
    n_total: int


def stack_channels(
    channels: dict[str, ChannelGroup], depth: Tensor, with_depth: bool, n: int
) -> tuple[Tensor, ChannelLayout]:
    """Stack every group's values, a ones column (alpha) and depth into one table [N, C_total]."""
    for reserved in ("alpha", "depth"):
        if reserved in channels:
            raise ValueError(f"channel group name {reserved!r} is reserved for the renderer output")
    columns: list[Tensor] = []
    slices: dict[str, tuple[int, int]] = {}
    start = 0
    ordered = [(k, g) for k, g in channels.items() if g.geometry_grad]
    detached = [(k, g) for k, g in channels.items() if not g.geometry_grad]
    for name, group in ordered + [("alpha", None)] + detached:
        if group is None:
            vals = torch.ones(n, 1, dtype=depth.dtype, device=depth.device)  # [N, 1]
        else:
            vals = group.values
            if vals.dim() != 2 or vals.shape[0] != n:
                raise ValueError(
                    f"ChannelGroup {name!r}.values must be [{n}, C], got {tuple(vals.shape)}")
            vals = vals.to(depth.dtype)
        slices[name] = (start, start + vals.shape[1])
        start += vals.shape[1]
        columns.append(vals)
    n_geometry = slices["alpha"][1]
    if with_depth:
        slices["depth"] = (start, start + 1)
        start += 1
        columns.append(depth[:, None])
    return torch.cat(columns, dim=1), ChannelLayout(slices, n_geometry, start)


def split_channels(image: Tensor, layout: ChannelLayout, height: int, width: int
                   ) -> dict[str, Tensor]:
    """Stacked image [H*W, C_total] -> {name: [H, W, C]}."""
    out = image.reshape(height, width, layout.n_total)
    return {name: out[..., s:e] for name, (s, e) in layout.slices.items()}
