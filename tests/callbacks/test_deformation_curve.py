"""The deformation metrics in training and test on the tiny synthetic subject: DeformationCurve
logs deform/* during a short fit, TestMetricsWriter adds the garment image metrics and the
"deformation" section of metrics.json; on a non-synthetic subject both stay silent."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import Logger

from persona.callbacks.deformation_curve import DeformationCurve
from persona.callbacks.test_metrics import TestMetricsWriter
from persona.data import synth
from persona.data.datamodule import PersonaDataModule
from persona.data.subject import FramePaths, read_mask, write_png
from persona.losses.table import LossWeights
from persona.metrics import deformation as dm
from persona.metrics.protocol import EvalProtocol
from persona.system import DeformerConfig, PersonaSystem, SkinningConfig

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
FAST_MODEL = dict(subdivision_levels=0, renderer="torch",
                  skinning=SkinningConfig(grid_size=24),
                  deformer=DeformerConfig(triplane_resolution=16),
                  losses=LossWeights(lpips=0.0),
                  eval_protocol=EvalProtocol(name="plain", fit_test_pose=False, fit_steps=0,
                                             paste_into_full_image=False))
STEPS = 2
EVERY = 2  # logged at steps 0 and 2, not 1
TEST_FRAMES = 2  # test batches scored (the deformation section still uses every test pose)
CURVE_POSES = 3  # the tiny test split has 3 distinct poses (novel views repeat them): all used


class _Capture(Logger):
    """Keeps every log_metrics call."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "capture"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs) -> None:  # noqa: ANN001
        pass


@pytest.fixture(scope="module")
def subject(tmp_path_factory) -> Path:
    """The tiny synthetic subject with a garment mask per test frame (all 255: the whole image
    is the garment region, so garment_psnr must equal psnr)."""
    root = tmp_path_factory.mktemp("deform") / "tiny"
    synth.synthesize(root, synth.preset_config("tiny", seed=1))
    for index in (int(i) for i in (root / "test" / "frame_idx_list.txt").read_text().split()):
        shape = read_mask(root / FramePaths("test", index).mask).shape
        write_png(dm.garment_mask_path(root, "test", index), np.full(shape, 255, np.uint8))
    return root


@pytest.fixture(autouse=True)
def _restore_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def _fit(subject: Path, root: Path, callbacks: list) -> tuple[PersonaSystem, pl.Trainer,
                                                            _Capture, PersonaDataModule]:
    datamodule = PersonaDataModule(str(subject), epoch_length=STEPS, seed=3)
    logger = _Capture()
    trainer = pl.Trainer(default_root_dir=str(root), max_steps=STEPS, accelerator="cpu",
                         deterministic=True, logger=logger, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         num_sanity_val_steps=0, limit_val_batches=0,
                         limit_test_batches=TEST_FRAMES, callbacks=callbacks)
    system = PersonaSystem(**FAST_MODEL)
    trainer.fit(system, datamodule=datamodule)
    return system, trainer, logger, datamodule


def _true_test_offsets(subject: Path, datamodule: PersonaDataModule
                       ) -> tuple[list[str], torch.Tensor]:
    """(garment_regions' names, [T, M, 3] true garment offsets in the distinct test poses),
    straight from the synth."""
    config = dm.synth_config(subject)
    body = synth.load_synth_body(config)
    avatar = synth.build_avatar(body, synth.subject_identity(body, config.seed), config)
    regions = synth.garment_regions(avatar)
    poses = dm.distinct_poses([f.pose for f in datamodule.test_frames])
    offsets = synth.garment_offsets(body, avatar, dm.stack_poses(poses), config.garment)
    return list(regions), offsets[:, regions["garment"]]


def test_curve_during_fit_then_the_test_section(subject: Path, tmp_path: Path) -> None:
    curve = DeformationCurve(every_n_steps=EVERY, max_poses=CURVE_POSES)
    writer = TestMetricsWriter()
    system, trainer, logger, datamodule = _fit(subject, tmp_path, [curve, writer])

    # the curve: before the first step, then every EVERY steps, on the loggers
    logged = [(step, {k: v for k, v in row.items() if k.startswith("deform/")})
              for step, row in logger.rows]
    logged = [(step, row) for step, row in logged if row]
    assert [step for step, _ in logged] == [0, 2]
    assert [step for step, _ in curve.history] == [step for step, _ in logged]
    names, truth = _true_test_offsets(subject, datamodule)
    truth_mm = float(truth.norm(dim=-1).mean()) * 1000.0
    assert truth_mm > 1.0  # the held-out motion moves the garment
    first = logged[0][1]
    assert len(curve.truth.poses["test"]) == CURVE_POSES and len(curve.truth.poses["train"]) == 3
    assert {"deform/total_error_mm", "deform/deformer_error_mm",
            "deform/train/total_error_mm", "deform/train/deformer_error_mm"} <= set(first)
    last = logged[-1][1]
    assert {f"deform/{k}" for k in ("total_error_mm", "deformer_error_mm",
                                    "deformer_correlation", "world_error_mm",
                                    "world_static_only_error_mm")} <= set(last)
    assert {f"deform/train/{k}" for k in ("total_error_mm", "deformer_error_mm",
                                          "deformer_correlation")} <= set(last)
    assert all(math.isfinite(v) for v in last.values())
    assert last["deform/total_error_mm"] != first["deform/total_error_mm"]  # training moved it

    # test: per-frame garment metrics and the deformation section, logged as test/deformation/*
    trainer.test(system, datamodule=datamodule)
    report = json.loads((tmp_path / "metrics.json").read_text())
    for row in report["frames"]:  # the whole image is the garment region here
        assert row["garment_psnr"] == pytest.approx(row["psnr"], abs=1e-4), row["frame"]
        assert 0.0 <= row["garment_mask_iou"] <= 100.0
    alpha = system.last_eval_visuals["alpha"]  # the last frame's
    assert report["frames"][-1]["garment_mask_iou"] == pytest.approx(
        100.0 * float((alpha > 0.5).float().mean()), abs=1e-4)
    section = report["deformation"]
    config = dm.synth_config(subject)
    assert section["matching"] == "vertex_index"
    assert set(names) | {f"train_{n}" for n in names} <= set(section)
    assert section["training_poses"] == len(config.motions) * config.frames
    garment = section["garment"]
    assert garment["zero_offset_error_mm"] == pytest.approx(truth_mm, rel=1e-4)
    for key in ("total_error_mm", "static_only_error_mm", "deformer_error_mm",
                "deformer_zero_error_mm"):
        assert math.isfinite(garment[key]) and math.isfinite(section["train_garment"][key]), key
    assert section["garment_image"]["dilation_px"] == dm.GARMENT_REGION_DILATION_PX
    # world space: the no-offset baseline is the true garment's posed displacement, computed
    # here through the synth's own posing with the garment switched off
    config = dm.synth_config(subject)
    body = synth.load_synth_body(config)
    avatar = synth.build_avatar(body, synth.subject_identity(body, config.seed), config)
    poses = dm.stack_poses(dm.distinct_poses([f.pose for f in datamodule.test_frames]))
    flat = dataclasses.replace(config.garment, skirt_lag=0.0, sleeve_sag=0.0)
    moved = (synth.posed_means(body, avatar, poses, config.garment)
             - synth.posed_means(body, avatar, poses, flat))[:, synth.garment_regions(avatar)[
                 "garment"]]
    assert garment["world_zero_offset_error_mm"] == pytest.approx(
        float(moved.norm(dim=-1).mean()) * 1000.0, rel=1e-4)
    assert garment["world_zero_offset_error_mm"] > 1.0
    for key in dm.WORLD_KEYS:
        assert math.isfinite(garment[key]) and math.isfinite(section["train_garment"][key]), key
    # the curve's last point is the same avatar scored on the same (all) test poses
    assert last["deform/total_error_mm"] == pytest.approx(garment["total_error_mm"], rel=1e-5)
    tested = {k: v for step, row in logger.rows for k, v in row.items()
              if k.startswith("test/")}
    assert tested["test/deformation/total_error_mm"] == pytest.approx(garment["total_error_mm"])
    assert "test/deformation/train_garment/deformer_error_mm" in tested
    assert tested["test/garment_psnr"] == pytest.approx(report["mean"]["garment_psnr"])


class _Untouchable:
    """A module that must not be used: any attribute access fails the test."""

    def __getattr__(self, name: str):
        raise AssertionError(f"the callback touched pl_module.{name} on a non-synthetic subject")


def test_non_synthetic_subjects_are_silent(subject: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(subject, plain)
    (plain / "meta.json").unlink()  # a subject from elsewhere (no synth meta.json)
    shutil.rmtree(plain / "test" / "garment_masks")
    logger = _Capture()
    datamodule = PersonaDataModule(str(plain))
    datamodule.setup()
    trainer = SimpleNamespace(datamodule=datamodule, is_global_zero=True, global_step=0,
                              loggers=[logger], default_root_dir=str(tmp_path), ckpt_path=None)
    curve = DeformationCurve(every_n_steps=1)
    curve.on_fit_start(trainer, _Untouchable())
    curve.on_train_start(trainer, _Untouchable())
    curve.on_train_batch_end(trainer, _Untouchable(), None, {}, 0)
    assert curve.truth is None and curve.history == [] and logger.rows == []

    module = SimpleNamespace(eval_protocol=EvalProtocol(name="plain"), last_eval_visuals={
        "render": torch.zeros(160, 96, 3), "alpha": torch.zeros(160, 96, 1)})
    writer = TestMetricsWriter()
    writer.on_test_epoch_start(trainer, module)
    batch = {"split": ["test"], "index": torch.tensor([0]), "image": torch.zeros(1, 160, 96, 3),
             "mask": torch.zeros(1, 160, 96, 1)}
    writer.on_test_batch_end(trainer, module, {"psnr": 20.0}, batch, 0)
    writer.on_test_epoch_end(trainer, module)
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert "deformation" not in data and set(data["mean"]) == {"psnr"}
    assert set(logger.rows[0][1]) == {"test/psnr"}


def test_a_subject_of_another_synth_version_warns_and_logs_nothing(subject: Path,
                                                                   tmp_path: Path) -> None:
    stale = tmp_path / "stale"
    shutil.copytree(subject, stale)
    meta = json.loads((stale / "meta.json").read_text())
    meta["config"]["garment"]["hem_amplitude"] = 0.3  # the tunic synth's setting
    (stale / "meta.json").write_text(json.dumps(meta))
    logger = _Capture()
    datamodule = PersonaDataModule(str(stale))
    datamodule.setup()
    trainer = SimpleNamespace(datamodule=datamodule, is_global_zero=True, global_step=0,
                              loggers=[logger], default_root_dir=str(tmp_path), ckpt_path=None)
    curve = DeformationCurve(every_n_steps=1)
    with pytest.warns(UserWarning, match="hem_amplitude"):
        curve.on_fit_start(trainer, _Untouchable())
    curve.on_train_start(trainer, _Untouchable())
    assert curve.truth is None and logger.rows == []
    module = SimpleNamespace(eval_protocol=EvalProtocol(name="plain"))
    writer = TestMetricsWriter()
    writer.on_test_epoch_start(trainer, module)
    writer.on_test_batch_end(trainer, module, {"psnr": 20.0}, {}, 0)
    with pytest.warns(UserWarning, match="no deformation section"):
        writer.on_test_epoch_end(trainer, module)
    assert "deformation" not in json.loads((tmp_path / "metrics.json").read_text())
