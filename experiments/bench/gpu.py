"""GPU benchmark at configs/paper.yaml scale (needs CUDA and gsplat). Prints one JSON document.

Training: the open body at 2 subdivision levels (~219K Gaussians), frames at 576 x 1024,
LPIPS-VGG in the image loss (when its weights are installed), renderer gsplat, Adam, batch 1,
balanced sampling (the input image half of the draws). The subject is a small synthetic one
(`persona synth`, open body) rendered at 144 x 256 and trained at resolution_scale 4, so every
map the step touches is 576 x 1024 without rendering a large subject first. Step time: wall
time between `on_train_batch_start` and `on_train_batch_end` with the device synchronised at
both ends, median over the measured steps (after warm-up steps that include gsplat's kernel
load and cuDNN autotuning), split by input-image and generated-frame steps. Memory: peak
`torch.cuda.max_memory_allocated` / `max_memory_reserved` over the measured steps.

Animation: the trained avatar posed along the built-in `dance` motion (skinning-field lookup,
pose deformer, expression, LBS) and rendered by gsplat at 576 x 1024, one synchronised frame at
a time; frames per second of posing + rendering, and of rendering alone. mp4 encoding is not
included (`persona animate` prints it separately).

Usage: python experiments/bench/gpu.py [--steps 20] [--warmup 5] [--frames 60] [--out FILE]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP runtime

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

SUBJECT_SIZE = (144, 256)  # width, height the synthetic subject is rendered at
RESOLUTION_SCALE = 4.0  # trained at 4x: 576 x 1024, the paper's generated frames
SUBDIVISION_LEVELS = 2  # configs/paper.yaml
SUBJECT_FRAMES = 3  # frames per generated video of the benchmark subject
DATA_WORKERS = 4  # configs/paper.yaml data.num_workers
MB = 2 ** 20


def _sync() -> None:
    torch.cuda.synchronize()


def lpips_installed() -> bool:
    from persona.metrics.lpips_weights import read_weights

    try:
        read_weights("vgg")
    except FileNotFoundError:
        return False
    return True


def make_subject(root: Path) -> Path:
    """A small open-body synthetic subject (one generated video, one test frame)."""
    from persona.data.synth import preset_config, synthesize

    width, height = SUBJECT_SIZE
    synthesize(root, preset_config("demo", width=width, height=height, motions=("punches",),
                                   frames=SUBJECT_FRAMES, test_frames=1, novel_views=(),
                                   seed=0))
    return root


def step_timer_callback(warmup: int):
    from lightning.pytorch.callbacks import Callback

    class StepTimer(Callback):
        """Synchronised wall time of each training step after `warmup` steps."""

        def __init__(self) -> None:
            self.times: dict[str, list[float]] = {"input": [], "generated": []}
            self.start = 0.0
            self.step = 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if self.step == warmup:
                torch.cuda.reset_peak_memory_stats()
            _sync()
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            _sync()
            elapsed = time.perf_counter() - self.start
            if self.step >= warmup:
                kind = "input" if bool(batch["is_input"][0]) else "generated"
                self.times[kind].append(elapsed)
            self.step += 1

    return StepTimer()


def _summary(values: list[float]) -> dict:
    if not values:
        return {"steps": 0}
    return {"steps": len(values), "median_s": statistics.median(values),
            "min_s": min(values), "max_s": max(values)}


def bench_training(subject: Path, steps: int, warmup: int, precision: str, lpips: bool):
    import lightning.pytorch as pl

    from persona.data.datamodule import PersonaDataModule
    from persona.losses.table import LossWeights
    from persona.system import PersonaSystem

    pl.seed_everything(0)
    datamodule = PersonaDataModule(str(subject), resolution_scale=RESOLUTION_SCALE,
                                   epoch_length=steps + warmup, num_workers=DATA_WORKERS)
    system = PersonaSystem(subdivision_levels=SUBDIVISION_LEVELS, renderer="gsplat",
                           losses=LossWeights(lpips=1.0 if lpips else 0.0))
    timer = step_timer_callback(warmup)
    trainer = pl.Trainer(accelerator="gpu", devices=1, max_steps=steps + warmup, max_epochs=1,
                         logger=False, enable_checkpointing=False, limit_val_batches=0,
                         num_sanity_val_steps=0, enable_progress_bar=False,
                         enable_model_summary=False, precision=precision, callbacks=[timer])
    start = time.perf_counter()
    trainer.fit(system, datamodule)
    wall = time.perf_counter() - start
    everything = timer.times["input"] + timer.times["generated"]
    report = {
        "gaussians": int(system.avatar.rgb.shape[0]),
        "frame_size": [int(s * RESOLUTION_SCALE) for s in SUBJECT_SIZE],
        "lpips_vgg": lpips, "precision": precision, "data_workers": DATA_WORKERS,
        "step": _summary(everything), "input_step": _summary(timer.times["input"]),
        "generated_step": _summary(timer.times["generated"]),
        "peak_allocated_mib": torch.cuda.max_memory_allocated() / MB,
        "peak_reserved_mib": torch.cuda.max_memory_reserved() / MB,
        "fit_wall_s_with_build_and_warmup": wall,
    }
    return system, report


def bench_animation(system, frames: int) -> dict:
    from persona.data.motions import resolve_motion
    from persona.export.cli import avatar_device, motion_pose, pose_to
    from persona.export.video import framing_distance, turntable_cameras
    from persona.render.gsplat_renderer import GsplatRenderer
    from persona.render.types import ChannelGroup, RenderSettings

    width, height = (int(s * RESOLUTION_SCALE) for s in SUBJECT_SIZE)
    system.to("cuda")  # trainer.fit's teardown moves the module back to the CPU
    system.eval()
    device = avatar_device(system)
    motion = resolve_motion("dance")
    total = min(frames, motion.poses.shape[0])
    renderer, settings = GsplatRenderer(), RenderSettings(depth=False)

    def pose(t: int):
        return pose_to(motion_pose(motion.poses, motion.transl, motion.expression, t), device)

    with torch.no_grad():
        first, _ = system.posed_gaussians(pose(0))
        centre, distance = framing_distance(first.means.float().cpu(), width, height)
        camera = turntable_cameras(centre, distance, 1, width, height)[0].to(device)
        white = torch.ones(3, device=device)
        for t in range(min(3, total)):  # warm-up
            g, c = system.posed_gaussians(pose(t))
            renderer.render(g, camera, {"rgb": ChannelGroup(c["rgb"])}, settings)
        _sync()
        render_seconds, start = 0.0, time.perf_counter()
        for t in range(total):
            g, c = system.posed_gaussians(pose(t))
            _sync()
            render_start = time.perf_counter()
            out = renderer.render(g, camera, {"rgb": ChannelGroup(c["rgb"])}, settings)
            out["on_white"] = out["rgb"] + (1 - out["alpha"]) * white  # [H, W, 3]
            _sync()
            render_seconds += time.perf_counter() - render_start
        seconds = time.perf_counter() - start
    return {"frames": total, "frame_size": [width, height], "motion": "dance",
            "fps_posing_and_rendering": total / seconds,
            "fps_rendering_only": total / render_seconds,
            "posing_ms_per_frame": 1000 * (seconds - render_seconds) / total}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="measured training steps")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured first steps")
    parser.add_argument("--frames", type=int, default=60, help="animation frames")
    parser.add_argument("--precision", default="32-true", help="trainer.precision")
    parser.add_argument("--subject", default=None, help="reuse this subject folder")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device"}))
        return 2
    lpips = lpips_installed()
    with tempfile.TemporaryDirectory() as folder:
        subject = Path(args.subject) if args.subject else Path(folder) / "subject"
        start = time.perf_counter()
        if not (subject / "subject.json").is_file():
            make_subject(subject)
        subject_seconds = time.perf_counter() - start
        system, training = bench_training(subject, args.steps, args.warmup, args.precision,
                                          lpips)
        print(json.dumps({"training": training}), flush=True)  # kept if animation fails
        animation = bench_animation(system, args.frames)
    import gsplat

    report = {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "gsplat": gsplat.__version__,
        "python": platform.python_version(), "subject_build_s": subject_seconds,
        "training": training, "animation": animation,
        "notes": None if lpips else "LPIPS-VGG weights not installed: lpips off "
                                    "(python -m persona.metrics.lpips_weights install)",
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
