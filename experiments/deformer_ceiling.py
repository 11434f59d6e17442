"""How far can the avatar's own offsets get with the garment's true 3D offsets as supervision?

Issue 12's displacement bar asks a fit trained through images to bring the garment's error in
the held-out test motion to at most 50 % of no offset and 70 % of deformer off. This measures
the same model's ceiling on the same subject and budget: a trained run on a synthetic subject is
loaded for its template, skinning and deformer architecture; its static offset and deformer are
reset (zeros; the deformer re-initialised as at the start of a fit, seeded); then the two are
fitted with direct 3D supervision, one true training pose per step (the poses the generated
frames were rendered in), to the true canonical offsets of every Gaussian (the garment's, 0
elsewhere): loss = mean over Gaussians of |static + deformer(pose) - truth(pose)|^2. Adam with the
run's learning rates of the mean offsets, triplane and MLP, decayed by the run's factor at its
decay fraction. Everything else (colours, scales, per-frame SMPL-X) is not used. The result is
scored by persona/metrics/deformation.py exactly as `persona test` scores a fit (world errors in
the test poses; the train_* sections on the training poses).

`--input-share S` draws the input image's pose (the captured frame's, exact in a synthetic
subject) with probability S a step instead of a generated frame's, as the fits' balanced sampler
does (configs/demo.yaml: 1:1, S = 0.5); default 0: generated frames only.

`--ring-size R` replaces the run's deformer input mask before the fit (an integer: the joints
within R tree steps of each Gaussian's dominant joint, the authors' 4; `full`: every body joint,
the paper's full-pose ablation), so both inputs are compared with the truth as their teacher.

`--input written`: the deformer sees the SMPL-X written for each generated frame (with the
subject's simulated pose noise) while the target is the truth in the frame's true pose, as in a
fit on that subject; `--input true` (default): the true pose. `--poses-per-step B` averages the
loss over B poses a step (the fits: 1).

    .venv/bin/python experiments/deformer_ceiling.py RUN_DIR [--steps 480 1440] [--input true]
        [--poses-per-step 1] [--seed 0] [--out ceiling.json]

Prints (and writes to --out) JSON: per step count, the garment / skirt / sleeves sections'
world_error_mm, world_zero_offset_error_mm, pose_part_correlation (test poses) and train_*
world_error_mm, with the ratios of the garment's test error to no offset.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deformer_diagnostics as diag  # noqa: E402

SECTIONS = ("garment", "skirt", "sleeves")
KEYS = ("world_error_mm", "world_zero_offset_error_mm", "world_static_only_error_mm",
        "pose_part_correlation")


def set_ring_size(system: Any, ring_size: int | None) -> None:
    """The deformer sees the body joints within ring_size tree steps (None: all of them)."""
    from persona.avatar.deformer import body_pose_joint_mask

    deformer = system.deformer
    deformer.ring_size = ring_size
    deformer.pose_joint_mask = body_pose_joint_mask(ring_size).to(
        deformer.pose_joint_mask.device)


def written_poses(loaded: Any, lengths: list[int]) -> list:
    """The SMPL-X written for each generated frame (batch 1 each), in true_training_poses'
    order."""
    frames = loaded.dm.train_dataset().frames
    return [frames[row].pose for row in diag.generated_rows(frames, lengths)]


def captured_pose(loaded: Any) -> Any:
    """The input image's SMPL-X (batch 1): the captured frame of the training set."""
    from persona.data.subject import CAPTURED_SPLIT

    frames = loaded.dm.train_dataset().frames
    found = [frame.pose for frame in frames if frame.split == CAPTURED_SPLIT]
    if not found:
        raise SystemExit(f"{loaded.subject}: no captured frame among the training frames")
    return found[0]


def draw(count: int, input_share: float | None, generator: torch.Generator) -> int:
    """A pose index: the last (the input image's) with probability input_share, else one of the
    count - 1 generated frames' uniformly (every index uniformly when input_share is None)."""
    if input_share is None:
        return int(torch.randint(count, (1,), generator=generator))
    if float(torch.rand((), generator=generator)) < input_share:
        return count - 1
    return int(torch.randint(count - 1, (1,), generator=generator))


def fit(loaded: Any, steps: int, input_poses: list, true_poses: list, targets: torch.Tensor,
        index: torch.Tensor, poses_per_step: int, seed: int,
        input_share: float | None = None) -> list[float]:
    """3D-supervised fit of the static offset and the deformer, from a fresh start (static 0,
    the deformer re-drawn from `seed`) with the fit's own optimiser and lr schedule (every
    group of the run; only these two get gradients); returns the loss at each tenth of the
    steps. true_poses, input_poses: poses (batch 1 each) the offsets are posed in / the
    deformer sees; targets [len(true_poses), N, 3]; input_share: see draw (None: uniform)."""
    from persona import system_config
    from persona.avatar.posing import body_pose_6d

    system = loaded.system
    torch.manual_seed(seed)
    with torch.no_grad():
        system.avatar.mean_offset.zero_()
    system.deformer.reset_parameters()
    groups = system_config.optimizer_groups(system.avatar, system.deformer, system.frame_params,
                                            system.optim_cfg)
    optimiser = system_config.optimizer_and_schedule(groups, system.optim_cfg, steps)
    adam, schedule = optimiser["optimizer"], optimiser["lr_scheduler"]["scheduler"]
    generator = torch.Generator().manual_seed(seed)
    canonical = system.template.canonical_vertices.detach()  # [N, 3]
    count = targets.shape[0]
    record = {max(1, round(steps * tenth / 10)) for tenth in range(1, 11)}  # steps done
    losses = []
    system.train()
    for step in range(1, steps + 1):
        loss = canonical.new_zeros(())
        for _ in range(poses_per_step):
            t = draw(count, input_share, generator)
            state = system.posed_state(true_poses[t], body_pose_6d(input_poses[t]))
            offset = state.canonical_refined[index] - canonical[index]  # [M, 3]
            loss = loss + ((offset - targets[t]) ** 2).sum(-1).mean() / poses_per_step
        adam.zero_grad(set_to_none=True)
        loss.backward()
        adam.step()
        schedule.step()
        if step in record:
            losses.append(round(float(loss), 8))
    system.eval()
    return losses


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--subject", type=Path, default=None)
    parser.add_argument("--steps", type=int, nargs="+", default=[480, 1440])
    parser.add_argument("--input", choices=("true", "written"), default="true",
                        help="the deformer's pose input: the true pose or the written SMPL-X")
    parser.add_argument("--poses-per-step", type=int, default=1)
    parser.add_argument("--ring-size", default=None,
                        help="the deformer's pose input: an integer ring size or 'full' "
                             "(default: the run's)")
    parser.add_argument("--input-share", type=float, default=0.0,
                        help="probability of drawing the input image's pose a step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.poses_per_step < 1 or any(s < 1 for s in args.steps):
        parser.error("--steps and --poses-per-step must be >= 1")
    if not 0.0 <= args.input_share <= 1.0:
        parser.error("--input-share must lie in [0, 1]")

    from persona.data import synth
    from persona.metrics import deformation as D

    loaded = diag.load_synth_run(args.run_dir, args.subject)
    system, config, body = loaded.system, loaded.config, loaded.body
    if system.deformer.mode == "off":
        raise SystemExit(f"{args.run_dir}: the run's deformer is off; load a run with a deformer")
    if args.ring_size is not None:
        if args.ring_size != "full" and not args.ring_size.isdigit():
            parser.error(f"--ring-size: expected a non-negative integer or 'full', got "
                         f"{args.ring_size!r}")
        set_ring_size(system, None if args.ring_size == "full" else int(args.ring_size))
    tests, _ = diag.test_poses(loaded.dm)
    scoring = D.build_truth(loaded.subject, tests)  # every test and training pose
    matched = D.match_system(system, scoring)
    index, method = D.match_gaussians(D.avatar_canonical(system).detach().float(),
                                      scoring.canonical)  # [N] avatar index per true Gaussian
    poses = list(scoring.poses["train"])  # the true training poses, in order
    count = len(poses)
    targets = scoring.canonical.new_zeros(count, scoring.canonical.shape[0], 3)  # [K, N, 3]
    targets[:, scoring.garment] = scoring.offsets["train"].float()  # 0 off the garment
    input_poses = (written_poses(loaded, scoring.train_lengths) if args.input == "written"
                   else list(poses))
    share = None
    if args.input_share > 0:
        captured = captured_pose(loaded)
        with torch.no_grad():
            truth_avatar = synth.build_avatar(body, loaded.identity, config)
            captured_truth = synth.garment_offsets(body, truth_avatar, captured, config.garment)
        poses.append(captured)
        input_poses.append(captured)
        targets = torch.cat([targets, captured_truth.float()])  # [K + 1, N, 3]
        share = args.input_share
    result: dict[str, Any] = {"run": str(loaded.run), "subject": str(loaded.subject),
                              "matching": method, "input": args.input,
                              "poses_per_step": args.poses_per_step, "seed": args.seed,
                              "input_share": args.input_share,
                              "ring_size": system.deformer.ring_size,
                              "training_poses": count, "fits": []}
    for steps in args.steps:
        losses = fit(loaded, steps, input_poses, poses, targets, index, args.poses_per_step,
                     args.seed, share)
        report = D.deformation_report(system, scoring, matched)
        row: dict[str, Any] = {"steps": steps, "loss_at_tenths": losses}
        for section in SECTIONS:
            for prefix in ("", D.TRAIN_PREFIX):
                values = report.get(f"{prefix}{section}", {})
                for key in KEYS:
                    if key in values:
                        row[f"{prefix}{section}/{key}"] = round(float(values[key]), 3)
        garment = report[D.GARMENT_KEY]
        row["garment_over_zero_offset"] = round(
            garment["world_error_mm"] / garment["world_zero_offset_error_mm"], 3)
        result["fits"].append(row)
        print(json.dumps(row), flush=True)
    return diag.write_result(result, args.out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
