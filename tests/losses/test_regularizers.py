"""Regularisers on a small grid mesh with known answers."""

import pytest
import torch

from persona.losses.colour import hand_rgb_aux_loss, mouth_rgb_loss
from persona.losses.regularizers import (
    LEVEL_SCALED_TERMS,
    hand_rgb_tv,
    laplacian_energy,
    laplacian_level_factor,
    laplacian_loss,
    laplacian_region_factors,
    level_scaled_weights,
    level_template_share,
    mean_laplacian_loss,
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
    """hands {0}, FLAME face {11, 12, 16}, expression face {12, 16}, its boundary band {16}
    (inside it), eyes {13}."""
    masks = {k: torch.zeros(count, dtype=torch.bool)
             for k in ("hands", "face", "face_expr", "expr_boundary", "eyes")}
    masks["hands"][0] = True
    masks["face"][[11, 12, 16]] = True
    masks["face_expr"][[12, 16]] = True
    masks["expr_boundary"][16] = True
    masks["eyes"][13] = True
    return masks


def test_region_factors_and_relative_mask() -> None:
    """Old behaviour caught: 50 won over 10 where they overlap, and the whole FLAME face
    (vertex 11) took 50 and the template-relative form."""
    factors = laplacian_region_factors(_regions(25))
    assert factors[0] == 10 and factors[12] == 50 and factors[13] == 50
    assert factors[16] == 10  # expr_boundary lies inside face_expr: 10 is written last
    assert factors[11] == 1 and factors[1] == 1  # FLAME face outside the expression face
    assert float(factors.sum()) == 21 * 1 + 2 * 10 + 2 * 50
    relative = template_relative_mask(_regions(25))
    assert relative.nonzero().flatten().tolist() == [0, 12, 13, 16]
    incomplete = {k: v for k, v in _regions(25).items() if k != "expr_boundary"}
    with pytest.raises(ValueError, match="expr_boundary"):
        laplacian_region_factors(incomplete)


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
    loss = hand_rgb_aux_loss(colours, aux, hands, squared=False)  # ours: |.|
    assert float(loss) == pytest.approx(0.5 - 0.02)
    loss.backward()
    assert aux.grad is None  # rgb_aux is only a target
    mouth = torch.zeros(25, dtype=torch.bool)
    mouth[12] = True
    ring = torch.zeros(25, dtype=torch.bool)
    ring[[7, 11, 13, 17]] = True  # mean colour 0.12
    assert float(mouth_rgb_loss(colours, mouth, ring, False)) == pytest.approx(0.0, abs=1e-7)
    assert float(mouth_rgb_loss(colours, ring, mouth, squared=False)) == pytest.approx(0.03)


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


def test_posed_laplacian_covers_the_face_outside_the_expression_face() -> None:
    """Old behaviour caught: the posed term excluded the whole FLAME face (scalp, back of the
    head); the authors exclude only hands, eyes and the frontal expression face."""
    vertices, faces = _grid()
    laplacian = uniform_laplacian(faces, 25, dtype=torch.float64)
    regions = _regions(25)
    bumped = vertices.clone()
    bumped[11, 2] = 0.3  # FLAME face, not expression face
    keep = torch.ones(25, dtype=torch.float64)
    keep[[0, 12, 13, 16]] = 0.0
    posed = posed_laplacian_loss(bumped, laplacian, regions)
    assert float(posed) == pytest.approx(float(laplacian_loss(bumped, laplacian, keep)))
    only_11 = torch.zeros(25, dtype=torch.float64)
    only_11[11] = 1.0
    assert float(laplacian_loss(bumped, laplacian, only_11)) > 0  # vertex 11 is penalised


def test_mean_laplacian_absolute_by_default_relative_as_switch() -> None:
    """Old default caught (lap_mean_relative = 1): the template's own curvature cost nothing."""
    vertices, faces = _grid()
    laplacian = uniform_laplacian(faces, 25, dtype=torch.float64)
    regions = _regions(25)
    curved = vertices.clone()
    curved[:, 2] = 0.1 * (vertices[:, 0] - 2) ** 2  # a curved template
    absolute = mean_laplacian_loss(curved, curved, laplacian, regions)
    relative = mean_laplacian_loss(curved, curved, laplacian, regions, relative_everywhere=True)
    assert float(absolute) > 1e-4 and float(relative) < 1e-20


def test_mean_laplacian_precomputed_template_targets_are_the_same_loss() -> None:
    """The template's cached L @ template (AvatarTemplate.template_laplacian_targets) gives the
    loss and gradient of recomputing it; a wrong cache (another template's) changes the loss."""
    vertices, faces = _grid()
    laplacian = uniform_laplacian(faces, 25, dtype=torch.float64)
    regions = _regions(25)
    curved = vertices.clone()
    curved[:, 2] = 0.1 * (vertices[:, 0] - 2) ** 2
    torch.manual_seed(0)
    means = (curved + 0.01 * torch.randn_like(curved)).requires_grad_(True)
    targets = apply_laplacian(laplacian, curved)
    for relative in (False, True):
        plain = mean_laplacian_loss(means, curved, laplacian, regions, relative_everywhere=relative)
        cached = mean_laplacian_loss(means, curved, laplacian, regions,
                                     relative_everywhere=relative, template_targets=targets)
        g_plain, = torch.autograd.grad(plain, means)
        g_cached, = torch.autograd.grad(cached, means)
        torch.testing.assert_close(cached, plain, rtol=1e-12, atol=0.0)
        torch.testing.assert_close(g_cached, g_plain, rtol=1e-12, atol=0.0)
    wrong = mean_laplacian_loss(means, curved, laplacian, regions, relative_everywhere=True,
                                template_targets=apply_laplacian(laplacian, vertices))
    assert abs(float(wrong) - float(mean_laplacian_loss(
        means, curved, laplacian, regions, relative_everywhere=True))) > 1e-8


def test_level_factor_and_scaled_weights() -> None:
    assert laplacian_level_factor(0.004, 0.002, 4.0) == pytest.approx(1 / 16)
    assert laplacian_level_factor(0.001, 0.002, 3.0) == pytest.approx(8.0)
    assert laplacian_level_factor(0.05, 0.002, 0.0) == 1.0  # switch off
    weights = {name: 1.0 for name in LEVEL_SCALED_TERMS}
    weights.update(lap_scale_original=1.0, image_base=1.0)
    scaled = level_scaled_weights(weights, 0.004, 0.008, reference_edge=0.002, exponent=3.0)
    assert all(scaled[name] == pytest.approx(1 / 8) for name in LEVEL_SCALED_TERMS)
    assert scaled["lap_scale_original"] == pytest.approx(1.0)  # 8 mm = the 2-level reference
    assert scaled["image_base"] == 1.0 and weights["lap_mean"] == 1.0  # a copy


def test_level_rule_equalises_template_energy_across_subdivision_levels() -> None:
    """Old behaviour caught (no rule): the procedural template's absolute Laplacian energy is
    ~70x larger at level 0 than at level 2, so the same weight regularised far harder; with the
    default rule the weighted energies agree within 2x."""
    from persona.avatar.template import build_avatar_template
    from persona.body.loader import BodySpec, load_body

    body = load_body(BodySpec(kind="procedural"))
    energies = {}
    for level in (0, 2):
        template = build_avatar_template(body, body.zero_identity(), level)
        raw = float(laplacian_energy(template.canonical_vertices.double(), template.laplacian))
        energies[level] = (raw, raw * laplacian_level_factor(template.median_edge_length))
    assert energies[0][0] / energies[2][0] > 30
    assert 0.5 < energies[0][1] / energies[2][1] < 2.0


def test_level_rule_on_the_template_share_keeps_offset_costs() -> None:
    """lap_level_on_reference: the absolute residual is L x - (1 - share) L t, so the template's
    own curvature costs share^2 of the authors' while an offset's Laplacian is unchanged; the
    posed term subtracts (1 - share) of the posed base's Laplacian. Old behaviour (weights scaled
    by the factor) shrinks the offset cost too."""
    vertices, faces = _grid()
    laplacian = uniform_laplacian(faces, 25, dtype=torch.float64)
    regions = _regions(25)
    curved = vertices.clone()
    curved[:, 2] = 0.1 * (vertices[:, 0] - 2.0) ** 2  # a template with curvature
    absolute = ~template_relative_mask(regions)
    share = 0.25
    full = mean_laplacian_loss(curved, curved, laplacian, regions)
    part = mean_laplacian_loss(curved, curved, laplacian, regions, template_share=share)
    assert float(part) == pytest.approx(share ** 2 * float(full))
    body_vertex = int(torch.nonzero(absolute)[len(torch.nonzero(absolute)) // 2])
    offset = torch.zeros_like(curved)
    offset[body_vertex, 2] = 0.01  # one bumped body vertex
    bump = (mean_laplacian_loss(curved + offset, curved, laplacian, regions, template_share=0.0)
            - mean_laplacian_loss(curved, curved, laplacian, regions, template_share=0.0))
    expected = mean_laplacian_loss(offset, torch.zeros_like(curved), laplacian, regions,
                                   template_share=0.0)
    assert float(bump) == pytest.approx(float(expected))
    assert level_template_share(0.00697) == pytest.approx(0.1537, abs=1e-3)
    assert level_template_share(0.001) == 1.0  # finer than the reference: the authors' form
    posed = posed_laplacian_loss(curved + offset, laplacian, regions, reference=curved,
                                 reference_scale=1.0 - share)
    residual = (apply_laplacian(laplacian, curved + offset)
                - (1.0 - share) * apply_laplacian(laplacian, curved))
    weight = (~template_relative_mask(regions)).double()
    assert float(posed) == pytest.approx(float((weight[:, None] * residual ** 2).mean()))
