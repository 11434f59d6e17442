"""Rotation conversions against scipy and known rotations."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from persona.ops.rotations import (
    axis_angle_to_matrix,
    axis_angle_to_rotation_6d,
    geodesic_angle,
    matrix_to_axis_angle,
    matrix_to_rotation_6d,
    rotation_6d_to_axis_angle,
    rotation_6d_to_matrix,
)


def _random_axis_angles(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    axis = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    axis = torch.nn.functional.normalize(axis, dim=-1)
    angle = torch.rand(n, 1, generator=generator, dtype=torch.float64) * math.pi
    return axis * angle


def test_axis_angle_to_matrix_matches_scipy() -> None:
    aa = _random_axis_angles(500)
    expected = Rotation.from_rotvec(aa.numpy()).as_matrix()
    np.testing.assert_allclose(axis_angle_to_matrix(aa).numpy(), expected, atol=1e-12)


def test_known_rotation_quarter_turn_about_z() -> None:
    matrix = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2], dtype=torch.float64))
    # x axis -> y axis, y axis -> -x axis (column vectors).
    torch.testing.assert_close(matrix @ torch.tensor([1.0, 0, 0], dtype=torch.float64),
                               torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(matrix @ torch.tensor([0.0, 1.0, 0], dtype=torch.float64),
                               torch.tensor([-1.0, 0.0, 0.0], dtype=torch.float64))


def test_matrix_to_axis_angle_matches_scipy_including_near_pi_and_zero() -> None:
    aa = _random_axis_angles(500, seed=1)
    axis = torch.nn.functional.normalize(aa[:20], dim=-1)
    special = torch.cat([
        axis * (math.pi - 1e-7),  # near a half turn
        axis * 1e-9,  # near the identity
        torch.zeros(1, 3, dtype=torch.float64),
        torch.tensor([[math.pi, 0.0, 0.0], [0.0, -math.pi / 2, 0.0]], dtype=torch.float64),
    ])
    aa = torch.cat([aa, special])
    matrices = torch.from_numpy(Rotation.from_rotvec(aa.numpy()).as_matrix())
    recovered = matrix_to_axis_angle(matrices)
    # Compare as rotations (axis-angle at exactly pi is ambiguous in sign).
    np.testing.assert_allclose(Rotation.from_rotvec(recovered.numpy()).as_matrix(),
                               matrices.numpy(), atol=1e-9)
    assert (recovered.norm(dim=-1) <= math.pi + 1e-9).all()
    # Away from pi the axis-angle itself is unique.
    torch.testing.assert_close(recovered[:500], aa[:500], atol=1e-9, rtol=0)


def test_6d_is_first_two_rows_pytorch3d_convention() -> None:
    matrix = torch.arange(9, dtype=torch.float64).reshape(3, 3)
    torch.testing.assert_close(matrix_to_rotation_6d(matrix),
                               torch.tensor([0.0, 1, 2, 3, 4, 5], dtype=torch.float64))
    aa = torch.tensor([0.3, -0.2, 0.9], dtype=torch.float64)
    rot = Rotation.from_rotvec(aa.numpy()).as_matrix()
    np.testing.assert_allclose(axis_angle_to_rotation_6d(aa).numpy(), rot[:2, :].reshape(6),
                               atol=1e-12)


def test_6d_round_trips() -> None:
    aa = _random_axis_angles(300, seed=2)
    matrices = axis_angle_to_matrix(aa)
    torch.testing.assert_close(rotation_6d_to_matrix(matrix_to_rotation_6d(matrices)), matrices)
    torch.testing.assert_close(rotation_6d_to_axis_angle(axis_angle_to_rotation_6d(aa)), aa,
                               atol=1e-9, rtol=0)


def test_gram_schmidt_projects_arbitrary_6d_to_rotation() -> None:
    d6 = torch.randn(100, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    matrices = rotation_6d_to_matrix(d6)
    eye = torch.eye(3, dtype=torch.float64).expand(100, 3, 3)
    torch.testing.assert_close(matrices @ matrices.transpose(-1, -2), eye)
    torch.testing.assert_close(torch.linalg.det(matrices), torch.ones(100, dtype=torch.float64))
    # The first row is the normalised first half (Zhou et al.).
    torch.testing.assert_close(matrices[:, 0],
                               torch.nn.functional.normalize(d6[:, :3], dim=-1))


@pytest.mark.parametrize("angle", [0.0, 1e-8, 1e-3, 1.0, math.pi - 1e-4])
def test_gradients_finite_and_correct(angle: float) -> None:
    axis = torch.nn.functional.normalize(torch.tensor([0.2, -0.5, 0.8], dtype=torch.float64),
                                         dim=0)
    aa = (axis * angle).requires_grad_(True)
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (aa,))
    d6 = axis_angle_to_rotation_6d(aa.detach()).requires_grad_(True)
    out = rotation_6d_to_axis_angle(d6)
    out.sum().backward()
    assert torch.isfinite(d6.grad).all()
    if 1e-6 < angle < math.pi - 1e-3:
        assert torch.autograd.gradcheck(rotation_6d_to_axis_angle, (d6.detach().requires_grad_(),))


def test_identity_gradient_of_matrix_to_axis_angle_is_finite() -> None:
    d6 = axis_angle_to_rotation_6d(torch.zeros(4, 3)).requires_grad_(True)
    aa = rotation_6d_to_axis_angle(d6)
    torch.testing.assert_close(aa, torch.zeros(4, 3))
    aa.pow(2).sum().backward()
    assert torch.isfinite(d6.grad).all()


def test_bad_shape_names_argument() -> None:
    with pytest.raises(ValueError, match="rotation_6d"):
        rotation_6d_to_matrix(torch.zeros(4, 5))


def test_geodesic_angle_matches_scipy_magnitude() -> None:
    """The angle between two rotations is the magnitude of the relative rotation (scipy),
    0 for equal ones, pi for a half turn; shapes are checked."""
    a, b = Rotation.random(16, random_state=0), Rotation.random(16, random_state=1)
    got = geodesic_angle(torch.from_numpy(a.as_matrix()), torch.from_numpy(b.as_matrix()))
    np.testing.assert_allclose(got.numpy(), (a.inv() * b).magnitude(), atol=1e-7)
    same = torch.from_numpy(a.as_matrix())
    assert float(geodesic_angle(same, same).abs().max()) < 1e-6
    half = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    assert float(geodesic_angle(torch.eye(3, dtype=torch.float64), half)) == \
        pytest.approx(math.pi)
    with pytest.raises(ValueError, match="b: expected shape"):
        geodesic_angle(same, same[..., :2])
