"""Mesh silhouettes (hand, eye and face masks of the SMPL-X mesh): no gradient.

``rasterize_silhouette`` covers every pixel of the given faces; ``rasterize_labels`` is a
z-buffered label image of the whole mesh, so part masks taken from it are occluded by the rest
of the body (a hand behind the torso is not in the hand mask).

A pixel is 1 when its centre (u + 0.5, v + 0.5) lies inside or on the edge of at least one
projected triangle, tested with the three edge functions in float64 (either winding counts, so
back faces cover pixels too). Triangles with any vertex in front of the near plane (camera
z < near) are skipped, not clipped: a silhouette mask of a body seen from >= 0.5 m never has
such triangles, and skipping keeps the test exact. Zero-area projected triangles are skipped.

Vectorised as (triangle, pixel) pairs inside each triangle's pixel bounding box, processed in
chunks of triangles whose boxes hold at most ``max_pairs`` pixels together.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from persona.render.projection import project_points
from persona.render.types import Camera

DEFAULT_MAX_PAIRS = 4_000_000  # (triangle, pixel) pairs evaluated per chunk


def project_vertices(vertices: Tensor, camera: Camera) -> tuple[Tensor, Tensor]:
    """World vertices [V, 3] -> pixel coordinates [V, 2] and camera z [V] (float64, no
    gradient): `project_points` in float64 (only in-front triangles are ever rasterised)."""
    return project_points(vertices.detach().to(torch.float64), camera)


def edge_function(ax: Tensor, ay: Tensor, bx: Tensor, by: Tensor, px: Tensor, py: Tensor
                  ) -> Tensor:
    """Twice the signed area of (a, b, p): > 0 when p is left of a->b (image axes)."""
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax)


def _check_mesh(vertices: Tensor, faces: Tensor, name: str) -> None:
    if vertices.dim() != 2 or vertices.shape[1] != 3:
        raise ValueError(f"{name}: vertices must be [V, 3], got {tuple(vertices.shape)}")
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise ValueError(f"{name}: faces must be [F, 3], got {tuple(faces.shape)}")
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= vertices.shape[0]):
        raise ValueError(f"{name}: faces index outside [0, V)")


def covered_pairs(uv: Tensor, z: Tensor, faces: Tensor, camera: Camera, max_pairs: int
                  ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Chunks of (pixel index [M], triangle index [M], barycentrics [M, 3]) for every pixel
    centre inside or on the edge of a projected triangle (either winding), triangles in front of
    the near plane with non-zero area only. Barycentrics are screen-space, weights of the
    triangle's vertices (a, b, c)."""
    height, width, device = camera.height, camera.width, uv.device
    tri_uv = uv[faces]  # [F, 3, 2]
    (ax, ay), (bx, by), (cx, cy) = [tri_uv[:, i].unbind(-1) for i in range(3)]
    area2 = edge_function(ax, ay, bx, by, cx, cy)  # [F]
    in_front = (z[faces] >= camera.near).all(dim=1)
    lo = tri_uv.amin(dim=1)  # [F, 2]
    hi = tri_uv.amax(dim=1)
    col0 = torch.ceil(lo[:, 0] - 0.5).clamp(min=0)
    col1 = torch.floor(hi[:, 0] - 0.5).clamp(max=width - 1)
    row0 = torch.ceil(lo[:, 1] - 0.5).clamp(min=0)
    row1 = torch.floor(hi[:, 1] - 0.5).clamp(max=height - 1)
    ncol = (col1 - col0 + 1).clamp(min=0)
    nrow = (row1 - row0 + 1).clamp(min=0)
    live = in_front & (area2 != 0) & (ncol > 0) & (nrow > 0)
    tri = live.nonzero().squeeze(1)  # [F']
    ncol, nrow = ncol[tri].to(torch.int64), nrow[tri].to(torch.int64)
    col0, row0 = col0[tri].to(torch.int64), row0[tri].to(torch.int64)
    counts = ncol * nrow  # [F']
    ends = torch.cumsum(counts, 0)
    start = 0
    while start < tri.shape[0]:
        base = int(ends[start - 1]) if start else 0
        stop = int(torch.searchsorted(ends, base + max_pairs, right=True))
        stop = max(stop, start + 1)
        sl = slice(start, stop)
        local = torch.repeat_interleave(torch.arange(stop - start, device=device), counts[sl])
        first = torch.cumsum(counts[sl], 0) - counts[sl]
        off = torch.arange(local.shape[0], device=device) - first[local]
        nx = ncol[sl][local]
        r = row0[sl][local] + off // nx
        c = col0[sl][local] + off % nx
        px, py = c.to(torch.float64) + 0.5, r.to(torch.float64) + 0.5
        t = tri[sl][local]
        e0 = edge_function(ax[t], ay[t], bx[t], by[t], px, py)  # opposite c
        e1 = edge_function(bx[t], by[t], cx[t], cy[t], px, py)  # opposite a
        e2 = edge_function(cx[t], cy[t], ax[t], ay[t], px, py)  # opposite b
        inside = ((e0 >= 0) & (e1 >= 0) & (e2 >= 0)) | ((e0 <= 0) & (e1 <= 0) & (e2 <= 0))
        bary = torch.stack([e1, e2, e0], dim=-1)[inside] / area2[t][inside, None]  # [M, 3]
        yield (r * width + c)[inside], t[inside], bary
        start = stop


@torch.no_grad()
def rasterize_silhouette(vertices: Tensor, faces: Tensor, camera: Camera,
                         max_pairs: int = DEFAULT_MAX_PAIRS) -> Tensor:
    """Binary mask [H, W] (float 0/1, vertices' device) of the mesh seen by ``camera``."""
    _check_mesh(vertices, faces, "rasterize_silhouette")
    height, width, device = camera.height, camera.width, vertices.device
    mask = torch.zeros(height * width, dtype=torch.bool, device=device)
    uv, z = project_vertices(vertices, camera)
    faces = faces.to(device=device, dtype=torch.int64)
    for pixels, _, _ in covered_pairs(uv, z, faces, camera, max_pairs):
        mask[pixels] = True
    return mask.reshape(height, width).to(torch.float32)


@torch.no_grad()
def rasterize_labels(vertices: Tensor, faces: Tensor, face_labels: Tensor, camera: Camera,
                     background: int = -1, max_pairs: int = DEFAULT_MAX_PAIRS) -> Tensor:
    """Label of the nearest visible triangle per pixel [H, W] (int64; ``background`` where no
    triangle covers the pixel centre): a z-buffer on perspective-correct depth
    (1/z interpolated with screen-space barycentrics). face_labels: [F] integers. Ties at equal
    depth go to either face. Masks of body parts that respect occlusion are ``labels == k``."""
    _check_mesh(vertices, faces, "rasterize_labels")
    if face_labels.shape != (faces.shape[0],):
        raise ValueError(f"rasterize_labels: face_labels must be [{faces.shape[0]}], got "
                         f"{tuple(face_labels.shape)}")
    height, width, device = camera.height, camera.width, vertices.device
    depth = torch.full((height * width,), float("inf"), dtype=torch.float64, device=device)
    labels = torch.full((height * width,), background, dtype=torch.int64, device=device)
    uv, z = project_vertices(vertices, camera)
    faces = faces.to(device=device, dtype=torch.int64)
    face_labels = face_labels.to(device=device, dtype=torch.int64)
    inverse_z = 1.0 / z.clamp(min=camera.near)  # [V]; only in-front triangles are enumerated
    for pixels, tri, bary in covered_pairs(uv, z, faces, camera, max_pairs):
        pair_depth = 1.0 / (bary * inverse_z[faces[tri]]).sum(-1)  # [M] perspective-correct z
        chunk = torch.full_like(depth, float("inf")).scatter_reduce(
            0, pixels, pair_depth, reduce="amin")
        winner = pair_depth == chunk[pixels]  # [M] the nearest pair(s) of each pixel
        chunk_labels = torch.empty_like(labels)
        chunk_labels[pixels[winner]] = face_labels[tri[winner]]
        nearer = chunk < depth
        depth = torch.where(nearer, chunk, depth)
        labels = torch.where(nearer, chunk_labels, labels)
    return labels.reshape(height, width)
