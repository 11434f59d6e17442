"""How much of the known garment deformation a trained avatar's pose deformer learned.

A run on a synthetic subject (`persona synth`, `persona demo`) has a ground truth: the subject's
meta.json records every synth setting, so the true avatar and its pose-driven garment offsets
(`persona.data.synth.garment_offsets`, canonical space) are rebuilt exactly. Over the test split's
poses and the garment Gaussians (tunic hem and sleeves), this prints a JSON report:

- deformer: the pose-dependent canonical offset (refined minus base canonical means) per test
  frame: mean / max magnitude and mean frame-to-frame change (mm, over the frontal held-out
  motion sequence);
- truth: the ground-truth garment offset's mean magnitude and frame-to-frame change;
- correlation (Pearson over garment Gaussian x frame x xyz) of the deformer's offset with (a) the
  true offset and (b) its pose-dependent part (truth minus its mean over the true training poses);
- static_error_mm: |learned static mean offset - mean true offset over the training poses|;
- total_error_mm: |static + deformer - truth| per test frame, next to zero_offset_error_mm
  (|truth|: the error of an avatar with no offsets at all).
Sections "garment", "hem" and "sleeves" on the test poses, and "train_garment", "train_hem",
"train_sleeves" the same on the true poses of the training frames (frame-to-frame within each
motion): the test motion (wave) barely moves the legs, so the hem is judged there. Avatar
Gaussians are matched to true Gaussians by vertex index when both are the same template (same
count, canonical positions within MATCH_TOLERANCE_M), else by nearest neighbour in canonical
space; the report says which.

    .venv/bin/python experiments/deformer_diagnostics.py runs/demo     # or runs/demo/fit
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

MM_PER_M = 1000.0
MATCH_TOLERANCE_M = 1e-5  # canonical positions this close: same template, match by index
NN_CHUNK = 4096  # avatar Gaussians per nearest-neighbour distance block
CHECKPOINT_RELPATH = Path("checkpoints") / "last.ckpt"
CONFIG_NAME = "config.yaml"
FIT_SUBFOLDER = "fit"  # `persona demo` puts its run in OUT/fit


# ---------------------------------------------------------------------------- run and subject
def resolve_run(run_dir: Path) -> Path:
    """RUN (holding checkpoints/last.ckpt and config.yaml), or OUT/fit of a demo folder."""
    for candidate in (run_dir, run_dir / FIT_SUBFOLDER):
        if (candidate / CHECKPOINT_RELPATH).is_file() and (candidate / CONFIG_NAME).is_file():
            return candidate
    raise FileNotFoundError(f"{run_dir}: no {CHECKPOINT_RELPATH} + {CONFIG_NAME} here or in "
                            f"{FIT_SUBFOLDER}/")


def resolve_subject(run: Path, settings: dict, subject: Path | None) -> Path:
    """The run's subject folder: given, else data.subject_dir (as written, or beside the run)."""
    if subject is not None:
        return subject.resolve()
    written = Path(settings["data"]["subject_dir"])
    for candidate in (written, run / written, run.parent / written.name, run.parent / "subject"):
        if (candidate / "meta.json").is_file():
            return candidate.resolve()
    raise FileNotFoundError(f"subject {written} of {run} not found; pass --subject")


def load_system(run: Path, subject: Path) -> tuple[Any, Any]:
    """(PersonaSystem in eval mode on the CPU, its datamodule) with the subject path resolved."""
    from persona.runs import load_trained_system

    settings = yaml.safe_load((run / CONFIG_NAME).read_text())
    settings["data"]["subject_dir"] = str(subject)
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / CONFIG_NAME
        config.write_text(yaml.safe_dump(settings))
        return load_trained_system(run / CHECKPOINT_RELPATH, config, device="cpu")


def _dataclass_from(cls: type, values: dict) -> Any:
    """A (nested) dataclass from its asdict() form; lists become tuples, unknown keys dropped."""
    kwargs = {}
    for item in fields(cls):
        if item.name not in values:
            continue
        value = values[item.name]
        default = getattr(cls(), item.name)
        if hasattr(default, "__dataclass_fields__"):
            value = _dataclass_from(type(default), value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[item.name] = value
    return cls(**kwargs)


def synth_config(subject: Path) -> Any:
    """The SynthConfig the subject was built with (its meta.json)."""
    from persona.data.synth import SynthConfig

    meta = json.loads((subject / "meta.json").read_text())
    if meta.get("generator") != "persona.data.synth":
        raise ValueError(f"{subject}: not a synthetic subject (meta.json generator "
                         f"{meta.get('generator')!r})")
    return _dataclass_from(SynthConfig, meta["config"])


# ---------------------------------------------------------------------------- poses
def stack_poses(poses: list) -> Any:
    """PoseParams of batch 1 each -> one PoseParams of batch len(poses)."""
    from persona.body.types import PoseParams

    return PoseParams(torch.cat([p.full_pose for p in poses]),
                      torch.cat([p.expression for p in poses]),
                      torch.cat([p.transl for p in poses]))


def test_poses(dm: Any) -> tuple[list, int]:
    """(distinct test-split poses in split order, how many lead the list as the frontal motion
    sequence): novel views repeat poses of the held-out motion and are dropped as duplicates."""
    distinct: list = []
    for frame in dm.test_frames:
        if not any(torch.equal(frame.pose.full_pose, p.full_pose) for p in distinct):
            distinct.append(frame.pose)
    frontal = 0
    for frame in dm.test_frames:  # the leading frames share the front camera (R = I)
        if not torch.allclose(frame.camera.R, torch.eye(3)):
            break
        frontal += 1
    return distinct, max(1, min(frontal, len(distinct)))


def true_training_poses(body: Any, identity: Any, config: Any) -> tuple[Any, list[int]]:
    """(the poses the generated frames were rendered in, before the written pose noise; the
    number of frames of each motion, in order)."""
    from persona.data import motions as motion_lib
    from persona.data import synth

    poses, lengths = [], []
    for name in config.motions:
        motion = motion_lib.resolve_motion(name)
        posed = synth.camera_frame_poses(body, identity, motion.poses, motion.transl,
                                         body.num_expression)
        indices = synth.subsample(motion.num_frames, config.frames)
        poses += [synth.select(posed, i) for i in indices]
        lengths.append(len(indices))
    return stack_poses(poses), lengths


def consecutive_pairs(lengths: list[int]) -> Tensor:
    """[T - 1] bool: frame t and t + 1 belong to the same sequence (sequences of `lengths`)."""
    sequence = torch.cat([torch.full((n,), k) for k, n in enumerate(lengths)])  # [T]
    return sequence[1:] == sequence[:-1]


# ---------------------------------------------------------------------------- the model's side
def deformer_offset(system: Any, pose: Any) -> Tensor:
    """The deformer's pose-dependent canonical offset [N, 3] in one pose (batch 1): refined minus
    base canonical means. The one place that reaches into the system (adapt it here)."""
    from persona.ops.rotations import axis_angle_to_rotation_6d

    body_6d = axis_angle_to_rotation_6d(pose.full_pose[:, 1:22])  # [1, 21, 6]
    state = system.posed_state(pose, body_6d)
    return state.canonical_refined - state.canonical_base


def static_offset(system: Any) -> Tensor:
    """The learned pose-independent canonical mean offset [N, 3]."""
    return system.avatar.mean_offset


def avatar_canonical(system: Any) -> Tensor:
    """The avatar template's canonical Gaussian positions [N, 3] (before any offset)."""
    return system.template.canonical_vertices


# ---------------------------------------------------------------------------- matching
def match_gaussians(avatar: Tensor, truth: Tensor) -> tuple[Tensor, str]:
    """For each true Gaussian, the index of its avatar Gaussian ([M] long) and the method."""
    if avatar.shape == truth.shape and float((avatar - truth).abs().max()) <= MATCH_TOLERANCE_M:
        return torch.arange(truth.shape[0]), "vertex_index"
    nearest = []
    for start in range(0, truth.shape[0], NN_CHUNK):
        block = torch.cdist(truth[start:start + NN_CHUNK], avatar)  # [c, N]
        nearest.append(block.argmin(dim=1))
    return torch.cat(nearest), "nearest_neighbour"


# ---------------------------------------------------------------------------- statistics
def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation over all components (NaN when one side is constant)."""
    pair = torch.stack([a.flatten().double(), b.flatten().double()])
    return float(torch.corrcoef(pair)[0, 1])


def frame_to_frame_mm(offsets: Tensor, pairs: Tensor) -> float:
    """Mean |offset(t+1) - offset(t)| in mm over Gaussians and the consecutive frames t with
    pairs[t] (same motion sequence). offsets [T, G, 3], pairs [T - 1] bool."""
    if not bool(pairs.any()):
        return float("nan")
    steps = (offsets[1:] - offsets[:-1])[pairs]  # [P, G, 3]
    return float(steps.norm(dim=-1).mean()) * MM_PER_M


def mean_mm(vectors: Tensor) -> float:
    return float(vectors.norm(dim=-1).mean()) * MM_PER_M


def part_report(deformer: Tensor, static: Tensor, truth: Tensor, truth_train_mean: Tensor,
                pairs: Tensor) -> dict[str, Any]:
    """deformer [T, G, 3], static [G, 3], truth [T, G, 3], truth_train_mean [G, 3] (metres);
    pairs [T - 1] bool: frames t, t + 1 are consecutive frames of one sequence."""
    return {
        "gaussians": int(truth.shape[1]),
        "deformer_mean_mm": mean_mm(deformer),
        "deformer_max_mm": float(deformer.norm(dim=-1).max()) * MM_PER_M,
        "deformer_frame_to_frame_mm": frame_to_frame_mm(deformer, pairs),
        "truth_mean_mm": mean_mm(truth),
        "truth_frame_to_frame_mm": frame_to_frame_mm(truth, pairs),
        "truth_pose_part_mean_mm": mean_mm(truth - truth_train_mean),
        "correlation_with_truth": pearson(deformer, truth),
        "correlation_with_truth_pose_part": pearson(deformer, truth - truth_train_mean),
        "static_error_mm": mean_mm(static - truth_train_mean),
        "static_mean_mm": mean_mm(static),
        "truth_static_mean_mm": mean_mm(truth_train_mean),
        "total_error_mm": mean_mm(static + deformer - truth),
        "zero_offset_error_mm": mean_mm(truth),
    }


# ---------------------------------------------------------------------------- the report
def model_offsets(system: Any, poses: list, index: Tensor) -> Tensor:
    """The deformer's offsets of the matched Gaussians in each pose. -> [T, M, 3]."""
    return torch.stack([deformer_offset(system, p) for p in poses])[:, index]


def diagnose(run_dir: Path, subject: Path | None = None) -> dict[str, Any]:
    from persona.data import synth

    run = resolve_run(run_dir)
    settings = yaml.safe_load((run / CONFIG_NAME).read_text())
    subject = resolve_subject(run, settings, subject)
    config = synth_config(subject)
    system, dm = load_system(run, subject)
    body = synth.load_synth_body(config)
    identity = synth.subject_identity(body, config.seed)
    truth_avatar = synth.build_avatar(body, identity, config)
    poses, frontal = test_poses(dm)
    train_poses, train_lengths = true_training_poses(body, identity, config)
    train_list = [synth.select(train_poses, i) for i in range(train_poses.full_pose.shape[0])]
    with torch.no_grad():
        truth = synth.garment_offsets(body, truth_avatar, stack_poses(poses),
                                      config.garment)  # [T, M, 3]
        train = synth.garment_offsets(body, truth_avatar, train_poses, config.garment)  # [K,M,3]
        index, method = match_gaussians(avatar_canonical(system), truth_avatar.canonical)
        deformer = model_offsets(system, poses, index)  # [T, M, 3]
        train_deformer = model_offsets(system, train_list, index)  # [K, M, 3]
        static = static_offset(system)[index]  # [M, 3]
    parts = {"hem": truth_avatar.hem_weight > 0, "sleeves": truth_avatar.sleeve_weight > 0}
    parts = {"garment": parts["hem"] | parts["sleeves"], **parts}
    train_mean = train.mean(0)  # [M, 3]
    test_pairs = consecutive_pairs([frontal, len(poses) - frontal])
    train_pairs = consecutive_pairs(train_lengths)
    report: dict[str, Any] = {
        "run": str(run), "subject": str(subject), "matching": method,
        "test_poses": len(poses), "frontal_sequence": frontal,
        "training_poses": int(train.shape[0]),
        "deformer_mode": getattr(system.deformer, "mode", None),
    }
    for name, mask in parts.items():  # the test split (held-out motion)
        report[name] = part_report(deformer[:, mask], static[mask], truth[:, mask],
                                   train_mean[mask], test_pairs)
    for name, mask in parts.items():  # the true poses of the training frames
        report[f"train_{name}"] = part_report(train_deformer[:, mask], static[mask],
                                              train[:, mask], train_mean[mask], train_pairs)
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="RUN (checkpoints/last.ckpt + config.yaml) "
                        "or a demo folder holding fit/")
    parser.add_argument("--subject", type=Path, default=None,
                        help="the run's subject folder (default: the run's data.subject_dir)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    report = diagnose(args.run_dir, args.subject)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
