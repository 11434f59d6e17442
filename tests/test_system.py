"""PersonaSystem end to end on the tiny synthetic subject: steps, logging, resume, guard."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from persona.data.datamodule import PersonaDataModule
from persona.data.synth import preset_config, synthesize
from persona.losses.table import LossWeights
from persona.system import DeformerConfig, PersonaSystem, SkinningConfig

FAST_MODEL = dict(subdivision_levels=0, renderer="torch",
                  skinning=SkinningConfig(grid_size=24),
                  deformer=DeformerConfig(triplane_resolution=16),
                  losses=LossWeights(lpips=0.0))


@pytest.fixture(scope="module")
def tiny_subject(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("subject") / "tiny"
    synthesize(root, preset_config("tiny", seed=1))
    return root


@pytest.fixture(autouse=True)
def _restore_determinism():
    """Trainer(deterministic=True) switches the process-wide torch flag; put it back."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def _datamodule(subject: Path, epoch_length: int = 3) -> PersonaDataModule:
    return PersonaDataModule(str(subject), epoch_length=epoch_length, seed=3)


def _trainer(root: Path, max_epochs: int, callbacks: list | None = None) -> pl.Trainer:
    # deterministic: CPU autograd of advanced indexing (index_put with accumulate) adds in thread
    # order otherwise, and two identical runs differ by 1e-7..1e-5 after a few steps
    return pl.Trainer(default_root_dir=str(root), max_epochs=max_epochs, accelerator="cpu",
                      deterministic=True,
                      logger=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0,
                      callbacks=[ModelCheckpoint(dirpath=str(root / "ckpt"), save_last=True,
                                                 every_n_epochs=1), *(callbacks or [])])


def _parameters(system: PersonaSystem) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in system.state_dict().items()}


class StopAfterFirstEpoch(Callback):
    """Simulates a killed run: stop once the first epoch's checkpoint is written."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        trainer.should_stop = True


def test_resume_from_checkpoint_matches_uninterrupted_run(tiny_subject: Path, tmp_path: Path):
    # a cold cache: the first run builds the skinning volume, the later ones load it
    model = {**FAST_MODEL, "cache_dir": str(tmp_path / "cache")}
    pl.seed_everything(0)
    straight = PersonaSystem(**model)
    _trainer(tmp_path / "a", max_epochs=2).fit(straight, _datamodule(tiny_subject))

    pl.seed_everything(0)
    first = PersonaSystem(**model)
    _trainer(tmp_path / "b", 2, [StopAfterFirstEpoch()]).fit(first, _datamodule(tiny_subject))
    assert first.trainer.global_step == 3  # killed half way
    pl.seed_everything(0)
    resumed = PersonaSystem(**model)
    _trainer(tmp_path / "b", max_epochs=2).fit(resumed, _datamodule(tiny_subject),
                                               ckpt_path=str(tmp_path / "b" / "ckpt" / "last.ckpt"))
    assert resumed.trainer.global_step == straight.trainer.global_step == 6
    a, b = _parameters(straight), _parameters(resumed)
    assert a.keys() == b.keys()
    moved = 0
    for name in a:
        # bitwise: a lost optimiser state, sampler position or per-frame parameter moves them
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)
        moved += int(not torch.equal(a[name], first.state_dict()[name]))
    assert moved > 0  # the second epoch changed parameters after the kill point


def test_training_step_logs_every_term_with_its_weight(tiny_subject: Path):
    dm = _datamodule(tiny_subject)
    system = PersonaSystem(**FAST_MODEL)
    system.build_from_datamodule(dm)
    logged: dict[str, float] = {}
    system.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    dataset = dm.train_dataset()
    from persona.data.datamodule import collate_frames

    input_row = dm.input_rows[0]
    loss = system.training_step(collate_frames([dataset[input_row]]), 0)
    assert torch.isfinite(loss)
    assert logged["train/weight/image_refined"] == pytest.approx(0.1)
    assert logged["train/weight/depth_base"] == pytest.approx(0.1 * 0.01)  # input: w = 0.1
    assert "train/loss/seam_distill" in logged and "train/loss/rgb_aux_refined" not in logged
    generated_row = dm.generated_rows[0]
    logged.clear()
    batch = collate_frames([dataset[generated_row]])
    batch["frame_id"] = batch["frame_id"].to("meta")  # a read of the ids would fail: the step
    system.training_step(batch, 1)  # takes its frame from the batch's host copy
    assert logged["train/weight/depth_base"] == pytest.approx(0.01)  # generated: w = 1
    assert logged["train/weight/hand_mask"] == pytest.approx(50.0)
    assert "train/loss/rgb_aux_refined" in logged and "train/loss/seam_distill" not in logged
    total = sum(logged[f"train/loss/{n}"] * logged[f"train/weight/{n}"]
                for n in {k.split("/")[-1] for k in logged if k.startswith("train/loss/")})
    assert logged["train/loss"] == pytest.approx(total, rel=1e-4)


def test_zero_weight_terms_are_not_computed(tiny_subject: Path):
    dm = _datamodule(tiny_subject)
    system = PersonaSystem(**{**FAST_MODEL, "losses": LossWeights(lpips=0.0, hand_mask=0.0,
                                                                   normal=0.0)})
    system.build_from_datamodule(dm)
    logged: dict[str, float] = {}
    system.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    from persona.data.datamodule import collate_frames

    system.training_step(collate_frames([dm.train_dataset()[dm.generated_rows[0]]]), 0)
    assert not any("hand_mask" in k or "normal" in k for k in logged)


def test_nonfinite_losses_skip_steps_then_stop_with_a_clear_error(tiny_subject: Path):
    dm = _datamodule(tiny_subject)
    system = PersonaSystem(**{**FAST_MODEL, "max_nonfinite_steps": 1})
    system.build_from_datamodule(dm)
    system.log = lambda *a, **k: None
    with torch.no_grad():
        system.avatar.rgb.fill_(float("nan"))
    from persona.data.datamodule import collate_frames

    batch = collate_frames([dm.train_dataset()[0]])
    assert system.training_step(batch, 0) is None  # skipped
    with pytest.raises(RuntimeError, match="non-finite loss"):
        system.training_step(batch, 1)


def test_test_pose_fitting_realigns_a_perturbed_pose(tiny_subject: Path):
    """Protocol `fit_test_pose`: with the avatar frozen, the frame's SMPL-X is fitted to its
    maps; after an 8 cm sideways error the render's mask overlaps the ground truth again, and
    the avatar's parameters do not change."""
    from persona.data.datamodule import collate_frames
    from persona.metrics.geometry import mask_iou
    from persona.metrics.protocol import EvalProtocol

    dm = _datamodule(tiny_subject)
    system = PersonaSystem(**{**FAST_MODEL, "eval_protocol": EvalProtocol(fit_steps=60)})
    system.build_from_datamodule(dm)
    batch = collate_frames([dm.test_dataset()[0]])
    with torch.no_grad():
        aligned = mask_iou(system.render_eval(batch)["alpha"], batch["mask"][0])
    batch["transl"] = batch["transl"] + torch.tensor([[0.08, 0.0, 0.0]])
    before = _parameters(system)
    with torch.inference_mode():  # as Lightning's test loop runs it
        fitted = system.fit_test_pose(batch)
        perturbed = mask_iou(system.render_eval(batch)["alpha"], batch["mask"][0])
        refitted = mask_iou(system.render_eval(batch, fitted)["alpha"], batch["mask"][0])
    assert perturbed < aligned - 5.0  # the perturbation is visible
    assert refitted > perturbed + 0.5 * (aligned - perturbed)  # fitting recovers most of it
    for name, value in _parameters(system).items():
        assert torch.equal(value, before[name]), name


def test_silhouette_targets_follow_the_occlusion_switch(tiny_subject: Path):
    """With losses.mask_occlusion the hand/eye targets are the z-buffered labels of the whole
    mesh; with 0 the regions' faces alone. A render equal to the target scores 0, the other > 0."""
    from persona.render.silhouette import rasterize_labels, rasterize_silhouette

    dm = _datamodule(tiny_subject)
    system = PersonaSystem(**FAST_MODEL)
    system.build_from_datamodule(dm)
    record = dm.train_frames[dm.generated_rows[0]]
    weights = {"hand_mask": 1.0, "eye_mask": 1.0}
    with torch.no_grad():
        vertices = system.body(system.identity, record.pose)[0]
    labels = rasterize_labels(vertices, system.body.faces, system.frozen.face_labels,
                              record.camera)
    occluded = {"hand_mask": (labels == 1).float(), "eye_mask": (labels == 2).float()}
    regions = system.frozen.region_faces
    alone = {k: rasterize_silhouette(vertices, regions[k], record.camera) for k in occluded}
    assert occluded["hand_mask"].sum() > 0
    assert (alone["eye_mask"] - occluded["eye_mask"]).sum() > 0  # eyeballs under the lids
    assert ((occluded["eye_mask"] > 0) <= (alone["eye_mask"] > 0)).all()

    def render_of(targets: dict) -> dict:
        channels = torch.zeros(*targets["hand_mask"].shape, 3)
        channels[..., 0], channels[..., 1] = targets["hand_mask"], targets["eye_mask"]
        return {"regions": channels}

    from persona.losses.step_terms import mesh_silhouette_terms

    def terms_of(render: dict, occlusion: bool) -> dict:
        return mesh_silhouette_terms(render, lambda: system.mesh_vertices(record.pose),
                                     system.body.faces, system.frozen.face_labels, regions,
                                     record.camera, weights, occlusion)

    for switch, match, other in ((True, occluded, alone), (False, alone, occluded)):
        terms = terms_of(render_of(match), switch)
        assert all(float(value) == 0.0 for value, _ in terms.values()), switch
        terms = terms_of(render_of(other), switch)
        assert float(terms["eye_mask"][0]) > 0.0, switch


def test_face_patch_terms_on_the_input_image_only(tiny_subject: Path):
    """model.losses.face_patch > 0: the input image adds the authors' four patch terms at
    face_patch each (with face_patch_whole_avatar, ours: base / refined x the variant's image
    weight); generated frames add none. The body mesh is posed once a step for both uses."""
    from persona.data.datamodule import collate_frames

    dm = PersonaDataModule(str(tiny_subject), epoch_length=3, seed=3, resolution_scale=0.5)
    system = PersonaSystem(**{**FAST_MODEL, "losses": LossWeights(lpips=0.0, face_patch=0.1,
                                                                   face_patch_size=32)})
    system.build_from_datamodule(dm)
    logged: dict[str, float] = {}
    system.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    dataset = dm.train_dataset()
    sample = dataset[dm.input_rows[0]]
    assert sample["image"].shape[:2] == (80, 48)  # training size
    assert sample["image_native"].shape[:2] == (160, 96)  # the face patch crops this
    posed_meshes = []
    mesh_vertices = system.mesh_vertices
    system.mesh_vertices = lambda pose: posed_meshes.append(pose) or mesh_vertices(pose)
    system.training_step(collate_frames([sample]), 0)
    assert len(posed_meshes) == 1  # silhouettes and face patch share one posed body mesh
    for term in ("face_patch_base", "face_patch_boundary", "face_patch_mask", "face_patch_geo"):
        assert logged[f"train/weight/{term}"] == pytest.approx(0.1), term
        assert 0.0 <= logged[f"train/loss/{term}"] < 1.0, term
    assert logged["train/loss/face_patch_base"] > 0.0
    assert "train/loss/face_patch_refined" not in logged
    system.loss_weights = LossWeights(lpips=0.0, face_patch=0.1, face_patch_size=32,
                                      face_patch_whole_avatar=1)
    logged.clear()
    system.training_step(collate_frames([sample]), 0)
    assert logged["train/weight/face_patch_base"] == pytest.approx(0.1)
    assert logged["train/weight/face_patch_refined"] == pytest.approx(0.01)
    assert "train/loss/face_patch_boundary" not in logged
    logged.clear()
    system.training_step(collate_frames([dataset[dm.generated_rows[0]]]), 1)
    assert not any("face_patch" in k for k in logged)


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_mixed_precision_failures_name_the_setting(precision: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel without a half-precision version fails deep in torch; under a mixed precision
    the training step re-raises it naming trainer.precision and the fix; otherwise untouched."""
    system = PersonaSystem()

    class FakeTrainer:
        pass

    FakeTrainer.precision = precision
    monkeypatch.setattr(system, "_trainer", FakeTrainer())

    def fails(batch: dict, batch_idx: int) -> None:
        raise NotImplementedError('"addmm_sparse_cuda" not implemented for \'BFloat16\'')

    monkeypatch.setattr(system, "_training_step", fails)
    with pytest.raises(NotImplementedError if precision == "32-true" else RuntimeError) as info:
        system.training_step({}, 0)
    if precision == "32-true":
        assert "trainer.precision" not in str(info.value)
    else:
        assert "trainer.precision=bf16-mixed" in str(info.value) and "32-true" in str(info.value)


def test_skipped_nonfinite_steps_are_counted_in_the_checkpoint_and_metrics_json(
        tiny_subject: Path, tmp_path: Path, monkeypatch):
    """One step of a CLI fit gets a NaN loss: it is skipped with one warning, the checkpoint
    keeps the count and `persona test` writes it to metrics.json."""
    import json
    import warnings

    from persona.cli import main
    from persona.losses import terms as loss_terms
    from persona.runs import load_checkpoint
    from persona.system import NONFINITE_STEPS_KEY

    nan_call = 3  # the third training step's loss is NaN
    calls = [0]
    total_loss = loss_terms.total_loss

    def poisoned(terms):  # noqa: ANN001, ANN202
        calls[0] += 1
        loss = total_loss(terms)
        return loss * float("nan") if calls[0] == nan_call else loss

    run = tmp_path / "run"
    config = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"
    monkeypatch.setattr(loss_terms, "total_loss", poisoned)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["fit", "--config", str(config), "--data.subject_dir", str(tiny_subject),
                     "--trainer.default_root_dir", str(run), "--trainer.logger", "false"]) == 0
    monkeypatch.setattr(loss_terms, "total_loss", total_loss)
    skipped = [w for w in caught if "skipped a training step" in str(w.message)]
    assert len(skipped) == 1 and "1 of at most" in str(skipped[0].message)
    assert calls[0] >= nan_call
    ckpt = run / "checkpoints" / "last.ckpt"
    assert load_checkpoint(ckpt, map_location="cpu")[NONFINITE_STEPS_KEY] == 1
    assert main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(ckpt),
                 "--trainer.limit_test_batches", "1",  # one frame, given pose: seconds
                 "--model.eval_protocol.fit_test_pose", "false"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["nonfinite_steps"] == 1


def test_the_skipped_step_count_survives_a_checkpoint_round_trip():
    """A resumed fit keeps counting: the count is saved and restored (0 from older
    checkpoints without it)."""
    from persona.system import NONFINITE_STEPS_KEY

    saved = PersonaSystem(**FAST_MODEL)
    saved.nonfinite_steps = 3
    checkpoint: dict = {}
    saved.on_save_checkpoint(checkpoint)
    assert checkpoint[NONFINITE_STEPS_KEY] == 3
    resumed = PersonaSystem(**FAST_MODEL)
    resumed.on_load_checkpoint(checkpoint)
    assert resumed.nonfinite_steps == 3
    resumed.on_load_checkpoint({})
    assert resumed.nonfinite_steps == 0


class RecordMeanOffset(Callback):
    """The live avatar.mean_offset after every optimiser step."""

    def __init__(self) -> None:
        self.values: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.values.append(pl_module.avatar.mean_offset.detach().clone())


def test_ema_decay_keeps_the_average_of_the_steps(tiny_subject: Path, tmp_path: Path):
    """model.optim.ema_decay: after the fit the system holds the exponential moving average of
    the live weights of every step (the first step's copied, then decay x average + (1 - decay)
    x weights), and the checkpoint's state_dict is that average with the live weights beside it;
    0 (the authors') adds no callback."""
    from persona.system_config import OptimConfig

    assert PersonaSystem(**FAST_MODEL).configure_callbacks() == []
    with pytest.raises(ValueError, match="ema_decay"):
        OptimConfig(ema_decay=1.0)
    decay = 0.5
    pl.seed_everything(0)
    system = PersonaSystem(**FAST_MODEL, optim=OptimConfig(ema_decay=decay))
    recorder = RecordMeanOffset()
    _trainer(tmp_path, max_epochs=1, callbacks=[recorder]).fit(system, _datamodule(tiny_subject))
    live = recorder.values
    assert len(live) == 3 and not torch.equal(live[0], live[-1])
    expected = live[0]
    for value in live[1:]:
        expected = decay * expected + (1 - decay) * value
    torch.testing.assert_close(system.avatar.mean_offset.detach(), expected)
    assert not torch.allclose(expected, live[-1])  # the average is not the last step's weights
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    torch.testing.assert_close(checkpoint["state_dict"]["avatar.mean_offset"], expected)
    torch.testing.assert_close(checkpoint["current_model_state"]["avatar.mean_offset"], live[-1])


class RecordDeformer(RecordMeanOffset):
    """RecordMeanOffset's mean offsets and a copy of every deformer parameter, at the start and
    after each optimiser step."""

    def __init__(self) -> None:
        super().__init__()
        self.deformer: list[list[torch.Tensor]] = []

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        self.on_train_batch_end(trainer, pl_module, None, None, -1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.deformer.append([p.detach().clone() for p in pl_module.deformer.parameters()])


def test_deformer_accumulate_steps_the_deformer_every_k_steps(tiny_subject: Path,
                                                               tmp_path: Path):
    """model.optim.deformer_accumulate 2: in a 6-step fit the deformer moves on steps 2, 4 and 6
    only, the mean offsets on every step; 1 (the authors') adds no callback."""
    from persona.callbacks.gradient_accumulation import GroupGradientAccumulation
    from persona.system_config import OptimConfig

    with pytest.raises(ValueError, match="deformer_accumulate"):
        OptimConfig(deformer_accumulate=0)
    assert PersonaSystem(**FAST_MODEL, optim=OptimConfig(deformer_accumulate=1)
                         ).configure_callbacks() == []
    pl.seed_everything(0)
    system = PersonaSystem(**FAST_MODEL, optim=OptimConfig(deformer_accumulate=2))
    assert [type(c) for c in system.configure_callbacks()] == [GroupGradientAccumulation]
    recorder = RecordDeformer()
    _trainer(tmp_path, max_epochs=2, callbacks=[recorder]).fit(system, _datamodule(tiny_subject))
    deformer, offsets = recorder.deformer, recorder.values
    assert len(deformer) == 7
    for step in range(1, 7):
        pairs = zip(deformer[step - 1], deformer[step], strict=True)
        moved = any(not torch.equal(a, b) for a, b in pairs)
        assert moved == (step % 2 == 0), step
        assert not torch.equal(offsets[step - 1], offsets[step]), step
