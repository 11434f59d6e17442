"""``TorchRenderer``: the pure-PyTorch differentiable Gaussian renderer (CPU or any device).

One call projects the Gaussians (``projection.project``, autograd), culls and depth-sorts them,
stacks every channel group with alpha and depth into one value table
(``compositing.stack_channels``) and composites it in a single pass with the pairs rasteriser
(``pairs.rasterize_pairs``, custom autograd). Groups with ``geometry_grad=False`` sit in columns
whose blending weights are treated as constants in the backward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from persona.render.compositing import ALPHA_MIN, MAX_ALPHA, split_channels, stack_channels
from persona.render.pairs import rasterize_pairs
from persona.render.projection import Projected, check_inputs, project
from persona.render.types import EPS2D, Camera, ChannelGroup, Gaussians, RenderSettings

DEFAULT_MAX_PAIRS = 8_000_000  # enumerated pairs per row band (bounds peak memory, ~0.5 GB)


def visible_order(proj: Projected, width: int, height: int) -> Tensor:
    """Indices [M] of Gaussians that can touch the image, sorted front to back (stable)."""
    with torch.no_grad():
        # Conservative 3-sigma box test against the image (the rasteriser does the exact one).
        half = 3.0 * torch.sqrt(proj.cov_diag.clamp(min=0))  # [N, 2]
        lo, hi = proj.mean2d - half, proj.mean2d + half
        on_screen = (hi[:, 0] > 0) & (lo[:, 0] < width) & (hi[:, 1] > 0) & (lo[:, 1] < height)
        keep = proj.valid & on_screen & (proj.opacity >= ALPHA_MIN)
        idx = keep.nonzero().squeeze(1)  # [M]
        order = torch.sort(proj.depth[idx], stable=True).indices
        return idx[order]


class TorchRenderer:
    """Differentiable renderer in pure PyTorch; see ``persona.render.types.Renderer``."""

    def __init__(self, eps2d: float = EPS2D, max_alpha: float = MAX_ALPHA,
                 max_pairs: int = DEFAULT_MAX_PAIRS, sparse: bool | None = None) -> None:
        """eps2d: screen-space filter variance (px^2); max_alpha: clamp on a pair's alpha;
        max_pairs: enumerated (Gaussian, pixel) pairs per row band (memory bound);
        sparse: composite with sparse CSR products (None: on CPU/CUDA) or gather + index_add."""
        self.eps2d = eps2d
        self.max_alpha = max_alpha
        self.max_pairs = max_pairs
        self.sparse = sparse

    def render(self, gaussians: Gaussians, camera: Camera, channels: dict[str, ChannelGroup],
               settings: RenderSettings | None = None) -> dict[str, Tensor]:
        settings = settings or RenderSettings()
        check_inputs(gaussians, camera)
        max_pairs = int(settings.extra.get("max_pairs", self.max_pairs))
        proj = project(gaussians, camera, self.eps2d)
        table, layout = stack_channels(channels, proj.depth, settings.depth,
                                       gaussians.means.shape[0])  # [N, C]
        idx = visible_order(proj, camera.width, camera.height)  # [M]
        image = rasterize_pairs(proj.mean2d[idx], proj.conic[idx], proj.cov_diag[idx],
                                proj.opacity[idx], table[idx], layout.n_geometry,
                                camera.height, camera.width, self.max_alpha, max_pairs,
                                self.sparse)
        return split_channels(image, layout, camera.height, camera.width)
