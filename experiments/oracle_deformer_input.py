"""Study callback: the deformer sees each training frame's TRUE body pose during a fit.

On a synthetic subject whose written SMPL-X carries the simulated pose noise (persona synth's
`faults.pose_noise_*`), the image fits' deformer learns the skirt only when the written poses are
exact (docs/ABLATIONS.md, "Which fault"). The noise reaches the fit two ways: the avatar is posed
by the noisy per-frame SMPL-X, so its renders are misaligned with the frames, and the deformer
is fed that same noisy pose. `TrueDeformerInput` separates the two: the avatar is posed exactly
as in any fit (the per-frame SMPL-X, refined or not), while the deformer's input is the pose each
generated frame was rendered in (before the noise; the captured frame's written pose is exact).

Only the fit is changed; `persona test` scores the run as any other (the callback does nothing
outside fit). The callback replaces the system's `frame_params.body_pose_6d` (the deformer's
input, persona/system.py) with a lookup into the true poses when the fit starts, and prints the
mean angle between the written and the true body-joint rotations of the generated frames (about
3.7 degrees for the default noise; 0 on a subject without it), which also checks that the frames
were matched to their true poses.

    PYTHONPATH=experiments persona trial --config configs/demo.yaml \
        --trainer.callbacks+=oracle_deformer_input.TrueDeformerInput [overrides]

(experiments/sweeps/pose_noise_oracle_input.yaml runs it over seeds.)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deformer_diagnostics as diag  # noqa: E402


def rotation_angle_deg(a6d: Tensor, b6d: Tensor) -> Tensor:
    """Angles (degrees) of the rotations between 6D rotations a and b ([..., 6] -> [...])."""
    from persona.ops.rotations import geodesic_angle, rotation_6d_to_matrix

    return torch.rad2deg(geodesic_angle(rotation_6d_to_matrix(a6d), rotation_6d_to_matrix(b6d)))


def true_deformer_inputs(subject: Path, frames: list) -> tuple[Tensor, Tensor]:
    """(true body-joint 6D rotations of every training frame [F, 21, 6], in the frames' order
    (the rows of FrameParams); the written ones [F, 21, 6]). Generated frames get the pose they
    were rendered in, every other frame (the captured one) its written pose."""
    from persona.avatar.posing import body_pose_6d
    from persona.data import synth
    from persona.metrics import deformation as D

    config = D.synth_config(subject)
    body = synth.load_synth_body(config)
    identity = synth.subject_identity(body, config.seed)
    with torch.no_grad():
        true_poses, lengths = D.true_training_poses(body, identity, config)
        written = torch.cat([body_pose_6d(frame.pose) for frame in frames]).float()  # [F, 21, 6]
        table = written.clone()
        rows = diag.generated_rows(frames, lengths)
        for k, row in enumerate(rows):
            table[row] = body_pose_6d(synth.select(true_poses, k))[0].float()
    return table, written


class TrueDeformerInput(pl.Callback):
    """During fit, the deformer's pose input is each training frame's true pose (see the
    module docstring); posing, losses and everything else are the fit's own."""

    def __init__(self) -> None:
        self.mean_noise_deg: float | None = None  # written vs true, generated frames

    def on_fit_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        dm = trainer.datamodule
        frames = dm.train_dataset().frames
        table, written = true_deformer_inputs(Path(dm.subject_dir), frames)
        frame_params = pl_module.frame_params
        if table.shape[0] != frame_params.num_frames:
            raise RuntimeError(f"TrueDeformerInput: {table.shape[0]} training frames, "
                               f"FrameParams holds {frame_params.num_frames}")
        device = next(pl_module.parameters()).device
        table = table.to(device)

        def body_pose_6d(frame_id: Tensor, rows: list[int] | None = None) -> Tensor:
            """[B] -> [B, 21, 6], no gradient (rows: FrameParams' host ids, unused here)."""
            return table.index_select(0, frame_id.to(device))

        frame_params.body_pose_6d = body_pose_6d
        moved = (written - table.cpu()).abs().amax(dim=(1, 2)) > 0  # frames given another pose
        angles = rotation_angle_deg(written[moved], table.cpu()[moved])
        self.mean_noise_deg = float(angles.mean()) if angles.numel() else 0.0
        print(f"[TrueDeformerInput] the deformer sees the true pose of {int(moved.sum())} of "
              f"{len(frames)} training frames; written vs true body joints: mean "
              f"{self.mean_noise_deg:.2f} deg", flush=True)
