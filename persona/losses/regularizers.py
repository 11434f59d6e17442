"""Mesh regularisers on the Gaussians (METHOD.md section 5). Pure functions; the global weights
(1e5, 1e6, 0.1, 100, ...) live in ``persona.losses.table.LossWeights``, the per-vertex factors
are arguments here.

Every Laplacian term is ``mean over vertices and channels of w_i * r_i^2`` with r = L x (or
L x - L(template) on the template-relative regions).
"""

from __future__ import annotations

import torch
from torch import Tensor

from persona.ops.mesh import apply_laplacian

# Region keys of AvatarTemplate.region_masks used here.
FACE_EYE_REGIONS = ("face", "eyes")
HAND_BOUNDARY_REGIONS = ("hands", "face_boundary")
TEMPLATE_RELATIVE_REGIONS = ("hands", "eyes", "face")


def _zero_like_graph(values: Tensor) -> Tensor:
    return values.sum() * 0.0


def _any_region(region_masks: dict[str, Tensor], names: tuple[str, ...]) -> Tensor:
    present = [region_masks[n].bool() for n in names if n in region_masks]
    if not present:
        raise ValueError(f"region_masks: none of {list(names)} present "
                         f"(have {sorted(region_masks)})")
    mask = present[0].clone()
    for other in present[1:]:
        mask |= other
    return mask


def laplacian_region_factors(
    region_masks: dict[str, Tensor],
    face_eye_factor: float = 50.0,  # factor on eyes and the expression face (METHOD.md sec. 5)
    hand_boundary_factor: float = 10.0,  # factor on hands and the expression boundary
) -> Tensor:
    """Per-vertex factor of the mean Laplacian: 1, face_eye_factor on face/eyes,
    hand_boundary_factor on hands/face_boundary (face/eyes win where they overlap). [N]."""
    face_eyes = _any_region(region_masks, FACE_EYE_REGIONS)
    hands_boundary = _any_region(region_masks, HAND_BOUNDARY_REGIONS)
    factors = torch.ones(face_eyes.shape, dtype=torch.float32, device=face_eyes.device)
    factors = torch.where(hands_boundary, torch.full_like(factors, hand_boundary_factor), factors)
    return torch.where(face_eyes, torch.full_like(factors, face_eye_factor), factors)


def template_relative_mask(region_masks: dict[str, Tensor]) -> Tensor:
    """Vertices whose Laplacian is compared with the template's (hands, eyes, face). [N] bool."""
    return _any_region(region_masks, TEMPLATE_RELATIVE_REGIONS)


def laplacian_loss(
    values: Tensor,
    laplacian: Tensor,
    vertex_weight: Tensor | None = None,
    reference: Tensor | None = None,
    relative_mask: Tensor | None = None,
) -> Tensor:
    """mean_{i, c} w_i (r_ic)^2 with r = L @ values, minus reference where relative_mask.

    values [N, C] or [B, N, C]; laplacian sparse [N, N]; vertex_weight [N] (None = 1);
    reference [N, C] (the template's Laplacian); relative_mask [N] bool (None = everywhere when a
    reference is given).
    """
    if values.shape[-2] != laplacian.shape[0]:
        raise ValueError(f"laplacian_loss: values have {values.shape[-2]} vertices, the "
                         f"Laplacian {laplacian.shape[0]}")
    residual = apply_laplacian(laplacian, values)  # [..., N, C]
    if reference is not None:
        if reference.shape != values.shape[-2:]:
            raise ValueError(f"laplacian_loss: reference {list(reference.shape)} must be "
                             f"{list(values.shape[-2:])}")
        if relative_mask is None:
            residual = residual - reference
        else:
            residual = residual - reference * relative_mask[:, None].to(reference.dtype)
    squared = residual * residual
    if vertex_weight is not None:
        squared = squared * vertex_weight[:, None].to(squared.dtype)
    return squared.mean()


def hand_rgb_tv(rgb: Tensor, edges: Tensor, hand_mask: Tensor) -> Tensor:
    """Total variation of colours over the mesh edges inside the hands: mean over those edges
    (and channels) of |c_i - c_j|. rgb [N, 3], edges [E, 2] long, hand_mask [N] bool."""
    inside = hand_mask[edges[:, 0]] & hand_mask[edges[:, 1]]
    if not bool(inside.any()):
        return _zero_like_graph(rgb)
    hand_edges = edges[inside]
    return (rgb[hand_edges[:, 0]] - rgb[hand_edges[:, 1]]).abs().mean()


def hand_rgb_aux_loss(rgb: Tensor, rgb_aux: Tensor, hand_mask: Tensor) -> Tensor:
    """Pull hand colours toward rgb_aux (detached): mean |rgb - rgb_aux| on the hands."""
    if not bool(hand_mask.any()):
        return _zero_like_graph(rgb)
    return (rgb[hand_mask] - rgb_aux[hand_mask].detach()).abs().mean()


def mouth_rgb_loss(rgb: Tensor, mouth_mask: Tensor, ring_mask: Tensor) -> Tensor:
    """Mouth-interior colours toward the mean colour of the surrounding ring (detached):
    mean |rgb_i - mean_ring rgb| over the mouth interior. rgb [N, 3], masks [N] bool. An empty
    mouth interior or ring gives 0."""
    if not bool(mouth_mask.any()) or not bool(ring_mask.any()):
        return _zero_like_graph(rgb)
    target = rgb[ring_mask].mean(0).detach()  # [3]
    return (rgb[mouth_mask] - target).abs().mean()


def laplacian_energy(values: Tensor, laplacian: Tensor,
                     vertex_weight: Tensor | None = None) -> Tensor:
    """mean_{i, c} w_i (L values)_ic^2 (log-scales, colours). values [N, C] or [B, N, C]."""
    return laplacian_loss(values, laplacian, vertex_weight)


def mean_laplacian_loss(
    means: Tensor,
    template_vertices: Tensor,
    laplacian: Tensor,
    region_masks: dict[str, Tensor],
    face_eye_factor: float = 50.0,  # factor on eyes and the expression face
    hand_boundary_factor: float = 10.0,  # factor on hands and the expression boundary
    relative_everywhere: bool = False,  # (L x - L template)^2 on every vertex
) -> Tensor:
    """The canonical-means Laplacian of METHOD.md section 5 (without the global 1e5):
    (L x)^2 x region factors, with (L x - L template)^2 on hands, eyes and face; with
    relative_everywhere, the template-relative form on every vertex (= (L offset)^2: it
    smooths the offsets instead of flattening the body). means [N, 3] or [B, N, 3];
    template_vertices [N, 3]."""
    reference = apply_laplacian(laplacian, template_vertices.to(means.dtype))  # [N, 3]
    factors = laplacian_region_factors(region_masks, face_eye_factor, hand_boundary_factor)
    relative = (torch.ones_like(factors, dtype=torch.bool) if relative_everywhere
                else template_relative_mask(region_masks))
    return laplacian_loss(means, laplacian, factors, reference, relative)


def posed_laplacian_loss(posed_means: Tensor, laplacian: Tensor,
                         region_masks: dict[str, Tensor],
                         reference: Tensor | None = None) -> Tensor:
    """(L x)^2 of posed refined means with hands, eyes and face excluded (weight 0);
    with reference [N, 3] (the posed base means), (L x - L reference)^2: the smoothness of
    the pose-dependent offsets in posed space. posed_means [N, 3] or [B, N, 3]."""
    excluded = template_relative_mask(region_masks)
    weight = (~excluded).to(posed_means.dtype)
    if reference is None:
        return laplacian_loss(posed_means, laplacian, weight)
    target = apply_laplacian(laplacian, reference.to(posed_means.dtype))  # [N, 3]
    return laplacian_loss(posed_means, laplacian, weight, target,
                          torch.ones_like(excluded))
