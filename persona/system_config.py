"""The PersonaSystem's settings (its LightningCLI `model.*` keys) and the pure functions that turn
them into parts: the deformer, the body spec, the optimiser's parameter groups and its schedule.

Re-exported from persona.system, so `from persona.system import DeformerConfig` keeps working.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from persona.avatar.deformer import PoseDeformer
from persona.avatar.posing import SkinningConfig
from persona.avatar.template import AvatarTemplate
from persona.body.types import PoseParams

SMPLX_PATH_ENV = "PERSONA_SMPLX_PATH"  # fallback for model.body.model_path
TRIPLANE_PARAMETER = "triplane"  # deformer parameters whose name holds this get the triplane lr
DEFORMER_GROUPS = ("triplane", "mlp")  # optimizer_groups' names of the deformer's parameters

DeformerFactory = Callable[[], nn.Module]  # model.deformer_class: a class_path built in build()


@dataclass
class DeformerConfig:
    """The pose-driven deformer (METHOD.md section 3); every paper ablation is a value here."""

    mode: Literal["off", "mean", "mean_scale", "mean_rgb"] = "mean"  # offsets it predicts
    ring_size: int | None = 4  # joints within this many tree steps feed the MLP; None = all
    triplane_channels: int = 32  # features per plane
    triplane_resolution: int = 128  # plane side in texels
    triplane_extent: float = 2.0  # metres covered by the triplane cube
    hidden_dim: int = 128  # MLP width
    num_hidden_layers: int = 3  # MLP depth
    norm_groups: int = 4  # GroupNorm groups per hidden layer
    output_scale: float = 0.01  # the MLP output is divided by 100
    # Face part of the zero-offset mask: "face_expr" (authors: the frontal expression face; the
    # scalp, hair and back of the head get offsets) or "face" (the whole FLAME head; ours before).
    zero_face: Literal["face_expr", "face"] = "face_expr"
    # Triplane sampling (METHOD.md section 12): the authors use grid_sample's defaults
    # (align_corners False, zero padding) at template positions centred on their mean; ours
    # before: align_corners True, border padding, bounding-box centre.
    triplane_align_corners: bool = False
    triplane_padding_mode: Literal["zeros", "border"] = "zeros"
    triplane_centre: Literal["mean", "bbox"] = "mean"  # template positions centred on ...
    # False (authors): PyTorch's default init of the output layer, a random offset field of
    # 3.1 mm mean / 11.7 mm max at step 0 on the demo body; True: zeros (no offsets at step 0).
    zero_init_output: bool = False


# DeformerConfig fields that shape the avatar template rather than the deformer module
TEMPLATE_SETTINGS = ("zero_face", "triplane_centre")


@dataclass
class BodyOverrides:
    """Settings of the subject's body (its subject.json names the kind) a run may override."""

    model_path: str | None = None  # SMPL-X folder (smplx/SMPLX_*.npz); else $PERSONA_SMPLX_PATH
    gender: str | None = None  # neutral | male | female; None keeps the subject's


@dataclass
class OptimConfig:
    """Adam with per-group learning rates and one step decay (METHOD.md section 7)."""

    mean_offset: float = 1e-3  # lr of the canonical mean offsets
    log_scale: float = 1e-2  # lr of the log-scales
    colour: float = 1e-2  # lr of rgb, rgb_aux and seg
    triplane: float = 1e-3  # lr of the deformer's triplane
    mlp: float = 1e-3  # lr of the deformer's MLP
    frame_other: float = 1e-3  # lr of per-frame SMPL-X (root, body, jaw, eyes, expr, transl)
    frame_hands: float = 1e-4  # lr of per-frame hand poses
    adam_eps: float = 1e-15  # Adam epsilon
    decay_at: float = 0.75  # fraction of the steps after which every lr is multiplied by ...
    decay_factor: float = 0.1  # ... this factor
    optimise_frames: bool = True  # optimise per-frame SMPL-X jointly with the avatar
    # > 0: an exponential moving average of every parameter (this decay per step; not in the
    # authors' code) replaces the live weights for validation, checkpoints and `persona test`
    ema_decay: float = 0.0
    # > 1: the deformer's (triplane and MLP) gradients are averaged over this many training
    # steps before each of its Adam steps (not in the authors' code: 1, every step); the other
    # groups step every step
    deformer_accumulate: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"model.optim.ema_decay must be in [0, 1), got {self.ema_decay}")
        if int(self.deformer_accumulate) != self.deformer_accumulate or \
                self.deformer_accumulate < 1:
            raise ValueError("model.optim.deformer_accumulate must be an integer >= 1, got "
                             f"{self.deformer_accumulate}")


def build_deformer(config: DeformerConfig, factory: DeformerFactory | None = None) -> nn.Module:
    """The pose deformer of a DeformerConfig, or `factory()` when model.deformer_class names
    one (then only config.zero_face, a template setting, applies)."""
    if factory is not None:
        return factory()
    settings = dataclasses.asdict(config)
    for template_setting in TEMPLATE_SETTINGS:  # build_avatar_template's, not the module's
        settings.pop(template_setting)
    return PoseDeformer(**settings)


def class_path_of(value: Any) -> dict[str, str]:
    """{"class_path": ...} of an object (or a class) given in place of a config, for hparams
    and checkpoints."""
    cls = value if isinstance(value, type) else type(value)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}"}


def resolve_body_spec(spec: Any, overrides: dict, cache_dir: str | None) -> Any:
    """The subject's BodySpec with model.body.* and model.cache_dir applied (in place); an
    SMPL-X body without a model path falls back to $PERSONA_SMPLX_PATH."""
    if overrides["model_path"] is not None:
        spec.model_path = overrides["model_path"]
    elif spec.kind == "smplx" and not spec.model_path:
        spec.model_path = os.environ.get(SMPLX_PATH_ENV)
    if overrides["gender"] is not None:
        spec.gender = overrides["gender"]
    if cache_dir is not None:
        spec.cache_dir = cache_dir
    return spec


def skinning_field(template: AvatarTemplate, skinning: SkinningConfig, cache_dir: str | None
                   ) -> nn.Module | None:
    """The skinning-weight volume of the template's body vertices (built once, then read from
    the cache) when skinning.method is "volume"; else None."""
    if skinning.method != "volume":
        return None
    from persona.body.skinning import SkinningVolumeSettings, cached_skinning_field

    v0 = template.num_original_vertices
    field = cached_skinning_field(template.canonical_vertices[:v0], template.lbs_weights[:v0],
                                  SkinningVolumeSettings(grid_size=skinning.grid_size),
                                  cache_dir=cache_dir)
    field.padding_mode = skinning.padding_mode
    return field


def stacked_pose(frames: list) -> PoseParams:
    """The frames' SMPL-X (each with batch 1) stacked into one PoseParams of batch len(frames)."""
    return PoseParams(torch.cat([f.pose.full_pose for f in frames]),
                      torch.cat([f.pose.expression for f in frames]),
                      torch.cat([f.pose.transl for f in frames]))


def optimizer_groups(avatar: nn.Module, deformer: nn.Module, frame_params: Any,
                     optim: OptimConfig) -> list[dict]:
    """Adam's parameter groups ({"params", "lr", "name"}): the avatar's mean offsets,
    log-scales and colours, the deformer's triplane and MLP (empty groups left out), and with
    optim.optimise_frames the per-frame SMPL-X (hands at their own lr)."""
    groups = [
        {"params": [avatar.mean_offset], "lr": optim.mean_offset, "name": "mean_offset"},
        {"params": [avatar.log_scale], "lr": optim.log_scale, "name": "log_scale"},
        {"params": [avatar.rgb, avatar.rgb_aux, avatar.seg], "lr": optim.colour,
         "name": "colour"},
    ]
    named = list(deformer.named_parameters())
    triplane = [p for n, p in named if TRIPLANE_PARAMETER in n]
    mlp = [p for n, p in named if TRIPLANE_PARAMETER not in n]
    if triplane:
        groups.append({"params": triplane, "lr": optim.triplane, "name": DEFORMER_GROUPS[0]})
    if mlp:
        groups.append({"params": mlp, "lr": optim.mlp, "name": DEFORMER_GROUPS[1]})
    if optim.optimise_frames:
        frame_groups = frame_params.parameter_groups()
        groups.append({"params": frame_groups["frame_other"], "lr": optim.frame_other,
                       "name": "frame_other"})
        groups.append({"params": frame_groups["frame_hands"], "lr": optim.frame_hands,
                       "name": "frame_hands"})
    return groups


def optimiser_callbacks(optim: OptimConfig) -> list:
    """The callbacks of the optimiser settings, none with the authors' values:
    optim.deformer_accumulate > 1 adds persona.callbacks.gradient_accumulation.
    GroupGradientAccumulation over the deformer's groups; optim.ema_decay > 0 adds
    persona.callbacks.weight_average.SystemEMA (every parameter averaged after each step; the
    checkpoint's state_dict holds the average, the live weights go under
    "current_model_state")."""
    callbacks: list = []
    if optim.deformer_accumulate > 1:
        from persona.callbacks.gradient_accumulation import GroupGradientAccumulation

        callbacks.append(GroupGradientAccumulation(DEFORMER_GROUPS,
                                                   int(optim.deformer_accumulate)))
    if optim.ema_decay > 0.0:
        from persona.callbacks.weight_average import SystemEMA

        callbacks.append(SystemEMA(decay=optim.ema_decay))
    return callbacks


def optimizer_and_schedule(groups: list[dict], optim: OptimConfig, total_steps: int) -> dict:
    """Lightning's configure_optimizers answer: Adam on the groups and one step decay by
    optim.decay_factor after optim.decay_at of total_steps (stepped every step)."""
    optimiser = torch.optim.Adam(groups, eps=optim.adam_eps)
    milestone = max(1, math.floor(optim.decay_at * total_steps))
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimiser, [milestone], optim.decay_factor)
    return {"optimizer": optimiser, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
