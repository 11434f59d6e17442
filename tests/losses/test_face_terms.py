"""The authors' face-patch terms: one patch render, the face Gaussians composited with their own
alpha, boundary-weighted image loss, boundary distillation, face mask and face geo."""

from __future__ import annotations

import torch

from persona.avatar.posing import AvatarState, state_gaussians
from persona.losses.face_patch import composite, detect_face_boundary
from persona.losses.face_terms import (
    AUTHORS_FACE_PATCH_TERMS,
    authors_face_patch_terms,
    face_silhouettes,
    patch_view,
)
from persona.losses.image import image_loss_map
from persona.losses.table import LossWeights
from persona.render.torch_renderer import TorchRenderer
from persona.render.types import Camera, ChannelGroup, RenderSettings

SIZE = 40  # native image side (px)
PATCH = 24  # face patch side (px)
FACE_WEIGHT = 0.1


def _camera() -> Camera:
    K = torch.tensor([[60.0, 0.0, 20.0], [0.0, 60.0, 20.0], [0.0, 0.0, 1.0]])
    return Camera(K, torch.eye(3), torch.zeros(3), SIZE, SIZE)


def _scene() -> tuple[AvatarState, torch.Tensor, torch.Tensor, dict]:
    """A 10 x 10 grid of Gaussians at z = 2 (the central 4 x 4 the face) and two non-face
    Gaussians in front of a face corner; rgb, rgb_aux and canonical positions need grad."""
    g = torch.Generator().manual_seed(0)
    ticks = torch.linspace(-0.3, 0.3, 10)
    ys, xs = torch.meshgrid(ticks, ticks, indexing="ij")
    grid = torch.stack([xs.flatten(), ys.flatten(), torch.full((100,), 2.0)], -1)  # [100, 3]
    occluders = torch.tensor([[-0.07, -0.07, 1.8], [-0.02, -0.07, 1.8]])
    means = torch.cat([grid, occluders]).requires_grad_(True)  # [N, 3]
    n = means.shape[0]
    face = torch.zeros(n, dtype=torch.bool)
    face[:100] = ((xs.abs() < 0.15) & (ys.abs() < 0.15)).flatten()
    scales = torch.full((n, 3), 0.035)
    rgb = torch.rand(n, 3, generator=g).requires_grad_(True)
    state = AvatarState(
        means={"base": means, "refined": means}, scales={"base": scales, "refined": scales},
        rgb={"base": rgb, "refined": rgb},
        rgb_aux=torch.rand(n, 3, generator=g).requires_grad_(True),
        seg=torch.zeros(n, 3), canonical_base=means.detach().clone().requires_grad_(True),
        canonical_refined=means.detach().clone())
    rgb_init = torch.rand(n, 3, generator=g).requires_grad_(True)
    batch = {"image_native": torch.rand(1, SIZE, SIZE, 3, generator=g),
             "K_native": _camera().K[None]}
    return state, face, rgb_init, batch


def _loss_map(render: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return image_loss_map(render.permute(2, 0, 1)[None], target.permute(2, 0, 1)[None],
                          0.8, 0.2, 0.0)


class _CountingRenderer(TorchRenderer):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[set[str]] = []

    def render(self, gaussians, camera, channels, settings=None):  # noqa: ANN001
        self.calls.append(set(channels))
        return super().render(gaussians, camera, channels, settings)


def _silhouette(calls: list | None = None, without: float = 0.0):
    def fn(camera: Camera) -> tuple[torch.Tensor, torch.Tensor]:
        if calls is not None:
            calls.append(camera)
        with_mouth = torch.zeros(camera.height, camera.width)
        return with_mouth, torch.full((camera.height, camera.width), without)
    return fn


def _terms(weights: dict, state, face, rgb_init, batch, renderer=None, silhouette=None):
    lw = LossWeights(face_patch_size=PATCH, face_patch_margin=1.3)
    return authors_face_patch_terms(state, batch, _camera(), weights, lw, face, rgb_init,
                                    renderer or TorchRenderer(), _loss_map,
                                    silhouette or _silhouette())


def test_each_term_carries_its_weight_in_one_render_and_trains_geometry() -> None:
    """Catches the old wiring (whole-avatar base/refined renders only, no boundary, mask or
    geo term): the four authors' terms, one pass in the patch camera."""
    state, face, rgb_init, batch = _scene()
    weights = {k: FACE_WEIGHT * (i + 1) for i, k in enumerate(AUTHORS_FACE_PATCH_TERMS)}
    renderer = _CountingRenderer()
    terms = _terms(weights, state, face, rgb_init, batch, renderer)
    assert set(terms) == set(AUTHORS_FACE_PATCH_TERMS)
    for key, (value, weight) in terms.items():
        assert weight == weights[key] and torch.isfinite(value) and float(value.detach()) > 0
    assert len(renderer.calls) == 1
    sum(v * w for v, w in terms.values()).backward()
    assert float(state.means["base"].grad.abs().sum()) > 0
    assert float(state.rgb["base"].grad.abs().sum()) > 0
    assert state.rgb_aux.grad is None  # the boundary target is detached
    assert state.canonical_base.grad is None  # positional colours only find the boundary
    assert rgb_init.grad is None  # frozen initial colours


def test_boundary_distillation_trains_colour_only() -> None:
    state, face, rgb_init, batch = _scene()
    terms = _terms({"face_patch_boundary": FACE_WEIGHT}, state, face, rgb_init, batch)
    assert set(terms) == {"face_patch_boundary"}
    terms["face_patch_boundary"][0].backward()
    assert float(state.rgb["base"].grad.abs().sum()) > 0
    assert state.means["base"].grad is None or float(state.means["base"].grad.abs().max()) == 0
    assert state.rgb_aux.grad is None


def test_face_geo_trains_geometry_not_the_initial_colours() -> None:
    state, face, rgb_init, batch = _scene()
    silhouette_calls: list = []
    terms = _terms({"face_patch_geo": FACE_WEIGHT}, state, face, rgb_init, batch,
                   silhouette=_silhouette(silhouette_calls))
    assert set(terms) == {"face_patch_geo"} and not silhouette_calls  # no mesh needed
    terms["face_patch_geo"][0].backward()
    assert float(state.means["base"].grad.abs().sum()) > 0
    assert rgb_init.grad is None and state.rgb["base"].grad is None


def _reference_render(state, face, batch) -> tuple[dict, torch.Tensor]:
    lw = LossWeights(face_patch_size=PATCH, face_patch_margin=1.3)
    camera, patch = patch_view(state.means["base"][face].detach(), batch, _camera(),
                               lw.face_patch_margin, lw.face_patch_size)
    is_face = face[:, None].float()
    channels = {"rgb": ChannelGroup(state.rgb["base"].detach() * is_face),
                "is_face": ChannelGroup(is_face),
                "pos": ChannelGroup((state.canonical_base.detach() + 1) / 2 * is_face)}
    out = TorchRenderer().render(state_gaussians(state, "base"), camera, channels,
                                 RenderSettings(depth=False))
    return out, patch


def test_patch_image_loss_downweights_the_face_boundary_and_composites_face_only() -> None:
    """Catches an unweighted whole-avatar patch loss: the value is the face render composited
    with the face alpha, boundary pixels x 0.1 (non-face Gaussians occlude in black)."""
    state, face, rgb_init, batch = _scene()
    value, _ = _terms({"face_patch_base": FACE_WEIGHT}, state, face, rgb_init,
                      batch)["face_patch_base"]
    out, patch = _reference_render(state, face, batch)
    alpha = out["is_face"].detach()
    boundary = detect_face_boundary(out["pos"], alpha, torch.zeros(PATCH, PATCH,
                                                                   dtype=torch.bool))
    assert 0 < int(boundary.sum()) < PATCH * PATCH
    pixels = _loss_map(composite(out["rgb"].detach(), alpha, patch), patch)[0, 0]  # [S, S]
    expected = (pixels * torch.where(boundary, 0.1, 1.0)).mean()
    torch.testing.assert_close(value.detach(), expected, atol=1e-5, rtol=1e-4)
    assert float(pixels[boundary].sum()) > 0 and float(value.detach()) < float(pixels.mean())


def test_mask_term_scores_the_face_alpha_against_the_face_without_the_mouth() -> None:
    state, face, rgb_init, batch = _scene()
    calls: list = []
    terms = _terms({"face_patch_mask": FACE_WEIGHT}, state, face, rgb_init, batch,
                   silhouette=_silhouette(calls, without=1.0))
    out, _ = _reference_render(state, face, batch)
    expected = (out["is_face"][..., 0] - 1.0).abs().mean()
    torch.testing.assert_close(terms["face_patch_mask"][0].detach(), expected.detach(),
                               atol=1e-5, rtol=1e-4)
    assert len(calls) == 1 and (calls[0].width, calls[0].height) == (PATCH, PATCH)


def test_zero_weights_compute_nothing() -> None:
    state, face, rgb_init, batch = _scene()
    renderer, calls = _CountingRenderer(), []
    terms = _terms({k: 0.0 for k in AUTHORS_FACE_PATCH_TERMS}, state, face, rgb_init, batch,
                   renderer, _silhouette(calls))
    assert terms == {} and renderer.calls == [] and calls == []
    # only the enabled term's channels are rendered
    _terms({"face_patch_geo": FACE_WEIGHT}, state, face, rgb_init, batch, renderer)
    assert renderer.calls == [{"face_alpha", "face_init"}]


def _two_quads() -> tuple[torch.Tensor, torch.Tensor, dict]:
    """A face quad (z = 2) with a mouth quad inside it at z = 2.1 behind a hole, and a non-face
    quad in front (z = 1.5) covering the face's left third."""
    face_quad = [[-0.3, -0.3, 2.0], [0.3, -0.3, 2.0], [0.3, 0.3, 2.0], [-0.3, 0.3, 2.0]]
    mouth_quad = [[-0.1, -0.1, 2.1], [0.1, -0.1, 2.1], [0.1, 0.1, 2.1], [-0.1, 0.1, 2.1]]
    other_quad = [[-0.6, -0.6, 1.5], [-0.2, -0.6, 1.5], [-0.2, 0.6, 1.5], [-0.6, 0.6, 1.5]]
    vertices = torch.tensor(face_quad + mouth_quad + other_quad)  # [12, 3]
    faces = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7], [8, 9, 10], [8, 10, 11]])
    masks = {k: torch.zeros(12, dtype=torch.bool) for k in ("face_expr", "eyes", "mouth_interior")}
    masks["face_expr"][:2] = True
    masks["eyes"][2:4] = True
    masks["mouth_interior"][4:8] = True
    return vertices, faces, masks


def test_face_silhouettes_are_z_buffered_and_the_mouth_is_optional() -> None:
    vertices, faces, masks = _two_quads()
    camera = _camera()
    with_mouth, without = face_silhouettes(vertices, faces, masks, camera)
    # centre: the face quad is nearer than the mouth quad; left: the non-face quad occludes
    assert float(with_mouth[20, 20]) == 1.0 and float(with_mouth[20, 11]) == 0.0
    # an all-face mesh without mouth faces gives the same image twice
    masks_no_mouth = dict(masks, mouth_interior=torch.zeros(12, dtype=torch.bool))
    a, b = face_silhouettes(vertices, faces, masks_no_mouth, camera)
    assert a is b
    # remove the face quad: the mouth quad shows with the mouth, not without it
    keep = faces[2:]
    with_mouth, without = face_silhouettes(vertices, keep, masks, camera)
    assert float(with_mouth[20, 20]) == 1.0 and float(without[20, 20]) == 0.0


def test_face_silhouette_interpolates_the_vertex_mask() -> None:
    """A triangle with one non-face vertex: values fall linearly towards it (the authors'
    MeshRenderer interpolates the per-vertex mask)."""
    vertices = torch.tensor([[-0.3, -0.3, 2.0], [0.3, -0.3, 2.0], [0.0, 0.3, 2.0]])
    faces = torch.tensor([[0, 1, 2]])
    masks = {"face_expr": torch.tensor([True, True, False]),
             "eyes": torch.zeros(3, dtype=torch.bool)}
    mask, _ = face_silhouettes(vertices, faces, masks, _camera())
    column = mask[:, 20]
    inside = column > 0
    values = column[inside]
    assert float(values.max()) > 0.8 and float(values.min()) < 0.2
    assert bool((values[1:] <= values[:-1] + 1e-6).all())  # decreasing towards y = +0.3
