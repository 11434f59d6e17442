"""GsplatRenderer (CUDA) against TorchRenderer on the same scenes. Skipped without CUDA.

Run on a GPU machine with ``TORCH_CUDA_ARCH_LIST=9.0 pytest -m gpu tests/render`` (gsplat
compiles its kernels at first use, minutes). Tolerances:

- low-opacity scenes (opacity <= 0.34, so alpha < 1/255 beyond 3 sigma and both backends use
  the same pixel set; TorchRenderer with gsplat's max_alpha 0.999): images max abs 2e-4, gradients
  max abs error <= 2e-3 x the largest entry of each gradient tensor (float32, atomics, __expf);
- full-opacity scenes (gsplat keeps alpha beyond 3 sigma at the rims): images mean abs <= 2e-3
  and max abs <= 0.06.
"""

from __future__ import annotations

import pytest
import torch
from render_helpers import leaves, make_camera, make_scene, weighted_loss

from persona.render.torch_renderer import TorchRenderer
from persona.render.types import Camera

pytestmark = pytest.mark.gpu
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
        err = (out[name] - ref_out[name]).abs().max().item()
        print(f"gsplat vs torch, low opacity, {name}: max abs {err:.2e}")
        assert err <= 2e-4, name
    for name, a, b in zip(["means", "scales", "opacities", "quats", "rgb", "aux"], grad,
                          ref_grad, strict=True):
        rel = ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()
        print(f"gsplat vs torch, low opacity, grad {name}: max rel {rel:.2e}")
        assert rel <= 2e-3, name


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
