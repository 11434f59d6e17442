"""Mesh regularisers on the Gaussians (METHOD.md section 5). Pure functions; the global weights
(1e5, 1e6, 0.1, 100, ...) live in ``persona.losses.table.LossWeights``, the per-vertex factors
are arguments here.

Every Laplacian term is ``mean over vertices and channels of w_i * r_i^2`` with r = L x (or
L x - L(template) on the template-relative regions).

The authors' set (METHOD.md section 12): ``lap_mean`` on the BASE canonical means (absolute off
hands/eyes/expression face, template-relative on them; x 10 x per-vertex factor, see
`mean_laplacian_loss`), ``lap_mean_refined`` on the POSED refined means (absolute, hands/eyes/
expression face excluded; `posed_laplacian_loss`), none on the canonical refined means; per-vertex
factor 1, 50 on face_expr and eyes, 10 on hands and expr_boundary (10 wins where both apply).

Their numbers hold for the twice-subdivided SMPL-X template (median edge ~2 mm). On a smooth
surface L x ~ curvature x h^2, so (L x)^2 ~ h^4 for edge length h; midpoint subdivision keeps
the coarse mesh's creases, and the measured energies of the template and of smooth
displacements scale as h^2.8-3.5, hence exponent 3 by default. `laplacian_level_factor`
rescales a weight by (reference_edge / h)^exponent; `level_scaled_weights` applies it to the
Laplacian terms.
"""

from __future__ import annotations

import torch
from torch import Tensor

from persona.ops.mesh import NeighbourLaplacian, apply_laplacian

# Region keys of AvatarTemplate.region_masks used here.
FACE_EYE_REGIONS = ("face_expr", "eyes")
HAND_BOUNDARY_REGIONS = ("hands", "expr_boundary")
TEMPLATE_RELATIVE_REGIONS = ("hands", "eyes", "face_expr")
# Terms on the subdivided topology and on the original one rescaled by the level rule
# (`level_scaled_weights`); names as in persona.losses.table.term_weights.
LEVEL_SCALED_TERMS = ("lap_mean", "lap_mean_base", "lap_mean_posed", "lap_scale", "lap_rgb")
LEVEL_SCALED_ORIGINAL_TERMS = ("lap_scale_original",)
# Level rule defaults (LossWeights.lap_reference_edge / lap_level_exponent): the authors' mesh
# has ~2 mm median edges; energies of midpoint-subdivided bodies scale as h^2.8-3.5 (measured,
# docs/MODEL_AND_LOSSES.md), so 3; 4 is the smooth-surface value.
DEFAULT_REFERENCE_EDGE = 0.002
DEFAULT_LEVEL_EXPONENT = 3.0
# The reference mesh is the body subdivided this many times (the authors: twice), so the
# reference edge of the original topology is reference_edge x 2^this.
REFERENCE_SUBDIVISION_LEVELS = 2


def _zero_like_graph(values: Tensor) -> Tensor:
    return values.sum() * 0.0


def _any_region(region_masks: dict[str, Tensor], names: tuple[str, ...]) -> Tensor:
    missing = [n for n in names if n not in region_masks]
    if missing:
        raise ValueError(f"region_masks: missing {missing} (have {sorted(region_masks)})")
    mask = region_masks[names[0]].bool().clone()
    for name in names[1:]:
        mask |= region_masks[name].bool()
    return mask


def laplacian_region_factors(
    region_masks: dict[str, Tensor],
    face_eye_factor: float = 50.0,  # factor on eyes and the expression face (METHOD.md sec. 5)
    hand_boundary_factor: float = 10.0,  # factor on hands and the expression boundary
) -> Tensor:
    """Per-vertex factor of the mean Laplacians: 1, face_eye_factor on face_expr/eyes, then
    hand_boundary_factor on hands/expr_boundary, written last so it wins where they overlap
    (the band inside the face: METHOD.md section 12). [N]."""
    face_eyes = _any_region(region_masks, FACE_EYE_REGIONS)
    hands_boundary = _any_region(region_masks, HAND_BOUNDARY_REGIONS)
    factors = torch.ones(face_eyes.shape, dtype=torch.float32, device=face_eyes.device)
    factors = torch.where(face_eyes, torch.full_like(factors, face_eye_factor), factors)
    return torch.where(hands_boundary, torch.full_like(factors, hand_boundary_factor), factors)


def template_relative_mask(region_masks: dict[str, Tensor]) -> Tensor:
    """Vertices whose Laplacian is compared with the template's (hands, eyes, face_expr); the
    posed Laplacian excludes them. [N] bool."""
    return _any_region(region_masks, TEMPLATE_RELATIVE_REGIONS)


def laplacian_loss(
    values: Tensor,
    laplacian: Tensor | NeighbourLaplacian,
    vertex_weight: Tensor | None = None,
    reference: Tensor | None = None,
    relative_mask: Tensor | None = None,
) -> Tensor:
    """mean_{i, c} w_i (r_ic)^2 with r = L @ values, minus reference where relative_mask.

    values [N, C] or [B, N, C]; laplacian [N, N] (sparse or NeighbourLaplacian); vertex_weight
    [N] (None = 1); reference [N, C] (the template's Laplacian); relative_mask [N] bool (None =
    everywhere when a reference is given).
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


def laplacian_energy(values: Tensor, laplacian: Tensor | NeighbourLaplacian,
                     vertex_weight: Tensor | None = None) -> Tensor:
    """mean_{i, c} w_i (L values)_ic^2 (log-scales, colours). values [N, C] or [B, N, C]."""
    return laplacian_loss(values, laplacian, vertex_weight)


def mean_laplacian_loss(
    means: Tensor,
    template_vertices: Tensor,
    laplacian: Tensor | NeighbourLaplacian,
    region_masks: dict[str, Tensor],
    face_eye_factor: float = 50.0,  # factor on eyes and the expression face
    hand_boundary_factor: float = 10.0,  # factor on hands and the expression boundary
    relative_everywhere: bool = False,  # (L x - L template)^2 on every vertex
    template_share: float = 1.0,  # share of the template's own L kept in the absolute residual
    template_targets: Tensor | None = None,  # [N, 3] L @ template_vertices when precomputed
) -> Tensor:
    """The authors' ``lap_mean`` on the BASE canonical means (template + mean offset), without
    the global 1e5 x 10: (L x)^2 x region factors, with (L x - L template)^2 on hands, eyes and
    face_expr; with relative_everywhere (our earlier default, `lap_mean_relative`), the
    template-relative form on every vertex (= (L offset)^2: it smooths the offsets instead of
    flattening the body). means [N, 3] or [B, N, 3]; template_vertices [N, 3]; template_targets
    (the template's AvatarTemplate.template_laplacian_targets) saves recomputing L @ template."""
    reference = (apply_laplacian(laplacian, template_vertices.to(means.dtype))
                 if template_targets is None else template_targets.to(means.dtype))  # [N, 3]
    factors = laplacian_region_factors(region_masks, face_eye_factor, hand_boundary_factor)
    relative = (torch.ones_like(factors, dtype=torch.bool) if relative_everywhere
                else template_relative_mask(region_masks))
    # absolute rows: r = L x - (1 - share) L template (share 1: the authors' (L x)^2)
    subtracted = torch.where(relative, 1.0, 1.0 - template_share).to(means.dtype)  # [N]
    return laplacian_loss(means, laplacian, factors, reference, subtracted)


def posed_laplacian_loss(posed_means: Tensor, laplacian: Tensor | NeighbourLaplacian,
                         region_masks: dict[str, Tensor],
                         reference: Tensor | None = None,
                         reference_scale: float = 1.0) -> Tensor:
    """The authors' ``lap_mean_refined``: (L x)^2 of the POSED refined means (world space) with
    hands, eyes and face_expr excluded (weight 0; the region factors are 1 elsewhere); with
    reference [N, 3] (the posed base means; our relative form), (L x - L reference)^2: the
    smoothness of the pose-dependent offsets in posed space. posed_means [N, 3] or [B, N, 3]."""
    excluded = template_relative_mask(region_masks)
    weight = (~excluded).to(posed_means.dtype)
    if reference is None:
        return laplacian_loss(posed_means, laplacian, weight)
    target = apply_laplacian(laplacian, reference.to(posed_means.dtype)) * reference_scale
    return laplacian_loss(posed_means, laplacian, weight, target,
                          torch.ones_like(excluded))


def laplacian_level_factor(
    median_edge: float,  # m, median edge of the mesh the Laplacian acts on
    reference_edge: float = DEFAULT_REFERENCE_EDGE,  # m, median edge the weights were tuned on
    exponent: float = DEFAULT_LEVEL_EXPONENT,  # 4 = smooth-surface (L x)^2 ~ h^4; 0 = off
) -> float:
    """(reference_edge / median_edge)^exponent: the factor that makes a Laplacian weight tuned
    on a mesh of edge reference_edge resist smooth deformations equally on this mesh."""
    if exponent == 0.0:
        return 1.0
    if median_edge <= 0.0 or reference_edge <= 0.0:
        raise ValueError(f"laplacian_level_factor: edges must be > 0, got median_edge="
                         f"{median_edge}, reference_edge={reference_edge}")
    return (reference_edge / median_edge) ** exponent


def level_template_share(
    median_edge: float,  # m, median edge of the subdivided mesh
    reference_edge: float = DEFAULT_REFERENCE_EDGE,  # m, the edge the weights were tuned on
    exponent: float = DEFAULT_LEVEL_EXPONENT,  # 0 = off (share 1)
) -> float:
    """sqrt(min(1, level factor)): the share of the template's own Laplacian L t kept in the
    absolute mean Laplacians, so that the template's curvature costs at this level what it
    costs at the reference level (its energy scales ~ h^exponent) while offsets (whose noise
    energy per vertex does not depend on h) keep the authors' weights."""
    return min(1.0, laplacian_level_factor(median_edge, reference_edge, exponent)) ** 0.5


MEAN_LAPLACIAN_TERMS = ("lap_mean", "lap_mean_base", "lap_mean_posed")


def level_scaled_weights(
    weights: dict[str, float],
    median_edge: float,  # m, subdivided mesh (AvatarTemplate.median_edge_length)
    original_median_edge: float,  # m, original topology (.original_median_edge_length)
    reference_edge: float = DEFAULT_REFERENCE_EDGE,  # m, the subdivided reference's median edge
    exponent: float = DEFAULT_LEVEL_EXPONENT,  # 0 = weights unchanged
    skip: tuple[str, ...] = (),  # terms left unscaled (the mean Laplacians in reference mode)
) -> dict[str, float]:
    """A copy of term weights with the Laplacian terms rescaled by `laplacian_level_factor`:
    LEVEL_SCALED_TERMS with the subdivided mesh's edge, LEVEL_SCALED_ORIGINAL_TERMS with the
    original topology's edge against reference_edge x 2^REFERENCE_SUBDIVISION_LEVELS."""
    factor = laplacian_level_factor(median_edge, reference_edge, exponent)
    original_factor = laplacian_level_factor(
        original_median_edge, reference_edge * 2 ** REFERENCE_SUBDIVISION_LEVELS, exponent)
    scaled = dict(weights)
    for name in LEVEL_SCALED_TERMS:
        if name in scaled and name not in skip:
            scaled[name] = scaled[name] * factor
    for name in LEVEL_SCALED_ORIGINAL_TERMS:
        if name in scaled:
            scaled[name] = scaled[name] * original_factor
    return scaled
