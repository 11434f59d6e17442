"""experiments/oracle_deformer_input.py: during a fit the deformer sees the frames' true poses,
while the avatar is still posed by the written (noisy) per-frame SMPL-X."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from experiment_scripts import load_script

from persona.data.synth import FaultSettings, preset_config, synthesize
from persona.lightning_cli import BASE_CONFIG, run_lightning_cli

TINY = str(BASE_CONFIG.parent / "tiny.yaml")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

oracle = load_script("oracle_deformer_input.py")


def test_exact_written_poses_are_their_own_truth(tmp_path: Path) -> None:
    """A subject without simulated faults: the true poses are the written ones (to the
    precision of the written files), so the oracle changes nothing."""
    subject = tmp_path / "clean"
    synthesize(subject, preset_config("tiny", seed=4, artifacts=0.0))
    from persona.data.datamodule import PersonaDataModule

    dm = PersonaDataModule(subject_dir=str(subject))
    dm.setup("fit")
    table, written = oracle.true_deformer_inputs(subject, dm.train_dataset().frames)
    assert float(oracle.rotation_angle_deg(table, written).max()) < 0.05


def test_the_deformer_sees_the_true_pose_during_a_fit(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    subject = tmp_path / "subject"
    synthesize(subject, preset_config("tiny", seed=4))  # default pose noise
    cli = run_lightning_cli(["--config", TINY, "--data.subject_dir", str(subject),
                             "--trainer.default_root_dir", str(tmp_path / "run"),
                             "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
                             "--trainer.logger", "false"], run=False)
    callback = oracle.TrueDeformerInput()
    cli.trainer.callbacks.append(callback)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    # the written body joints are the truth plus 0.04 rad per axis: a mean angle of
    # 0.04 sqrt(8 / pi) rad = 3.7 deg; frames matched to another frame's pose: tens of degrees
    noise_deg = math.degrees(FaultSettings().pose_noise_body * math.sqrt(8 / math.pi))
    assert callback.mean_noise_deg == pytest.approx(noise_deg, rel=0.25)

    system, dm = cli.model, cli.datamodule
    frames = dm.train_dataset().frames
    table, written = oracle.true_deformer_inputs(subject, frames)
    generated = dm.generated_rows[0]
    captured = dm.input_rows[0]
    torch.testing.assert_close(table[captured], written[captured])  # exact in a synth subject
    # the table is in the deformer's own input encoding: the per-frame parameters it replaces
    # hold the written poses' 6D values (two refinement steps at lr 1e-3 move them by < 0.01)
    stored = system.frame_params.field("body", torch.arange(len(frames))).detach()
    torch.testing.assert_close(stored, written, atol=0.01, rtol=0.0)
    assert float(oracle.rotation_angle_deg(table[generated], written[generated]).mean()) > 1.0

    # one training step on a generated frame: the deformer's pose input (posed_state's
    # body_pose_6d, persona/avatar/posing.py) is the true pose, while the avatar is posed by the
    # frame's own per-frame SMPL-X (the written pose, two steps refined)
    from persona.avatar.posing import body_pose_6d
    from persona.data.datamodule import collate_frames

    seen = {}
    original = system.posed_state

    def spy(pose, deformer_input):
        seen["pose"], seen["input"] = pose, deformer_input.detach().clone()
        return original(pose, deformer_input)

    system.posed_state = spy
    system.log = lambda *args, **kwargs: None
    system.training_step(collate_frames([dm.train_dataset()[generated]]), 0)
    torch.testing.assert_close(seen["input"][0], table[generated])
    posed_by = body_pose_6d(seen["pose"])[0].detach().float()
    assert float(oracle.rotation_angle_deg(posed_by, written[generated]).max()) < 0.5
    assert float(oracle.rotation_angle_deg(posed_by, table[generated]).mean()) > 1.0
