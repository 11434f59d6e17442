"""``GsplatRenderer``: gsplat 1.5.3's CUDA rasteriser behind the ``Renderer`` interface.

Conventions match ``TorchRenderer``: ``rasterize_mode="antialiased"`` with ``eps2d=0.1``
(Mip-Splatting's screen-space filter with opacity compensation), near 0.01 / far 100 from the
camera, colours precomputed (no SH), every channel group concatenated into one colour tensor.

Passes: at most two ``gsplat.rasterization`` calls per render.
1. geometry attached: the groups with ``geometry_grad=True`` (a zero channel when there are none);
   this pass also gives "alpha".
2. geometry detached (means, scales, quats, opacities detached): the groups with
   ``geometry_grad=False`` plus camera z as one more colour channel, so "depth" = sum w_i z_i with
   detached weights and a differentiable z. Skipped when there is nothing to put in it.

Known differences from ``TorchRenderer`` (see docs/RENDERING.md): gsplat clamps alpha at 0.999
(ours 0.99 by default; pass ``max_alpha=0.999`` to ``TorchRenderer`` to compare), and gsplat does
not zero alpha beyond 3 sigma (it evaluates every pixel of the tiles a Gaussian's opacity-aware
3.33-sigma box touches), so Gaussians with opacity above ~0.35 differ slightly at their rims.

gsplat 1.5.3 from PyPI compiles its CUDA kernels at first use (minutes); set
``TORCH_CUDA_ARCH_LIST`` to the one target architecture (e.g. "9.0" for H100/H200) to cut that.
"""

from __future__ import annotations

import torch
from torch import Tensor

from persona.render.projection import check_inputs
from persona.render.types import EPS2D, Camera, ChannelGroup, Gaussians, RenderSettings

TILE_SIZE = 16  # gsplat's tile size (pixels)


def _identity_quats(n: int, like: Tensor) -> Tensor:
    q = torch.zeros(n, 4, dtype=like.dtype, device=like.device)
    q[:, 0] = 1.0
    return q


class GsplatRenderer:
    """gsplat CUDA backend; see ``persona.render.types.Renderer``."""

    def __init__(self, eps2d: float = EPS2D, tile_size: int = TILE_SIZE) -> None:
        """eps2d: screen-space filter variance (px^2); tile_size: gsplat tile edge (px)."""
        from gsplat import rasterization  # noqa: F401  (fail early when gsplat is missing)

        self.eps2d = eps2d
        self.tile_size = tile_size

    def _rasterize(self, means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor,
                   colors: Tensor, camera: Camera) -> tuple[Tensor, Tensor]:
        from gsplat import rasterization

        # gsplat's kernels take float32: under trainer.precision 16-mixed / bf16-mixed the
        # inputs may arrive in half precision, so they are cast and autocast is off here
        means, quats, scales, opacities, colors = (
            x.float() for x in (means, quats, scales, opacities, colors))
        with torch.autocast(means.device.type, enabled=False):
            return self._rasterize_float32(means, quats, scales, opacities, colors, camera,
                                           rasterization)

    def _rasterize_float32(self, means: Tensor, quats: Tensor, scales: Tensor,
                           opacities: Tensor, colors: Tensor, camera: Camera, rasterization
                           ) -> tuple[Tensor, Tensor]:
        viewmat = torch.eye(4, dtype=means.dtype, device=means.device)
        viewmat[:3, :3] = camera.R.to(means)
        viewmat[:3, 3] = camera.t.to(means)
        try:
            image, alpha, _ = rasterization(
                means, quats, scales, opacities, colors, viewmat[None], camera.K.to(means)[None],
                camera.width, camera.height, near_plane=camera.near, far_plane=camera.far,
                eps2d=self.eps2d, sh_degree=None, packed=False, tile_size=self.tile_size,
                render_mode="RGB", rasterize_mode="antialiased", channel_chunk=colors.shape[1],
            )
        except RuntimeError as error:  # gsplat's kernels say "CUDAGuardImpl ... DeviceType: cpu"
            if means.device.type == "cuda":
                raise
            raise ValueError(
                f"GsplatRenderer: gsplat's kernels run on CUDA only, but the Gaussians are on "
                f"{means.device}; move the avatar to the GPU (--device cuda; after trainer.fit, "
                f"which moves the module back to the CPU, call .to('cuda')) or use renderer "
                f"'torch'") from error
        return image[0], alpha[0]  # [H, W, C], [H, W, 1]

    def render(self, gaussians: Gaussians, camera: Camera, channels: dict[str, ChannelGroup],
               settings: RenderSettings | None = None) -> dict[str, Tensor]:
        settings = settings or RenderSettings()
        check_inputs(gaussians, camera)
        for reserved in ("alpha", "depth"):
            if reserved in channels:
                raise ValueError(f"channel group name {reserved!r} is reserved")
        means, scales, opac = gaussians.means, gaussians.scales, gaussians.opacities
        n = means.shape[0]
        quats = gaussians.quats if gaussians.quats is not None else _identity_quats(n, means)
        camera = camera.to(means.device)
        out: dict[str, Tensor] = {}

        attached = {k: g for k, g in channels.items() if g.geometry_grad}
        cols = [g.values.to(means.dtype) for g in attached.values()]
        table = torch.cat(cols, 1) if cols else means.new_zeros(n, 1)  # [N, Cg]
        image, alpha = self._rasterize(means, quats, scales, opac, table, camera)
        start = 0
        for name, group in attached.items():
            out[name] = image[..., start:start + group.values.shape[1]]
            start += group.values.shape[1]
        out["alpha"] = alpha

        detached = {k: g for k, g in channels.items() if not g.geometry_grad}
        cols = [g.values.to(means.dtype) for g in detached.values()]
        if settings.depth:
            z = means @ camera.R.to(means)[2] + camera.t.to(means)[2]  # [N] camera z
            cols.append(z[:, None])
        if cols:
            image2, _ = self._rasterize(means.detach(), quats.detach(), scales.detach(),
                                        opac.detach(), torch.cat(cols, 1), camera)
            start = 0
            for name, group in detached.items():
                out[name] = image2[..., start:start + group.values.shape[1]]
                start += group.values.shape[1]
            if settings.depth:
                out["depth"] = image2[..., start:start + 1]
        return {k: out[k] for k in list(channels) + ["alpha"] + (["depth"] if settings.depth
                                                                  else [])}
