"""FrozenParts: the system's fixed state moves with .to() and stays out of checkpoints."""

from __future__ import annotations

import torch
from torch import nn

from persona.avatar.template import build_avatar_template
from persona.body.loader import BodySpec, load_body
from persona.body.types import Identity
from persona.system_parts import FrozenParts


def _parts() -> tuple[FrozenParts, object, object]:
    body = load_body(BodySpec(kind="procedural", num_betas=10, num_expression=10))
    identity = Identity(torch.zeros(body.num_betas))
    template = build_avatar_template(body, identity, 0)
    lpips = nn.Linear(2, 2)  # stand-in for a frozen LPIPS net (parameters, not buffers)
    return FrozenParts(body, template, identity, lpips_eval=lpips), template, body


def test_nothing_of_it_is_in_the_state_dict_or_the_parameters():
    parts, _, _ = _parts()
    holder = nn.Module()
    holder.frozen = parts
    assert holder.state_dict() == {}  # body buffers, LPIPS weights: not checkpointed
    assert list(holder.parameters()) == []


def test_to_moves_every_tensor_body_and_networks_with_it():
    parts, template, body = _parts()
    parts.to(torch.float64)  # a .to() stand-in for a device move on a CPU-only machine
    assert parts.template.canonical_vertices.dtype == torch.float64
    assert parts.template.region_masks["hands"].dtype == torch.bool
    assert parts.body.v_template.dtype == torch.float64
    assert parts.lpips_eval.weight.dtype == torch.float64
    assert parts.identity.betas.dtype == torch.float64
    torch.testing.assert_close(parts.template.canonical_vertices.float(),
                               template.canonical_vertices)
    assert parts.template.num_original_vertices == template.num_original_vertices
    assert set(parts.region_faces) == {"hand_mask", "eye_mask"}
    assert parts.face_labels.shape == (body.faces.shape[0],)
