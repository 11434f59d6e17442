"""``DenseRenderer``: every Gaussian against every pixel, plain autograd. The test oracle.

Same projection (``projection.project``), the same per-pair alpha and cut-offs
(``compositing``) and the same front-to-back order as ``TorchRenderer``, but no footprint logic:
for a chunk of pixels it evaluates all depth-sorted Gaussians, zeroes skipped pairs, computes the
transmittance with ``cumprod`` and terminates where the transmittance after a Gaussian is
``<= 1e-4``. Cost is O(pixels x Gaussians); use it on small scenes.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from persona.render.compositing import (
    ALPHA_MIN,
    MAX_ALPHA,
    POWER_MIN,
    TRANSMITTANCE_MIN,
    gaussian_power,
    split_channels,
    stack_channels,
)
from persona.render.projection import check_inputs, project
from persona.render.types import EPS2D, Camera, ChannelGroup, Gaussians, RenderSettings

DEFAULT_PIXEL_CHUNK = 1024  # pixels evaluated against all Gaussians at once


def composite_dense(mean2d: Tensor, conic: Tensor, opacity: Tensor, values: Tensor,
                    n_geometry: int, pixel_xy: Tensor, max_alpha: float,
                    power_min: float = POWER_MIN) -> Tensor:
    """Depth-sorted Gaussians [M, ...] against pixel centres [P, 2] -> [P, C]."""
    dx = pixel_xy[:, 0:1] - mean2d[None, :, 0]  # [P, M]
    dy = pixel_xy[:, 1:2] - mean2d[None, :, 1]  # [P, M]
    power = gaussian_power(dx, dy, conic[None, :, 0], conic[None, :, 1], conic[None, :, 2])
    alpha = torch.clamp_max(opacity[None, :] * torch.exp(power), max_alpha)  # [P, M]
    keep = (power >= power_min) & (alpha >= ALPHA_MIN)
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
    t_after = torch.cumprod(1 - alpha, dim=1)  # [P, M]
    t_before = torch.cat([torch.ones_like(t_after[:, :1]), t_after[:, :-1]], dim=1)
    weight = alpha * t_before * (t_after.detach() > TRANSMITTANCE_MIN)  # [P, M]
    geo = weight @ values[:, :n_geometry]  # [P, Cg]
    detached = weight.detach() @ values[:, n_geometry:]  # [P, Cd]
    return torch.cat([geo, detached], dim=1)


class DenseRenderer:
    """Reference renderer (every Gaussian x every pixel); see ``persona.render.types.Renderer``."""

    def __init__(self, eps2d: float = EPS2D, max_alpha: float = MAX_ALPHA,
                 pixel_chunk: int = DEFAULT_PIXEL_CHUNK, power_min: float = POWER_MIN) -> None:
        """eps2d: screen-space filter variance (px^2); max_alpha: clamp on alpha;
        pixel_chunk: pixels per chunk (memory ~ pixel_chunk x N x 40 bytes with autograd);
        power_min: the cut on the Gaussian's exponent (3 sigma; -inf keeps every pixel whose
        alpha reaches 1/255, which is what gsplat evaluates)."""
        self.eps2d = eps2d
        self.max_alpha = max_alpha
        self.power_min = power_min
        self.pixel_chunk = pixel_chunk

    def render(self, gaussians: Gaussians, camera: Camera, channels: dict[str, ChannelGroup],
               settings: RenderSettings | None = None) -> dict[str, Tensor]:
        settings = settings or RenderSettings()
        check_inputs(gaussians, camera)
        proj = project(gaussians, camera, self.eps2d)
        table, layout = stack_channels(channels, proj.depth, settings.depth,
                                       gaussians.means.shape[0])
        with torch.no_grad():
            idx = proj.valid.nonzero().squeeze(1)
            idx = idx[torch.sort(proj.depth[idx], stable=True).indices]  # front to back
        dtype, device = table.dtype, table.device
        vv, uu = torch.meshgrid(torch.arange(camera.height, device=device, dtype=dtype),
                                torch.arange(camera.width, device=device, dtype=dtype),
                                indexing="ij")
        pixel_xy = torch.stack([uu.reshape(-1), vv.reshape(-1)], dim=-1) + 0.5  # [H*W, 2]
        mean2d, conic, opacity, values = (proj.mean2d[idx], proj.conic[idx], proj.opacity[idx],
                                          table[idx])
        # With autograd, each chunk is recomputed in the backward pass (checkpointing) so memory
        # stays at one chunk's graph instead of all of them.
        grad = torch.is_grad_enabled() and any(
            t.requires_grad for t in (mean2d, conic, opacity, values))
        parts = []
        for s in range(0, pixel_xy.shape[0], self.pixel_chunk):
            args = (mean2d, conic, opacity, values, layout.n_geometry,
                    pixel_xy[s:s + self.pixel_chunk], self.max_alpha, self.power_min)
            parts.append(checkpoint(composite_dense, *args, use_reentrant=False) if grad
                         else composite_dense(*args))
        return split_channels(torch.cat(parts, dim=0), layout, camera.height, camera.width)
