"""Do the true garment offsets, put through the avatar's own posing, give the true posed garment?

The synthetic truth skins canonical + garment offset with each Gaussian's fixed template weights
(persona/data/garment.py). The avatar (authors' default, `model.skinning.refined_lookup: true`)
skins its refined means with weights looked up again in the skinning volume at the *displaced*
canonical position. Where the weight field changes across the offset (a skirt swinging between
the legs), the same canonical offset lands elsewhere once posed. This script measures by how much,
on the test poses of a synthetic subject, over the garment Gaussians (mm, world space):

- no_offset: the avatar's refined means with zero offsets (the garment ignored);
- truth_offsets_relookup: static 0, deformer = the true canonical offset, weights looked up at
  the displaced position (what the avatar's posing does; what the canonical-space deformation
  metrics and experiments/deformer_oracle.py assume reproduces the truth);
- truth_offsets_fixed_weights: the same offsets skinned with the weights looked up at the
  undisplaced position (`refined_lookup: false`);
- learned_static_only / learned: the run's own avatar (its static offset and skinning settings),
  with its deformer's output set to zero / as trained: how close the fitted surface is to the
  true posed garment, whatever canonical offsets it chose.

Everything else (body, identity, pose, skinning field) is the run's own.

    .venv/bin/python experiments/skinning_consistency.py RUN_DIR [--subject DIR] [--poses N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deformer_diagnostics as diag  # noqa: E402

MM_PER_M = 1000.0


def select_pose(poses: Any, i: int) -> Any:
    """Pose i (batch 1) of stacked PoseParams."""
    return type(poses)(poses.full_pose[i:i + 1], poses.expression[i:i + 1],
                       poses.transl[i:i + 1])
QUANTILES = (0.5, 0.9)  # reported besides the mean


def _stats(errors: Tensor) -> dict[str, float]:
    """errors [T, G] metres -> mean and quantiles in mm."""
    flat = errors.flatten() * MM_PER_M
    out = {"mean_mm": round(float(flat.mean()), 2)}
    for q in QUANTILES:
        out[f"q{int(q * 100)}_mm"] = round(float(flat.quantile(q)), 2)
    return out


def refined_means(system: Any, pose: Any, offsets: Tensor, refined_lookup: bool,
                  method: str | None = None) -> Tensor:
    """The avatar's refined world means [N, 3] in `pose` with static offset 0 and the deformer's
    mean offset replaced by offsets [N, 3]; method: the skinning weights' source (None: the
    run's; "template": the template's own weights, as the truth uses)."""
    from persona.avatar import posing as posing_lib
    from persona.avatar.deformer import DeformerOutput

    original = system.deformer.forward
    static = system.avatar.mean_offset.data.clone()
    settings = system.skinning_cfg
    try:
        system.avatar.mean_offset.data.zero_()
        system.deformer.forward = lambda *a, **k: DeformerOutput(  # noqa: E731
            mean_offset=offsets[None], rgb_offset=None, scale_offset=None)
        system.skinning_cfg = dataclasses.replace(settings, refined_lookup=refined_lookup,
                                                  method=method or settings.method)
        state = system.posed_state(pose, posing_lib.body_pose_6d(pose))
        return state.means["refined"].detach()
    finally:
        system.deformer.forward = original
        system.avatar.mean_offset.data.copy_(static)
        system.skinning_cfg = settings


def learned_means(system: Any, pose: Any, deformer_on: bool) -> Tensor:
    """The run's own refined world means [N, 3] in `pose` (its static offset and skinning), with
    its deformer, or with the deformer's mean offset set to zero."""
    from persona.avatar import posing as posing_lib
    from persona.avatar.deformer import DeformerOutput

    original = system.deformer.forward
    try:
        if not deformer_on:
            def zero(*a: Any, **k: Any) -> DeformerOutput:
                out = original(*a, **k)
                return DeformerOutput(mean_offset=torch.zeros_like(out.mean_offset),
                                      rgb_offset=None, scale_offset=None)
            system.deformer.forward = zero
        state = system.posed_state(pose, posing_lib.body_pose_6d(pose))
        return state.means["refined"].detach()
    finally:
        system.deformer.forward = original


def measure(run_dir: Path, subject: Path | None, max_poses: int, split: str = "test",
            method: str | None = None) -> dict[str, Any]:
    from persona.data import synth

    loaded = diag.load_synth_run(run_dir, subject)
    system, dm, config = loaded.system, loaded.dm, loaded.config
    body, identity = loaded.body, loaded.identity
    truth = synth.build_avatar(body, identity, config)
    regions = synth.garment_regions(truth)
    index, matching = diag.match_gaussians(diag.avatar_canonical(system).detach(), truth.canonical)
    if split == "test":
        poses, _ = diag.test_poses(dm)
    else:  # the generated frames' true poses, every motion evenly thinned to max_poses in all
        stacked, _ = diag.true_training_poses(body, identity, config)
        poses = [select_pose(stacked, i) for i in range(stacked.full_pose.shape[0])]
    poses = poses[::max(1, -(-len(poses) // max_poses))]
    n = system.template.canonical_vertices.shape[0]
    errors: dict[str, list[Tensor]] = {k: [] for k in (
        "no_offset", "truth_offsets_relookup", "truth_offsets_fixed_weights",
        "learned_static_only", "learned")}
    with torch.no_grad():
        for pose in poses:
            true_offsets = synth.garment_offsets(body, truth, pose, config.garment)[0]  # [M, 3]
            true_posed = synth.posed_means(body, truth, pose, config.garment)[0]  # [M, 3]
            placed = torch.zeros(n, 3)
            placed[index] = true_offsets
            for name, offsets, relookup in (("no_offset", torch.zeros(n, 3), True),
                                            ("truth_offsets_relookup", placed, True),
                                            ("truth_offsets_fixed_weights", placed, False)):
                means = refined_means(system, pose, offsets, relookup, method)[index]  # [M, 3]
                errors[name].append((means - true_posed).norm(dim=-1))  # [M]
            for name, on in (("learned_static_only", False), ("learned", True)):
                means = learned_means(system, pose, on)[index]  # [M, 3]
                errors[name].append((means - true_posed).norm(dim=-1))  # [M]
    report: dict[str, Any] = {"run": str(loaded.run), "subject": str(loaded.subject),
                              "split": split,
                              "poses": len(poses),
                              "matching": matching,
                              "refined_lookup_in_run": system.skinning_cfg.refined_lookup,
                              "skinning_method": method or system.skinning_cfg.method}
    for part, mask in regions.items():
        report[part] = {name: _stats(torch.stack(e)[:, mask]) for name, e in errors.items()}
    report["not_garment"] = {name: _stats(torch.stack(e)[:, ~regions["garment"]])
                             for name, e in errors.items()}
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--subject", type=Path, default=None)
    parser.add_argument("--poses", type=int, default=40, help="poses used at most")
    parser.add_argument("--split", choices=("test", "train"), default="test",
                        help="the held-out test poses, or the generated frames' true poses")
    parser.add_argument("--method", choices=("volume", "knn", "template"), default=None,
                        help="skinning weights' source (default: the run's)")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.run_dir, args.subject, args.poses, args.split, args.method),
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
