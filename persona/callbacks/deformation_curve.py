"""The garment offset error curve during fit on synthetic subjects (persona/metrics/deformation).

Every `every_n_steps` optimiser steps (and once before the first step) the avatar is posed in a
few true training poses and test poses (no gradient, posed_state only) and the offset metrics of
the garment Gaussians are logged on the trainer's loggers:
  deform/total_error_mm, deform/deformer_error_mm, deform/deformer_correlation,
  deform/pose_part_correlation (test poses)
  deform/train/total_error_mm, ... (true training poses)
The ground truth is rebuilt once, in on_fit_start, from the subject's meta.json (the trainer's
datamodule `subject_dir`). Any other subject: a silent no-op; a synthetic subject of another
synth version (meta.json settings this synth lacks): a warning, then nothing.
"""

from __future__ import annotations

import math

import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from persona.metrics import deformation as deformation_metrics

CURVE_KEYS = ("total_error_mm", "deformer_error_mm", "deformer_correlation",
              "pose_part_correlation", "world_error_mm", "world_static_only_error_mm")
CURVE_PREFIX = "deform"
DEFAULT_EVERY_N_STEPS = 50  # ~10 points over the demo's 480 steps
DEFAULT_MAX_POSES = 4  # poses of each set (test, train) evaluated per point: cheap on a CPU


def curve_scalars(report: dict, prefix: str = CURVE_PREFIX) -> dict[str, float]:
    """The logged values of a deformation_report: the garment region's CURVE_KEYS on the test
    poses as "<prefix>/<key>" and on the training poses as "<prefix>/train/<key>"."""
    sections = {deformation_metrics.GARMENT_KEY: prefix,
                f"{deformation_metrics.TRAIN_PREFIX}{deformation_metrics.GARMENT_KEY}":
                    f"{prefix}/train"}
    scalars = {}
    for section, head in sections.items():
        values = report.get(section, {})
        for key in CURVE_KEYS:
            value = values.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                scalars[f"{head}/{key}"] = float(value)
    return scalars


class DeformationCurve(Callback):
    """Log the garment offset errors against a synthetic subject's ground truth during fit."""

    def __init__(self, every_n_steps: int = DEFAULT_EVERY_N_STEPS,
                 max_poses: int = DEFAULT_MAX_POSES) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"DeformationCurve: every_n_steps must be >= 1, got {every_n_steps}")
        if max_poses < 1:
            raise ValueError(f"DeformationCurve: max_poses must be >= 1, got {max_poses}")
        self.every_n_steps = every_n_steps
        self.max_poses = max_poses
        self.truth: deformation_metrics.DeformationTruth | None = None
        self.matched: tuple[Tensor, str] | None = None
        self.history: list[tuple[int, dict[str, float]]] = []  # (step, logged values)
        self._last_step = -1

    def on_fit_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        self.truth, self.matched, self.history, self._last_step = None, None, [], -1
        folder = getattr(getattr(trainer, "datamodule", None), "subject_dir", None)
        if not folder or not trainer.is_global_zero \
                or deformation_metrics.read_synth_meta(folder) is None:
            return
        test_frames = getattr(trainer.datamodule, "test_frames", None) or []
        try:
            self.truth = deformation_metrics.build_truth(folder, [f.pose for f in test_frames],
                                                         max_poses=self.max_poses)
        except deformation_metrics.StaleSubjectError as error:
            rank_zero_warn(f"DeformationCurve: nothing logged: {error}")
            return
        self.matched = deformation_metrics.match_system(pl_module, self.truth)

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        self._log(trainer, pl_module)  # the starting point (a resumed fit: its step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch,  # noqa: ANN001
                           batch_idx: int) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._log(trainer, pl_module)

    def _log(self, trainer, pl_module) -> None:  # noqa: ANN001
        step = int(trainer.global_step)
        if self.truth is None or step == self._last_step:  # once per optimiser step
            return
        self._last_step = step
        with torch.no_grad():
            report = deformation_metrics.deformation_report(pl_module, self.truth, self.matched)
        scalars = curve_scalars(report)
        self.history.append((step, scalars))
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
