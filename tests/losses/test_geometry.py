"""Geometry losses: SILog invariances, normal and seg loss values."""

import math

import pytest
import torch

from persona.losses.geometry import (
    coarse_loss,
    mask_loss,
    normal_loss,
    normal_loss_map,
    seg_loss,
    seg_loss_map,
    silog_depth_loss,
)


def _depth_pair() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    target = 2.0 + torch.rand(1, 16, 16, 1, generator=generator, dtype=torch.float64)
    pred = target + 0.2 * torch.rand(1, 16, 16, 1, generator=generator, dtype=torch.float64)
    target[0, :3] = 0.0  # invalid target rows
    pred[0, :, :2] = 0.0  # background columns of the render
    return pred, target


def test_silog_zero_at_equality_positive_otherwise() -> None:
    pred, target = _depth_pair()
    both = (pred > 0) & (target > 0)
    same = torch.where(both, target, pred)
    assert float(silog_depth_loss(same, target)) < 1e-5
    assert float(silog_depth_loss(pred, target)) > 1e-2


def test_silog_invariant_to_scale_and_shift_of_either_depth() -> None:
    pred, target = _depth_pair()
    reference = silog_depth_loss(pred, target)
    valid_target = target > 0
    scaled_shifted = torch.where(valid_target, 3.7 * target + 0.9, target)
    torch.testing.assert_close(silog_depth_loss(pred, scaled_shifted), reference)
    valid_pred = pred > 0
    torch.testing.assert_close(silog_depth_loss(torch.where(valid_pred, 0.01 * pred, pred),
                                                target), reference)
    # A shift that moves the minimum is removed by the min-max normalisation.
    torch.testing.assert_close(silog_depth_loss(torch.where(valid_pred, pred + 5.0, pred),
                                                target), reference)


def test_silog_matches_formula_by_hand() -> None:
    pred = torch.tensor([1.0, 2.0, 3.0, 5.0], dtype=torch.float64)
    target = torch.tensor([1.0, 3.0, 2.0, 5.0], dtype=torch.float64)
    eps = 0.01
    p = (pred - 1) / 4
    t = (target - 1) / 4
    d = torch.log(t + eps) - torch.log(p + eps)
    expected = math.sqrt(float((d ** 2).mean() - 0.5 * d.mean() ** 2))
    got = silog_depth_loss(pred, target, log_eps=eps, min_valid_pixels=2)
    assert abs(float(got) - expected) < 1e-12


def _silog_by_indexing(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The SILog of the valid pixels picked by boolean indexing (the form before 2026-12-06)."""
    valid = (pred.detach() > 0) & (target > 0)
    p, t = pred[valid], target[valid]
    p, t = (p - p.min()) / (p.max() - p.min()), (t - t.min()) / (t.max() - t.min())
    d = torch.log(t + 1e-2) - torch.log(p + 1e-2)
    return ((d * d).mean() - 0.5 * d.mean() ** 2).sqrt()


def test_silog_masked_form_equals_indexing_and_reads_nothing_back() -> None:
    """Masked reductions over the valid pixels: the value and the gradient of picking them by
    boolean indexing (float64), with no host read (a GPU step does not wait on it)."""
    pred, target = _depth_pair()
    pred = pred[0, ..., 0].requires_grad_(True)
    target = target[0, ..., 0]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        ours = silog_depth_loss(pred, target)
    assert not [e.name for e in profile.events()
                if e.name in ("aten::_local_scalar_dense", "aten::nonzero")]
    theirs = _silog_by_indexing(pred, target)
    (grad_ours,) = torch.autograd.grad(ours, pred)
    (grad_theirs,) = torch.autograd.grad(theirs, pred)
    assert abs(float(ours) - float(theirs)) < 1e-12
    torch.testing.assert_close(grad_ours, grad_theirs, atol=1e-12, rtol=0)


def test_silog_too_few_pixels_or_constant_is_zero_with_gradient() -> None:
    pred = torch.zeros(8, 8, 1, requires_grad=True)
    target = torch.ones(8, 8, 1)
    loss = silog_depth_loss(pred, target)  # no pixel valid in both
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert pred.grad is not None and float(pred.grad.abs().sum()) == 0.0
    constant = torch.full((8, 8, 1), 2.0, requires_grad=True)
    flat = silog_depth_loss(constant, target * torch.rand(8, 8, 1))
    (grad,) = torch.autograd.grad(flat, constant)
    assert float(flat) == 0.0 and torch.equal(grad, torch.zeros_like(grad))
    few = torch.zeros(8, 8, 1)
    few.view(-1)[:15] = torch.rand(15) + 1  # 15 valid pixels, one short of the minimum
    assert float(silog_depth_loss(few, target * torch.rand(8, 8, 1))) == 0.0
    few.view(-1)[15] = 1.5
    assert float(silog_depth_loss(few, target * torch.rand(8, 8, 1))) > 0.0


def test_silog_gradient_finite_at_equality() -> None:
    pred, target = _depth_pair()
    same = torch.where((pred > 0) & (target > 0), target, pred).requires_grad_(True)
    silog_depth_loss(same, target).backward()
    assert torch.isfinite(same.grad).all()


def test_mask_loss() -> None:
    alpha = torch.tensor([0.0, 0.5, 1.0, 1.0])
    mask = torch.tensor([0.0, 1.0, 1.0, 0.0])
    assert float(mask_loss(alpha, mask)) == pytest.approx(1.5 / 4)


def test_normal_loss_values_and_validity() -> None:
    target = torch.tensor([[0.0, 0, 1], [0, 0, 1], [0, 0, 0], [1, 0, 0]])
    pred = torch.tensor([[0.0, 0, 1], [0, 1, 0], [0, 1, 0], [0, 0, 0]])
    # Pixel 0 identical (0), pixel 1 orthogonal (|d| mean 2/3 + 1), pixels 2 and 3 invalid
    # (zero in the map); the authors' NormalLoss averages over all 4 pixels.
    assert float(normal_loss(pred, target)) == pytest.approx((0 + 2 / 3 + 1) / 4)
    torch.testing.assert_close(normal_loss_map(pred, target),
                               torch.tensor([0.0, 2 / 3 + 1, 0.0, 0.0]))
    valid = torch.tensor([True, False, True, True])
    assert float(normal_loss(pred, target, valid)) == pytest.approx(0.0)
    opposite = normal_loss(-target[:2], target[:2])
    assert float(opposite) == pytest.approx(2 / 3 * 1 + 2)


def test_normal_loss_means_over_all_pixels_not_valid_ones() -> None:
    """Catches the old reduction (mean over valid pixels: 1 / 0.32 = 3.1x at 32 % valid)."""
    height, width, valid_rows = 25, 4, 8  # 8 of 25 rows valid: 32 %
    target = torch.zeros(height, width, 3)
    target[..., 2] = 1.0
    pred = torch.zeros(height, width, 3)
    pred[:valid_rows, :, 1] = 1.0  # orthogonal where rendered, background (0) elsewhere
    per_pixel = 2 / 3 + 1
    got = normal_loss(pred, target)
    assert float(got) == pytest.approx(per_pixel * 0.32)
    ours = normal_loss(pred, target, mean_over_valid=True)
    assert float(ours) == pytest.approx(per_pixel)
    assert float(ours / got) == pytest.approx(1 / 0.32)


def test_seg_loss_foreground_only() -> None:
    pred = torch.zeros(2, 2, 3)
    target = torch.ones(2, 2, 3)
    foreground = torch.tensor([[True, False], [False, False]])
    target[1, 1] = 5.0  # background difference is ignored
    # One foreground pixel of L1 1 among 4 pixels: the authors' SegLoss mean is 1 / 4.
    assert float(seg_loss(pred, target, foreground)) == pytest.approx(0.25)
    assert float(seg_loss(pred, target, foreground, mean_over_valid=True)) == pytest.approx(1.0)
    assert float(seg_loss(pred, target, torch.zeros(2, 2, dtype=torch.bool))) == 0.0
    expected_map = torch.zeros(2, 2, 3)
    expected_map[0, 0] = 1.0
    torch.testing.assert_close(seg_loss_map(pred, target, foreground), expected_map)


def test_seg_loss_gradient_is_scaled_by_all_pixels() -> None:
    """The gradient on a foreground pixel is 1 / (pixels x channels), not 1 / (fg x channels)."""
    pred = torch.zeros(1, 10, 10, 3, requires_grad=True)
    target = torch.ones(1, 10, 10, 3)
    foreground = torch.zeros(1, 10, 10, dtype=torch.bool)
    foreground[0, :5, :5] = True  # 25 of 100 pixels
    seg_loss(pred, target, foreground).backward()
    assert pred.grad is not None
    assert float(pred.grad[0, 0, 0, 0]) == pytest.approx(-1 / 300)
    assert float(pred.grad[0, 9, 9, 0]) == 0.0


def _blob(centre_x: torch.Tensor, height: int = 64, width: int = 96) -> torch.Tensor:
    """A 1.5 px Gaussian splat at (centre_x, 32): [1, 1, H, W]."""
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                            torch.arange(width, dtype=torch.float64), indexing="ij")
    return torch.exp(-((xx - centre_x) ** 2 + (yy - 32) ** 2) / (2 * 1.5 ** 2))[None, None]


@pytest.mark.parametrize("distance", [12.0, 20.0])
def test_coarse_loss_pulls_a_splat_from_beyond_its_footprint(distance: float) -> None:
    """A splat `distance` px right of where the target has it: the plain L1 gives it (almost)
    no gradient, the coarse loss a clear one towards the target."""
    target = _blob(torch.tensor(40.0, dtype=torch.float64))
    x_plain = torch.tensor(40.0 + distance, dtype=torch.float64, requires_grad=True)
    (_blob(x_plain) - target).abs().mean().backward()
    x_coarse = torch.tensor(40.0 + distance, dtype=torch.float64, requires_grad=True)
    coarse_loss(_blob(x_coarse), target, sigma=2.0, levels=3).backward()
    assert abs(float(x_plain.grad)) < 1e-6
    assert float(x_coarse.grad) > 1e-5  # descending moves the splat left, onto the target
    assert float(coarse_loss(target, target, 2.0, 3)) == 0.0


@pytest.mark.parametrize("mean_over_valid", [False, True])
def test_normal_and_seg_losses_without_valid_pixels_are_zero_with_zero_gradient(
        mean_over_valid: bool) -> None:
    """No valid pixel: 0 with a zero (not None) gradient in both reductions; the authors'
    reduction (mean over all pixels) reads nothing back to the host, so a GPU step does not
    wait on it."""
    pred = torch.rand(6, 5, 3, requires_grad=True)
    none = torch.zeros(6, 5, dtype=torch.bool)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        losses = [normal_loss(pred, torch.rand(6, 5, 3), none, mean_over_valid=mean_over_valid),
                  seg_loss(pred, torch.rand(6, 5, 3), none, mean_over_valid=mean_over_valid)]
    reads = sum(e.name == "aten::_local_scalar_dense" for e in profile.events())
    assert reads == (2 if mean_over_valid else 0)
    for loss in losses:
        (grad,) = torch.autograd.grad(loss, pred)
        assert float(loss) == 0.0 and torch.equal(grad, torch.zeros_like(grad))
