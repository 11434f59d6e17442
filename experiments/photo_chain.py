"""The CPU chain from a real photo (`persona prep photo`), measured: per-photo benchmark,
reprojection, a short fit, figures, and what training without generated views costs.

Prints one JSON document. Parts (each optional):

- ``chain`` (always): every photo through `persona prep photo` into a fresh subject under
  ``--out``: wall time per stage (this machine, whatever else runs on it: say so when quoting),
  people found, the one kept, the crop, the fit's median reprojection error in pixels and in %
  of the person's height (captured/fit_report/0.json), and whether `persona subject check`
  passes. With ``--figures DIR``: ``DIR/photo_fit_<stem>.png``, the fitted body (shaded by its
  normals, half transparent) and the detected keypoints over the subject's image.
- ``--train-steps N``: `persona fit --config configs/demo.yaml` for N steps on the first photo's
  subject (captured split only); PSNR on the input view inside the person mask (the refined
  render over the photo) at step 0 (the colour initialisation) and after N steps; with
  ``--figures``, ``photo_avatar_views.png``: the avatar in its canonical pose from the front,
  side and back.
- ``--compare-generated SUBJECT --compare-steps N``: the same short fit on a synthetic subject
  with its generated splits and on a copy without them (subject.json "missing": generated),
  `persona test` on its held-out test split; PSNR / SSIM / LPIPS of each. One seed each.

Usage:
  python experiments/photo_chain.py --out runs/photo_chain [--figures docs/images]
         [--train-steps 60] [--compare-generated runs/subjects/garment --compare-steps 100]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP runtime

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_prep.photo import PHOTO_LOG, body_section, run_chain  # noqa: E402
from persona.data.subject import (  # noqa: E402
    FramePaths,
    camera_from_json,
    pose_from_json,
    validate_subject,
    write_json,
)

PHOTOS = (REPO.parent / "shared/data/real_photos/s2d_f150.jpg",
          REPO.parent / "shared/data/real_photos/s2d_f150_crop.jpg")
OVERLAY_ALPHA = 0.5  # share of the body shading in the fit overlay
KEYPOINT_MIN_SCORE = 0.3  # keypoints drawn (the fit's min_score)
KEYPOINT_RADIUS = 3  # px
KEYPOINT_COLOUR = (255, 40, 40)  # RGB
MASK_HALF = 0.5  # the person mask's threshold for the PSNR region
PEAK = 1.0  # images in [0, 1]
VIEW_SIZE = (360, 480)  # (width, height) of each avatar view before trimming
VIEW_TRIM_ALPHA = 0.02  # views are trimmed to the pixels above this alpha (all three), plus
VIEW_PAD = 8  # px
VIEW_AZIMUTHS = (("front", 0.0), ("side", 90.0), ("back", 180.0))
WHITE = (1.0, 1.0, 1.0)
MAX_FIGURE_BYTES = 400_000  # docs images stay under 400 KB


# ----------------------------------------------------------------------------------------------
# Chain
# ----------------------------------------------------------------------------------------------
def run_photo(photo: Path, out: Path, reuse: bool = False) -> dict:
    """One photo through the chain into a fresh subject (resumed with ``reuse``); its
    numbers."""
    subject = out / photo.stem
    if subject.exists() and not reuse:
        shutil.rmtree(subject)
    began = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # progress lines; stdout is the JSON report
        log = run_chain(photo, subject, body_section("open", "neutral", 10, 10))
    total = time.perf_counter() - began
    config = json.loads((subject / "subject.json").read_text())
    report = json.loads((subject / "captured/fit_report/0.json").read_text())
    return {
        "photo": photo.name, "subject": str(subject),
        "seconds_total": round(total, 2),
        "seconds_per_stage": {name: stage["seconds"] for name, stage in log["stages"].items()},
        "people_found": config["person"]["num_people"], "kept": config["person"]["chosen"],
        "rule": config["person"]["rule"], "crop": config["crop"]["box"],
        "crop_scale": config["crop"]["scale"], "subject_size": config["crop"]["size"],
        "person_height_px": report["person_height_px"],
        "keypoints_used": report["keypoints_used"],
        "median_error_px": round(report["median_error_px"], 3),
        "median_error_percent_of_height": round(report["median_error_percent_of_height"], 3),
        "max_error_px": round(report["max_error_px"], 3),
        "subject_check": "OK" if not validate_subject(subject) else "problems",
    }


def save_png(path: Path, image: np.ndarray) -> int:
    """uint8 RGB -> PNG (optimised); its size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return path.stat().st_size


def fit_overlay(subject: Path) -> np.ndarray:
    """uint8 [H, W, 3]: the subject image with the fitted body (normal shading, half
    transparent) and the detected keypoints (score >= 0.3)."""
    from data_prep.albedo import body_normal_map
    from data_prep.stage import load_subject_body, read_keypoints, read_rgb_uint8

    paths = FramePaths("captured", 0)
    image = read_rgb_uint8(subject / paths.image)
    height, width = image.shape[:2]
    body, identity, config = load_subject_body(subject)
    camera = camera_from_json(json.loads((subject / paths.camera).read_text()), width, height)
    pose = pose_from_json(json.loads((subject / paths.smplx).read_text()),
                          int(config["num_expression"]))
    with torch.no_grad():
        vertices = body(identity, pose)[0]
    normals = body_normal_map(vertices, body.faces, camera)  # [H, W, 3]
    covered = np.abs(normals).sum(-1) > 0
    shade = (0.5 - 0.5 * normals) * 255.0  # camera-facing normals (z < 0) -> light
    out = image.astype(np.float64)
    out[covered] = (1 - OVERLAY_ALPHA) * out[covered] + OVERLAY_ALPHA * shade[covered]
    out = np.clip(out, 0, 255).astype(np.uint8)
    keypoints = read_keypoints(subject / "captured/keypoints/0.json")
    for x, y, score in keypoints:
        if score >= KEYPOINT_MIN_SCORE:
            cv2.circle(out, (int(x), int(y)), KEYPOINT_RADIUS, KEYPOINT_COLOUR, -1, cv2.LINE_AA)
    return out


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
def persona(args: list[str], log: Path) -> float:
    """Run `persona ARGS` in a subprocess (output to log); its wall time. Fails loudly."""
    began = time.perf_counter()
    with open(log, "w") as handle:
        status = subprocess.run([sys.executable, "-m", "persona", *args], cwd=REPO,
                                stdout=handle, stderr=subprocess.STDOUT).returncode
    if status != 0:
        raise RuntimeError(f"persona {' '.join(args)} failed (exit {status}); see {log}")
    return time.perf_counter() - began


def short_fit(subject: Path, run: Path, steps: int) -> float:
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    return persona(["fit", "--config", "configs/demo.yaml", "--data.subject_dir", str(subject),
                    "--trainer.max_steps", str(steps), "--trainer.default_root_dir", str(run),
                    "--trainer.logger", "false"], run.parent / f"{run.name}.log")


def masked_psnr(render: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR (dB) over the pixels of mask [H, W] (bool) of [H, W, 3] images in [0, 1]."""
    mse = float(((render - target) ** 2)[mask].mean())
    return 10.0 * math.log10(PEAK**2 / max(mse, 1e-12))


def input_view_psnr(system, datamodule) -> tuple[float, np.ndarray]:  # noqa: ANN001
    """PSNR inside the person mask of the refined render over the photo, on the input view;
    and that render (uint8)."""
    from persona.data.datamodule import collate_frames

    row = datamodule.input_rows[0]
    batch = collate_frames([datamodule.train_dataset()[row]])
    batch = {k: (v.to(system.device) if isinstance(v, torch.Tensor) else v)
             for k, v in batch.items()}
    with torch.no_grad():
        out = system.render_eval(batch)
    image = batch["image"][0]
    composite = out["rgb"] + image * (1 - out["alpha"])  # [H, W, 3]
    mask = batch["mask"][0][..., 0] > MASK_HALF
    shown = (composite.clamp(0, 1) * 255 + 0.5).byte().cpu().numpy()
    return masked_psnr(composite, image, mask), shown


def avatar_views(system, num_expression: int) -> np.ndarray:  # noqa: ANN001
    """uint8 [h, 3 w, 3]: the avatar in its canonical pose from the front, side and back."""
    from persona.export.poses import canonical_pose, pose_to
    from persona.export.video import framing_distance, turntable_cameras
    from persona.render import passes

    width, height = VIEW_SIZE
    pose = pose_to(canonical_pose(num_expression), system.device)
    with torch.no_grad():
        gaussians, colours = system.posed_gaussians(pose, "refined")
        centre, distance = framing_distance(gaussians.means.detach().cpu(), width, height)
        views, alphas = [], []
        for _, azimuth in VIEW_AZIMUTHS:
            camera = turntable_cameras(centre, distance, 1, width, height,
                                       start_azimuth_deg=azimuth)[0]
            camera = type(camera)(camera.K.to(system.device), camera.R.to(system.device),
                                  camera.t.to(system.device), width, height)
            out = passes.render_eval(gaussians, colours, system.template.faces, camera,
                                     system.renderer, WHITE)
            views.append((out["rgb_on_background"].clamp(0, 1) * 255 + 0.5).byte().cpu().numpy())
            alphas.append(out["alpha"][..., 0].cpu().numpy())
    covered = np.max(alphas, axis=0) > VIEW_TRIM_ALPHA  # [H, W] any view
    rows, cols = np.flatnonzero(covered.any(1)), np.flatnonzero(covered.any(0))
    top, bottom = max(0, rows[0] - VIEW_PAD), min(height, rows[-1] + 1 + VIEW_PAD)
    left, right = max(0, cols[0] - VIEW_PAD), min(width, cols[-1] + 1 + VIEW_PAD)
    return np.concatenate([view[top:bottom, left:right] for view in views], axis=1)


def train_part(subject: Path, out: Path, steps: int, figures: Path | None,
               reuse_fit: bool = False) -> dict:
    """Fit `steps` steps on the subject; PSNR on the input view at step 0 and at the end."""
    from persona.runs import instantiate_system, load_trained_system, model_settings

    run = out / f"fit_{subject.name}"
    reuse = reuse_fit and (run / "checkpoints/last.ckpt").is_file()
    seconds = None if reuse else short_fit(subject, run, steps)
    config = run / "config.yaml"
    device = torch.device("cpu")
    initial, datamodule = instantiate_system(model_settings(config), device)
    initial.build_from_datamodule(datamodule, device=device)  # step 0: colours initialised
    psnr_0, render_0 = input_view_psnr(initial.eval(), datamodule)
    trained, datamodule = load_trained_system(run / "checkpoints/last.ckpt", config, device)
    psnr_n, render_n = input_view_psnr(trained, datamodule)
    result = {"subject": str(subject), "steps": steps,
              "fit_seconds": None if seconds is None else round(seconds, 1),
              "psnr_input_view_masked_step0": round(psnr_0, 3),
              f"psnr_input_view_masked_step{steps}": round(psnr_n, 3)}
    if figures is not None:
        views = avatar_views(trained, int(datamodule.num_expression))
        result["figure_views_bytes"] = save_png(figures / "photo_avatar_views.png", views)
        pair = np.concatenate([render_0, render_n], axis=1)
        result["figure_input_view_bytes"] = save_png(figures / "photo_input_view_fit.png", pair)
    return result


def captured_only_copy(subject: Path, dest: Path) -> Path:
    """A copy of a subject without its generated splits, declaring them missing."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(subject, dest, ignore=shutil.ignore_patterns("generated_*"))
    config = json.loads((dest / "subject.json").read_text())
    config["missing"] = sorted(set(config.get("missing", [])) | {"generated"})
    write_json(dest / "subject.json", config)
    return dest


def test_metrics(run: Path) -> dict:
    persona(["test", "--config", str(run / "config.yaml"), "--ckpt_path",
             str(run / "checkpoints/last.ckpt"), "--trainer.logger", "false"],
            run.parent / f"{run.name}_test.log")
    metrics = json.loads((run / "metrics.json").read_text())
    summary = metrics.get("mean", metrics)
    return {key: round(float(value), 4) for key, value in summary.items()
            if isinstance(value, int | float) and key.split("/")[-1] in ("psnr", "ssim", "lpips")}


def compare_part(subject: Path, out: Path, steps: int) -> dict:
    """The same short fit with and without the generated splits; test-split metrics."""
    results = {}
    for name, source in (("with_generated", subject),
                         ("captured_only", captured_only_copy(subject, out / "captured_only"))):
        run = out / f"compare_{name}"
        seconds = short_fit(source, run, steps)
        results[name] = {"fit_seconds": round(seconds, 1), **test_metrics(run)}
    return {"subject": str(subject), "steps": steps, "seeds": 1, **results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", nargs="*", type=Path, default=list(PHOTOS))
    parser.add_argument("--out", type=Path, default=REPO / "runs/photo_chain")
    parser.add_argument("--figures", type=Path, default=None)
    parser.add_argument("--train-steps", type=int, default=0)
    parser.add_argument("--train-photo", type=int, default=-1,
                        help="which photo's subject the short fit uses (index into --photos)")
    parser.add_argument("--reuse-fit", action="store_true",
                        help="measure an earlier --train-steps run in --out instead of refitting")
    parser.add_argument("--reuse-subjects", action="store_true",
                        help="resume the subjects in --out (stage times then come from their "
                             "earlier run's log)")
    parser.add_argument("--compare-generated", type=Path, default=None)
    parser.add_argument("--compare-steps", type=int, default=100)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "torch": torch.__version__,
                                "note": "wall times on a shared machine"},
                    "photos": []}
    for photo in args.photos:
        entry = run_photo(photo, args.out, args.reuse_subjects)
        if args.figures is not None:
            entry["figure_bytes"] = save_png(args.figures / f"photo_fit_{photo.stem}.png",
                                             fit_overlay(Path(entry["subject"])))
        entry["log"] = str(Path(entry["subject"]) / PHOTO_LOG)
        report["photos"].append(entry)
    if args.train_steps > 0:
        subject = Path(report["photos"][args.train_photo]["subject"])
        report["train"] = train_part(subject, args.out, args.train_steps, args.figures,
                                     args.reuse_fit)
    if args.compare_generated is not None:
        report["compare_generated"] = compare_part(args.compare_generated, args.out,
                                                   args.compare_steps)
    if args.figures is not None:
        for path in args.figures.glob("photo_*.png"):
            if path.stat().st_size > MAX_FIGURE_BYTES:
                report.setdefault("warnings", []).append(f"{path} is over 400 KB")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
