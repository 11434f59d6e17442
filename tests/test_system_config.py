"""persona/system_config.py: the system's settings and the pure functions that build parts from
them (the deformer or model.deformer_class, the body spec, the optimiser's parameter groups)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from persona.avatar.deformer import PoseDeformer
from persona.avatar.gaussians import GaussianAvatar
from persona.body.loader import BodySpec
from persona.system import PersonaSystem
from persona.system_config import (
    SMPLX_PATH_ENV,
    DeformerConfig,
    OptimConfig,
    build_deformer,
    class_path_of,
    optimizer_groups,
    resolve_body_spec,
)


class MlpOnlyDeformer(nn.Module):
    """A deformer without a triplane: every parameter is an "mlp" one."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.layer = nn.Linear(width, 3)


class StubFrames:
    """FrameParams' parameter_groups() without a body."""

    def __init__(self) -> None:
        self.hands = [nn.Parameter(torch.zeros(2))]
        self.other = [nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(1))]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"frame_hands": self.hands, "frame_other": self.other}


def _ids(params) -> list[int]:
    return [id(p) for p in params]


def test_optimizer_groups_hold_every_parameter_once_at_its_lr():
    """Old: the groups were built inside configure_optimizers (untestable without a trainer);
    a deformer parameter left out of both the triplane and mlp groups, or listed twice, fails."""
    avatar = GaussianAvatar(5)
    deformer = PoseDeformer(triplane_resolution=4, hidden_dim=8)
    frames = StubFrames()
    optim = OptimConfig(triplane=0.5, mlp=0.25, frame_hands=0.125)
    groups = optimizer_groups(avatar, deformer, frames, optim)
    assert [g["name"] for g in groups] == ["mean_offset", "log_scale", "colour", "triplane",
                                           "mlp", "frame_other", "frame_hands"]
    lrs = {g["name"]: g["lr"] for g in groups}
    assert (lrs["triplane"], lrs["mlp"], lrs["frame_hands"]) == (0.5, 0.25, 0.125)
    listed = [i for g in groups for i in _ids(g["params"])]
    assert len(listed) == len(set(listed))
    expected = (_ids(avatar.parameters()) + _ids(deformer.parameters()) + _ids(frames.hands)
                + _ids(frames.other))
    assert set(listed) == set(expected)
    triplane = dict(zip(_ids(deformer.parameters()), (n for n, _ in deformer.named_parameters()),
                        strict=True))
    assert all("triplane" in triplane[i] for i in _ids(groups[3]["params"]))


def test_optimizer_groups_leave_out_empty_and_frozen_groups():
    groups = optimizer_groups(GaussianAvatar(5), MlpOnlyDeformer(), StubFrames(),
                              OptimConfig(optimise_frames=False))
    assert [g["name"] for g in groups] == ["mean_offset", "log_scale", "colour", "mlp"]


def test_build_deformer_takes_the_config_or_the_factory():
    deformer = build_deformer(DeformerConfig(mode="mean_scale", triplane_resolution=4,
                                             zero_face="face"))
    assert isinstance(deformer, PoseDeformer) and deformer.mode == "mean_scale"
    assert deformer.triplane.resolution == 4
    custom = build_deformer(DeformerConfig(), lambda: MlpOnlyDeformer(width=2))
    assert isinstance(custom, MlpOnlyDeformer) and custom.layer.in_features == 2


def test_a_python_deformer_class_is_kept_as_a_class_path_in_the_hparams():
    """Old: there was no model.deformer_class. An object in hparams would break weights_only
    checkpoint loading; it is stored as {"class_path": ...} like a renderer object."""
    system = PersonaSystem(deformer_class=MlpOnlyDeformer)
    path = f"{__name__}.MlpOnlyDeformer"
    assert system.hparams["deformer_class"] == {"class_path": path}
    assert class_path_of(MlpOnlyDeformer()) == class_path_of(MlpOnlyDeformer) == {
        "class_path": path}
    assert PersonaSystem().hparams["deformer_class"] is None


def test_resolve_body_spec_applies_overrides_and_the_smplx_path_fallback(monkeypatch):
    monkeypatch.setenv(SMPLX_PATH_ENV, "/models")
    spec = resolve_body_spec(BodySpec(kind="smplx"), {"model_path": None, "gender": "male"},
                             "/cache")
    assert (spec.model_path, spec.gender, spec.cache_dir) == ("/models", "male", "/cache")
    spec = resolve_body_spec(BodySpec(kind="smplx"), {"model_path": "/mine", "gender": None},
                             None)
    assert (spec.model_path, spec.gender, spec.cache_dir) == ("/mine", "neutral", None)
    assert resolve_body_spec(BodySpec(kind="open"), {"model_path": None, "gender": None},
                             None).model_path is None


@pytest.mark.parametrize("name", ["DeformerConfig", "BodyOverrides", "OptimConfig",
                                  "SkinningConfig", "PersonaSystem"])
def test_configs_are_still_importable_from_persona_system(name: str):
    import persona.system

    assert hasattr(persona.system, name)
