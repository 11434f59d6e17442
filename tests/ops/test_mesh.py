"""Mesh operators on hand-made meshes with known answers."""

import torch

from persona.ops.mesh import (
    apply_laplacian,
    mesh_edges,
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


def test_laplacian_in_mixed_precision_is_float32() -> None:
    """Under autocast (trainer.precision bf16-mixed / 16-mixed) half-precision values are
    multiplied in float32 with autocast off (CUDA has no half sparse kernels): the result is
    float32, equals the float32 product of the same values, and gradients reach the input."""
    laplacian = uniform_laplacian(FAN_FACES, 5)
    for dtype in (torch.bfloat16, torch.float16):
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
