"""`persona export` (3DGS PLY / npz) and `persona animate` (mp4 along a motion).

Layers, top to bottom:
- `load_avatar(ckpt)`: the only part that knows about checkpoints (wiring point: PersonaSystem).
- `resolve_pose`, `export_avatar`, `animate_avatar`: work on any object with
  `posed_gaussians(pose: PoseParams, variant) -> (Gaussians, {"rgb": [N, 3], ...})` and plain
  tensors, unit-tested without a trained avatar.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from persona.body.types import NUM_JOINTS, PoseParams, big_pose
from persona.export.ply import EXPORT_FORMATS, export_gaussians
from persona.export.video import (
    DEFAULT_FOV_DEG,
    RenderTiming,
    framing_distance,
    render_frames,
    turntable_cameras,
    write_mp4,
)
from persona.render.types import Camera, Gaussians

DEFAULT_NUM_EXPRESSION = 10  # expression coefficients of a neutral face (zeros)
FRAMING_SAMPLES = 8  # motion frames posed up front to fit the camera around the whole motion
VARIANTS = ("refined", "base")


class PosableAvatar(Protocol):
    """What export and animation need from an avatar (PersonaSystem implements it)."""

    def posed_gaussians(self, pose: PoseParams, variant: str = "refined"
                        ) -> tuple[Gaussians, dict[str, Tensor]]: ...


# ---------------------------------------------------------------------------- checkpoint wiring
def load_avatar(ckpt: str, device: str | torch.device = "cpu") -> PosableAvatar:
    """The avatar of a training checkpoint, built and loaded on `device` ("auto": cuda when
    available), in eval mode."""
    path = Path(ckpt)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    from persona.runs import load_trained_system

    system, _ = load_trained_system(path, device=device)
    return system


def avatar_device(avatar: PosableAvatar) -> torch.device:
    """Where the avatar's tensors live (a LightningModule's `.device`; plain avatars: cpu)."""
    return torch.device(getattr(avatar, "device", "cpu"))


def animation_renderer_name(name: str, device: torch.device) -> str:
    """The renderer that draws an avatar on `device`: "auto" is gsplat only for a CUDA avatar
    (when gsplat is installed), else torch; "gsplat" for a non-CUDA avatar is an error."""
    from persona.render import gsplat_available

    if name == "auto":
        return "gsplat" if device.type == "cuda" and gsplat_available() else "torch"
    if name == "gsplat" and device.type != "cuda":
        raise ValueError(f"--renderer gsplat draws CUDA tensors; the avatar is on {device} "
                         "(pass --device cuda, or --renderer torch)")
    return name


# ---------------------------------------------------------------------------- poses
def pose_to(pose: PoseParams, device: torch.device) -> PoseParams:
    """The same pose with its tensors on `device`."""
    return PoseParams(pose.full_pose.to(device), pose.expression.to(device),
                      pose.transl.to(device))


@dataclass
class PoseSpec:
    kind: str  # "canonical" | "frame" | "motion"
    split: str = ""
    index: int = 0
    motion: str = ""  # built-in motion name or npz path
    time: int = 0  # motion frame


def parse_pose_spec(spec: str) -> PoseSpec:
    """`canonical` | `frame:<split>/<i>` | `motion:<npz or built-in>:<t>`."""
    if spec == "canonical":
        return PoseSpec("canonical")
    if spec.startswith("frame:"):
        split, _, index = spec[len("frame:"):].rpartition("/")
        if not split or not index.isdigit():
            raise ValueError(f"--pose {spec!r}: expected frame:<split>/<index>, e.g. frame:test/3")
        return PoseSpec("frame", split=split, index=int(index))
    if spec.startswith("motion:"):
        motion, _, time = spec[len("motion:"):].rpartition(":")
        if not motion or not time.lstrip("-").isdigit():
            raise ValueError(f"--pose {spec!r}: expected motion:<npz or built-in>:<frame>, "
                             f"e.g. motion:dance:10")
        return PoseSpec("motion", motion=motion, time=int(time))
    raise ValueError(f"--pose {spec!r}: expected canonical, frame:<split>/<i> or "
                     f"motion:<npz>:<t>")


def canonical_pose(num_expression: int = DEFAULT_NUM_EXPRESSION) -> PoseParams:
    """The big pose at the origin with a neutral face (batch 1)."""
    return PoseParams(big_pose()[None], torch.zeros(1, num_expression), torch.zeros(1, 3))


def motion_pose(poses: np.ndarray, transl: np.ndarray, expression: np.ndarray | None,
                t: int, source: str = "motion") -> PoseParams:
    """Frame t of a motion (poses [T, 55, 3], transl [T, 3], expression [T, E] or None)."""
    if not -poses.shape[0] <= t < poses.shape[0]:
        raise ValueError(f"{source}: frame {t} out of range (the motion has {poses.shape[0]})")
    expr = torch.zeros(1, DEFAULT_NUM_EXPRESSION) if expression is None \
        else torch.as_tensor(expression[t], dtype=torch.float32)[None]
    pose = PoseParams(torch.as_tensor(poses[t], dtype=torch.float32).reshape(1, NUM_JOINTS, 3),
                      expr, torch.as_tensor(transl[t], dtype=torch.float32).reshape(1, 3))
    pose.validate(f"{source} frame {t}")
    return pose


def resolve_pose(spec: PoseSpec, subject: str | None = None) -> PoseParams:
    if spec.kind == "canonical":
        return canonical_pose()
    if spec.kind == "motion":
        from persona.data.motions import resolve_motion

        motion = resolve_motion(spec.motion)
        return motion_pose(motion.poses, motion.transl, motion.expression, spec.time,
                           spec.motion)
    if subject is None:
        raise ValueError("--pose frame:...: also give --subject DIR (the subject folder)")
    from persona.data.subject import read_frame_record

    return read_frame_record(subject, spec.split, spec.index).pose


# ---------------------------------------------------------------------------- export
def export_avatar(avatar: PosableAvatar, pose: PoseParams, out: str | Path, fmt: str = "ply",
                  variant: str = "refined") -> tuple[Path, int]:
    """Pose the avatar and write it; returns (path, number of Gaussians)."""
    with torch.no_grad():
        gaussians, channels = avatar.posed_gaussians(pose_to(pose, avatar_device(avatar)),
                                                     variant)
    metadata = {"variant": variant, "full_pose": pose.full_pose.cpu().numpy(),
                "transl": pose.transl.cpu().numpy()}
    path = export_gaussians(out, gaussians, channels, fmt=fmt, metadata=metadata)
    return path, int(gaussians.means.shape[0])


def export_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="persona export", description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, help="training checkpoint (.ckpt)")
    parser.add_argument("--out", required=True, help="output file (.ply or .npz)")
    parser.add_argument("--pose", default="canonical",
                        help="canonical | frame:<split>/<i> | motion:<npz or built-in>:<t>")
    parser.add_argument("--subject", default=None, help="subject folder (for --pose frame:...)")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default=None,
                        help="default: from the --out suffix, else ply")
    parser.add_argument("--variant", choices=VARIANTS, default="refined")
    parser.add_argument("--device", default="auto",
                        help="where the avatar is built, loaded and posed: auto (cuda when "
                             "available) | cpu | cuda | cuda:N")
    args = parser.parse_args(argv)
    fmt = args.format or ("npz" if args.out.endswith(".npz") else "ply")
    try:
        pose = resolve_pose(parse_pose_spec(args.pose), args.subject)
        avatar = load_avatar(args.ckpt, args.device)
        path, count = export_avatar(avatar, pose, args.out, fmt, args.variant)
    except (FileNotFoundError, ValueError) as exc:
        print(f"persona export: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {count} Gaussians ({fmt}, pose {args.pose}) to {path}")
    return 0


# ---------------------------------------------------------------------------- animate
def _posed(avatar: PosableAvatar, poses: np.ndarray, transl: np.ndarray,
           expression: np.ndarray | None, t: int, variant: str) -> tuple[Gaussians, Tensor]:
    pose = pose_to(motion_pose(poses, transl, expression, t), avatar_device(avatar))
    with torch.no_grad():
        gaussians, channels = avatar.posed_gaussians(pose, variant)
    return gaussians, channels["rgb"]


def animate_avatar(avatar: PosableAvatar, poses: np.ndarray, transl: np.ndarray,
                   expression: np.ndarray | None, out: str | Path, renderer, fps: float,
                   width: int, height: int, turntable: bool = False,
                   camera: Camera | None = None, fov_deg: float = DEFAULT_FOV_DEG,
                   variant: str = "refined", max_frames: int | None = None
                   ) -> tuple[Path, RenderTiming]:
    """Render the avatar along a motion (poses [T, 55, 3], transl [T, 3]) to an mp4 on white.

    camera None: a camera framing the whole motion from the front (+z), or orbiting once around
    it over the clip when turntable. Returns (path, timing of the renderer calls).
    """
    total = poses.shape[0] if max_frames is None else min(poses.shape[0], max_frames)
    if total < 1:
        raise ValueError("animate: the motion has no frames")
    if camera is not None and turntable:
        raise ValueError("animate: --turntable orbits an automatic camera; drop --camera")
    if camera is None:
        samples = sorted({round(i * (total - 1) / max(FRAMING_SAMPLES - 1, 1))
                          for i in range(FRAMING_SAMPLES)})
        points = torch.cat([_posed(avatar, poses, transl, expression, t, variant)[0].means
                            for t in samples])  # [S * N, 3]
        centre, distance = framing_distance(points.float().cpu(), width, height, fov_deg)
        cameras = turntable_cameras(centre, distance, total if turntable else 1, width, height,
                                    fov_deg)
    else:
        cameras = [camera]

    def items():
        for t in range(total):
            gaussians, rgb = _posed(avatar, poses, transl, expression, t, variant)
            yield gaussians, rgb, cameras[t % len(cameras)].to(gaussians.means.device)

    frames, timing = render_frames(items(), renderer)
    return write_mp4(out, frames, fps), timing


def _camera_from_file(path: str, width: int, height: int) -> Camera:
    import json

    from persona.data.subject import camera_from_json

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--camera: file not found: {file}")
    try:
        return camera_from_json(json.loads(file.read_text()), width, height)
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{file}: not a cam_params JSON with R, t, focal, princpt ({exc})") \
            from exc


def animate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="persona animate",
                                     description="render an avatar along a motion to mp4")
    parser.add_argument("--ckpt", required=True, help="training checkpoint (.ckpt)")
    parser.add_argument("--motion", required=True, help="built-in motion name or motion .npz")
    parser.add_argument("--out", required=True, help="output .mp4")
    parser.add_argument("--camera", default="auto",
                        help="auto (frame the motion from the front) or a cam_params JSON")
    parser.add_argument("--turntable", action="store_true", help="orbit once over the clip")
    parser.add_argument("--fps", type=float, default=None, help="default: the motion's fps")
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--renderer", default="auto",
                        help="torch | gsplat | auto (gsplat for a CUDA avatar, else torch)")
    parser.add_argument("--variant", choices=VARIANTS, default="refined")
    parser.add_argument("--max-frames", type=int, default=None, help="render only the first N")
    parser.add_argument("--device", default="auto",
                        help="where the avatar is built, loaded and posed: auto (cuda when "
                             "available) | cpu | cuda | cuda:N")
    args = parser.parse_args(argv)
    try:
        from persona.data.motions import resolve_motion
        from persona.render import make_renderer
        from persona.runs import resolve_device

        device = resolve_device(args.device)
        renderer = make_renderer(animation_renderer_name(args.renderer, device))
        motion = resolve_motion(args.motion)
        camera = None if args.camera == "auto" else _camera_from_file(
            args.camera, args.width, args.height)
        avatar = load_avatar(args.ckpt, device)
        fps = args.fps or motion.fps
        start = time.perf_counter()
        path, timing = animate_avatar(
            avatar, motion.poses, motion.transl, motion.expression, args.out,
            renderer, fps, args.width, args.height, args.turntable, camera,
            variant=args.variant, max_frames=args.max_frames)
    except (FileNotFoundError, ValueError) as exc:
        print(f"persona animate: {exc}", file=sys.stderr)
        return 2
    rate = f"{timing.fps:.2f}" if math.isfinite(timing.fps) else "inf"
    wall = time.perf_counter() - start
    print(f"wrote {timing.frames} frames ({args.width}x{args.height}, {fps:g} fps) to {path}; "
          f"rendered at {rate} frames/s ({timing.seconds:.1f} s in the renderer, {wall:.1f} s "
          f"with posing and encoding)")
    return 0
