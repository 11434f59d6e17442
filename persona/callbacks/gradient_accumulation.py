"""Gradient accumulation for chosen optimiser groups (model.optim.deformer_accumulate).

Lightning's own `accumulate_grad_batches` delays every parameter's step. Here only the named
groups (the deformer's triplane and MLP) wait: their gradients are summed over `every` training
steps and handed to Adam as the mean on the last of them; in between their `.grad` is set to
None, which torch's Adam skips (no moment update, no step). Every other group steps each step.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor


def accumulate_gradients_(params: Sequence[Tensor], sums: list[Tensor], count: int,
                          every: int) -> int:
    """Add each parameter's `.grad` to `sums` (created on the first call; a None gradient adds
    nothing). On the `every`-th call since the last release the mean (sum / every) becomes the
    gradient and the sums are zeroed; otherwise every `.grad` is set to None. Returns the calls
    counted since the last release (0 after one). A call where no parameter has a gradient is
    not counted and changes nothing."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if all(p.grad is None for p in params):
        return count
    if not sums:
        sums.extend(torch.zeros_like(p) for p in params)
    for i, (p, total) in enumerate(zip(params, sums, strict=True)):
        if total.device != p.device:  # restored from a checkpoint on another device
            sums[i] = total = total.to(p.device)
        if p.grad is not None:
            total.add_(p.grad)
    count += 1
    if count < every:
        for p in params:
            p.grad = None
        return count
    for p, total in zip(params, sums, strict=True):
        p.grad = total / every
        total.zero_()
    return 0


class GroupGradientAccumulation(Callback):
    """Before each optimiser step, accumulate_gradients_ over the parameters of the optimiser's
    groups named in `groups` (persona.system_config.optimizer_groups names them). The partial
    sums and the count travel with the checkpoint."""

    def __init__(self, groups: Sequence[str], every: int) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.groups = tuple(groups)
        self.every = int(every)
        self.count = 0
        self.sums: list[Tensor] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        params = [p for group in optimizer.param_groups if group.get("name") in self.groups
                  for p in group["params"]]
        if params:
            self.count = accumulate_gradients_(params, self.sums, self.count, self.every)

    def state_dict(self) -> dict:
        return {"count": self.count, "sums": [s.detach().cpu().clone() for s in self.sums]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.count = int(state_dict["count"])
        self.sums = [s.clone() for s in state_dict["sums"]]
