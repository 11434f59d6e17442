"""How much of the known garment deformation a trained avatar's pose deformer learned.

A run on a synthetic subject (`persona synth`, `persona demo`) has a ground truth: the subject's
meta.json records every synth setting, so the true avatar and its pose-driven garment offsets
(`persona.data.synth.garment_offsets`, canonical space) are rebuilt exactly. Over the test split's
poses and the garment Gaussians (`persona.data.synth.garment_regions`: the whole garment, then
each of its parts), this prints a JSON report:

- deformer: the pose-dependent canonical offset (refined minus base canonical means) per test
  frame: mean / max magnitude and mean frame-to-frame change (mm, over the frontal held-out
  motion sequence);
- truth: the ground-truth garment offset's mean magnitude and frame-to-frame change;
- correlation (Pearson over garment Gaussian x frame x xyz) of the deformer's offset with (a) the
  true offset and (b) its pose-dependent part (truth minus its mean over the true training poses);
- static_error_mm: |learned static mean offset - mean true offset over the training poses|;
- the metrics `persona test` writes (persona/metrics/deformation.py, the definitions):
  total_error_mm (|static + deformer - truth|) beside zero_offset_error_mm (|truth|) and
  static_only_error_mm (|static - truth|); deformer_error_mm (|deformer - (truth - training
  mean)|) beside deformer_zero_error_mm; deformer_correlation (= correlation_with_truth_pose_part).
Sections "<region>" (garment, then each part) on the test poses, and "train_<region>" the same
on the true poses of the training frames (frame-to-frame within each motion): the test motion
(wave) may barely move some parts, so they are judged there. Avatar Gaussians are matched to
true Gaussians by vertex index when both are the same template (same count, canonical positions
within MATCH_TOLERANCE_M), else by nearest neighbour in canonical space; the report says which.

    .venv/bin/python experiments/deformer_diagnostics.py runs/demo     # or runs/demo/fit
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from persona.metrics.deformation import (  # noqa: F401 - re-exported for callers of the script
    MATCH_TOLERANCE_M,
    MM_PER_M,
    TRAIN_PREFIX,
    avatar_canonical,
    build_truth,
    match_gaussians,
    match_system,
    mean_mm,
    model_offsets,
    offset_errors,
    pearson,
    stack_poses,
    static_offset,
    synth_config,
    true_training_poses,
)

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


# ---------------------------------------------------------------------------- poses
def test_poses(dm: Any) -> tuple[list, int]:
    """(distinct test-split poses in split order, how many lead the list as the frontal motion
    sequence): novel views repeat poses of the held-out motion and are dropped as duplicates."""
    from persona.metrics.deformation import distinct_poses

    distinct = distinct_poses([frame.pose for frame in dm.test_frames])
    frontal = 0
    for frame in dm.test_frames:  # the leading frames share the front camera (R = I)
        if not torch.allclose(frame.camera.R, torch.eye(3)):
            break
        frontal += 1
    return distinct, max(1, min(frontal, len(distinct)))


def consecutive_pairs(lengths: list[int]) -> Tensor:
    """[T - 1] bool: frame t and t + 1 belong to the same sequence (sequences of `lengths`)."""
    sequence = torch.cat([torch.full((n,), k) for k, n in enumerate(lengths)])  # [T]
    return sequence[1:] == sequence[:-1]


# ---------------------------------------------------------------------------- statistics
def frame_to_frame_mm(offsets: Tensor, pairs: Tensor) -> float:
    """Mean |offset(t+1) - offset(t)| in mm over Gaussians and the consecutive frames t with
    pairs[t] (same motion sequence). offsets [T, G, 3], pairs [T - 1] bool."""
    if not bool(pairs.any()):
        return float("nan")
    steps = (offsets[1:] - offsets[:-1])[pairs]  # [P, G, 3]
    return float(steps.norm(dim=-1).mean()) * MM_PER_M


def part_report(deformer: Tensor, static: Tensor, truth: Tensor, truth_train_mean: Tensor,
                pairs: Tensor) -> dict[str, Any]:
    """deformer [T, G, 3], static [G, 3], truth [T, G, 3], truth_train_mean [G, 3] (metres);
    pairs [T - 1] bool: frames t, t + 1 are consecutive frames of one sequence. The metrics of
    `persona test` (offset_errors) and the diagnostics around them."""
    return {
        **offset_errors(deformer, static, truth, truth_train_mean),
        "deformer_mean_mm": mean_mm(deformer),
        "deformer_max_mm": (float(deformer.norm(dim=-1).max()) * MM_PER_M
                            if deformer.numel() else float("nan")),
        "deformer_frame_to_frame_mm": frame_to_frame_mm(deformer, pairs),
        "truth_mean_mm": mean_mm(truth),
        "truth_frame_to_frame_mm": frame_to_frame_mm(truth, pairs),
        "truth_pose_part_mean_mm": mean_mm(truth - truth_train_mean),
        "correlation_with_truth": pearson(deformer, truth),
        "correlation_with_truth_pose_part": pearson(deformer, truth - truth_train_mean),
        "static_error_mm": mean_mm(static - truth_train_mean),
        "static_mean_mm": mean_mm(static),
        "truth_static_mean_mm": mean_mm(truth_train_mean),
    }


DEFAULT_POSES = 20  # poses per set of the split and surface scripts (the mean uses all)


@dataclass
class LoadedRun:
    """A trained synthetic-subject run with its ground truth, as the diagnostics read it."""

    run: Path
    subject: Path
    system: Any  # PersonaSystem, eval mode, CPU
    dm: Any  # its datamodule
    poses: list  # distinct test poses (test_poses)
    frontal: int  # how many of them lead as the frontal sequence
    truth: Any  # DeformationTruth
    index: Tensor  # [M] avatar indices of the true garment Gaussians
    method: str  # how they were matched


def load_with_truth(run_dir: Path, subject: Path | None = None,
                    max_poses: int | None = None) -> LoadedRun:
    """The run (a run folder or its parent), its system and its garment truth (at most
    max_poses evenly spread poses per set; None: all)."""
    run = resolve_run(run_dir)
    settings = yaml.safe_load((run / CONFIG_NAME).read_text())
    subject = resolve_subject(run, settings, subject)
    synth_config(subject)  # a clear error for a subject that is not synthetic
    system, dm = load_system(run, subject)
    poses, frontal = test_poses(dm)
    truth = build_truth(subject, poses, max_poses=max_poses)
    index, method = match_system(system, truth)
    return LoadedRun(run, subject, system, dm, poses, frontal, truth, index, method)


@dataclass
class SynthRun:
    """A run on a synthetic subject with the pieces its truth is rebuilt from."""

    run: Path
    subject: Path
    system: Any  # PersonaSystem, eval mode, CPU
    dm: Any  # its datamodule
    config: Any  # the subject's SynthConfig
    body: Any  # the synth's body
    identity: Any  # the subject's identity on it


def load_synth_run(run_dir: Path, subject: Path | None = None) -> SynthRun:
    """The run (a run folder or its parent), its system and the synth body and identity."""
    from persona.data import synth

    run = resolve_run(run_dir)
    settings = yaml.safe_load((run / CONFIG_NAME).read_text())
    subject = resolve_subject(run, settings, subject)
    config = synth_config(subject)  # a clear error for a subject that is not synthetic
    system, dm = load_system(run, subject)
    body = synth.load_synth_body(config)
    return SynthRun(run, subject, system, dm, config, body,
                    synth.subject_identity(body, config.seed))


def generated_rows(frames: list, lengths: list[int]) -> list[int]:
    """The rows of `frames` (the training frame records) holding the generated frames, in the
    order of true_training_poses (motion k's `lengths[k]` frames, in turn)."""
    from persona.data import synth

    order = {(record.split, record.index): row for row, record in enumerate(frames)}
    return [order[(synth.generated_split(k), i)] for k, n in enumerate(lengths)
            for i in range(n)]


def parse_run_and_poses(argv: list[str], description: str) -> argparse.Namespace:
    """RUN_DIR [--poses N] of the scripts that read a run with load_with_truth."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--poses", type=int, default=DEFAULT_POSES,
                        help="evenly spread poses evaluated per set (test, training)")
    return parser.parse_args(argv)


def write_result(result: dict[str, Any], out: Path | None) -> int:
    """Print the JSON; also write it to `out` (atomically) when given. Returns 0 (exit code)."""
    text = json.dumps(result, indent=1)
    if out is not None:
        from persona.atomic import atomic_write_text

        atomic_write_text(out, text + "\n")
    print(text)
    return 0


# ---------------------------------------------------------------------------- the report
def diagnose(run_dir: Path, subject: Path | None = None) -> dict[str, Any]:
    loaded = load_with_truth(run_dir, subject)  # every test and training pose
    run, subject, system = loaded.run, loaded.subject, loaded.system
    poses, frontal, truth = loaded.poses, loaded.frontal, loaded.truth
    index, method = loaded.index, loaded.method
    with torch.no_grad():
        deformer = model_offsets(system, truth.poses["test"], index)  # [T, M, 3]
        train_deformer = model_offsets(system, truth.poses["train"], index)  # [K, M, 3]
        static = static_offset(system).detach()[index]  # [M, 3]
    test_pairs = consecutive_pairs([frontal, len(poses) - frontal])
    train_pairs = consecutive_pairs(truth.train_lengths)
    report: dict[str, Any] = {
        "run": str(run), "subject": str(subject), "matching": method,
        "test_poses": len(poses), "frontal_sequence": frontal,
        "training_poses": len(truth.poses["train"]),
        "deformer_mode": getattr(system.deformer, "mode", None),
    }
    for pose_set, prefix, moved, pairs in (("test", "", deformer, test_pairs),
                                           ("train", TRAIN_PREFIX, train_deformer, train_pairs)):
        for name, mask in truth.regions.items():  # garment, then each part
            report[f"{prefix}{name}"] = part_report(
                moved[:, mask], static[mask], truth.offsets[pose_set][:, mask],
                truth.train_mean[mask], pairs)
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
