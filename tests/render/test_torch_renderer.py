"""TorchRenderer (pairs) against the dense oracle, gradcheck, the geometry switch, known answers."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from render_helpers import leaves, make_camera, make_scene, weighted_loss

from persona.render import make_renderer
from persona.render.dense import DenseRenderer
from persona.render.projection import project
from persona.render.torch_renderer import TorchRenderer
from persona.render.types import Camera, ChannelGroup, Gaussians, RenderSettings

IMAGE_ATOL = 1e-5  # max abs difference of images (the bar)
GRAD_RTOL = 1e-4  # gradient difference relative to the largest gradient entry of that tensor
NAMES = ["means", "scales", "opacities", "quats", "rgb", "aux"]


def render_and_grad(renderer, gaussians, values, camera, detached=("aux",), settings=None):
    g, ch, params = leaves(gaussians, values, detached)
    out = renderer.render(g, camera, ch, settings)
    weighted_loss(out).backward()
    return out, [p.grad for p in params]


def assert_grads_close(got: list[torch.Tensor], ref: list[torch.Tensor], rtol: float) -> None:
    for name, a, b in zip(NAMES, got, ref, strict=True):
        scale = b.abs().max().clamp(min=1e-12)
        err = ((a - b).abs().max() / scale).item()
        assert err <= rtol, f"gradient of {name}: relative error {err:.2e} > {rtol:.0e}"


@pytest.mark.parametrize("seed,size", [(0, (40, 56)), (1, (33, 47)), (2, (64, 64))])
def test_pairs_match_dense_images_and_gradients(seed: int, size: tuple[int, int]) -> None:
    gaussians, values = make_scene(120, seed)
    camera = make_camera(size[1], size[0])
    out_fast, grad_fast = render_and_grad(TorchRenderer(), gaussians, values, camera)
    out_dense, grad_dense = render_and_grad(DenseRenderer(), gaussians, values, camera)
    assert set(out_fast) == {"rgb", "aux", "alpha", "depth"}
    for name in out_dense:
        assert out_fast[name].shape == (size[0], size[1], out_dense[name].shape[-1])
        assert (out_fast[name] - out_dense[name]).abs().max().item() <= IMAGE_ATOL, name
    assert out_dense["alpha"].max() > 0.9  # the scene covers pixels (the test can fail)
    assert_grads_close(grad_fast, grad_dense, GRAD_RTOL)


def test_row_bands_equal_single_pass() -> None:
    gaussians, values = make_scene(150, 3)
    camera = make_camera(48, 40)
    out_one, grad_one = render_and_grad(TorchRenderer(), gaussians, values, camera)
    out_band, grad_band = render_and_grad(TorchRenderer(max_pairs=300), gaussians, values, camera)
    for name in out_one:
        torch.testing.assert_close(out_band[name], out_one[name], atol=1e-6, rtol=0)
    assert_grads_close(grad_band, grad_one, 1e-5)


def test_index_add_path_equals_sparse_path() -> None:
    """The fallback for devices without sparse CSR support gives the same result."""
    gaussians, values = make_scene(150, 10)
    camera = make_camera(48, 40)
    out_sp, grad_sp = render_and_grad(TorchRenderer(sparse=True), gaussians, values, camera)
    out_ia, grad_ia = render_and_grad(TorchRenderer(sparse=False), gaussians, values, camera)
    for name in out_sp:
        torch.testing.assert_close(out_ia[name], out_sp[name], atol=1e-6, rtol=0)
    assert_grads_close(grad_ia, grad_sp, 1e-5)


def test_gradcheck_float64_tiny_scene() -> None:
    camera = make_camera(12, 10, torch.float64)
    means = torch.tensor([[0.05, 0.0, 2.0], [-0.1, 0.05, 2.2], [0.08, -0.06, 1.8]],
                         dtype=torch.float64)
    scales = torch.tensor([[0.10, 0.07, 0.05], [0.12, 0.12, 0.12], [0.05, 0.09, 0.06]],
                          dtype=torch.float64)
    opacities = torch.tensor([0.7, 0.5, 0.6], dtype=torch.float64)
    quats = torch.tensor([[0.9, 0.1, 0.2, 0.3], [1.0, 0.0, 0.0, 0.0], [0.5, -0.4, 0.3, 0.6]],
                         dtype=torch.float64)
    colors = torch.tensor([[0.2, 0.5], [0.9, 0.1], [0.4, 0.7]], dtype=torch.float64)
    aux = torch.tensor([[0.3], [0.6], [0.2]], dtype=torch.float64)
    for renderer in (TorchRenderer(), DenseRenderer()):
        def geometry_fn(m, s, o, q, c, renderer=renderer):
            # Only outputs whose weights carry geometry gradient have the true derivative.
            out = renderer.render(Gaussians(m, s, o, q), camera,
                                  {"rgb": ChannelGroup(c), "aux": ChannelGroup(aux, False)})
            return out["rgb"], out["alpha"]

        def values_fn(x, renderer=renderer):
            out = renderer.render(Gaussians(means, scales, opacities, quats), camera,
                                  {"rgb": ChannelGroup(colors), "aux": ChannelGroup(x, False)})
            return out["aux"]

        inputs = [t.clone().requires_grad_(True)
                  for t in (means, scales, opacities, quats, colors)]
        assert renderer.render(Gaussians(*inputs[:4]), camera, {})["alpha"].max() > 0.5
        assert torch.autograd.gradcheck(geometry_fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4,
                                            fast_mode=True)
        assert torch.autograd.gradcheck(values_fn, [aux.clone().requires_grad_(True)],
                                            fast_mode=True)


@pytest.mark.parametrize("renderer", [TorchRenderer(), DenseRenderer()],
                         ids=["torch", "dense"])
def test_geometry_switch(renderer) -> None:
    """geometry_grad=False: geometry gradients equal those of a render without that group."""
    gaussians, values = make_scene(100, 4)
    camera = make_camera(40, 32)
    g1, ch1, p1 = leaves(gaussians, values, detached=("aux",))
    out1 = renderer.render(g1, camera, ch1)
    (weighted_loss({k: out1[k] for k in ("rgb", "alpha", "depth")})
     + (out1["aux"] * 3.0).sum()).backward()
    g2, ch2, p2 = leaves(gaussians, {"rgb": values["rgb"]})
    out2 = renderer.render(g2, camera, ch2)
    weighted_loss({k: out2[k] for k in ("rgb", "alpha", "depth")}).backward()
    for name, a, b in zip(NAMES[:4], p1[:4], p2[:4], strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=name)
    assert p1[5].grad.abs().sum() > 0  # the detached group's values still learn
    # Control: with the switch on, the extra group changes the geometry gradients.
    g3, ch3, p3 = leaves(gaussians, values)
    out3 = renderer.render(g3, camera, ch3)
    (weighted_loss({k: out3[k] for k in ("rgb", "alpha", "depth")})
     + (out3["aux"] * 3.0).sum()).backward()
    assert (p3[0].grad - p2[0].grad).abs().max() > 1e-3


def test_single_gaussian_known_answers() -> None:
    """Centre position, compensation factor and the alpha at the centre pixel."""
    f, cx, cy, w, h = 50.0, 15.5, 11.0, 31, 23
    K = torch.tensor([[f, 0, cx], [0, f, cy], [0, 0, 1.0]])
    camera = Camera(K, torch.eye(3), torch.tensor([0.1, -0.2, 1.0]), w, h)
    world = torch.tensor([[0.3, 0.4, 2.0]])
    cam_xyz = world[0] + camera.t  # R = I
    u = f * cam_xyz[0] / cam_xyz[2] + cx
    v = f * cam_xyz[1] / cam_xyz[2] + cy
    s, o = 0.04, 0.8
    g = Gaussians(world, torch.full((1, 3), s), torch.tensor([o]), None)
    proj = project(g, camera)
    torch.testing.assert_close(proj.mean2d[0], torch.stack([u, v]))
    # Isotropic at the image centre line: J = f/z I (x/z and y/z are inside the clamp).
    jx = f / cam_xyz[2]
    sxx = (jx * s) ** 2 + (f * cam_xyz[0] / cam_xyz[2] ** 2 * s) ** 2
    syy = (jx * s) ** 2 + (f * cam_xyz[1] / cam_xyz[2] ** 2 * s) ** 2
    sxy = (f * cam_xyz[0] / cam_xyz[2] ** 2) * (f * cam_xyz[1] / cam_xyz[2] ** 2) * s * s
    det0 = sxx * syy - sxy * sxy
    det1 = (sxx + 0.1) * (syy + 0.1) - sxy * sxy
    torch.testing.assert_close(proj.compensation[0], torch.sqrt(det0 / det1))
    # Put the Gaussian exactly on a pixel centre: alpha there = o * compensation.
    target_u, target_v = 20.5, 9.5
    cam_z = 2.0
    world_c = torch.tensor([[(target_u - cx) * cam_z / f - 0.1, (target_v - cy) * cam_z / f + 0.2,
                             cam_z - 1.0]])
    g2 = Gaussians(world_c, torch.full((1, 3), s), torch.tensor([o]), None)
    comp = project(g2, camera).compensation[0]
    for renderer in (TorchRenderer(), DenseRenderer()):
        out = renderer.render(g2, camera, {"rgb": ChannelGroup(torch.tensor([[1.0, 0.5, 0.25]]))})
        a = out["alpha"][int(target_v), int(target_u), 0]
        torch.testing.assert_close(a, o * comp)
        torch.testing.assert_close(out["rgb"][int(target_v), int(target_u)],
                                   a * torch.tensor([1.0, 0.5, 0.25]))
        torch.testing.assert_close(out["depth"][int(target_v), int(target_u), 0], a * cam_z)
        assert out["alpha"].argmax().item() == int(target_v) * w + int(target_u)


def test_culled_scene_is_black_and_differentiable() -> None:
    g = Gaussians(torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, 200.0]], requires_grad=True),
                  torch.full((2, 3), 0.1), torch.tensor([0.5, 0.5]), None)
    colors = torch.rand(2, 3, requires_grad=True)
    out = TorchRenderer().render(g, make_camera(16, 12), {"rgb": ChannelGroup(colors)})
    assert all(v.abs().max() == 0 for v in out.values())
    sum(v.sum() for v in out.values()).backward()
    assert colors.grad.abs().max() == 0


def test_depth_off_and_alpha_in_range() -> None:
    gaussians, values = make_scene(80, 6)
    out = TorchRenderer().render(gaussians, make_camera(32, 24),
                                 {"rgb": ChannelGroup(values["rgb"])}, RenderSettings(depth=False))
    assert set(out) == {"rgb", "alpha"}
    assert out["alpha"].min() >= 0 and out["alpha"].max() <= 1 - 1e-4 + 1e-6
    assert out["alpha"].max() > 0.9


def test_bad_inputs_name_the_field() -> None:
    camera = make_camera(8, 8)
    g = Gaussians(torch.zeros(3, 3), torch.ones(3, 2), torch.ones(3), None)
    with pytest.raises(ValueError, match="scales"):
        TorchRenderer().render(g, camera, {})
    g = Gaussians(torch.zeros(3, 3), torch.ones(3, 3), torch.ones(3), None)
    with pytest.raises(ValueError, match="'rgb'.values"):
        TorchRenderer().render(g, camera, {"rgb": ChannelGroup(torch.ones(2, 3))})
    with pytest.raises(ValueError, match="reserved"):
        TorchRenderer().render(g, camera, {"alpha": ChannelGroup(torch.ones(3, 1))})


def _expected_auto_renderer() -> type:
    """"auto": gsplat's renderer on a CUDA host where gsplat is installed, else the torch one."""
    if torch.cuda.is_available() and importlib.util.find_spec("gsplat") is not None:
        from persona.render.gsplat_renderer import GsplatRenderer

        return GsplatRenderer
    return TorchRenderer


def test_make_renderer() -> None:
    assert isinstance(make_renderer("torch"), TorchRenderer)
    assert isinstance(make_renderer("dense", pixel_chunk=64), DenseRenderer)
    assert type(make_renderer("auto")) is _expected_auto_renderer()
    with pytest.raises(ValueError, match="unknown renderer"):
        make_renderer("opengl")


def test_isotropic_without_quats_matches_identity_quats() -> None:
    gaussians, values = make_scene(60, 8)
    iso = Gaussians(gaussians.means, gaussians.scales[:, :1].expand(-1, 3).contiguous(),
                    gaussians.opacities, None)
    ident = Gaussians(iso.means, iso.scales, iso.opacities,
                      torch.tensor([[2.0, 0.0, 0.0, 0.0]]).expand(60, 4))
    cam = make_camera(32, 24)
    ch = {"rgb": ChannelGroup(values["rgb"])}
    a = TorchRenderer().render(iso, cam, ch)["rgb"]
    b = TorchRenderer().render(ident, cam, ch)["rgb"]
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert math.isfinite(a.sum().item())


def test_dense_without_the_cut_keeps_the_rim_gsplat_keeps() -> None:
    """DenseRenderer(power_min=-inf) (the reference gsplat's kernel matched to 1e-6 on an H200)
    differs from the default only on the rim where the 3-sigma cut zeroes alpha: there its alpha
    is the Gaussian's own value exp(power) * opacity, between 1/255 and exp(-4.5)."""
    from persona.render.compositing import ALPHA_MIN, POWER_MIN, gaussian_power

    f, w, h = 40.0, 41, 41
    camera = Camera(torch.tensor([[f, 0, 20.5], [0, f, 20.5], [0, 0, 1.0]]), torch.eye(3),
                    torch.zeros(3), w, h)
    g = Gaussians(torch.tensor([[0.0, 0.0, 1.0]]), torch.full((1, 3), 0.06), torch.ones(1), None)
    channels = {"rgb": ChannelGroup(torch.ones(1, 3))}
    cut = DenseRenderer(max_alpha=0.999).render(g, camera, channels)["alpha"][..., 0]
    uncut = DenseRenderer(max_alpha=0.999, power_min=float("-inf")).render(
        g, camera, channels)["alpha"][..., 0]
    proj = project(g, camera)
    vv, uu = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    power = gaussian_power(uu - proj.mean2d[0, 0], vv - proj.mean2d[0, 1], *proj.conic[0])
    expected = torch.clamp_max(proj.opacity[0] * torch.exp(power), 0.999)  # [H, W]
    expected = torch.where(expected >= ALPHA_MIN, expected, torch.zeros_like(expected))
    torch.testing.assert_close(uncut, expected)
    rim = (power < POWER_MIN) & (expected > 0)
    assert rim.sum() > 20  # a real annulus at this size (~2.6 px sigma)
    assert (cut[rim] == 0).all() and (uncut[rim] <= torch.exp(torch.tensor(POWER_MIN))).all()
    torch.testing.assert_close(cut[~rim], uncut[~rim])
