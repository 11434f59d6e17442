"""persona/render/passes.py: the hand pass renders each hand's Gaussians alone, picked by the
template's cached rows (no host synchronisation), the same as picking them by mask."""

from __future__ import annotations

import dataclasses

import torch

from persona.avatar.posing import AvatarState
from persona.avatar.template import build_avatar_template
from persona.body.loader import BodySpec, load_body, random_identity
from persona.render import passes
from persona.render.torch_renderer import TorchRenderer
from persona.render.types import Camera, ChannelGroup, Gaussians, RenderSettings

IMAGE_SIZE = (40, 24)  # (height, width) of the test camera, pixels


def _state(template) -> AvatarState:
    generator = torch.Generator().manual_seed(0)
    count = template.num_vertices
    means = template.canonical_vertices.clone()
    scales = torch.full((count, 3), 0.01)
    rgb = torch.rand(count, 3, generator=generator)
    return AvatarState(means={"base": means, "refined": means}, scales={"base": scales,
                       "refined": scales}, rgb={"base": rgb, "refined": rgb}, rgb_aux=rgb,
                       seg=rgb, canonical_base=means, canonical_refined=means)


def _camera(template) -> Camera:
    """A camera 3 m in front of the body (+z), looking back at its centre."""
    height, width = IMAGE_SIZE
    rotation = torch.diag(torch.tensor([1.0, -1.0, -1.0]))  # world y up -> image y down
    position = template.canonical_vertices.mean(0) + torch.tensor([0.0, 0.0, 3.0])
    intrinsics = torch.tensor([[30.0, 0.0, width / 2], [0.0, 30.0, height / 2], [0, 0, 1]])
    return Camera(intrinsics, rotation, -rotation @ position, width, height)


def test_hand_pass_uses_cached_rows_and_equals_the_masked_pick() -> None:
    body = load_body(BodySpec(kind="procedural"))
    template = build_avatar_template(body, random_identity(body), subdivision_levels=0)
    for name, mask in template.region_masks.items():
        assert torch.equal(template.region_rows[name], mask.nonzero().squeeze(1)), name
    state, camera, renderer = _state(template), _camera(template), TorchRenderer()
    rows_only = dataclasses.replace(template, region_masks={})  # the masks are not read
    cached = [r["rgb"] for r in passes.render_hands(rows_only, state, camera, renderer)]
    masked = []  # each hand picked by its boolean mask, rendered the same way
    for region in passes.HAND_REGIONS:
        mask = template.region_masks[region]
        scales = state.scales["base"][mask]
        gaussians = Gaussians(state.means["base"][mask], scales, scales.new_ones(len(scales)))
        masked.append(renderer.render(gaussians, camera,
                                      {"rgb": ChannelGroup(state.rgb["base"][mask])},
                                      RenderSettings(depth=False))["rgb"])
    assert len(cached) == len(masked) == 2
    for ours, theirs in zip(cached, masked, strict=True):
        assert float(ours.amax()) > 0  # the hand is in view
        assert torch.equal(ours, theirs)
    assert not torch.equal(cached[0], cached[1])  # each hand alone
