"""PSNR and SSIM agree with scikit-image on random and natural images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torchmetrics.image import StructuralSimilarityIndexMeasure

from persona.metrics.images import psnr, ssim

DATA = Path(__file__).parent / "data"


def _natural(name: str) -> np.ndarray:
    return np.asarray(Image.open(DATA / name).convert("RGB"), np.float64) / 255.0


def _pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    noisy_base = rng.random((48, 40, 3))
    return [
        (_natural("ex_p0.png"), _natural("ex_ref.png")),
        (_natural("ex_p1.png"), _natural("ex_ref.png")),
        (rng.random((37, 53, 3)), rng.random((37, 53, 3))),
        (np.clip(noisy_base + rng.normal(0, 0.05, noisy_base.shape), 0, 1), noisy_base),
    ]


@pytest.mark.parametrize("index", range(4))
def test_psnr_and_ssim_match_scikit_image(index: int) -> None:
    pred, target = _pairs()[index]
    expected_psnr = peak_signal_noise_ratio(target, pred, data_range=1.0)
    expected_ssim = structural_similarity(pred, target, gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False, data_range=1.0,
                                          channel_axis=2)
    for dtype in (torch.float32, torch.float64):
        p, t = torch.tensor(pred, dtype=dtype), torch.tensor(target, dtype=dtype)
        assert abs(psnr(p, t) - expected_psnr) < 1e-3
        assert abs(ssim(p, t, border="valid") - expected_ssim) < 1e-3


def test_reflect_border_is_torchmetrics_default() -> None:
    pred, target = (torch.tensor(x, dtype=torch.float32)[None].permute(0, 3, 1, 2)
                    for x in _pairs()[0])
    module = StructuralSimilarityIndexMeasure(data_range=1.0)
    expected = module(pred, target).item()
    assert abs(ssim(pred, target, border="reflect") - expected) < 1e-5
    # the two conventions differ on a 64x64 image (the border is a third of the pixels)
    assert abs(ssim(pred, target, border="valid") - expected) > 1e-3


def test_known_psnr_and_identity() -> None:
    target = torch.full((16, 16, 3), 0.5, dtype=torch.float64)
    pred = target + 0.1  # MSE 0.01 -> 20 dB
    assert abs(psnr(pred, target) - 20.0) < 1e-5
    image = torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(0))
    assert ssim(image, image) == pytest.approx(1.0, abs=1e-9)


def test_bad_shapes_are_clear() -> None:
    with pytest.raises(ValueError, match="differ"):
        psnr(torch.zeros(4, 4, 3), torch.zeros(4, 5, 3))
    with pytest.raises(ValueError, match="too small"):
        ssim(torch.zeros(8, 8, 3), torch.zeros(8, 8, 3))
    with pytest.raises(ValueError, match="border"):
        ssim(torch.zeros(16, 16, 3), torch.zeros(16, 16, 3), border="same")
