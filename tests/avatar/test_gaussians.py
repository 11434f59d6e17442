"""GaussianAvatar parameters, initialisation and activation; knn_log_scale; logit."""

import math

import pytest
import torch

from persona.avatar.gaussians import GaussianAvatar, knn_log_scale, logit


def test_knn_log_scale_matches_brute_force() -> None:
    points = torch.rand(200, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    distances = torch.cdist(points, points)
    distances.fill_diagonal_(float("inf"))
    nearest = distances.topk(3, largest=False).values  # [N, 3]
    expected = torch.log(torch.sqrt((nearest ** 2).mean(1, keepdim=True)))
    torch.testing.assert_close(knn_log_scale(points), expected)


def test_knn_log_scale_regular_grid_and_duplicates() -> None:
    # On a unit-spaced line of points every interior point has neighbours at 1, 1, 2.
    points = torch.zeros(10, 3)
    points[:, 0] = torch.arange(10.0)
    scale = knn_log_scale(points)
    assert scale[5, 0].item() == pytest.approx(math.log(math.sqrt((1 + 1 + 4) / 3)))
    duplicates = torch.zeros(5, 3)
    assert torch.isfinite(knn_log_scale(duplicates)).all()
    with pytest.raises(ValueError, match="points"):
        knn_log_scale(torch.zeros(10, 2))


def test_logit_inverts_sigmoid_and_clamps() -> None:
    x = torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(torch.sigmoid(logit(x)), x)
    assert torch.isfinite(logit(torch.tensor([0.0, 1.0]))).all()


def test_avatar_parameters_initialise_and_activate() -> None:
    avatar = GaussianAvatar(4)
    names = {name: tuple(p.shape) for name, p in avatar.named_parameters()}
    assert names == {"mean_offset": (4, 3), "log_scale": (4, 1), "rgb": (4, 3),
                     "rgb_aux": (4, 3), "seg": (4, 3)}
    assert float(avatar.mean_offset.detach().abs().sum()) == 0.0
    colours = torch.tensor([[0.2, 0.4, 0.6]]).expand(4, 3)
    avatar.initialize_(log_scale=torch.full((4, 1), math.log(0.01)), rgb=logit(colours))
    positions = torch.randn(4, 3)
    activated = avatar.activated(positions)
    torch.testing.assert_close(activated.means, positions)
    torch.testing.assert_close(activated.scales, torch.full((4, 1), 0.01))
    torch.testing.assert_close(activated.rgb, colours)
    torch.testing.assert_close(activated.rgb_aux, torch.full((4, 3), 0.5))
    torch.testing.assert_close(activated.opacities, torch.ones(4))
    with pytest.raises(ValueError, match="rgb_aux"):
        avatar.initialize_(rgb_aux=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="canonical_positions"):
        avatar.activated(torch.zeros(5, 3))


def test_activation_gradients_reach_raw_parameters() -> None:
    avatar = GaussianAvatar(3)
    activated = avatar.activated(torch.zeros(3, 3))
    (activated.means.sum() + activated.scales.sum() + activated.rgb.sum()).backward()
    assert float(avatar.mean_offset.grad.abs().min()) == 1.0
    assert float(avatar.log_scale.grad.abs().min()) == 1.0
    assert float(avatar.rgb.grad.abs().min()) == pytest.approx(0.25)
