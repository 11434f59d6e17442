"""`persona export` (3DGS PLY / npz / SPZ, PLY sequences, bundles, avatar files), `animate`.

`persona animate` renders an mp4 along a motion.

Layers, top to bottom:
- `load_avatar(ckpt)`: the only part that knows about checkpoints and avatar files
  (avatar_file.py) (wiring point: PersonaSystem).
- `resolve_pose`, `export_avatar`, `animate_avatar`, `write_ply_sequence` (sequence.py): work on
  any object with `posed_gaussians(pose: PoseParams, variant) -> (Gaussians, {"rgb": [N, 3],
  ...})` and plain tensors, unit-tested without a trained avatar; `write_bundle` (bundle.py)
  also reads the system's template, body and skinning field.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from persona.body.types import PoseParams
from persona.errors import EXIT_USER_ERROR
from persona.export.bundle import check_bundle_path, write_bundle
from persona.export.ply import EXPORT_FORMATS, export_gaussians, format_for_path
from persona.export.poses import (  # noqa: F401  (re-exported: the public names of this module)
    DEFAULT_NUM_EXPRESSION,
    PosableAvatar,
    avatar_device,
    canonical_pose,
    check_max_frames,
    frame_count,
    motion_pose,
    pose_to,
    posed_frame,
)
from persona.export.sequence import SEQUENCE_INDEX, write_ply_sequence
from persona.export.variants import VARIANT_HELP, VARIANTS
from persona.export.video import (
    DEFAULT_FOV_DEG,
    RenderTiming,
    framing_distance,
    render_frames,
    turntable_cameras,
    write_mp4,
)
from persona.render.types import Camera

FRAMING_SAMPLES = 8  # motion frames posed up front to fit the camera around the whole motion


# ---------------------------------------------------------------------------- checkpoint wiring
def avatar_source(source: str | Path) -> Path:
    """RUN folder -> RUN/checkpoints/last.ckpt; a checkpoint or avatar file as it is."""
    path = Path(source)
    if path.is_dir():
        ckpt = path / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise FileNotFoundError(f"{path}: no checkpoints/last.ckpt in this run folder")
        return ckpt
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def load_avatar(ckpt: str | Path, device: str | torch.device = "cpu") -> PosableAvatar:
    """The avatar of a training checkpoint (with its run folder: RUN/config.yaml and the
    subject), a run folder (its last.ckpt) or a self-contained avatar file (`--avatar-file`;
    told apart by content), built and loaded on `device` ("auto": cuda when available), in eval
    mode."""
    from persona.errors import RERUN_HINT, UserError
    from persona.export.avatar_file import (
        AVATAR_HINT,
        AVATAR_SUFFIX,
        avatar_label,
        load_avatar_file,
        read_avatar_payload,
    )
    from persona.runs import checkpoint_file_problem, load_trained_system, resolve_device

    path = avatar_source(ckpt)
    named_avatar = path.suffix == AVATAR_SUFFIX
    problem = checkpoint_file_problem(path, AVATAR_HINT if named_avatar else RERUN_HINT)
    if problem is not None:  # one read of the file, before the (slow) model build
        label = avatar_label(path) if named_avatar else f"checkpoint {path}"
        raise UserError(f"{label}: {problem}")
    device = resolve_device(device)
    payload = read_avatar_payload(path)
    if payload is not None:
        return load_avatar_file(path, payload, device)
    if named_avatar:
        raise UserError(f"{avatar_label(path)}: not a persona avatar file (a torch file without "
                        f"format 'persona_avatar'): {AVATAR_HINT}")
    system, _ = load_trained_system(path, device=device, file_checked=True)
    return system


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


def export_mode(args: argparse.Namespace) -> str:
    """"single" (one pose: PLY or npz file), "sequence" (--motion: a folder of PLY frames),
    "bundle" (--bundle: the animatable npz) or "avatar" (--avatar-file: the self-contained
    avatar file); ValueError for options that do not go together."""
    if args.avatar_file:
        given = [flag for flag, on in (("--bundle", args.bundle), ("--motion", args.motion),
                                       ("--pose", args.pose != "canonical"),
                                       ("--format", args.format is not None),
                                       ("--max-frames", args.max_frames is not None)) if on]
        if given:
            raise ValueError(f"--avatar-file writes the whole avatar, unposed: drop "
                             f"{', '.join(given)}")
        return "avatar"
    many = "--bundle" if args.bundle else "--motion" if args.motion else ""
    if many and args.pose != "canonical":
        raise ValueError(f"--pose poses a single export; {many} exports a motion or a bundle "
                         "(drop --pose)")
    if many and args.format is not None:
        raise ValueError(f"--format is for a single export; {many} writes "
                         f"{'an npz bundle' if args.bundle else 'PLY frames'} (drop --format)")
    if args.max_frames is not None and not args.motion:
        raise ValueError("--max-frames limits a motion: also give --motion")
    check_max_frames(args.max_frames)
    return "bundle" if args.bundle else "sequence" if args.motion else "single"


def export_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="persona export", description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True,
                        help="training checkpoint (.ckpt, in its run folder), run folder, or "
                             "avatar file (.persona)")
    parser.add_argument("--out", required=True,
                        help="output file (.ply, .npz or .spz); with --motion: a folder of PLY "
                             "frames; with --bundle: an .npz; with --avatar-file: a .persona")
    parser.add_argument("--pose", default="canonical",
                        help="canonical | frame:<split>/<i> | motion:<npz or built-in>:<t>")
    parser.add_argument("--motion", default=None,
                        help="built-in motion name or motion .npz: write one PLY per frame to "
                             "the --out folder (with --bundle: the bundle's per-frame offsets)")
    parser.add_argument("--bundle", action="store_true",
                        help="write the animatable avatar bundle (.npz; docs/EXPORT.md)")
    parser.add_argument("--avatar-file", action="store_true",
                        help="write the self-contained avatar file (.persona): export and "
                             "animate read it without the subject folder or config.yaml")
    parser.add_argument("--max-frames", type=int, default=None,
                        help="with --motion: only the first N frames")
    parser.add_argument("--subject", default=None, help="subject folder (for --pose frame:...)")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default=None,
                        help="default: from the --out suffix, else ply")
    parser.add_argument("--variant", choices=VARIANTS, default="refined", help=VARIANT_HELP)
    parser.add_argument("--device", default="auto",
                        help="where the avatar is built, loaded and posed: auto (cuda when "
                             "available) | cpu | cuda | cuda:N")
    args = parser.parse_args(argv)
    try:
        run = {"single": _export_single, "sequence": _export_sequence,
               "bundle": _export_bundle, "avatar": _export_avatar_file}[export_mode(args)]
        print(run(args))
    except (FileNotFoundError, ValueError) as exc:
        print(f"persona export: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def _export_single(args: argparse.Namespace) -> str:
    fmt = args.format or format_for_path(args.out)
    pose = resolve_pose(parse_pose_spec(args.pose), args.subject)
    avatar = load_avatar(args.ckpt, args.device)
    path, count = export_avatar(avatar, pose, args.out, fmt, args.variant)
    return f"wrote {count} Gaussians ({fmt}, pose {args.pose}) to {path}"


def _export_sequence(args: argparse.Namespace) -> str:
    from persona.data.motions import resolve_motion

    motion = resolve_motion(args.motion)
    avatar = load_avatar(args.ckpt, args.device)
    done = write_ply_sequence(avatar, motion, args.out, args.variant, args.max_frames)
    return (f"wrote {done.num_frames} PLY frames of {done.num_gaussians} Gaussians (motion "
            f"{motion.name}, {done.fps:g} fps) and {SEQUENCE_INDEX} to {done.folder}")


def _export_bundle(args: argparse.Namespace) -> str:
    from persona.data.motions import resolve_motion

    check_bundle_path(args.out)  # before the slow loading
    motion = resolve_motion(args.motion) if args.motion else None
    avatar = load_avatar(args.ckpt, args.device)
    done = write_bundle(avatar, args.out, motion, args.variant, args.max_frames)
    offsets = (f", offsets for {done.num_frames} frames of motion {motion.name}"
               if motion is not None else "")
    return (f"wrote the avatar bundle ({done.num_gaussians} Gaussians, 55 joints{offsets}) to "
            f"{done.path}")


def _export_avatar_file(args: argparse.Namespace) -> str:
    from persona.export.avatar_file import check_avatar_path, write_avatar_file

    check_avatar_path(args.out)  # before the slow loading
    source = avatar_source(args.ckpt)
    done = write_avatar_file(source, args.out)
    return (f"wrote the avatar file ({done.num_gaussians} Gaussians, {done.num_bytes} bytes) "
            f"of {source} to {done.path}")


# ---------------------------------------------------------------------------- animate
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
    total = frame_count(poses.shape[0], max_frames, "animate")
    if camera is not None and turntable:
        raise ValueError("animate: --turntable orbits an automatic camera; drop --camera")
    if camera is None:
        samples = sorted({round(i * (total - 1) / max(FRAMING_SAMPLES - 1, 1))
                          for i in range(FRAMING_SAMPLES)})
        points = torch.cat([posed_frame(avatar, poses, transl, expression, t, variant)[0].means
                            for t in samples])  # [S * N, 3]
        centre, distance = framing_distance(points.float().cpu(), width, height, fov_deg)
        cameras = turntable_cameras(centre, distance, total if turntable else 1, width, height,
                                    fov_deg)
    else:
        cameras = [camera]

    def items():
        for t in range(total):
            gaussians, channels = posed_frame(avatar, poses, transl, expression, t, variant)
            yield gaussians, channels["rgb"], cameras[t % len(cameras)].to(gaussians.means.device)

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
    parser.add_argument("--ckpt", required=True,
                        help="training checkpoint (.ckpt, in its run folder), run folder, or "
                             "avatar file (.persona)")
    parser.add_argument("--motion", required=True, help="built-in motion name or motion .npz")
    parser.add_argument("--out", required=True, help="output .mp4")
    parser.add_argument("--camera", default="auto",
                        help="auto (frame the motion from the front) or a cam_params JSON")
    parser.add_argument("--turntable", action="store_true", help="orbit once over the clip")
    parser.add_argument("--fps", type=float, default=None, help="default: the motion's fps")
    parser.add_argument("--width", type=int, default=384, help="video width in pixels")
    parser.add_argument("--height", type=int, default=512, help="video height in pixels")
    parser.add_argument("--renderer", default="auto",
                        help="torch | gsplat | auto (gsplat for a CUDA avatar, else torch)")
    parser.add_argument("--variant", choices=VARIANTS, default="refined", help=VARIANT_HELP)
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
        return EXIT_USER_ERROR
    rate = f"{timing.fps:.2f}" if math.isfinite(timing.fps) else "inf"
    wall = time.perf_counter() - start
    print(f"wrote {timing.frames} frames ({args.width}x{args.height}, {fps:g} fps) to {path}; "
          f"rendered at {rate} frames/s ({timing.seconds:.1f} s in the renderer, {wall:.1f} s "
          f"with posing and encoding)")
    return 0
