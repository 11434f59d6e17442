"""Triangle-mesh operators: edges, neighbours, the uniform Laplacian, vertex normals, rings.

Meshes are ``faces [F, 3] long`` indexing ``num_vertices`` vertices. The uniform Laplacian comes
in two forms of one operator: ``uniform_laplacian``, a sparse matrix (the reference), and
``neighbour_laplacian``, padded one-ring gathers (what the avatar template holds: faster forward
and backward on the CPU, experiments/bench/laplacian.py); ``apply_laplacian`` takes either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# Guards the normalisation of vertex normals of isolated or degenerate vertices.
NORMAL_EPS = 1e-12


def _check_faces(faces: Tensor, num_vertices: int) -> None:
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces: expected shape [F, 3], got {list(faces.shape)}")
    if faces.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"faces: expected an integer tensor, got {faces.dtype}")
    if not faces.numel():
        return
    low, high = torch.stack(torch.aminmax(faces)).tolist()  # one host read for both
    if low < 0 or high >= num_vertices:
        raise ValueError(f"faces: indices must lie in [0, {num_vertices}), got [{low}, {high}]")


def mesh_edges(faces: Tensor, num_vertices: int) -> Tensor:
    """Unique undirected edges of a triangle mesh, sorted, each (i < j). Returns [E, 2] long."""
    _check_faces(faces, num_vertices)
    faces = faces.long()
    pairs = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])  # [3F, 2]
    pairs = torch.sort(pairs, dim=1).values
    keys = torch.unique(pairs[:, 0] * num_vertices + pairs[:, 1])  # sorted
    return torch.stack([keys // num_vertices, keys % num_vertices], dim=1)


def _padded_rows(rows: Tensor, cols: Tensor, values: Tensor, num_rows: int,
                 width: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Entries (rows, cols, values) [E] of a [num_rows, num_rows] matrix as padded rows, each
    row's columns in increasing order: (cols [R, K] long, values [R, K], valid [R, K] bool) with
    K = width (a longer row keeps its lowest columns) or, when None, the longest row. Padded
    slots hold the row itself, value 0 and valid False."""
    order = torch.argsort(rows * num_rows + cols)
    rows, cols, values = rows[order], cols[order], values[order]
    counts = torch.bincount(rows, minlength=num_rows)  # [R]
    if width is None:
        width = max(1, int(counts.max())) if rows.numel() else 1
    rank = torch.arange(rows.shape[0], device=rows.device) - (torch.cumsum(counts, 0)
                                                               - counts)[rows]
    keep = rank < width
    rows, rank = rows[keep], rank[keep]
    index = torch.arange(num_rows, device=rows.device)[:, None].repeat(1, width)
    padded = values.new_zeros(num_rows, width)
    valid = torch.zeros(num_rows, width, dtype=torch.bool, device=rows.device)
    index[rows, rank] = cols[keep]
    padded[rows, rank] = values[keep]
    valid[rows, rank] = True
    return index, padded, valid


def vertex_neighbours(faces: Tensor, num_vertices: int,
                      max_neighbours: int = 10) -> tuple[Tensor, Tensor]:
    """One-ring neighbours of every vertex, at most max_neighbours each (the lowest indices).

    Returns (index [V, K] long, valid [V, K] bool) with K = max_neighbours; padded slots hold the
    vertex itself and valid False.
    """
    if max_neighbours < 1:
        raise ValueError(f"max_neighbours: expected >= 1, got {max_neighbours}")
    edges = mesh_edges(faces, num_vertices)  # [E, 2]
    directed = torch.cat([edges, edges.flip(1)])  # [2E, 2]
    index, _, valid = _padded_rows(directed[:, 0], directed[:, 1],
                                   torch.ones(directed.shape[0], device=faces.device),
                                   num_vertices, max_neighbours)
    return index, valid


def uniform_laplacian(faces: Tensor, num_vertices: int, max_neighbours: int = 10,
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """The uniform ("umbrella") Laplacian as a sparse [V, V] matrix: (L x)_i = x_i - mean_j x_j
    over the (at most max_neighbours) one-ring neighbours j of i. Isolated vertices get a zero row.
    """
    index, valid = vertex_neighbours(faces, num_vertices, max_neighbours)
    counts = valid.sum(1)  # [V]
    rows = torch.arange(num_vertices, device=faces.device)
    has_neighbours = counts > 0
    weights = 1.0 / counts.clamp(min=1).to(dtype)  # [V]
    neighbour_rows = rows[:, None].expand_as(index)[valid]
    neighbour_cols = index[valid]
    neighbour_vals = -weights[:, None].expand_as(index)[valid]
    all_rows = torch.cat([rows[has_neighbours], neighbour_rows])
    all_cols = torch.cat([rows[has_neighbours], neighbour_cols])
    all_vals = torch.cat([torch.ones(int(has_neighbours.sum()), dtype=dtype, device=faces.device),
                          neighbour_vals])
    return torch.sparse_coo_tensor(torch.stack([all_rows, all_cols]), all_vals,
                                   (num_vertices, num_vertices),
                                   check_invariants=True).coalesce()


@dataclass(frozen=True)
class NeighbourLaplacian:
    """The uniform Laplacian as gathers over padded rings:
    (L x)_i = diagonal_i x_i - sum_k weights_ik x_(neighbours_ik), the operator of
    uniform_laplacian's sparse matrix (parity: tests/ops/test_mesh.py). The transpose, which the
    backward applies, has rings of its own (a capped row is not its columns' row)."""

    neighbours: Tensor  # [V, K] long; padded slots hold the vertex itself
    weights: Tensor  # [V, K] 1 / (number of neighbours) on valid slots, 0 on padded ones
    diagonal: Tensor  # [V] 1 where the vertex has a neighbour, else 0 (an isolated vertex)
    transposed_neighbours: Tensor  # [V, K'] long: the rows i whose ring holds vertex j
    transposed_weights: Tensor  # [V, K'] those rows' weights of j, 0 on padded slots

    @property
    def shape(self) -> tuple[int, int]:
        return (self.diagonal.shape[0], self.diagonal.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.weights.dtype

    @property
    def device(self) -> torch.device:
        return self.weights.device

    def to(self, target: torch.device | str | torch.dtype) -> NeighbourLaplacian:
        """Moved to a device (every tensor) or cast to a floating dtype (the weights)."""
        move = (lambda t: t) if isinstance(target, torch.dtype) else (lambda t: t.to(target))
        return NeighbourLaplacian(move(self.neighbours), self.weights.to(target),
                                  self.diagonal.to(target), move(self.transposed_neighbours),
                                  self.transposed_weights.to(target))

    def to_dense(self) -> Tensor:
        """The [V, V] matrix (tests and small meshes only)."""
        rows = torch.arange(self.shape[0], device=self.device)[:, None].expand_as(self.neighbours)
        return torch.diag(self.diagonal).index_put((rows, self.neighbours), -self.weights,
                                                   accumulate=True)


def neighbour_laplacian(faces: Tensor, num_vertices: int, max_neighbours: int = 10,
                        dtype: torch.dtype = torch.float32) -> NeighbourLaplacian:
    """uniform_laplacian's operator (the same at most max_neighbours one-ring neighbours of each
    vertex) as a NeighbourLaplacian."""
    index, valid = vertex_neighbours(faces, num_vertices, max_neighbours)
    counts = valid.sum(1)  # [V]
    weights = valid.to(dtype) / counts.clamp(min=1).to(dtype)[:, None]  # [V, K]
    rows = torch.arange(num_vertices, device=faces.device)[:, None].expand_as(index)[valid]
    transposed, transposed_weights, _ = _padded_rows(index[valid], rows, weights[valid],
                                                     num_vertices)
    return NeighbourLaplacian(index, weights, (counts > 0).to(dtype), transposed,
                              transposed_weights)


def _ring_product(values: Tensor, diagonal: Tensor, neighbours: Tensor, weights: Tensor
                  ) -> Tensor:
    """diagonal_i x_i - sum_k weights_ik x_(neighbours_ik) for values [..., V, C]."""
    ring = values.index_select(-2, neighbours.reshape(-1))  # [..., V * K, C]
    ring = ring.unflatten(-2, neighbours.shape)  # [..., V, K, C]
    return values * diagonal[:, None] - (ring * weights[..., None]).sum(-2)


class _GatherLaplacian(torch.autograd.Function):
    """L x by gathers, L^T g by the transposed rings' gathers (no scatter in the backward)."""

    @staticmethod
    def forward(ctx, values: Tensor, laplacian: NeighbourLaplacian) -> Tensor:
        ctx.laplacian = laplacian
        return _ring_product(values, laplacian.diagonal, laplacian.neighbours,
                             laplacian.weights)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D401 - autograd signature
        lap = ctx.laplacian
        return (_ring_product(grad.contiguous(), lap.diagonal, lap.transposed_neighbours,
                              lap.transposed_weights), None)


HALF_DTYPES = (torch.float16, torch.bfloat16)  # multiplied in float32 by apply_laplacian


def apply_laplacian(laplacian: Tensor | NeighbourLaplacian, values: Tensor) -> Tensor:
    """L @ values for values [V, C] or [B, V, C] (differentiable in values) -> same shape;
    laplacian: uniform_laplacian's sparse [V, V] or a NeighbourLaplacian.
    Half-precision values (trainer.precision 16-mixed / bf16-mixed) are multiplied in float32,
    with autocast off: sparse products have no half kernels on CUDA, and the regularisers that
    call this are weighted up to 1e6, beyond half precision's range (the result is then float32)."""
    device_type = values.device.type
    if values.dtype in HALF_DTYPES or torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            wide = values.float() if values.dtype in HALF_DTYPES else values
            return _apply_laplacian(laplacian, wide)
    return _apply_laplacian(laplacian, values)


def _apply_laplacian(laplacian: Tensor | NeighbourLaplacian, values: Tensor) -> Tensor:
    if values.ndim not in (2, 3):
        raise ValueError(f"apply_laplacian: expected values [V, C] or [B, V, C], "
                         f"got {list(values.shape)}")
    if laplacian.dtype != values.dtype:
        laplacian = laplacian.to(values.dtype)
    if isinstance(laplacian, NeighbourLaplacian):
        return _GatherLaplacian.apply(values, laplacian)
    if values.ndim == 2:
        return torch.sparse.mm(laplacian, values)
    batch, num_vertices, channels = values.shape
    flat = values.permute(1, 0, 2).reshape(num_vertices, batch * channels)
    out = torch.sparse.mm(laplacian, flat)
    return out.reshape(num_vertices, batch, channels).permute(1, 0, 2)


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals. vertices [..., V, 3] -> [..., V, 3].

    Each face adds its unnormalised cross product (length = twice its area) to its three corners;
    the sums are normalised. Orientation follows the faces' winding (counter-clockwise = outward).
    """
    if vertices.ndim < 2 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices: expected shape [..., V, 3], got {list(vertices.shape)}")
    _check_faces(faces, vertices.shape[-2])
    faces = faces.long()
    v0 = vertices[..., faces[:, 0], :]
    v1 = vertices[..., faces[:, 1], :]
    v2 = vertices[..., faces[:, 2], :]
    face_normals = torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)  # [..., F, 3]
    normals = torch.zeros_like(vertices)
    for corner in range(3):
        normals = normals.index_add(-2, faces[:, corner], face_normals)
    return normals / normals.norm(dim=-1, keepdim=True).clamp(min=NORMAL_EPS)


def region_ring(region: Tensor, faces: Tensor) -> Tensor:
    """Vertices outside region [V] bool that share an edge with a vertex inside it -> [V] bool."""
    num_vertices = region.shape[0]
    edges = mesh_edges(faces, num_vertices)
    inside = region.bool()
    ring = torch.zeros_like(inside)
    crossing = inside[edges[:, 0]] != inside[edges[:, 1]]
    ring[edges[crossing].flatten()] = True
    return ring & ~inside
