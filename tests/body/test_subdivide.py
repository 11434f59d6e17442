import pytest
import torch

from persona.body.subdivide import subdivide, unique_edges

TETRAHEDRON_V = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
TETRAHEDRON_F = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])


def _grid(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A flat n x n quad grid in z = 0, split into triangles."""
    ys, xs = torch.meshgrid(torch.arange(n + 1.0), torch.arange(n + 1.0), indexing="ij")
    vertices = torch.stack([xs.flatten(), ys.flatten(), torch.zeros((n + 1) ** 2)], -1)
    faces = []
    for i in range(n):
        for j in range(n):
            a, b = i * (n + 1) + j, i * (n + 1) + j + 1
            c, d = a + n + 1, b + n + 1
            faces += [[a, b, d], [a, d, c]]
    return vertices, torch.tensor(faces)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_counts_and_euler_characteristic(levels):
    vertices, faces = TETRAHEDRON_V, TETRAHEDRON_F
    count_v, count_f = 4, 4
    for _ in range(levels):
        count_v, count_f = count_v + (3 * count_f // 2), 4 * count_f  # closed mesh: E = 3F/2
    new_v, new_f, _ = subdivide(vertices, faces, levels=levels)
    assert new_v.shape[0] == count_v and new_f.shape[0] == count_f
    edges = unique_edges(new_f)[0]
    assert new_v.shape[0] - edges.shape[0] + new_f.shape[0] == 2  # still a sphere
    assert torch.equal(new_v[:4], vertices)  # originals keep their indices


def test_one_level_adds_one_vertex_per_edge_at_the_midpoint():
    vertices, faces = _grid(3)
    edges, _ = unique_edges(faces)
    new_v, new_f, _ = subdivide(vertices, faces, levels=1)
    assert new_v.shape[0] == vertices.shape[0] + edges.shape[0]
    assert new_f.shape[0] == 4 * faces.shape[0]
    midpoints = 0.5 * (vertices[edges[:, 0]] + vertices[edges[:, 1]])
    assert torch.allclose(new_v[vertices.shape[0]:], midpoints)
    # every face keeps its area split in four equal parts: total area is unchanged
    def area(v, f):
        return 0.5 * torch.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]],
                                 dim=-1).norm(dim=-1).sum()
    assert torch.allclose(area(new_v, new_f), area(vertices, faces))


def test_flat_mesh_stays_flat_and_attributes_interpolate_linearly():
    vertices, faces = _grid(2)
    linear = (2 * vertices[:, 0] - vertices[:, 1] + 0.5)[:, None]  # a linear field
    new_v, _, attrs = subdivide(vertices, faces, {"field": linear}, levels=2)
    assert torch.all(new_v[:, 2] == 0)
    assert torch.allclose(attrs["field"][:, 0], 2 * new_v[:, 0] - new_v[:, 1] + 0.5)


def test_binary_masks_need_both_parents():
    vertices, faces = _grid(1)  # 4 vertices, diagonal 0-3
    mask = torch.tensor([True, True, False, True])
    soft = mask.float()
    new_v, _, attrs = subdivide(vertices, faces, {"mask": mask, "soft": soft, "hard": soft},
                                levels=1, binary={"mask", "hard"})
    edges, _ = unique_edges(faces)
    expected = mask[edges[:, 0]] & mask[edges[:, 1]]
    assert torch.equal(attrs["mask"][4:], expected)
    assert torch.equal(attrs["hard"][4:], expected.float())
    assert set(attrs["soft"][4:].tolist()) == {0.5, 1.0}  # averaged, not binarised


def test_bad_arguments():
    with pytest.raises(ValueError, match="binary attributes"):
        subdivide(TETRAHEDRON_V, TETRAHEDRON_F, {}, 1, {"mask"})
    with pytest.raises(ValueError, match="attribute 'w' has 3 rows"):
        subdivide(TETRAHEDRON_V, TETRAHEDRON_F, {"w": torch.zeros(3)}, 1)
