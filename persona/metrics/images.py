"""PSNR and SSIM through torchmetrics (data range 1), on [H, W, 3] or [B, 3, H, W] images."""

from __future__ import annotations

from torch import Tensor
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

DATA_RANGE = 1.0  # images are floats in [0, 1] (METHOD.md section 9)
SSIM_SIGMA = 1.5  # Gaussian window std (torchmetrics' and scikit-image's standard SSIM)
SSIM_BORDERS = ("valid", "reflect")  # see ssim()
SSIM_KERNEL = 11  # window size: scikit-image's 2 * int(3.5 * sigma + 0.5) + 1 for sigma 1.5


def as_bchw(images: Tensor, name: str = "image") -> Tensor:
    """[H, W, C] -> [1, C, H, W]; [B, C, H, W] unchanged."""
    if images.ndim == 3:
        return images.permute(2, 0, 1)[None]
    if images.ndim == 4:
        return images
    raise ValueError(f"{name}: expected [H, W, C] or [B, C, H, W], got {list(images.shape)}")


def _pair(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    pred, target = as_bchw(pred, "pred"), as_bchw(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred {list(pred.shape)} and target {list(target.shape)} differ")
    return pred.double(), target.double()


def psnr(pred: Tensor, target: Tensor) -> float:
    """PSNR in dB over all pixels and channels (the mean over a batch of the per-image PSNR)."""
    pred, target = _pair(pred, target)
    return float(peak_signal_noise_ratio(pred, target, data_range=DATA_RANGE,
                                         reduction="elementwise_mean", dim=(1, 2, 3)))


def ssim(pred: Tensor, target: Tensor, border: str = "valid") -> float:
    """SSIM with an 11x11 Gaussian window (sigma 1.5).

    border "valid": mean over the window positions that lie inside the image (a 5-pixel border is
    left out): scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)` and Wang et al.'s reference code. border "reflect": torchmetrics'
    default, which also averages the border windows over a reflection-padded image (what the
    authors' evaluation code reports; METHOD.md section 9).
    """
    if border not in SSIM_BORDERS:
        raise ValueError(f"ssim border: expected one of {SSIM_BORDERS}, got {border!r}")
    pred, target = _pair(pred, target)
    pad = (SSIM_KERNEL - 1) // 2
    smallest = 2 * pad + 1 if border == "valid" else pad + 1
    if min(pred.shape[-2:]) < smallest:
        raise ValueError(f"ssim: images of {list(pred.shape[-2:])} pixels are too small for an "
                         f"{SSIM_KERNEL}x{SSIM_KERNEL} window (border {border!r} needs at least "
                         f"{smallest} pixels a side)")
    _, ssim_map = structural_similarity_index_measure(
        pred, target, gaussian_kernel=True, sigma=SSIM_SIGMA, kernel_size=SSIM_KERNEL,
        data_range=DATA_RANGE, reduction="none", return_full_image=True)  # [B, C, H, W]
    if border == "valid":
        ssim_map = ssim_map[..., pad:-pad, pad:-pad]
    return float(ssim_map.mean())
