"""LPIPS for evaluation (AlexNet, a distance per image pair and a torchmetrics `Metric`) and for
the training loss (VGG, a per-pixel map).

Every module here takes images in [0, 1] ([B, 3, H, W] or [H, W, 3]) and maps them to [-1, 1],
the LPIPS input range. The network is passed in already loaded (`load_lpips` from
`persona.metrics.lpips_weights`; the `load_*` factories below do that), so the modules themselves
do no file I/O.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import Metric


def to_lpips_range(images: Tensor) -> Tensor:
    """[0, 1] -> [-1, 1]."""
    return images * 2.0 - 1.0


def as_bchw_rgb(images: Tensor, name: str) -> Tensor:
    """Accept [H, W, 3] or [B, 3, H, W]; return [B, 3, H, W]."""
    if images.ndim == 3 and images.shape[-1] == 3:
        return images.permute(2, 0, 1)[None]
    if images.ndim == 4 and images.shape[1] == 3:
        return images
    raise ValueError(f"{name}: expected [H, W, 3] or [B, 3, H, W], got {list(images.shape)}")


def _frozen(network: nn.Module) -> nn.Module:
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network


class LPIPSDistance(nn.Module):
    """forward(pred, target in [0, 1]) -> [B] LPIPS distances (spatial average per stage, the
    published metric). network: `lpips.LPIPS(spatial=False)` with real weights."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        if getattr(network, "spatial", False):
            raise ValueError("LPIPSDistance needs a network built with spatial=False")
        self.network = _frozen(network)

    def train(self, mode: bool = True) -> LPIPSDistance:
        super().train(mode)
        self.network.eval()  # the heads' dropout stays off
        return self

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        pred, target = as_bchw_rgb(pred, "pred"), as_bchw_rgb(target, "target")
        if pred.shape != target.shape:
            raise ValueError(f"LPIPS: pred {list(pred.shape)} != target {list(target.shape)}")
        return self.network(to_lpips_range(pred), to_lpips_range(target)).reshape(-1)  # [B]


class LPIPSLoss(nn.Module):
    """LPIPS as a differentiable loss map for the training loss (VGG in METHOD.md section 5).

    network: `lpips.LPIPS(spatial=True)` with real weights (frozen).
    forward(pred, target [B, 3, H, W] in [0, 1]) -> [B, 1, H, W]: the sum over the five stages of
    the head outputs upsampled (bilinear) to the input size; its mean is close to the distance.
    reduction "none" returns the map (multiply a weight map, then reduce), "mean" a scalar.
    """

    def __init__(self, network: nn.Module, reduction: str = "none") -> None:
        super().__init__()
        if not getattr(network, "spatial", False):
            raise ValueError("LPIPSLoss needs a network built with spatial=True "
                             "(load_lpips(net, spatial=True))")
        if reduction not in ("none", "mean"):
            raise ValueError(f"LPIPSLoss.reduction: expected 'none' or 'mean', got {reduction!r}")
        self.network = _frozen(network)
        self.reduction = reduction

    def train(self, mode: bool = True) -> LPIPSLoss:
        super().train(mode)
        self.network.eval()
        return self

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        pred, target = as_bchw_rgb(pred, "pred"), as_bchw_rgb(target, "target")
        loss_map = self.network(to_lpips_range(pred), to_lpips_range(target))  # [B, 1, H, W]
        return loss_map.mean() if self.reduction == "mean" else loss_map


class LPIPSMetric(Metric):
    """Mean LPIPS over every image passed to `update` (DDP-correct sum/count reduction).

    distance: an `LPIPSDistance` (`load_lpips_metric` builds the metric from the cache).
    """

    higher_is_better = False
    full_state_update = False
    is_differentiable = False

    def __init__(self, distance: LPIPSDistance) -> None:
        super().__init__()
        self.distance = distance
        self.add_state("score_sum", default=torch.tensor(0.0, dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """preds, target: [B, 3, H, W] or [H, W, 3] in [0, 1]."""
        with torch.no_grad():
            scores = self.distance(preds, target)  # [B]
        self.score_sum += scores.double().sum()
        self.count += scores.shape[0]

    def compute(self) -> Tensor:
        return (self.score_sum / self.count.clamp(min=1)).float()


def load_lpips_distance(net: str = "alex", cache_dir: str | None = None) -> LPIPSDistance:
    """LPIPSDistance over the cached real weights (no download; a clear error if missing)."""
    from persona.metrics.lpips_weights import load_lpips

    return LPIPSDistance(load_lpips(net, cache_dir))


def load_lpips_metric(net: str = "alex", cache_dir: str | None = None) -> LPIPSMetric:
    """LPIPSMetric over the cached real weights."""
    return LPIPSMetric(load_lpips_distance(net, cache_dir))


def load_lpips_loss(net: str = "vgg", cache_dir: str | None = None,
                    reduction: str = "none") -> LPIPSLoss:
    """LPIPSLoss (spatial map) over the cached real weights."""
    from persona.metrics.lpips_weights import load_lpips

    return LPIPSLoss(load_lpips(net, cache_dir, spatial=True), reduction)
