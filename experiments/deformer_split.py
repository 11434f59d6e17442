"""The deformer's output split into its mean over the training poses and the rest, against the
truth split the same way, per garment part of a synthetic subject's run.

metrics.json's ``deformer_correlation`` compares the deformer's whole output with the truth minus
its training mean; a deformer that carries part of the mean offset reads negative there even when
its pose dependence is right. This prints, per part: the deformer's mean over the training poses
(mm) and its cosine with the truth's training mean, and the Pearson correlation, over the test
poses, of (deformer minus its own training mean) with (truth minus the truth's training mean).

    .venv/bin/python experiments/deformer_split.py RUN_DIR [--poses 20]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deformer_diagnostics import load_with_truth, parse_run_and_poses  # noqa: E402

from persona.metrics.deformation import (  # noqa: E402
    MM_PER_M,
    avatar_canonical,
    model_offsets,
    pearson,
    static_offset,
)


def split_report(train: Tensor, test: Tensor, static: Tensor, true_mean: Tensor,
                 true_test: Tensor, regions: dict[str, Tensor]) -> dict[str, dict[str, float]]:
    """Per region (mask [M] over the garment Gaussians): the deformer's offsets on the training
    poses train [K, M, 3] and test poses test [T, M, 3], the static offset [M, 3], the truth's
    training mean [M, 3] and test offsets [T, M, 3] -> the numbers of the module docstring."""
    report = {}
    for name, mask in regions.items():
        own_mean = train[:, mask].mean(0)  # [G, 3]
        truth_mean = true_mean[mask]
        report[name] = {
            "deformer_train_mean_mm": float(own_mean.norm(dim=-1).mean()) * MM_PER_M,
            "truth_train_mean_mm": float(truth_mean.norm(dim=-1).mean()) * MM_PER_M,
            "static_mm": float(static[mask].norm(dim=-1).mean()) * MM_PER_M,
            "cosine_deformer_mean_truth_mean": float(torch.nn.functional.cosine_similarity(
                own_mean.flatten(), truth_mean.flatten(), dim=0)),
            "test_correlation_pose_parts": pearson(test[:, mask] - own_mean,
                                                   true_test[:, mask] - truth_mean),
        }
    return report


Q90 = 0.9  # the upper quantile reported in activity_report


def activity_report(train: Tensor, scales: Tensor, garment: Tensor) -> dict[str, dict[str, float]]:
    """train [K, N, 3]: the deformer's offsets of every avatar Gaussian in K training poses;
    scales [N]: the Gaussians' scales (m); garment [N] bool -> per set ("garment", "rest"):
    the activity numbers of the module docstring (mm)."""
    pose_part = (train - train.mean(0)).norm(dim=-1).mean(0)  # [N]
    size = train.norm(dim=-1).mean(0)  # [N]
    report = {}
    for name, mask in (("garment", garment), ("rest", ~garment)):
        report[name] = {
            "gaussians": int(mask.sum()),
            "deformer_mm": float(size[mask].mean()) * MM_PER_M,
            "pose_part_mm": float(pose_part[mask].mean()) * MM_PER_M,
            "pose_part_q90_mm": float(pose_part[mask].quantile(Q90)) * MM_PER_M,
            "scale_mm": float(scales[mask].mean()) * MM_PER_M,
            "scale_q90_mm": float(scales[mask].quantile(Q90)) * MM_PER_M,
        }
    return report


def main(argv: list[str]) -> int:
    args = parse_run_and_poses(argv, __doc__.splitlines()[0])
    loaded = load_with_truth(args.run_dir, max_poses=args.poses)
    run, system, truth, index = loaded.run, loaded.system, loaded.truth, loaded.index
    with torch.no_grad():
        count = avatar_canonical(system).shape[0]
        every = model_offsets(system, truth.poses["train"], torch.arange(count))  # [K, N, 3]
        train = every[:, index]  # [K, M, 3]
        test = model_offsets(system, truth.poses["test"], index)  # [T, M, 3]
        static = static_offset(system).detach()[index]  # [M, 3]
        scales = system.avatar.log_scale.detach().exp().mean(-1).cpu()  # [N] (isotropic)
    report = split_report(train, test, static, truth.train_mean, truth.offsets["test"],
                          truth.regions)
    garment = torch.zeros(count, dtype=torch.bool)
    garment[index] = True
    print(json.dumps({"run": str(run), "poses": args.poses, "parts": report,
                      "activity": activity_report(every, scales, garment)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
