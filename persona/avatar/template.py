"""The avatar's template: the subject's subdivided big-pose body and every fixed per-vertex
attribute the model needs (METHOD.md sections 1 and 3). Plain tensors, built once, no file I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from persona.body.model import BodyModel
from persona.body.regions import FACE_EXPR, expression_regions
from persona.body.types import JAW_JOINT, Identity, PoseParams
from persona.ops.mesh import (
    NeighbourLaplacian,
    apply_laplacian,
    mesh_edges,
    neighbour_laplacian,
    region_ring,
)

# Triplane positions are template positions divided by this length (METHOD.md section 3: 1 m).
TRIPLANE_UNIT_METRES = 1.0
# Jaw opening of the triplane template (rad about the jaw's x axis). METHOD.md says "open jaw"
# without a value; 1/3 rad opens the mouth clearly (the magnitude of the big pose's hip angle).
DEFAULT_JAW_OPEN_ANGLE = 1.0 / 3.0
# Key of the derived region: vertices just outside the expression face (one subdivided ring).
FACE_BOUNDARY = "face_boundary"
# Key of the derived region: vertices just outside the mouth interior (the mouth colour target).
MOUTH_RING = "mouth_ring"
# Regions where the pose deformer's offsets are zero (METHOD.md section 12: hands, eyes and the
# frontal expression face; scalp, hair and the back of the head deform); stored as "no_deform".
# The face part is `no_deform_face` of build_avatar_template: "face_expr" (the authors) or "face"
# (the whole FLAME head, our earlier mask).
DEFORMER_ZERO_REGIONS = ("hands", "eyes")
NO_DEFORM_FACE_CHOICES = (FACE_EXPR, "face")
NO_DEFORM = "no_deform"
# Regions that keep the template's skinning weights instead of the skinning field (METHOD.md
# section 2: hands and face; the eyeballs belong to FLAME's face region, so they are included).
TEMPLATE_WEIGHT_REGIONS = ("hands", "face", "eyes")
KEEP_TEMPLATE_WEIGHTS = "keep_template_weights"
# The authors' is_face (= is_face_expr + is_eye): the Gaussians of the face render, the face
# patch, face_geo and the face interior removed from seams (METHOD.md section 12).
FACE_GAUSSIAN_REGIONS = ("face_expr", "eyes")
FACE_GAUSSIANS = "face_gaussians"
# Neighbours kept per vertex by the uniform Laplacian (METHOD.md section 5: up to 10).
LAPLACIAN_MAX_NEIGHBOURS = 10


@dataclass
class AvatarTemplate:
    """The fixed per-Gaussian template (N = subdivided vertices, V0 = original vertices)."""

    canonical_vertices: Tensor  # [N, 3] big pose with identity, subdivided (metres)
    faces: Tensor  # [F, 3] long, subdivided topology
    lbs_weights: Tensor  # [N, 55] the body's template weights carried by subdivision
    exprdirs: Tensor  # [N, 3, E] expression basis carried by subdivision
    region_masks: dict[str, Tensor]  # name -> [N] bool (hands, left/right_hand, face, eyes, ...)
    triplane_positions: Tensor  # [N, 3] zero betas, big pose, open jaw, centred, / 1 m
    dominant_joint: Tensor  # [N] long, argmax of lbs_weights
    num_original_vertices: int  # V0: vertices 0..V0-1 are the body's own vertices
    original_faces: Tensor  # [F0, 3] long, the body's own topology
    laplacian: NeighbourLaplacian  # [N, N] uniform Laplacian of the subdivided mesh
    original_laplacian: NeighbourLaplacian  # [V0, V0] uniform Laplacian of the original mesh
    template_laplacian_targets: Tensor | None = None  # [N, 3] laplacian @ canonical_vertices
    deform_rows: Tensor | None = None  # [M] long, rows of ~no_deform (the deformer's active set)
    region_rows: dict[str, Tensor] = field(default_factory=dict)  # name -> [K] long rows of
    #   region_masks[name], derived when empty (index_select instead of boolean indexing: no
    #   host synchronisation in a training step)
    median_edge_length: float = 0.0  # m, median edge of the subdivided big-pose mesh
    original_median_edge_length: float = 0.0  # m, median edge of the original topology

    def __post_init__(self) -> None:
        if not self.region_rows:
            self.region_rows = {k: torch.nonzero(v, as_tuple=True)[0]
                                for k, v in self.region_masks.items()}

    @property
    def num_vertices(self) -> int:
        return self.canonical_vertices.shape[0]

    @property
    def deformer_zero_mask(self) -> Tensor:
        """[N] bool: hands, eyes and the frontal expression face (or the whole face, see
        `no_deform_face`), where pose offsets are zero."""
        return self.region_masks[NO_DEFORM]

    def to(self, device: torch.device | str) -> AvatarTemplate:
        values = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, (Tensor, NeighbourLaplacian)):
                value = value.to(device)
            elif isinstance(value, dict):
                value = {k: v.to(device) for k, v in value.items()}
            values[item.name] = value
        return AvatarTemplate(**values)


def _union(regions: dict[str, Tensor], names: tuple[str, ...]) -> Tensor:
    mask = torch.zeros_like(regions[names[0]])
    for name in names:
        mask = mask | regions[name]
    return mask


def median_edge_length(vertices: Tensor, faces: Tensor) -> float:
    """Median edge length of a mesh: vertices [V, 3], faces [F, 3] -> metres."""
    edges = mesh_edges(faces, vertices.shape[0])  # [E, 2]
    return float((vertices[edges[:, 0]] - vertices[edges[:, 1]]).norm(dim=-1).median())


def triplane_template_positions(body: BodyModel, jaw_open_angle: float) -> Tensor:
    """The body with zero betas in the big pose with the jaw opened, centred on its bounding box
    and divided by 1 m. Returns [V0, 3]."""
    pose = body.big_pose().clone()  # [55, 3]
    pose[JAW_JOINT, 0] = jaw_open_angle
    device = body.v_template.device
    params = PoseParams(
        full_pose=pose[None],
        expression=torch.zeros(1, body.num_expression, device=device),
        transl=torch.zeros(1, 3, device=device),
    )
    vertices = body(body.zero_identity(), params)[0]  # [V0, 3]
    centre = (vertices.amin(0) + vertices.amax(0)) / 2.0
    return (vertices - centre) / TRIPLANE_UNIT_METRES


TRIPLANE_CENTRES = ("mean", "bbox")


def centred_triplane_positions(positions: Tensor, centre: str) -> Tensor:
    """Triplane positions [N, 3] (bounding-box centred) re-centred on their mean (the authors,
    METHOD.md section 12: on the subdivided vertices) or kept ("bbox", ours before)."""
    if centre not in TRIPLANE_CENTRES:
        raise ValueError(f"triplane_centre: expected one of {TRIPLANE_CENTRES}, got {centre!r}")
    return positions - positions.mean(dim=0) if centre == "mean" else positions


def build_avatar_template(
    body: BodyModel,
    identity: Identity,
    subdivision_levels: int,  # midpoint subdivisions of the body mesh (METHOD.md: 2)
    jaw_open_angle: float = DEFAULT_JAW_OPEN_ANGLE,  # jaw opening of the triplane template (rad)
    laplacian_max_neighbours: int = LAPLACIAN_MAX_NEIGHBOURS,  # neighbours per Laplacian row
    triplane_centre: str = "mean",  # triplane positions centred on their mean (authors) | bbox
    no_deform_face: str = FACE_EXPR,  # face part of no_deform: face_expr (authors) | face (ours)
) -> AvatarTemplate:
    """Subdivide the subject's big-pose body and carry the per-vertex attributes along.

    Skinning weights, the expression basis and the triplane positions are averaged at new
    vertices; region masks are re-binarised (a new vertex is in a region only if both parents
    are). Derived on the body's own mesh (then subdivided like the others): ``face_expr`` (the
    frontal expression face) and ``expr_boundary`` (the band inside it next to the rest of the
    head; both `persona.body.regions.expression_regions`). Derived on the subdivided mesh:
    ``face_boundary`` (the ring of vertices just outside the FLAME face) and ``mouth_ring`` (the
    ring just outside the mouth interior, whose mean colour is the mouth's target); and the
    unions ``no_deform`` (hands | eyes | face_expr, or | face with no_deform_face="face": zero
    pose offsets) and ``keep_template_weights`` (hands | face | eyes: template skinning weights
    instead of the skinning field).
    """
    if subdivision_levels < 0:
        raise ValueError(f"subdivision_levels: expected >= 0, got {subdivision_levels}")
    if no_deform_face not in NO_DEFORM_FACE_CHOICES:
        raise ValueError(f"no_deform_face: expected one of {NO_DEFORM_FACE_CHOICES}, "
                         f"got {no_deform_face!r}")
    with torch.no_grad():
        canonical = body.canonical(identity).vertices.detach()  # [V0, 3]
        triplane = triplane_template_positions(body, jaw_open_angle).detach()  # [V0, 3]
    region_masks = {k: v.bool() for k, v in body.region_masks.items()}
    rest_joints = body.J_regressor @ body.v_template  # [55, 3] zero betas
    region_masks.update(expression_regions(body.v_template, body.faces.long(), body.lbs_weights,
                                           rest_joints, body.exprdirs, region_masks["face"]))
    attributes: dict[str, Tensor] = {
        "lbs_weights": body.lbs_weights,
        "exprdirs": body.exprdirs,
        "triplane_positions": triplane,
        **{f"region/{k}": v for k, v in region_masks.items()},
    }
    original_faces = body.faces.long()
    if subdivision_levels > 0:
        from persona.body.subdivide import subdivide

        binary = {f"region/{k}" for k in region_masks}
        vertices, faces, attributes = subdivide(canonical, original_faces, attributes,
                                                subdivision_levels, binary)
    else:
        vertices, faces = canonical, original_faces
    regions = {k.split("/", 1)[1]: v.bool() for k, v in attributes.items()
               if k.startswith("region/")}
    faces = faces.long()
    regions[FACE_BOUNDARY] = region_ring(regions["face"], faces)
    regions[MOUTH_RING] = region_ring(regions["mouth_interior"], faces)
    regions[NO_DEFORM] = _union(regions, DEFORMER_ZERO_REGIONS + (no_deform_face,))
    regions[KEEP_TEMPLATE_WEIGHTS] = _union(regions, TEMPLATE_WEIGHT_REGIONS)
    regions[FACE_GAUSSIANS] = _union(regions, FACE_GAUSSIAN_REGIONS)
    lbs_weights = attributes["lbs_weights"]
    laplacian = neighbour_laplacian(faces, vertices.shape[0], laplacian_max_neighbours)
    return AvatarTemplate(
        canonical_vertices=vertices,
        faces=faces,
        lbs_weights=lbs_weights,
        exprdirs=attributes["exprdirs"],
        region_masks=regions,
        triplane_positions=centred_triplane_positions(attributes["triplane_positions"],
                                                     triplane_centre),
        dominant_joint=lbs_weights.argmax(dim=1),
        num_original_vertices=body.num_vertices,
        original_faces=original_faces,
        laplacian=laplacian,
        original_laplacian=neighbour_laplacian(original_faces, body.num_vertices,
                                               laplacian_max_neighbours),
        template_laplacian_targets=apply_laplacian(laplacian, vertices),
        median_edge_length=median_edge_length(vertices, faces),
        original_median_edge_length=median_edge_length(canonical, original_faces),
        deform_rows=torch.nonzero(~regions[NO_DEFORM], as_tuple=True)[0],
    )
