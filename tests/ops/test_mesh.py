"""Mesh operators on hand-made meshes with known answers."""

import itertools

import pytest
import torch

from persona.ops.mesh import (
    NeighbourLaplacian,
    apply_laplacian,
    mesh_edges,
    neighbour_laplacian,
    region_ring,
    uniform_laplacian,
    vertex_neighbours,
    vertex_normals,
)

# A square pyramid's base as a fan: centre 0 surrounded by 1..4 in the z = 0 plane.
FAN_VERTICES = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0]])
FAN_FACES = torch.tensor([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1]])


def test_edges_and_neighbours() -> None:
    edges = mesh_edges(FAN_FACES, 5)
    assert edges.tolist() == [[0, 1], [0, 2], [0, 3], [0, 4], [1, 2], [1, 4], [2, 3], [3, 4]]
    index, valid = vertex_neighbours(FAN_FACES, 5, max_neighbours=3)
    assert index[0].tolist() == [1, 2, 3] and valid[0].all()  # capped at 3, lowest indices
    assert sorted(index[1][valid[1]].tolist()) == [0, 2, 4] and valid[1].sum() == 3


def test_uniform_laplacian_values() -> None:
    laplacian = uniform_laplacian(FAN_FACES, 5)
    dense = laplacian.to_dense()
    torch.testing.assert_close(dense.sum(1), torch.zeros(5))  # constants are in the kernel
    lx = apply_laplacian(laplacian, FAN_VERTICES)
    torch.testing.assert_close(lx[0], torch.zeros(3))  # centre = mean of its ring
    # Vertex 1's neighbours are 0, 2, 4: mean (0, 0, 0) + (0, 1, 0) + (0, -1, 0) = 0.
    torch.testing.assert_close(lx[1], torch.tensor([1.0, 0, 0]))
    batched = apply_laplacian(laplacian, torch.stack([FAN_VERTICES, 2 * FAN_VERTICES]))
    torch.testing.assert_close(batched[1], 2 * lx)
    # Capped at 2 neighbours: the centre averages vertices 1 and 2 only.
    capped = apply_laplacian(uniform_laplacian(FAN_FACES, 5, max_neighbours=2), FAN_VERTICES)
    torch.testing.assert_close(capped[0], torch.tensor([-0.5, -0.5, 0.0]))


def test_neighbour_laplacian_matches_the_sparse_reference() -> None:
    """The gather form is the sparse matrix's operator: same dense matrix, and in float64 the
    same products and gradients for [V, C] and [B, V, C] values, on a mesh with capped rows and an
    isolated vertex; casting and moving keep the neighbour indices."""
    generator = torch.Generator().manual_seed(0)
    grid = torch.tensor([[i * 5 + j, i * 5 + j + 1, (i + 1) * 5 + j] for i in range(4)
                         for j in range(4)] + [[i * 5 + j + 1, (i + 1) * 5 + j + 1,
                                                (i + 1) * 5 + j] for i in range(4)
                                               for j in range(4)])
    num_vertices = 26  # vertex 25 is in no face
    for max_neighbours in (10, 3):
        reference = uniform_laplacian(grid, num_vertices, max_neighbours, dtype=torch.float64)
        gathers = neighbour_laplacian(grid, num_vertices, max_neighbours, dtype=torch.float64)
        assert gathers.shape == (num_vertices, num_vertices)
        torch.testing.assert_close(gathers.to_dense(), reference.to_dense())
        for shape in ((num_vertices, 3), (2, num_vertices, 3)):
            values = torch.randn(shape, dtype=torch.float64, generator=generator)
            upstream = torch.randn(shape, dtype=torch.float64, generator=generator)
            grads = []
            for laplacian in (reference, gathers):
                leaf = values.clone().requires_grad_(True)
                out = apply_laplacian(laplacian, leaf)
                (out * upstream).sum().backward()
                grads.append((out.detach(), leaf.grad))
            torch.testing.assert_close(grads[1][0], grads[0][0], rtol=0, atol=1e-12)
            torch.testing.assert_close(grads[1][1], grads[0][1], rtol=0, atol=1e-12)
    single = gathers.to(torch.float32)
    assert isinstance(single, NeighbourLaplacian) and single.dtype == torch.float32
    assert single.neighbours.dtype == torch.int64
    assert apply_laplacian(single, torch.ones(num_vertices, 2)).abs().max() < 1e-6
    moved = gathers.to("meta")
    assert {moved.neighbours.device.type, moved.weights.device.type} == {"meta"}


def test_laplacian_in_mixed_precision_is_float32() -> None:
    """Under autocast (trainer.precision bf16-mixed / 16-mixed) half-precision values are
    multiplied in float32 with autocast off (CUDA has no half sparse kernels): the result is
    float32, equals the float32 product of the same values, and gradients reach the input."""
    for laplacian, dtype in itertools.product(
            (uniform_laplacian(FAN_FACES, 5), neighbour_laplacian(FAN_FACES, 5)),
            (torch.bfloat16, torch.float16)):
        values = (FAN_VERTICES * 1.5).to(dtype).requires_grad_(True)
        stacked = torch.stack([values, values])  # [2, V, 3]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = apply_laplacian(laplacian, values)
            batched = apply_laplacian(laplacian, stacked)
        assert out.dtype == torch.float32 and batched.dtype == torch.float32
        expected = apply_laplacian(laplacian, values.detach().float())
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(batched[1], expected)
        out.square().sum().backward()
        assert values.grad is not None and values.grad.abs().sum() > 0
    double = FAN_VERTICES.double()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # wider inputs keep their precision
        for laplacian in (uniform_laplacian(FAN_FACES, 5), neighbour_laplacian(FAN_FACES, 5)):
            assert apply_laplacian(laplacian, double).dtype == torch.float64


def test_vertex_normals_area_weighted() -> None:
    normals = vertex_normals(FAN_VERTICES, FAN_FACES)
    torch.testing.assert_close(normals, torch.tensor([[0.0, 0, 1]]).expand(5, 3))
    # Two faces meeting at vertex 0: a big one in z = 0 and a small one in x = 0.
    vertices = torch.tensor([[0.0, 0, 0], [2, 0, 0], [0, 2, 0], [0, 0.0, 1], [0, 1, 0]])
    faces = torch.tensor([[0, 1, 2], [0, 4, 3]])
    normal0 = vertex_normals(vertices[None], faces)[0, 0]
    expected = torch.nn.functional.normalize(torch.tensor([0.5 * 2, 0.0, 0.5 * 8]), dim=0)
    torch.testing.assert_close(normal0, expected)


def test_region_ring() -> None:
    region = torch.tensor([True, False, False, False, False])
    assert region_ring(region, FAN_FACES).tolist() == [False, True, True, True, True]
    region = torch.tensor([False, True, False, False, False])
    assert region_ring(region, FAN_FACES).tolist() == [True, False, True, False, True]


def test_faces_out_of_range_are_a_clear_error() -> None:
    vertices = torch.zeros(4, 3)
    for faces, got in ((torch.tensor([[0, 1, 4]]), r"\[0, 4\]"),
                       (torch.tensor([[-1, 1, 2]]), r"\[-1, 2\]")):
        with pytest.raises(ValueError, match=r"faces: indices must lie in \[0, 4\), got " + got):
            vertex_normals(vertices, faces)
    assert vertex_normals(vertices, torch.zeros(0, 3, dtype=torch.long)).shape == (4, 3)
