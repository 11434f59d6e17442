"""Colour regularisers as the authors compute them: squared TV of the rendered hand images inside
hand alpha > 0.9, squared hand rgb -> rgb_aux and mouth -> ring differences."""

from __future__ import annotations

import pytest
import torch

from persona.losses.colour import hand_image_tv_loss, hand_rgb_aux_loss, mouth_rgb_loss


def test_hand_image_tv_is_squared_inside_alpha_and_averaged_over_all_pairs() -> None:
    """Catches the old TV (|c_i - c_j| over mesh edges of Gaussian colours): this one is on the
    rendered image, squared, masked by alpha > 0.9 and averaged over every pixel pair."""
    height, width = 4, 5
    images = torch.zeros(2, height, width, 3)  # right, left hand
    images[0, :, 2:] = 0.5  # a vertical colour edge between columns 1 and 2 of the right hand
    alpha = torch.ones(2, height, width, 1)
    loss = hand_image_tv_loss(images, alpha)
    # Horizontal: 4 rows x 3 channels of 0.25 among 2 x 4 x 4 x 3 pairs; vertical: 0.
    assert float(loss) == pytest.approx(4 * 3 * 0.25 / (2 * 4 * 4 * 3))
    # Pairs with a pixel at alpha <= 0.9 do not count (the edge lies outside the hand).
    alpha[0, :, 2] = 0.9
    assert float(hand_image_tv_loss(images, alpha)) == 0.0
    # Squared: halving the step quarters the loss.
    alpha[0, :, 2] = 1.0
    assert float(hand_image_tv_loss(images / 2, alpha)) == pytest.approx(float(loss) / 4)


def test_hand_image_tv_vertical_term_and_gradient_only_to_colours() -> None:
    images = torch.zeros(1, 6, 3, 3)
    images[0, 3:] = 1.0  # a horizontal edge between rows 2 and 3
    images.requires_grad_(True)
    alpha = torch.ones(1, 6, 3, requires_grad=True)
    loss = hand_image_tv_loss(images, alpha)
    assert float(loss.detach()) == pytest.approx(3 * 3 * 1.0 / (5 * 3 * 3))
    loss.backward()
    assert alpha.grad is None  # the threshold carries no gradient
    assert images.grad is not None and float(images.grad.abs().sum()) > 0


def test_hand_rgb_aux_loss_is_squared_and_detached() -> None:
    """Catches the old |rgb - rgb_aux| (0.5 here, squared 0.25)."""
    rgb = torch.full((4, 3), 0.5, requires_grad=True)
    rgb_aux = torch.zeros(4, 3, requires_grad=True)
    hands = torch.tensor([True, True, False, False])
    loss = hand_rgb_aux_loss(rgb, rgb_aux, hands)
    assert float(loss.detach()) == pytest.approx(0.25)
    absolute = hand_rgb_aux_loss(rgb, rgb_aux, hands, squared=False)
    assert float(absolute.detach()) == pytest.approx(0.5)
    loss.backward()
    assert rgb_aux.grad is None
    assert rgb.grad is not None and float(rgb.grad[2:].abs().sum()) == 0.0
    assert float(hand_rgb_aux_loss(rgb, rgb_aux, torch.zeros(4, dtype=torch.bool)).detach()) == 0.0


def test_mouth_rgb_loss_is_squared_toward_the_detached_ring_mean() -> None:
    """Catches the old |rgb - ring mean| (0.4 here, squared 0.16)."""
    rgb = torch.tensor([[0.2, 0.2, 0.2], [0.6, 0.6, 0.6], [0.6, 0.6, 0.6], [0.0, 0.0, 0.0]],
                       requires_grad=True)
    mouth = torch.tensor([True, False, False, False])
    ring = torch.tensor([False, True, True, False])
    loss = mouth_rgb_loss(rgb, mouth, ring)
    assert float(loss.detach()) == pytest.approx(0.16)
    assert float(mouth_rgb_loss(rgb, mouth, ring, squared=False).detach()) == pytest.approx(0.4)
    loss.backward()
    assert rgb.grad is not None and float(rgb.grad[1:].abs().sum()) == 0.0  # ring detached
    assert float(mouth_rgb_loss(rgb, mouth, torch.zeros(4, dtype=torch.bool)).detach()) == 0.0


def test_hand_and_mouth_colour_losses_read_nothing_back_to_the_host() -> None:
    """Masked sums instead of boolean indexing: no nonzero and no scalar read (a GPU step does
    not wait on them), empty masks included; the empty cases give 0 with a zero gradient."""
    generator = torch.Generator().manual_seed(0)
    rgb = torch.rand(50, 3, generator=generator, requires_grad=True)
    aux = torch.rand(50, 3, generator=generator)
    some = torch.rand(50, generator=generator) > 0.5
    none = torch.zeros(50, dtype=torch.bool)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        losses = [hand_rgb_aux_loss(rgb, aux, some), hand_rgb_aux_loss(rgb, aux, none),
                  mouth_rgb_loss(rgb, some, ~some), mouth_rgb_loss(rgb, some, none),
                  mouth_rgb_loss(rgb, none, some)]
    reads = [e.name for e in profile.events()
             if e.name in ("aten::_local_scalar_dense", "aten::nonzero")]
    assert not reads
    expected = ((rgb[some] - aux[some]) ** 2).mean()
    torch.testing.assert_close(losses[0], expected)
    ring_mean = rgb[~some].mean(0)
    torch.testing.assert_close(losses[2], ((rgb[some] - ring_mean) ** 2).mean())
    for empty in losses[1], losses[3], losses[4]:
        (grad,) = torch.autograd.grad(empty, rgb)
        assert float(empty) == 0.0 and torch.equal(grad, torch.zeros_like(grad))
