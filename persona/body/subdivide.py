"""Loop-free midpoint subdivision: each triangle into four, attributes averaged on edges.

Level by level, the new vertex of edge (a, b) is appended after the existing vertices (edges in
sorted (min, max) order), so the original vertices keep indices 0..V-1. Continuous attributes
take the mean of the two endpoints; binary attributes are re-binarised: a new vertex is in the
set only if both endpoints are (METHOD.md section 1).
"""

from __future__ import annotations

import torch
from torch import Tensor


def unique_edges(faces: Tensor) -> tuple[Tensor, Tensor]:
    """Edges [E, 2] (sorted endpoints, sorted rows) and, per face corner edge, its edge id
    [F, 3] for the edges (v0 v1), (v1 v2), (v2 v0)."""
    corner_edges = torch.stack([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], dim=1)
    corner_edges = corner_edges.sort(dim=-1).values.reshape(-1, 2)  # [3F, 2]
    stride = int(faces.max()) + 1 if faces.numel() else 1
    keys = corner_edges[:, 0] * stride + corner_edges[:, 1]  # one int64 per edge: 1-D unique
    unique_keys, inverse = torch.unique(keys, return_inverse=True)  # sorted = (min, max) order
    edges = torch.stack([unique_keys // stride, unique_keys % stride], dim=-1)
    return edges, inverse.reshape(-1, 3)


def subdivide_once(vertices: Tensor, faces: Tensor, attributes: dict[str, Tensor],
                   binary: set[str]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """One level: V + E vertices, 4F faces."""
    num_vertices = vertices.shape[0]
    edges, face_edges = unique_edges(faces)  # [E, 2], [F, 3]
    midpoints = 0.5 * (vertices[edges[:, 0]] + vertices[edges[:, 1]])  # [E, 3]
    new_vertices = torch.cat([vertices, midpoints])
    new_attributes: dict[str, Tensor] = {}
    for name, values in attributes.items():
        first, second = values[edges[:, 0]], values[edges[:, 1]]
        if name in binary:
            if values.dtype == torch.bool:
                added = first & second
            else:
                added = torch.minimum((first > 0.5).to(values.dtype),
                                      (second > 0.5).to(values.dtype))
        else:
            added = 0.5 * (first + second)
        new_attributes[name] = torch.cat([values, added])
    a, b, c = faces.unbind(-1)
    ab, bc, ca = (face_edges + num_vertices).unbind(-1)
    new_faces = torch.cat([
        torch.stack([a, ab, ca], -1), torch.stack([ab, b, bc], -1),
        torch.stack([ca, bc, c], -1), torch.stack([ab, bc, ca], -1)])
    return new_vertices, new_faces, new_attributes


def subdivide(vertices: Tensor, faces: Tensor, attributes: dict[str, Tensor] | None = None,
              levels: int = 1, binary: set[str] | None = None,
              ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """`levels` 1-to-4 splits. vertices [V,3], faces [F,3] long, attributes {name: [V, ...]}.

    Returns (vertices [V', 3], faces [F * 4^levels, 3], attributes {name: [V', ...]}).
    """
    if levels < 0:
        raise ValueError(f"subdivide: levels must be >= 0, got {levels}")
    attributes = dict(attributes or {})
    binary = set(binary or ())
    unknown = binary - set(attributes)
    if unknown:
        raise ValueError(f"subdivide: binary attributes {sorted(unknown)} not in attributes")
    for name, values in attributes.items():
        if values.shape[0] != vertices.shape[0]:
            raise ValueError(f"subdivide: attribute {name!r} has {values.shape[0]} rows, "
                             f"expected {vertices.shape[0]}")
    faces = faces.long()
    for _ in range(levels):
        vertices, faces, attributes = subdivide_once(vertices, faces, attributes, binary)
    return vertices, faces, attributes
