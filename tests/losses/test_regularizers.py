"""Regularisers on a small grid mesh with known answers."""

import pytest
import torch

from persona.losses.regularizers import (
    hand_rgb_aux_loss,
    hand_rgb_tv,
    laplacian_energy,
    laplacian_loss,
    laplacian_region_factors,
    mean_laplacian_loss,
    mouth_rgb_loss,
    posed_laplacian_loss,
    template_relative_mask,
)
from persona.ops.mesh import apply_laplacian, mesh_edges, uniform_laplacian


def _grid(n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """An n x n vertex grid in the z = 0 plane, two triangles per cell."""
    ys, xs = torch.meshgrid(torch.arange(n, dtype=torch.float64),
                            torch.arange(n, dtype=torch.float64), indexing="ij")
    vertices = torch.stack([xs.flatten(), ys.flatten(), torch.zeros(n * n, dtype=torch.float64)],
                           -1)
    faces = []
    for row in range(n - 1):
        for col in range(n - 1):
            a = row * n + col
            faces += [[a, a + 1, a + n], [a + 1, a + n + 1, a + n]]
    return vertices, torch.tensor(faces)


def _regions(count: int) -> dict[str, torch.Tensor]:
    masks = {k: torch.zeros(count, dtype=torch.bool)
             for k in ("hands", "face", "eyes", "face_boundary")}
    masks["hands"][0] = True
    masks["face"][12] = True
    masks["eyes"][13] = True
    masks["face_boundary"][7] = True
    return masks


def test_region_factors_and_relative_mask() -> None:
    factors = laplacian_region_factors(_regions(25))
    assert factors[0] == 10 and factors[7] == 10 and factors[12] == 50 and factors[13] == 50
    assert factors[1] == 1 and float(factors.sum()) == 21 * 1 + 2 * 10 + 2 * 50
    relative = template_relative_mask(_regions(25))
    assert relative.nonzero().flatten().tolist() == [0, 12, 13]


def test_laplacian_loss_flat_grid_interior_zero_and_relative_to_template() -> None:
    vertices, faces = _grid()
    laplacian = uniform_laplacian(faces, 25, dtype=torch.float64)
    interior = torch.zeros(25, dtype=torch.bool)
    interior.view(5, 5)[1:-1, 1:-1] = True
    residual = apply_laplacian(laplacian, vertices)
    assert float(residual[interior].abs().max()) < 1e-12  # a flat regular grid: L x = 0 inside
    weight = interior.double()
    assert float(laplacian_loss(vertices, laplacian, weight)) < 1e-20
    # Lifting the centre vertex by h: (L x)_centre = h, each of its 6 neighbours -h/deg.
    lifted = vertices.clone()
    lifted[12, 2] = 1.0
    loss = laplacian_loss(lifted, laplacian, weight)
    expected = float(((apply_laplacian(laplacian, lifted) ** 2) * weight[:, None]).mean())
    assert float(loss) == pytest.approx(expected) and expected > 1.0 / 75
    # Template-relative on the centre only: its own residual cancels against the template's.
    relative = torch.zeros(25, dtype=torch.bool)
    relative[12] = True
    reference = apply_laplacian(laplacian, lifted)
    only_centre = torch.zeros(25, dtype=torch.float64)
    only_centre[12] = 1.0
    assert float(laplacian_loss(lifted, laplacian, only_centre, reference, relative)) < 1e-20
    # Batched values give the mean of the per-sample losses.
    batched = torch.stack([vertices, lifted])
    assert float(laplacian_loss(batched, laplacian, weight)) == pytest.approx(expected / 2)


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_hand_tv_aux_and_mouth() -> None:
    vertices, faces = _grid()
    edges = mesh_edges(faces, 25)
    rgb = torch.zeros(25, 3, requires_grad=True)
    colours = rgb + torch.arange(25, dtype=torch.float32)[:, None] * 0.01
    hands = torch.zeros(25, dtype=torch.bool)
    hands[[0, 1, 5]] = True  # edges (0,1) diff 0.01, (0,5) diff 0.05, (1,5) diff 0.04
    assert float(hand_rgb_tv(colours, edges, hands)) == pytest.approx(0.1 / 3)
    aux = torch.full((25, 3), 0.5, requires_grad=True)
    loss = hand_rgb_aux_loss(colours, aux, hands)
    assert float(loss) == pytest.approx(0.5 - 0.02)
    loss.backward()
    assert aux.grad is None  # rgb_aux is only a target
    mouth = torch.zeros(25, dtype=torch.bool)
    mouth[12] = True
    ring = torch.zeros(25, dtype=torch.bool)
    ring[[7, 11, 13, 17]] = True  # mean colour 0.12
    assert float(mouth_rgb_loss(colours, mouth, ring)) == pytest.approx(0.0, abs=1e-7)
    assert float(mouth_rgb_loss(colours, ring, mouth)) == pytest.approx(0.03)


def test_mean_and_posed_laplacian_wrappers() -> None:
    vertices, faces = _grid()
    laplacian = uniform_laplacian(faces, 25, dtype=torch.float64)
    regions = _regions(25)
    lifted = vertices.clone()
    lifted[[0, 6], 2] = 0.5  # vertex 0 is a hand (template-relative), 6 is plain body
    residual = apply_laplacian(laplacian, lifted) - apply_laplacian(laplacian, vertices) * (
        template_relative_mask(regions)[:, None])
    factors = laplacian_region_factors(regions).double()
    expected = float((factors[:, None] * residual ** 2).mean())
    got = mean_laplacian_loss(lifted, vertices, laplacian, regions)
    assert float(got) == pytest.approx(expected)
    # The template itself costs only its own curvature off the template-relative regions.
    flat_cost = mean_laplacian_loss(vertices, vertices, laplacian, regions)
    boundary = apply_laplacian(laplacian, vertices) * (~template_relative_mask(regions))[:, None]
    assert float(flat_cost) == pytest.approx(float((factors[:, None] * boundary ** 2).mean()))
    posed = posed_laplacian_loss(lifted, laplacian, regions)
    keep = (~template_relative_mask(regions)).double()
    assert float(posed) == pytest.approx(float(laplacian_loss(lifted, laplacian, keep)))
    assert float(laplacian_energy(lifted, laplacian)) == pytest.approx(
        float((apply_laplacian(laplacian, lifted) ** 2).mean()))
