"""`persona track VIDEO --out motion.npz [--overlay overlay.mp4] [--sheet sheet.png]`.

VIDEO is a video (anything OpenCV's FFmpeg reads) or one photo (a one-frame motion). What the
command reports on stderr (and keeps in the npz, persona/track/output.py): dropped frames (gaps
in the timestamps), frames without a usable person (none found, too small, no pose) which are
interpolated, more than one person and which one is tracked, the reprojection error. A user
error (not a video, nobody in any frame, the person too small everywhere) is one line naming the
file, and nothing is written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from persona.errors import UserError
from persona.track import detect as det
from persona.track.video import VideoInfo, iter_frames, probe

BLAZEPOSE_DIR_ENV = "PERSONA_BLAZEPOSE_DIR"  # where the .tflite files are (default weights/)
SMPLX_PATH_ENV = "PERSONA_SMPLX_PATH"
BODY_KINDS = ("auto", "open", "smplx", "procedural")
MAX_LISTED_FRAMES = 12  # frame indices spelled out in a report line; the rest are counted
PREFIX = "persona track"


@dataclass
class TrackResult:
    """Everything one run produced (experiments and tests read it)."""

    info: VideoInfo
    detections: det.Detections
    fit: Any  # persona.track.fit.TrackFit
    motion: Any  # persona.data.motions.Motion (body frame)
    missing: list[int]
    report: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)  # detect, fit, write
    notes: list[str] = field(default_factory=list)  # the report lines printed


def listed(frames: list[int]) -> str:
    """"3 (4, 5, 9)" with at most MAX_LISTED_FRAMES indices spelled out."""
    shown = ", ".join(str(f) for f in frames[:MAX_LISTED_FRAMES])
    more = f", ... {len(frames) - MAX_LISTED_FRAMES} more" if len(frames) > MAX_LISTED_FRAMES \
        else ""
    return f"{len(frames)} ({shown}{more})"


def default_body_kind() -> str:
    """Real SMPL-X when $PERSONA_SMPLX_PATH is set, else the open body (no licence)."""
    return "smplx" if os.environ.get(SMPLX_PATH_ENV) else "open"


def load_track_body(kind: str):
    """The body the clip is fitted with (flat hands: the motion's zero finger pose is flat)."""
    from persona.body.loader import BodySpec, load_body

    kind = default_body_kind() if kind == "auto" else kind
    spec = BodySpec(kind=kind, flat_hand_mean=True,
                    model_path=os.environ.get(SMPLX_PATH_ENV) if kind == "smplx" else None)
    return load_body(spec)


def load_pose_models(weights: str | None):
    """The BlazePose runtime; FileNotFoundError with the install hint when the files are
    missing."""
    from data_prep.light_pose import LightPose

    folder = weights or os.environ.get(BLAZEPOSE_DIR_ENV) or "weights/blazepose"
    detector, landmarker = det.default_models(folder)
    return LightPose(detector, landmarker)


def check_usable(path: Path, detections: det.Detections, min_person_px: float) -> None:
    """UserError naming the file when no frame has a usable person."""
    if detections.valid.any():
        return
    total = len(detections.status)
    tiny = detections.frames_with(det.STATUS_TINY)
    if tiny:
        largest = float(detections.person_size.max())
        raise UserError(f"{path}: the person is too small in every frame (largest "
                        f"{largest:.0f} px, below --min-person-px {min_person_px:g}); crop "
                        f"closer or use a higher-resolution video; nothing written")
    if detections.frames_with(det.STATUS_NO_POSE):
        raise UserError(f"{path}: a person was detected but no body pose found in any of "
                        f"{total} frame(s); nothing written")
    raise UserError(f"{path}: no person found in any of {total} frame(s); nothing written")


def detection_notes(path: Path, info: VideoInfo, detections: det.Detections,
                    person_index: int | None) -> list[str]:
    """The report lines about the input: dropped frames, people, frames without landmarks."""
    notes = []
    if info.dropped:
        notes.append(f"{path}: {listed(info.dropped)} dropped frame(s) (gaps in the "
                     f"timestamps at {info.fps:.3g} fps): interpolated")
    choice = detections.first_choice
    if choice.get("num_tracks", 0) > 1 or detections.num_people.max() > 1:
        rule = ("the most prominent (the largest over the clip; --person-index N picks the "
                "N-th, most prominent first)" if person_index is None
                else f"person {person_index} by prominence")
        notes.append(f"{path}: {choice['num_tracks']} people found over the clip (up to "
                     f"{int(detections.num_people.max())} in one frame); tracking {rule}, "
                     f"detected in {choice['frames_detected']} frame(s) from frame "
                     f"{choice['first_frame']}")
    for status in (det.STATUS_NONE, det.STATUS_TINY, det.STATUS_NO_POSE):
        frames = detections.frames_with(status)
        if frames:
            notes.append(f"{path}: {listed(frames)} frame(s) with {status}: interpolated")
    return notes


def progress_bar(total: int, description: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="frame" if "detect" in description
                else "step", disable=quiet, file=sys.stderr, leave=False)


def track(video: str | Path, person_index: int | None = None,
          min_person_px: float = det.MIN_PERSON_PX, focal: float | None = None,
          body_kind: str = "auto", weights: str | None = None, quiet: bool = False,
          settings: Any = None, body: Any = None, pose_models: Any = None,
          max_frames: int | None = None) -> TrackResult:
    """Read, detect and fit; nothing is written. UserError for unusable input."""
    from persona.data.motions import Motion
    from persona.track.evaluate import reprojection_summary
    from persona.track.fit import TrackFitSettings, fit_clip
    from persona.track.output import camera_to_body_frame

    path = Path(video)
    if person_index is not None and person_index < 0:
        raise UserError(f"--person-index must be >= 0, got {person_index}")
    if focal is not None and not focal > 0:
        raise UserError(f"--focal must be a positive number of pixels, got {focal}")
    if max_frames is not None and max_frames < 1:
        raise UserError(f"--max-frames must be >= 1, got {max_frames}")
    info = probe(path, max_frames)
    pose_models = load_pose_models(weights) if pose_models is None else pose_models
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    with progress_bar(2 * info.num_read, "detect", quiet) as bar:
        def frames():
            for image in iter_frames(info):
                yield image
                bar.update(1)

        detections = det.detect_all(pose_models, frames, info.grid_index, info.num_frames,
                                    person_index, min_person_px)
    seconds["detect"] = time.perf_counter() - start
    check_usable(path, detections, min_person_px)
    notes = detection_notes(path, info, detections, person_index)

    settings = TrackFitSettings() if settings is None else settings
    if focal is not None:
        settings.focal = focal
    body = load_track_body(body_kind) if body is None else body
    start = time.perf_counter()
    with progress_bar(sum(settings.iterations), "fit", quiet) as bar:
        fit = fit_clip(body, detections.landmarks, detections.world, detections.valid,
                       info.width, info.height, settings,
                       progress=lambda done: bar.update(done - bar.n))
    seconds["fit"] = time.perf_counter() - start
    poses, transl = camera_to_body_frame(fit.full_pose, fit.transl, fit.rest_pelvis)
    motion = Motion(path.stem, poses.astype(np.float32), transl.astype(np.float32), info.fps)
    missing = [int(i) for i in np.flatnonzero(~detections.valid)]
    errors = reprojection_summary(fit.errors_px)
    report = {
        "source": str(path), "frames": info.num_frames, "decoded": info.num_read,
        "fps": info.fps, "width": info.width, "height": info.height,
        "dropped_frames": info.dropped, "missing_frames": missing,
        "status_counts": {s: detections.status.count(s) for s in det.STATUSES},
        "max_people": int(detections.num_people.max()), "person": detections.first_choice,
        "body": body.name, "focal_px": float(fit.camera.K[0, 0]),
        "reprojection": errors, "betas": [round(float(b), 4) for b in fit.betas],
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    return TrackResult(info, detections, fit, motion, missing, report, seconds, notes)


def check_outputs(out: Path, overlay: Path | None, sheet: Path | None) -> None:
    """Suffixes and folders of the outputs, before any work."""
    if out.suffix.lower() != ".npz":
        raise UserError(f"--out {out}: a motion is an .npz file")
    if overlay is not None and overlay.suffix.lower() != ".mp4":
        raise UserError(f"--overlay {overlay}: the overlay is an .mp4 file")
    if sheet is not None and sheet.suffix.lower() != ".png":
        raise UserError(f"--sheet {sheet}: the contact sheet is a .png file")
    for target in (out, overlay, sheet):
        if target is not None and target.is_dir():
            raise UserError(f"{target}: is a folder; give a file name")


def write_outputs(result: TrackResult, out: Path, overlay: Path | None,
                  sheet: Path | None) -> list[str]:
    """The motion npz, then the optional overlay mp4 and sheet; each atomic."""
    from persona.track import overlay as ov
    from persona.track.fit import coco_from_blazepose
    from persona.track.output import write_track_motion

    write_track_motion(out, result.motion, result.missing, result.info.dropped, result.report)
    written = [str(out)]
    if overlay is None and sheet is None:
        return written
    interpolated = ~result.detections.valid
    detected = coco_from_blazepose(result.detections.landmarks)
    if overlay is not None:
        ov.write_overlay(overlay, iter_frames(result.info), result.info.grid_index,
                         result.fit.pixels, detected, interpolated, result.info.fps)
        written.append(str(overlay))
    if sheet is not None:
        decoded = [int(s) for s in result.info.grid_index]
        fitted = [s for s in decoded if not interpolated[s]]  # frames with landmarks first
        wanted = set(ov.sheet_slots(fitted or decoded))
        tiles = [ov.crop_tile(ov.draw_frame(image, result.fit.pixels[slot],
                                            None if interpolated[slot] else detected[slot],
                                            bool(interpolated[slot])), result.fit.pixels[slot])
                 for slot, image in zip(result.info.grid_index, iter_frames(result.info),
                                        strict=False) if int(slot) in wanted]
        ov.write_sheet(sheet, tiles)
        written.append(str(sheet))
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="persona track", description="a video (or photo) of a person -> an SMPL-X motion "
        "npz that `persona animate --motion` plays")
    parser.add_argument("video", help="input video (mp4, mov, webm, ...) or photo")
    parser.add_argument("--out", required=True, help="output motion .npz")
    parser.add_argument("--overlay", default=None, help="optional .mp4: the fit over the input")
    parser.add_argument("--sheet", default=None, help="optional .png: a contact sheet of it")
    parser.add_argument("--person-index", type=int, default=None,
                        help="which person to track, by prominence over the clip (0: the "
                             "largest summed size over the frames, the default)")
    parser.add_argument("--min-person-px", type=float, default=det.MIN_PERSON_PX,
                        help="a person smaller than this (px) is not tracked in that frame")
    parser.add_argument("--focal", type=float, default=None,
                        help="focal length in px; default: 2000 px at 1024 px image height, "
                             "scaled by the video's height (the project's virtual camera)")
    parser.add_argument("--body", choices=BODY_KINDS, default="auto",
                        help="body to fit: smplx when $PERSONA_SMPLX_PATH is set, else open")
    parser.add_argument("--weights", default=None,
                        help=f"BlazePose folder (default ${BLAZEPOSE_DIR_ENV} or "
                             "weights/blazepose)")
    parser.add_argument("--max-frames", type=int, default=None, help="track only the first N")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    overlay = Path(args.overlay) if args.overlay else None
    sheet = Path(args.sheet) if args.sheet else None
    check_outputs(out, overlay, sheet)
    result = track(args.video, args.person_index, args.min_person_px, args.focal, args.body,
                   args.weights, args.quiet, max_frames=args.max_frames)
    for note in result.notes:
        print(f"{PREFIX}: {note}", file=sys.stderr)
    start = time.perf_counter()
    written = write_outputs(result, out, overlay, sheet)
    result.seconds["write"] = time.perf_counter() - start
    errors = result.report["reprojection"]
    frames = result.info.num_frames
    per_frame = 1000.0 * (result.seconds["detect"] + result.seconds["fit"]) / max(frames, 1)
    print(f"wrote {', '.join(written)}: {frames} frame(s) at {result.info.fps:.3g} fps, body "
          f"{result.report['body']}, reprojection error median {errors['median_px']:.1f} px, "
          f"{len(result.missing)} frame(s) interpolated, {per_frame:.0f} ms/frame "
          f"(detect {result.seconds['detect']:.1f} s, fit {result.seconds['fit']:.1f} s)")
    return 0
