"""Compare PERSONA's LBS with the `smplx` package's own forward pass (the body's oracle)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from persona.body.model import BodyModel
from persona.body.types import Identity, PoseParams

POSE_STD = 0.4  # rad: standard deviation of the random axis-angle components
BETA_STD = 1.0  # standard deviation of the random betas
TRANSL_STD = 0.5  # m
EXPRESSION_STD = 1.0


@dataclass
class Comparison:
    max_error: float  # m, max over samples and vertices
    mean_error: float  # m


def smplx_vertices(layer: nn.Module, betas: torch.Tensor, full_pose: torch.Tensor,
                   expression: torch.Tensor, transl: torch.Tensor) -> torch.Tensor:
    """smplx's forward vertices [B, V, 3] for a full pose [B, 55, 3], pose correctives zeroed
    (the layer's posedirs are zeroed by `zero_pose_correctives`)."""
    output = layer(betas=betas, global_orient=full_pose[:, 0],
                   body_pose=full_pose[:, 1:22].reshape(-1, 63), jaw_pose=full_pose[:, 22],
                   leye_pose=full_pose[:, 23], reye_pose=full_pose[:, 24],
                   left_hand_pose=full_pose[:, 25:40].reshape(-1, 45),
                   right_hand_pose=full_pose[:, 40:55].reshape(-1, 45),
                   expression=expression, transl=transl)
    return output.vertices


def zero_pose_correctives(layer: nn.Module) -> None:
    """PERSONA uses no pose-corrective blend shapes: zero them in the reference layer."""
    layer.posedirs.zero_()


@torch.no_grad()
def compare_with_smplx(body: BodyModel, layer: nn.Module, num_samples: int = 20,
                       with_expression: bool = False, seed: int = 0) -> Comparison:
    """Max/mean vertex distance between BodyModel.forward and smplx over random poses/betas."""
    zero_pose_correctives(layer)
    generator = torch.Generator().manual_seed(seed)
    errors = []
    for _ in range(num_samples):
        betas = BETA_STD * torch.randn(1, body.num_betas, generator=generator)
        full_pose = POSE_STD * torch.randn(1, 55, 3, generator=generator)
        expression = (EXPRESSION_STD * torch.randn(1, body.num_expression, generator=generator)
                      if with_expression else torch.zeros(1, body.num_expression))
        transl = TRANSL_STD * torch.randn(1, 3, generator=generator)
        ours = body(Identity(betas[0]), PoseParams(full_pose, expression, transl))
        theirs = smplx_vertices(layer, betas, full_pose, expression, transl)
        errors.append((ours - theirs).norm(dim=-1))
    stacked = torch.cat(errors)
    return Comparison(float(stacked.max()), float(stacked.mean()))
