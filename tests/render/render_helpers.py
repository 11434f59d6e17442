"""Scenes shared by the renderer tests."""

from __future__ import annotations

import torch

from persona.render.types import Camera, ChannelGroup, Gaussians


def make_camera(width: int, height: int, dtype: torch.dtype = torch.float32) -> Camera:
    """A camera at the origin looking down +z with an off-centre principal point."""
    K = torch.tensor([[1.1 * width, 0.0, 0.47 * width], [0.0, 1.05 * width, 0.53 * height],
                      [0.0, 0.0, 1.0]], dtype=dtype)
    return Camera(K, torch.eye(3, dtype=dtype), torch.zeros(3, dtype=dtype), width, height)


def make_scene(n: int, seed: int, dtype: torch.dtype = torch.float32
               ) -> tuple[Gaussians, dict[str, torch.Tensor]]:
    """Random anisotropic Gaussians with every hard case: behind the camera, inside the near
    plane, off-screen, exact duplicates at equal depth, sub-pixel, large, opacity near 1."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, dtype=dtype)

    means = (rnd(n, 3) - 0.5) * torch.tensor([1.6, 1.4, 1.0], dtype=dtype)
    means[:, 2] += 2.5
    scales = 0.01 + 0.12 * rnd(n, 3)
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    opacities = 0.05 + 0.94 * rnd(n)
    k = n // 10
    means[0:k, 2] = -1.0 - rnd(k)  # behind the camera
    means[k, 2] = 0.005  # inside the near plane
    means[k + 1:2 * k, 0] = 5.0 + rnd(k - 1)  # off-screen to the right
    means[2 * k:3 * k] = means[3 * k:4 * k]  # exact duplicates: equal depth, same place
    means[4 * k:5 * k, 2] = means[5 * k, 2]  # equal depth, different places
    scales[6 * k:7 * k] = 1e-4 + 1e-4 * rnd(k, 3)  # sub-pixel
    scales[7 * k] = 0.4  # large
    opacities[8 * k:9 * k] = 1.0  # with a large footprint, alpha is clamped at max_alpha
    scales[8 * k:9 * k] = 0.25
    colors = rnd(n, 3)
    aux = rnd(n, 2)
    return Gaussians(means, scales, opacities, quats), {"rgb": colors, "aux": aux}


def leaves(gaussians: Gaussians, values: dict[str, torch.Tensor], detached: tuple[str, ...] = ()
           ) -> tuple[Gaussians, dict[str, ChannelGroup], list[torch.Tensor]]:
    """Fresh leaf tensors requiring grad; returns (gaussians, channels, [leaves])."""
    g = Gaussians(*(t.detach().clone().requires_grad_(True) for t in
                    (gaussians.means, gaussians.scales, gaussians.opacities, gaussians.quats)))
    ch = {k: ChannelGroup(v.detach().clone().requires_grad_(True), k not in detached)
          for k, v in values.items()}
    return g, ch, [g.means, g.scales, g.opacities, g.quats] + [c.values for c in ch.values()]


def weighted_loss(out: dict[str, torch.Tensor], seed: int = 7) -> torch.Tensor:
    """Sum of every output times fixed random weights (exercises every channel's gradient)."""
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for name in sorted(out):
        v = out[name]
        total = total + (v * torch.rand(v.shape, generator=g, dtype=v.dtype)).sum()
    return total
