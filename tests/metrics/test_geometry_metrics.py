"""Geometry metrics with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from persona.metrics.geometry import depth_l1_aligned, mask_iou, normal_angle_error


def test_mask_iou_known_overlap() -> None:
    pred = torch.zeros(10, 10)
    target = torch.zeros(10, 10, 1)
    pred[0:4, 0:5] = 1.0  # 20 pixels
    target[2:6, 0:5] = 1.0  # 20 pixels, 10 shared
    assert mask_iou(pred, target) == pytest.approx(100.0 * 10 / 30)
    assert mask_iou(pred, pred) == 100.0
    assert mask_iou(torch.zeros(3, 3), torch.zeros(3, 3)) == 100.0
    assert mask_iou(pred * 0.4, target) == 0.0  # alpha 0.4 is background


def test_depth_l1_removes_a_global_translation() -> None:
    generator = torch.Generator().manual_seed(0)
    target = 2.0 + torch.rand(16, 16, generator=generator, dtype=torch.float64)  # metres
    target[0, :] = 0.0  # invalid ground truth row
    pred = target + 0.25  # the whole body 25 cm farther away
    pred[5, 5] += 0.016  # one pixel 16 mm off the shape
    pred[1, :] = 0.0  # invalid prediction row
    valid = 16 * 16 - 32
    # median shift is exactly the translation: the only error left is 16 mm on one pixel
    assert depth_l1_aligned(pred, target) == pytest.approx(16.0 / valid, rel=1e-6)
    # mean shift: shift = -0.25 - 0.016 / valid, error = 16 mm (1 - 1/valid) + 16 mm / valid ...
    error = 0.016 / valid
    expected = ((valid - 1) * error + (0.016 - error)) / valid * 1000
    assert depth_l1_aligned(pred, target, alignment="mean") == pytest.approx(expected, rel=1e-6)
    region = torch.zeros(16, 16)
    region[8:, :] = 1.0  # the off pixel is outside
    assert depth_l1_aligned(pred, target, region=region) == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(depth_l1_aligned(torch.zeros(4, 4), torch.ones(4, 4)))
    with pytest.raises(ValueError, match="alignment"):
        depth_l1_aligned(pred, target, alignment="max")


def test_normal_angle_error_known_angles() -> None:
    target = torch.zeros(2, 3, 3)
    target[..., 2] = 1.0  # facing the camera (z)
    pred = target.clone()
    angle = math.radians(30.0)
    pred[0, 0] = torch.tensor([math.sin(angle), 0.0, math.cos(angle)]) * 3.0  # length ignored
    pred[0, 1] = torch.tensor([0.0, -1.0, 0.0])  # 90 degrees
    pred[1, 2] = 0.0  # invalid prediction: not counted
    assert normal_angle_error(pred, target) == pytest.approx((30.0 + 90.0) / 5, rel=1e-6)
    region = torch.zeros(2, 3, 1)
    region[0, 0] = 1.0
    assert normal_angle_error(pred, target, region=region) == pytest.approx(30.0, rel=1e-6)
    opposite = -target
    assert normal_angle_error(opposite, target) == pytest.approx(180.0)
    assert math.isnan(normal_angle_error(torch.zeros(2, 2, 3), target[:, :2]))


def test_shape_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        mask_iou(torch.zeros(3, 3), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"pred_normal: expected \[H, W, 3\]"):
        normal_angle_error(torch.zeros(3, 3), torch.zeros(3, 3))
