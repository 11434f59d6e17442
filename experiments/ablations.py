"""The paper's ablations on one synthetic demo subject, same budget each, against ground truth.

    .venv/bin/python experiments/ablations.py --subject runs/demo/subject --out runs/ablations

Each variant is `persona fit --config configs/demo.yaml --config configs/ablation/<x>.yaml`
then `persona test`; besides the test metrics (PSNR/SSIM/LPIPS, mask IoU, depth, normals) it
scores identity where the synthetic subject's ground truth marks it: PSNR on the face and on
the chest logo of the held-out test frames (the regions of the known avatar, rendered in each
test pose). Writes OUT/ablations.json and OUT/ablations.md (the table in docs/ABLATIONS.md).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
ABLATION_DIR = REPO / "configs" / "ablation"
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
# variant -> config fragments layered on configs/demo.yaml ("default" is the method itself)
VARIANTS: dict[str, list[str]] = {
    "default": [],
    "no_balanced_sampling": ["no_balanced_sampling.yaml"],
    "image_weight_1": ["image_weight_1.yaml"],
    "image_weight_0.01": ["image_weight_0.01.yaml"],
    "deformer_off": ["deformer_off.yaml"],
    "deformer_mean_scale": ["deformer_mean_scale.yaml"],
    "seams_off": ["seams_off.yaml"],
    "mask_occlusion_off": ["mask_occlusion_off.yaml"],
    "face_patch_off": ["face_patch_off.yaml"],
}
IDENTITY_REGIONS = ("face", "logo")  # regions of the ground-truth avatar scored separately
REGION_THRESHOLD = 0.5  # rendered region coverage above which a pixel belongs to the region


def region_psnr(pred: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> float:
    """PSNR (data range 1) over the pixels of region [H, W] bool; pred/target [H, W, 3]."""
    if not bool(region.any()):
        return math.nan
    mse = ((pred - target) ** 2)[region].mean().clamp(min=1e-12)
    return float(10.0 * torch.log10(1.0 / mse))


def ground_truth_regions(subject: Path):
    """A function (batch) -> {region: [H, W] bool} rendering the known avatar's regions."""
    from persona.data.synth import (
        FaultSettings,
        GarmentSettings,
        SynthConfig,
        build_avatar,
        load_synth_body,
        posed_means,
        subject_identity,
    )
    from persona.render import make_renderer
    from persona.render.types import Camera, ChannelGroup, Gaussians

    meta = json.loads((subject / "meta.json").read_text())["config"]
    known = set(SynthConfig.__dataclass_fields__)
    config = SynthConfig(**{k: v for k, v in meta.items() if k in known and k not in
                            ("faults", "garment")},
                         faults=FaultSettings(**meta["faults"]),
                         garment=GarmentSettings(**meta["garment"]))
    body = load_synth_body(config)
    avatar = build_avatar(body, subject_identity(body, config.seed), config)
    face = avatar.regions["head"] & ~avatar.regions["hair"]
    channels = torch.stack([face, avatar.regions["logo"]], -1).float()  # [N, 2]
    renderer = make_renderer("torch")

    def regions(batch: dict) -> dict[str, torch.Tensor]:
        from persona.body.types import PoseParams

        pose = PoseParams(batch["full_pose"], batch["expression"], batch["transl"])
        means = posed_means(body, avatar, pose, config.garment)[0]
        scales = avatar.scales[:, None].expand(-1, 3)
        camera = Camera(batch["K"][0], batch["R"][0], batch["t"][0], int(batch["width"]),
                        int(batch["height"]))
        out = renderer.render(Gaussians(means, scales, torch.ones_like(avatar.scales)), camera,
                              {"regions": ChannelGroup(channels)})["regions"]
        return {name: out[..., i] > REGION_THRESHOLD for i, name in enumerate(IDENTITY_REGIONS)}

    return regions


def identity_scores(ckpt: Path, regions_of) -> dict[str, float]:
    """Mean face/logo PSNR of the fitted avatar over the test split (renders on white)."""
    from persona.data.datamodule import collate_frames
    from persona.runs import load_trained_system

    system, dm = load_trained_system(ckpt)
    dataset = dm.test_dataset()
    sums = {name: [] for name in IDENTITY_REGIONS}
    with torch.no_grad():
        for row in range(len(dataset)):
            batch = collate_frames([dataset[row]])
            pred = system.render_eval(batch)["rgb_on_background"]
            mask = batch["mask"][0]
            target = batch["image"][0] * mask + (1 - mask)  # ground truth on white
            for name, region in regions_of(batch).items():
                value = region_psnr(pred, target, region)
                if math.isfinite(value):
                    sums[name].append(value)
    return {f"psnr_{name}": sum(v) / len(v) for name, v in sums.items() if v}


def run_variant(name: str, fragments: list[str], subject: Path, out: Path) -> dict:
    from persona.cli import main as persona

    run = out / name
    configs = ["--config", str(DEMO_CONFIG)]
    for fragment in fragments:
        configs += ["--config", str(ABLATION_DIR / fragment)]
    start = time.perf_counter()
    persona(["fit", *configs, "--data.subject_dir", str(subject),
             "--trainer.default_root_dir", str(run)])
    ckpt = run / "checkpoints" / "last.ckpt"
    persona(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(ckpt)])
    metrics = json.loads((run / "metrics.json").read_text())["mean"]
    return {"variant": name, "fragments": fragments, "seconds": time.perf_counter() - start,
            **metrics}


def markdown_table(rows: list[dict]) -> str:
    columns = ["psnr", "ssim", "lpips", "mask_iou", "depth_l1_mm", "normal_deg", "psnr_face",
               "psnr_logo"]
    lines = ["| variant | " + " | ".join(columns) + " |",
             "|---|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:.4f}" if isinstance(row.get(c), float) else "-" for c in columns]
        lines.append(f"| {row['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subject", default="runs/demo/subject")
    parser.add_argument("--out", default="runs/ablations")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args(argv)
    subject, out = Path(args.subject), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "ablations.json"
    rows = json.loads(results_path.read_text()) if results_path.is_file() else []
    done = {row["variant"] for row in rows}
    regions_of = ground_truth_regions(subject)
    for name in args.variants:
        if name in done:
            continue
        row = run_variant(name, VARIANTS[name], subject, out)
        row.update(identity_scores(out / name / "checkpoints" / "last.ckpt", regions_of))
        rows.append(row)
        results_path.write_text(json.dumps(rows, indent=1))  # progress survives a kill
        print(f"[ablations] {name}: " + ", ".join(
            f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float)), flush=True)
    table = markdown_table(rows)
    (out / "ablations.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
