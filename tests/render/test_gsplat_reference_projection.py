"""Our EWA projection against gsplat 1.5.3's own pure-PyTorch reference, on the CPU.

``gsplat/cuda/_torch_impl.py`` is the reference gsplat's CUDA projection kernel is tested
against. It runs without CUDA, so the conventions ``GsplatRenderer`` relies on (world-to-camera
with R, t; K with an off-centre principal point; the Jacobian clamped to 1.3 x the field of view;
Mip-Splatting's eps2d blur and opacity compensation; culling planes) are checked here on every
machine, values and gradients. What stays for a CUDA machine is the compositing kernel
(tests/render/test_gsplat_renderer.py, marked ``gpu``).
"""

from __future__ import annotations

import pytest
import torch
from render_helpers import make_camera, make_scene

from persona.render.projection import project
from persona.render.types import EPS2D, Camera, Gaussians

gsplat_torch = pytest.importorskip("gsplat.cuda._torch_impl")


def _gsplat_project(gaussians: Gaussians, camera: Camera) -> dict[str, torch.Tensor]:
    """gsplat's reference: covariance, then the fully fused projection (one camera)."""
    covars, _ = gsplat_torch._quat_scale_to_covar_preci(
        gaussians.quats, gaussians.scales, compute_covar=True, compute_preci=False, triu=False)
    viewmat = torch.eye(4, dtype=gaussians.means.dtype)
    viewmat[:3, :3] = camera.R
    viewmat[:3, 3] = camera.t
    radii, means2d, depths, conics, compensations = gsplat_torch._fully_fused_projection(
        gaussians.means, covars, viewmat[None], camera.K[None], camera.width, camera.height,
        eps2d=EPS2D, near_plane=camera.near, far_plane=camera.far, calc_compensations=True)
    return {"radii": radii[0], "mean2d": means2d[0], "depth": depths[0], "conic": conics[0],
            "compensation": compensations[0]}


def _rotated_camera(width: int, height: int, dtype: torch.dtype) -> Camera:
    camera = make_camera(width, height, dtype)
    a, b = torch.tensor(0.3, dtype=dtype), torch.tensor(-0.2, dtype=dtype)
    ry = torch.tensor([[a.cos(), 0, a.sin()], [0, 1, 0], [-a.sin(), 0, a.cos()]], dtype=dtype)
    rx = torch.tensor([[1, 0, 0], [0, b.cos(), -b.sin()], [0, b.sin(), b.cos()]], dtype=dtype)
    camera.R = rx @ ry
    camera.t = torch.tensor([0.15, -0.1, 0.4], dtype=dtype)
    return camera


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_projection_equals_gsplat_reference(seed: int) -> None:
    """mean2d, conic, compensation and depth equal gsplat's to float64 rounding wherever both
    keep the Gaussian, and both cull the same ones (behind the camera, inside the near plane)."""
    dtype = torch.float64
    gaussians, _ = make_scene(300, seed, dtype)
    camera = _rotated_camera(96, 80, dtype)
    ours = project(gaussians, camera)
    ref = _gsplat_project(gaussians, camera)

    # gsplat also zeroes the radius of on-plane-valid Gaussians whose 3.33-sigma box misses the
    # image (a tile-assignment shortcut); depth culling is what both must agree on.
    depth_ok = (ref["depth"] > camera.near) & (ref["depth"] < camera.far)
    assert torch.equal(ours.valid, depth_ok)
    assert (~ours.valid).sum() >= 30  # the scene has culled Gaussians to agree on
    assert ((ref["radii"] == 0).all(-1) & ours.valid).any()  # and off-screen ones gsplat drops
    v = ours.valid
    torch.testing.assert_close(ours.depth, ref["depth"], rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.mean2d[v], ref["mean2d"][v], rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(ours.conic[v], ref["conic"][v], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours.compensation[v], ref["compensation"][v], rtol=1e-10,
                               atol=1e-12)
    torch.testing.assert_close(ours.opacity[v], gaussians.opacities[v] * ref["compensation"][v],
                               rtol=1e-10, atol=1e-12)


def test_projection_gradients_equal_gsplat_reference() -> None:
    """The same scalar of the projected quantities has the same gradient with respect to means,
    scales, quaternions and opacities through both (float64)."""
    dtype = torch.float64
    base, _ = make_scene(200, 5, dtype)
    camera = _rotated_camera(64, 48, dtype)
    keep = project(base, camera).valid
    g = torch.Generator().manual_seed(3)
    w_mean, w_conic, w_comp = (torch.rand(int(keep.sum()), c, generator=g, dtype=dtype)
                               for c in (2, 3, 1))

    def grads(fn):
        leaves = [t.detach().clone().requires_grad_(True) for t in
                  (base.means, base.scales, base.opacities, base.quats)]
        gaussians = Gaussians(*leaves)
        mean2d, conic, opacity = fn(gaussians)
        loss = ((mean2d[keep] * w_mean).sum() + (conic[keep] * w_conic).sum()
                + (opacity[keep] * w_comp[:, 0]).sum())
        loss.backward()
        return [t.grad for t in leaves]

    def ours(gaussians):
        p = project(gaussians, camera)
        return p.mean2d, p.conic, p.opacity

    def reference(gaussians):
        r = _gsplat_project(gaussians, camera)
        return r["mean2d"], r["conic"], gaussians.opacities * r["compensation"]

    for name, a, b in zip(["means", "scales", "opacities", "quats"], grads(ours),
                          grads(reference), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10 * b.abs().max().item(), msg=name)
        assert b.abs().max() > 0, name
