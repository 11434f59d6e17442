"""The authors' face-patch terms (avatar/main/model.py: patch_face, patch_face_boundary,
patch_mask_face, patch_face_geo), input image only, base render only, in the patch camera.

The face Gaussians are is_face = face_expr | eyes. Every Gaussian is rasterised, colours x is_face,
so the others occlude in black; the renders are composited over the patch with the face
Gaussians' own alpha (the rendered is_face channel). One render pass carries every channel group
the enabled terms need. The pure losses live in persona/losses/face_patch.py; the mesh face
silhouettes in the patch camera come from ``face_silhouettes`` (the lead binds the posed body).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from persona.avatar.posing import AvatarState, state_gaussians
from persona.losses.face_patch import (
    crop_camera,
    crop_image,
    detect_face_boundary,
    face_box,
    face_geo_loss,
    face_patch_boundary_loss,
    face_patch_image_loss,
)
from persona.losses.seams import LossMapFn, positional_colours
from persona.losses.table import LossWeights
from persona.render.projection import project_points
from persona.render.silhouette import edge_function, project_vertices, rasterize_labels
from persona.render.types import Camera, ChannelGroup, Renderer, RenderSettings

# Term names (persona/losses/table.py FACE_PATCH_TERMS, authors' terms in brackets).
PATCH_IMAGE = "face_patch_base"  # patch_face
PATCH_BOUNDARY = "face_patch_boundary"  # patch_face_boundary
PATCH_MASK = "face_patch_mask"  # patch_mask_face
PATCH_GEO = "face_patch_geo"  # patch_face_geo
AUTHORS_FACE_PATCH_TERMS = (PATCH_IMAGE, PATCH_BOUNDARY, PATCH_MASK, PATCH_GEO)
# Vertex regions of the mesh face silhouette (the authors' is_face: expression face + eyes).
MESH_FACE_REGIONS = ("face_expr", "eyes")
MOUTH_REGION = "mouth_interior"  # faces with all three vertices here close the mouth
# The face interior left out of the face boundary: mesh face (with mouth) silhouette above this.
MESH_FACE_INTERIOR_THRESHOLD = 0.9

# (patch camera) -> (mesh face silhouette with the mouth interior, without it), [S, S] float each.
MeshFaceSilhouetteFn = Callable[[Camera], tuple[Tensor, Tensor]]
Terms = dict[str, tuple[Tensor, float]]


def patch_view(face_means: Tensor, batch: dict, camera: Camera, margin: float,
               size: int) -> tuple[Camera, Tensor]:
    """(patch camera, patch [S, S, 3]): the square box of the face means [P, 3] projected with
    the native intrinsics (batch "K_native" [1, 3, 3]), enlarged by margin, cropped from
    batch "image_native" [1, H, W, 3] and resampled to size x size."""
    native = batch["image_native"][0]  # [H, W, 3]
    height, width = native.shape[:2]
    full = Camera(batch["K_native"][0], camera.R, camera.t, width, height)
    with torch.no_grad():
        uv, _ = project_points(face_means, full)  # [P, 2]
    x0, y0, side = face_box(uv, width, height, margin)
    return crop_camera(full, x0, y0, side, size), crop_image(native, x0, y0, side, size)


def face_channels(state: AvatarState, is_face: Tensor, rgb_init: Tensor | None,
                  needed: set[str]) -> dict[str, ChannelGroup]:
    """The channel groups the enabled terms need. is_face [N, 1] float; rgb_init [N, 3]
    (needed only by face_patch_geo)."""
    channels = {"face_alpha": ChannelGroup(is_face)}  # the face Gaussians' alpha
    if PATCH_IMAGE in needed:
        channels["face_rgb"] = ChannelGroup(state.rgb["base"] * is_face)
    if needed & {PATCH_IMAGE, PATCH_BOUNDARY}:  # the face boundary
        positions = positional_colours(state.canonical_base).detach()  # [N, 3]
        channels["face_positional"] = ChannelGroup(positions * is_face, geometry_grad=False)
    if PATCH_BOUNDARY in needed:
        channels["rgb_geo_detached"] = ChannelGroup(state.rgb["base"], geometry_grad=False)
        channels["face_aux"] = ChannelGroup(state.rgb_aux.detach() * is_face,
                                            geometry_grad=False)
    if PATCH_GEO in needed:
        if rgb_init is None:
            raise ValueError("face_patch_geo needs the frozen initial colours (rgb_init)")
        channels["face_init"] = ChannelGroup(rgb_init.detach() * is_face)
    return channels


def authors_face_patch_terms(state: AvatarState, batch: dict, camera: Camera,
                             weights: dict[str, float], loss_weights: LossWeights,
                             face_mask: Tensor, rgb_init: Tensor | None, renderer: Renderer,
                             loss_map: LossMapFn,
                             mesh_face_silhouette: MeshFaceSilhouetteFn) -> Terms:
    """{face_patch_base, face_patch_boundary, face_patch_mask, face_patch_geo}: (value,
    weights[key]) for each term of positive weight; {} (nothing rendered) when none is.
    face_mask [N] bool: the face Gaussians (face_expr | eyes); rgb_init [N, 3]: their frozen
    initial colours in [0, 1]; loss_weights: face_patch_margin, face_patch_size;
    loss_map(render [S, S, 3], target [S, S, 3]) -> [1, 1, S, S]."""
    needed = {k for k in AUTHORS_FACE_PATCH_TERMS if weights.get(k, 0.0) > 0}
    if not needed or not bool(face_mask.any()):
        return {}
    means = state.means["base"]  # [N, 3]
    patch_camera, patch = patch_view(means[face_mask], batch, camera,
                                     loss_weights.face_patch_margin,
                                     loss_weights.face_patch_size)
    is_face = face_mask[:, None].to(means.dtype)  # [N, 1]
    out = renderer.render(state_gaussians(state, "base"), patch_camera,
                          face_channels(state, is_face, rgb_init, needed),
                          RenderSettings(depth=False))
    alpha = out["face_alpha"]  # [S, S, 1]
    with_mouth, without_mouth = (mesh_face_silhouette(patch_camera)
                                 if needed & {PATCH_IMAGE, PATCH_BOUNDARY, PATCH_MASK}
                                 else (None, None))
    boundary = None
    if needed & {PATCH_IMAGE, PATCH_BOUNDARY}:
        interior = with_mouth.to(alpha.device) > MESH_FACE_INTERIOR_THRESHOLD  # [S, S]
        boundary = detect_face_boundary(out["face_positional"], alpha.detach(), interior)
    compute = {
        PATCH_IMAGE: lambda: face_patch_image_loss(out["face_rgb"], alpha, patch, boundary,
                                                   loss_map),
        PATCH_BOUNDARY: lambda: face_patch_boundary_loss(out["rgb_geo_detached"],
                                                         out["face_aux"], alpha, patch,
                                                         boundary, loss_map),
        PATCH_MASK: lambda: (alpha[..., 0] - without_mouth.to(alpha)).abs().mean(),
        PATCH_GEO: lambda: face_geo_loss(out["face_init"], alpha, patch),
    }
    return {key: (compute[key](), weights[key]) for key in AUTHORS_FACE_PATCH_TERMS
            if key in needed}


@torch.no_grad()
def interpolated_vertex_mask(vertices: Tensor, faces: Tensor, vertex_values: Tensor,
                             camera: Camera) -> Tensor:
    """The whole mesh z-buffered in ``camera``; per pixel the nearest triangle's vertex_values
    [V] interpolated with screen-space barycentrics at the pixel centre, 0 off the mesh (the
    authors' MeshRenderer with a per-vertex mask). vertices [V, 3], faces [F, 3] -> [H, W]."""
    faces = faces.to(device=vertices.device, dtype=torch.int64)
    labels = rasterize_labels(vertices, faces, torch.arange(faces.shape[0]), camera)  # [H, W]
    mask = torch.zeros(labels.shape, dtype=torch.float32, device=vertices.device)
    covered = labels >= 0
    if not bool(covered.any()):
        return mask
    rows, cols = covered.nonzero(as_tuple=True)  # [P]
    px, py = cols.to(torch.float64) + 0.5, rows.to(torch.float64) + 0.5
    tri = faces[labels[covered]]  # [P, 3]
    uv, _ = project_vertices(vertices, camera)  # [V, 2] float64
    (ax, ay), (bx, by), (cx, cy) = [uv[tri[:, i]].unbind(-1) for i in range(3)]
    area2 = edge_function(ax, ay, bx, by, cx, cy)  # [P], non-zero for rasterised triangles
    bary = torch.stack([edge_function(bx, by, cx, cy, px, py),
                        edge_function(cx, cy, ax, ay, px, py),
                        edge_function(ax, ay, bx, by, px, py)], -1) / area2[:, None]  # [P, 3]
    values = vertex_values.to(device=vertices.device, dtype=torch.float64)[tri]  # [P, 3]
    mask[covered] = (bary * values).sum(-1).clamp(0.0, 1.0).to(torch.float32)
    return mask


@torch.no_grad()
def face_silhouettes(vertices: Tensor, faces: Tensor, region_masks: dict[str, Tensor],
                     camera: Camera) -> tuple[Tensor, Tensor]:
    """(with the mouth interior, without it) [H, W] float: the posed body mesh (vertices
    [V, 3], faces [F, 3], region_masks of its V vertices) z-buffered in ``camera``, valued by
    the interpolated face vertex mask (face_expr | eyes; with the mouth also mouth_interior).
    Faces whose three vertices lie in mouth_interior close the mouth (the authors'
    face_with_mouth_in); without the mouth they are left out. The same image twice when there
    are none."""
    face = torch.zeros_like(region_masks[MESH_FACE_REGIONS[0]], dtype=torch.bool)  # [V]
    for region in MESH_FACE_REGIONS:
        face = face | region_masks[region].bool()
    mouth = region_masks.get(MOUTH_REGION, torch.zeros_like(face)).bool()  # [V]
    faces = faces.to(device=vertices.device, dtype=torch.int64)
    mouth_faces = mouth.to(faces.device)[faces].all(1)  # [F]
    with_mouth = interpolated_vertex_mask(vertices, faces, (face | mouth).float(), camera)
    if not bool(mouth_faces.any()):
        return with_mouth, with_mouth
    without = interpolated_vertex_mask(vertices, faces[~mouth_faces], face.float(), camera)
    return with_mouth, without
