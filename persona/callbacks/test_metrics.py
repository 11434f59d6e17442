"""`persona test` results: RUN/metrics.json and a W&B table with thumbnails.

Contract with the LightningModule: `test_step` returns either
  {"frame": str, "metrics": dict[str, float], "thumbnail": [H, W, 3] (optional)}, or
  a flat dict of metric floats (from `persona.metrics.protocol.evaluate_frame`); the frame is then
  named "<batch['split'][0]>/<batch['index'][0]>" (else "test/<batch_idx>") and the thumbnail is
  target | render from `pl_module.last_eval_visuals` when the module sets it.
Thumbnails are uint8, or float in [0, 1]. The protocol is the callback's, else
`pl_module.eval_protocol` (an EvalProtocol).

Synthetic subjects (persona/metrics/deformation.py): when the trainer's datamodule has a
`subject_dir` whose `<split>/garment_masks/` exists, each frame also gets garment_psnr and
garment_mask_iou (from the batch's image and mask and `pl_module.last_eval_visuals` render and
alpha); when its meta.json says generator "persona.data.synth", metrics.json gets a
"deformation" section (offset errors against the rebuilt ground truth, once per test run) and
its scalars are logged as "test/deformation/...". Other subjects: neither; a synthetic subject
of another synth version (settings in meta.json this synth lacks): a warning, no section.
metrics.json also says how many training steps were skipped for a non-finite loss
("nonfinite_steps", from the checkpoint; null for a module that does not count them).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn

from persona.metrics import deformation as deformation_metrics
from persona.metrics.protocol import EvalProtocol, MetricsReport, composite

THUMBNAIL_MAX_SIDE = 256  # thumbnails in the W&B table are downscaled to at most this many pixels


def as_uint8(image) -> np.ndarray:  # noqa: ANN001 - Tensor or array
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return array


def shrink(image: np.ndarray, max_side: int = THUMBNAIL_MAX_SIDE) -> np.ndarray:
    """Downscale by an integer stride so the longer side is at most max_side."""
    stride = max(1, math.ceil(max(image.shape[:2]) / max_side))
    return np.ascontiguousarray(image[::stride, ::stride])


def log_metrics_table(loggers: list, report: MetricsReport, thumbnails: dict[str, np.ndarray],
                      key: str = "test/frames") -> int:
    """A W&B table (frame, thumbnail, one column per metric) on every W&B logger."""
    import wandb

    names = sorted({k for row in report.frames for k in row if k != "frame"})
    columns = ["frame", "thumbnail", *names]
    count = 0
    for logger in loggers:
        if not hasattr(logger, "log_table"):
            continue
        data = []
        for row in report.frames:
            thumb = thumbnails.get(row["frame"])
            data.append([row["frame"], wandb.Image(thumb) if thumb is not None else None,
                         *[row.get(n, math.nan) for n in names]])
        logger.log_table(key=key, columns=columns, data=data)
        count += 1
    return count


def region_mask_source(pl_module) -> str | None:  # noqa: ANN001
    """Where the body's hand/face/eye masks came from (persona.body.model OFFICIAL_IDS or
    DERIVED_FROM_WEIGHTS), or None when the module has no body."""
    body = getattr(pl_module, "body", None)
    return getattr(body, "region_mask_source", None)


def nonfinite_steps(pl_module) -> int | None:  # noqa: ANN001
    """Training steps the module skipped for a non-finite loss (restored from the checkpoint
    tested), or None when the module does not count them."""
    count = getattr(pl_module, "nonfinite_steps", None)
    return None if count is None else int(count)


def frame_record(outputs, batch, batch_idx: int, pl_module=None) -> tuple:  # noqa: ANN001
    """(frame name, metrics, thumbnail or None) from a test_step output (see module docstring)."""
    if not isinstance(outputs, dict):
        raise ValueError("TestMetricsWriter: test_step must return a dict of metrics, got "
                         f"{type(outputs).__name__}")
    if "metrics" in outputs:
        metrics, thumbnail = outputs["metrics"], outputs.get("thumbnail")
    else:
        metrics = {k: v for k, v in outputs.items() if isinstance(v, (int, float))
                   or (isinstance(v, torch.Tensor) and v.numel() == 1)}
        if not metrics:
            raise ValueError(f"TestMetricsWriter: no metric values in test_step's output "
                             f"(keys {sorted(outputs)})")
        thumbnail = None
        visuals = getattr(pl_module, "last_eval_visuals", None) or {}
        if "target" in visuals and "render" in visuals:
            thumbnail = torch.cat([visuals["target"], visuals["render"]], dim=1).clamp(0, 1)
    if "frame" in outputs:
        frame = str(outputs["frame"])
    elif isinstance(batch, dict) and "split" in batch and "index" in batch:
        frame = f"{batch['split'][0]}/{int(batch['index'][0])}"
    else:
        frame = f"test/{batch_idx}"
    return frame, {k: float(v) for k, v in metrics.items()}, thumbnail


def subject_dir(trainer) -> Path | None:  # noqa: ANN001
    """The subject folder of the trainer's datamodule (None without one)."""
    folder = getattr(getattr(trainer, "datamodule", None), "subject_dir", None)
    return Path(folder) if folder else None


def garment_frame_metrics(subject: Path | None, batch, pl_module,  # noqa: ANN001
                          protocol: EvalProtocol) -> dict[str, float]:
    """garment_psnr and garment_mask_iou of one test batch (batch size 1) when the subject has
    garment masks for its split, else {}. The prediction (last_eval_visuals["render"], on the
    protocol background) and the target image are composited with the frame's mask when the
    protocol does (as evaluate_frame scores them); no crop is pasted (synthetic frames have no
    crop box)."""
    visuals = getattr(pl_module, "last_eval_visuals", None) or {}
    needed = ("image", "mask", "split", "index")
    if subject is None or not isinstance(batch, dict) or not all(k in batch for k in needed) \
            or "render" not in visuals or "alpha" not in visuals:
        return {}
    split, index = batch["split"][0], int(batch["index"][0])
    if not deformation_metrics.has_garment_masks(subject, split):
        return {}
    garment = deformation_metrics.read_garment_mask(
        deformation_metrics.garment_mask_path(subject, split, index))  # [h, w]
    mask = batch["mask"][0].detach().float().cpu()  # [H, W, 1]
    pred = visuals["render"].detach().float().cpu().clamp(0, 1)  # [H, W, 3]
    target = batch["image"][0].detach().float().cpu().clamp(0, 1)  # [H, W, 3]
    if protocol.mask_composite:
        pred = composite(pred, mask, protocol.background)
        target = composite(target, mask, protocol.background)
    return deformation_metrics.garment_image_metrics(pred, target,
                                                     visuals["alpha"].detach().float().cpu(),
                                                     garment)


def deformation_section(trainer, pl_module) -> dict | None:  # noqa: ANN001
    """The "deformation" section of metrics.json for a synthetic subject, else None: offset
    errors of the module's deformer and static offset against the rebuilt ground truth on the
    test split's poses and the true training poses."""
    subject = subject_dir(trainer)
    if subject is None or deformation_metrics.read_synth_meta(subject) is None:
        return None
    test_frames = getattr(trainer.datamodule, "test_frames", None) or []
    try:
        truth = deformation_metrics.build_truth(subject, [f.pose for f in test_frames])
    except deformation_metrics.StaleSubjectError as error:
        rank_zero_warn(f"TestMetricsWriter: no deformation section in metrics.json: {error}")
        return None
    return deformation_metrics.deformation_report(pl_module, truth)


class TestMetricsWriter(Callback):
    """Collect per-frame test metrics, write `path` (default RUN/metrics.json with RUN =
    trainer.default_root_dir), log the means as "test/<metric>" and the per-frame W&B table."""

    __test__ = False  # not a pytest test class

    def __init__(self, path: str | None = None, protocol: EvalProtocol | None = None) -> None:
        super().__init__()
        self.path = path
        self.protocol = protocol
        self.report: MetricsReport | None = None
        self.thumbnails: dict[str, np.ndarray] = {}
        self.written: Path | None = None
        self.deformation: dict | None = None

    def on_test_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        protocol = self.protocol or getattr(pl_module, "eval_protocol", None)
        if not isinstance(protocol, EvalProtocol):
            raise ValueError("TestMetricsWriter: no protocol; pass one or set "
                             "pl_module.eval_protocol to an EvalProtocol")
        self.report = MetricsReport(protocol)
        self.thumbnails = {}
        self.deformation = None

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,  # noqa: ANN001
                          dataloader_idx: int = 0) -> None:
        frame, metrics, thumbnail = frame_record(outputs, batch, batch_idx, pl_module)
        metrics.update(garment_frame_metrics(subject_dir(trainer), batch, pl_module,
                                             self.report.protocol))
        self.report.add(frame, metrics)
        if thumbnail is not None:
            self.thumbnails[frame] = shrink(as_uint8(thumbnail))

    def on_test_epoch_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        if self.report is None or not trainer.is_global_zero:
            return
        path = Path(self.path) if self.path else Path(trainer.default_root_dir) / "metrics.json"
        ckpt = getattr(trainer, "ckpt_path", None)
        extra = {"ckpt_path": str(ckpt) if ckpt else None,
                 "region_mask_source": region_mask_source(pl_module),
                 "nonfinite_steps": nonfinite_steps(pl_module)}
        self.deformation = deformation_section(trainer, pl_module)
        if self.deformation is not None:
            image = {k: v for k, v in self.report.mean().items()
                     if k in deformation_metrics.IMAGE_KEYS}
            if image:  # the subject has garment masks: how its region was drawn
                self.deformation["garment_image"] = {
                    **image, "dilation_px": deformation_metrics.GARMENT_REGION_DILATION_PX}
            extra["deformation"] = self.deformation
        self.written = self.report.write(path, extra=extra)
        means = {f"test/{k}": v for k, v in self.report.mean().items() if math.isfinite(v)}
        if self.deformation is not None:
            means.update(deformation_metrics.report_scalars(self.deformation,
                                                            "test/deformation"))
        for logger in trainer.loggers:
            logger.log_metrics(means, step=int(trainer.global_step))
        log_metrics_table(trainer.loggers, self.report, self.thumbnails)
