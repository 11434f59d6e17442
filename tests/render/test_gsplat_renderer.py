"""GsplatRenderer (CUDA) against TorchRenderer on the same scenes. Skipped without CUDA.

Run on a GPU machine with ``TORCH_CUDA_ARCH_LIST=9.0 pytest -m gpu tests/render`` (gsplat
compiles its kernels at first use, minutes). Tolerances:

- low-opacity scenes (opacity <= 0.34, so alpha < 1/255 beyond 3 sigma and both backends use
  the same pixel set; TorchRenderer with gsplat's max_alpha 0.999): images mean abs <= 2e-5 and
  max abs <= 5e-3 (float32 rounding, __expf; a pair whose alpha sits within rounding of 1/255 may
  be kept by one backend only, moving its pixel by <= 1/255); gradients: mean abs error <= 1e-4
  and max abs error <= 2e-2 of the largest entry of each gradient tensor;
- full-opacity scenes (gsplat keeps alpha beyond 3 sigma at the rims): images mean abs <= 2e-3
  and max abs <= 0.06.
"""

from __future__ import annotations

import pytest
import torch
from render_helpers import leaves, make_camera, make_scene, weighted_loss

from persona.render.torch_renderer import TorchRenderer
from persona.render.types import Camera, ChannelGroup, Gaussians

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GSPLAT_MAX_ALPHA = 0.999  # gsplat 1.5.3's clamp on alpha
LOW_OPACITY = 0.34  # below this, opacity * exp(-4.5) < 1/255: nothing is drawn beyond 3 sigma


def _to(camera: Camera, device: str) -> Camera:
    return camera.to(device)


def _run(renderer, gaussians, values, camera):
    g, ch, params = leaves(gaussians, values, detached=("aux",))
    out = renderer.render(g, camera, ch)
    weighted_loss({k: v.cpu() for k, v in out.items()}).backward()
    return {k: v.detach().cpu() for k, v in out.items()}, [p.grad.cpu() for p in params]


def _scene_on(device: str, seed: int, low_opacity: bool):
    gaussians, values = make_scene(400, seed)
    if low_opacity:
        gaussians.opacities = gaussians.opacities.clamp(max=1.0) * LOW_OPACITY
    gaussians = type(gaussians)(*(t.to(device) for t in (gaussians.means, gaussians.scales,
                                                          gaussians.opacities, gaussians.quats)))
    return gaussians, {k: v.to(device) for k, v in values.items()}


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("seed", [0, 1])
def test_gsplat_matches_torch_low_opacity(seed: int) -> None:
    from persona.render.gsplat_renderer import GsplatRenderer

    camera = make_camera(96, 80)
    g_cpu, v_cpu = _scene_on("cpu", seed, low_opacity=True)
    g_gpu, v_gpu = _scene_on("cuda", seed, low_opacity=True)
    ref_out, ref_grad = _run(TorchRenderer(max_alpha=GSPLAT_MAX_ALPHA), g_cpu, v_cpu, camera)
    out, grad = _run(GsplatRenderer(), g_gpu, v_gpu, _to(camera, "cuda"))
    assert set(out) == set(ref_out)
    for name in ref_out:
        diff = (out[name] - ref_out[name]).abs()
        print(f"gsplat vs torch, low opacity, {name}: mean {diff.mean():.2e} max {diff.max():.2e}")
        assert diff.mean() <= 2e-5 and diff.max() <= 5e-3, name
    for name, a, b in zip(["means", "scales", "opacities", "quats", "rgb", "aux"], grad,
                          ref_grad, strict=True):
        diff = (a - b).abs() / b.abs().max().clamp(min=1e-12)
        print(f"gsplat vs torch, low opacity, grad {name}: relative mean {diff.mean():.2e} "
              f"max {diff.max():.2e}")
        assert diff.mean() <= 1e-4 and diff.max() <= 2e-2, name


@pytest.mark.gpu
@needs_cuda
def test_gsplat_close_to_torch_full_opacity() -> None:
    from persona.render.gsplat_renderer import GsplatRenderer

    camera = make_camera(96, 80)
    g_cpu, v_cpu = _scene_on("cpu", 3, low_opacity=False)
    g_gpu, v_gpu = _scene_on("cuda", 3, low_opacity=False)
    ref_out, _ = _run(TorchRenderer(max_alpha=GSPLAT_MAX_ALPHA), g_cpu, v_cpu, camera)
    out, _ = _run(GsplatRenderer(), g_gpu, v_gpu, _to(camera, "cuda"))
    for name in ("rgb", "alpha"):
        diff = (out[name] - ref_out[name]).abs()
        print(f"gsplat vs torch, full opacity, {name}: mean {diff.mean():.2e} max {diff.max():.2e}")
        assert diff.mean() <= 2e-3 and diff.max() <= 0.06, name


def _fake_rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                        **kwargs):
    """gsplat.rasterization's signature on the CPU, drawn by TorchRenderer (one geometry group):
    checks the wrapper's arguments, camera packing, passes and detaching without CUDA."""
    assert kwargs["rasterize_mode"] == "antialiased" and kwargs["eps2d"] == 0.1
    assert kwargs["sh_degree"] is None and kwargs["render_mode"] == "RGB"
    assert kwargs["near_plane"] == 0.01 and kwargs["far_plane"] == 100.0
    assert viewmats.shape == (1, 4, 4) and Ks.shape == (1, 3, 3) and colors.dim() == 2
    camera = Camera(Ks[0], viewmats[0, :3, :3], viewmats[0, :3, 3], width, height)
    out = TorchRenderer(max_alpha=GSPLAT_MAX_ALPHA).render(
        Gaussians(means, scales, opacities, quats), camera, {"c": ChannelGroup(colors)})
    return out["c"][None], out["alpha"][None], {}


def test_gsplat_wrapper_logic_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """With gsplat's kernel replaced by a CPU stand-in, GsplatRenderer equals TorchRenderer in
    images and in every gradient (so the two-pass geometry switch and depth are right)."""
    gsplat = pytest.importorskip("gsplat")
    from persona.render.gsplat_renderer import GsplatRenderer

    monkeypatch.setattr(gsplat, "rasterization", _fake_rasterization)
    gaussians, values = make_scene(120, 9)
    camera = make_camera(40, 32)
    angle = torch.tensor(0.2)
    camera.R = torch.tensor([[torch.cos(angle), 0, torch.sin(angle)], [0, 1, 0],
                             [-torch.sin(angle), 0, torch.cos(angle)]])
    camera.t = torch.tensor([0.1, -0.05, 0.3])
    ref_out, ref_grad = _run(TorchRenderer(max_alpha=GSPLAT_MAX_ALPHA), gaussians, values,
                             camera)
    out, grad = _run(GsplatRenderer(), gaussians, values, camera)
    assert list(out) == ["rgb", "aux", "alpha", "depth"]
    assert ref_out["alpha"].max() > 0.5
    for name in ref_out:
        torch.testing.assert_close(out[name], ref_out[name], atol=1e-5, rtol=0, msg=name)
    for name, a, b in zip(["means", "scales", "opacities", "quats", "rgb", "aux"], grad,
                          ref_grad, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5 * b.abs().max().item(), rtol=1e-4, msg=name)


def test_gsplat_on_cpu_tensors_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU Gaussians given to GsplatRenderer (e.g. a module Lightning moved back to the CPU
    after fit) end in one message naming the device and the fix, not gsplat's CUDAGuard error."""
    gsplat = pytest.importorskip("gsplat")
    from persona.render.gsplat_renderer import GsplatRenderer

    def cuda_only(means, *args, **kwargs):  # what gsplat 1.5.3's kernels raise on CPU tensors
        raise RuntimeError("CUDAGuardImpl initialized with non-CUDA DeviceType: cpu")

    monkeypatch.setattr(gsplat, "rasterization", cuda_only)
    gaussians, values = make_scene(10, 3)
    with pytest.raises(ValueError, match=r"CUDA only.*cpu.*--device cuda"):
        GsplatRenderer().render(gaussians, make_camera(16, 12),
                                {"rgb": ChannelGroup(values["rgb"])})
