"""``persona prep photo PHOTO SUBJECT``: the whole CPU chain from one photo to a training subject.

Stages, in order (docs/REAL_DATA.md, "From a photo on a CPU"):

1. ``start``: read the photo, find the people in it (BlazePose detector + landmarks + mask,
   data_prep/light_pose.py), keep the largest or ``--person-index K``, crop around that person
   (mask and landmark box plus a margin), rescale the crop when the person is outside the
   target height range, and write ``subject.json`` (body, photo, crop, people, the declared
   ``missing`` maps) and ``captured/images/0.png`` into a hidden staging folder renamed at the
   end: a photo that is not an image, has nobody in it or too small a person leaves nothing;
2. ``keypoints``: configs/prep/keypoints_light.yaml on the crop (the person nearest the one
   chosen in the photo);
3. ``mask``: configs/prep/segment_light.yaml;
4. ``fit``: configs/prep/fit.yaml (the subject's body: open or real SMPL-X), with its
   reprojection report ``captured/fit_report/0.json``;
5. ``albedo``: configs/prep/albedo_light.yaml (SH shading on the fitted body's normals).

Each stage after ``start`` is a Lightning ``predict`` run through ``persona prep`` (atomic
writes, the subject's lock). A stage whose outputs all exist is skipped without loading its
model, so a re-run does no work and an interrupted run resumes. One progress line per stage with
its time; the times and the reprojection report are also written to ``prep_photo.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from data_prep.init_subject import read_photo
from persona.data.subject import (
    FORMAT_VERSION,
    FramePaths,
    file_sha256,
    format_report,
    validate_subject,
    write_json,
    write_png,
)

DEFAULT_CONFIG = "configs/prep/photo_light.yaml"
CAPTURED = "captured"
PHOTO_LOG = "prep_photo.json"  # per-stage status and seconds, reprojection (subject root)
# The maps no CPU model here produces (subject.json "missing"; persona/data/subject.py).
MISSING_ON_CPU = ("depth", "normal", "seg", "generated")
MASK_PROBABILITY = 0.5  # the BlazePose mask counts a pixel as person above this
LANDMARK_VISIBLE = 0.5  # landmarks at or above this visibility bound the person's box
STAGING_SUFFIX = ".partial"  # `.SUBJECT.partial-PID`: the start stage's staging folder
SMPLX_PATH_ENV = "PERSONA_SMPLX_PATH"  # where prep stages find real SMPL-X files
QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric")  # info lines hidden between stages


# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------
@dataclass
class DetectSettings:
    """The start stage (configs/prep/photo_light.yaml, section ``detect``)."""

    detector_model: str = "weights/blazepose/pose_detection.tflite"
    landmark_model: str = "weights/blazepose/pose_landmark_full.tflite"
    min_detection_score: float = 0.5  # detections below this are not people
    margin: float = 0.1  # crop margin on each side, fraction of the person's height
    min_person_height: float = 96.0  # px in the photo; a smaller person is an error
    target_height: tuple[float, float] = (256.0, 1024.0)  # px in the subject image
    max_upscale: float = 4.0  # the crop is never enlarged more than this

    def __post_init__(self) -> None:
        low, high = (float(v) for v in self.target_height)
        if not 0 < low <= high:
            raise ValueError(f"detect.target_height must be [low, high] with 0 < low <= high, "
                             f"got {list(self.target_height)}")
        if self.margin < 0 or self.min_person_height <= 0 or self.max_upscale < 1:
            raise ValueError("detect: margin must be >= 0, min_person_height > 0, "
                             "max_upscale >= 1")
        self.target_height = (low, high)


@dataclass
class ChainStage:
    """One Lightning stage of the chain: its name, config and the files it writes."""

    name: str
    config: str
    outputs: tuple[str, ...]  # subject-relative; all present = done
    args: list[str] = field(default_factory=list)  # extra `persona prep` arguments


@dataclass
class PhotoSettings:
    detect: DetectSettings
    stage_configs: dict[str, str]  # stage name -> its persona prep config


STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "keypoints": ("captured/keypoints/0.json",),
    "mask": ("captured/masks/0.png",),
    "fit": ("captured/cam_params/0.json", "captured/smplx_optimized/smplx_params/0.json",
            "smplx_optimized/shape_param.json", "captured/fit_report/0.json"),
    "albedo": ("captured/image_intrinsics/0_albedo.png",),
}
STAGE_DEFAULT_CONFIGS: dict[str, str] = {
    "keypoints": "configs/prep/keypoints_light.yaml",
    "mask": "configs/prep/segment_light.yaml",
    "fit": "configs/prep/fit.yaml",
    "albedo": "configs/prep/albedo_light.yaml",
}
START_OUTPUTS = ("subject.json", FramePaths(CAPTURED, 0).image)
STAGE_NAMES = ("start", *STAGE_OUTPUTS)


def read_settings(path: str | Path) -> PhotoSettings:
    """configs/prep/photo_light.yaml -> PhotoSettings; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"photo chain config {path} does not exist (--config)")
    data = yaml.safe_load(path.read_text()) or {}
    detect = data.get("detect", {}) or {}
    try:
        settings = DetectSettings(**detect)
    except TypeError as error:
        raise ValueError(f"{path}: [detect] {error}") from error
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    stages = dict(STAGE_DEFAULT_CONFIGS)
    unknown = set(data.get("stages", {}) or {}) - set(stages)
    if unknown:
        raise ValueError(f"{path}: [stages] unknown stage(s) {sorted(unknown)}; known: "
                         f"{', '.join(stages)}")
    stages.update(data.get("stages", {}) or {})
    return PhotoSettings(settings, stages)


# ----------------------------------------------------------------------------------------------
# The person and the crop
# ----------------------------------------------------------------------------------------------
@dataclass
class Crop:
    """The region of the photo that becomes the subject's image."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in photo pixels (x1, y1 exclusive)
    scale: float  # subject pixels per photo pixel
    size: tuple[int, int]  # (width, height) of the subject image

    def to_subject(self, point: Sequence[float]) -> list[float]:
        """A photo pixel coordinate (x, y) -> the subject image's."""
        return [(float(point[0]) - self.box[0]) * self.scale,
                (float(point[1]) - self.box[1]) * self.scale]

    def record(self, photo_size: tuple[int, int]) -> dict[str, Any]:
        return {"box": list(self.box), "scale": round(self.scale, 6), "size": list(self.size),
                "photo_size": list(photo_size),
                "rule": "the person's mask and landmark box plus a margin, clipped to the photo; "
                        "subject pixel = (photo pixel - box[:2]) x scale"}


def person_box(mask_probability: np.ndarray, landmarks: np.ndarray,
               fallback: np.ndarray) -> np.ndarray:
    """[4] x0, y0, x1, y1 (photo pixels) around the person: the mask (probability [H, W] >
    0.5) and the visible landmarks [33, 5]; the detector's body box [4] when both are empty."""
    boxes = []
    rows = np.flatnonzero((mask_probability > MASK_PROBABILITY).any(axis=1))
    cols = np.flatnonzero((mask_probability > MASK_PROBABILITY).any(axis=0))
    if rows.size and cols.size:
        boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
    visible = landmarks[landmarks[:, 3] >= LANDMARK_VISIBLE, :2]
    if len(visible):
        boxes.append([*visible.min(0), *visible.max(0)])
    if not boxes:
        return np.asarray(fallback, dtype=np.float64)
    stacked = np.asarray(boxes, dtype=np.float64)
    return np.concatenate([stacked[:, :2].min(0), stacked[:, 2:].max(0)])


def plan_crop(box: np.ndarray, photo_size: tuple[int, int], settings: DetectSettings) -> Crop:
    """The crop around a person box [4]: margin x height on each side, clipped to the photo
    (width, height); scaled so that the person's height falls in ``target_height`` (at most
    ``max_upscale`` times larger)."""
    width, height = photo_size
    person_height = float(box[3] - box[1])
    pad = settings.margin * person_height
    x0 = int(max(0, np.floor(box[0] - pad)))
    y0 = int(max(0, np.floor(box[1] - pad)))
    x1 = int(min(width, np.ceil(box[2] + pad)))
    y1 = int(min(height, np.ceil(box[3] + pad)))
    low, high = settings.target_height
    scale = 1.0
    if person_height < low:
        scale = min(low / person_height, settings.max_upscale)
    elif person_height > high:
        scale = high / person_height
    size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
    return Crop((x0, y0, x1, y1), scale, size)


def apply_crop(image: np.ndarray, crop: Crop) -> np.ndarray:
    """uint8 [H, W, 3] photo -> uint8 [h, w, 3] subject image (area average when shrinking,
    bicubic when enlarging)."""
    x0, y0, x1, y1 = crop.box
    region = np.ascontiguousarray(image[y0:y1, x0:x1])
    if crop.size == (x1 - x0, y1 - y0):
        return region
    interpolation = cv2.INTER_AREA if crop.scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(region, crop.size, interpolation=interpolation)



# ----------------------------------------------------------------------------------------------
# Stage 1: start (photo -> subject.json + captured image)
# ----------------------------------------------------------------------------------------------
@dataclass
class StartResult:
    subject_json: dict[str, Any]
    message: str  # the people found and the choice, one line


def body_section(kind: str, gender: str, num_betas: int, num_expression: int) -> dict[str, Any]:
    """subject.json's body section (the body, not where its files are)."""
    return {"kind": kind, "gender": gender, "num_betas": num_betas,
            "num_expression": num_expression, "flat_hand_mean": False}


def check_body_available(body: dict[str, Any]) -> None:
    """Real SMPL-X needs $PERSONA_SMPLX_PATH with the model file; the error says so before
    anything is written."""
    if body["kind"] != "smplx":
        return
    from persona.body.smplx_format import resolve_model_file

    folder = os.environ.get(SMPLX_PATH_ENV)
    if not folder:
        raise ValueError(f"--body smplx needs the SMPL-X files: set ${SMPLX_PATH_ENV} (or pass "
                         "--smplx-path) to the folder holding "
                         f"smplx/SMPLX_{body['gender'].upper()}.npz (docs/REAL_DATA.md)")
    try:
        resolve_model_file(folder, body["gender"])
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(f"--body smplx: {error}") from error


def start_subject(photo: Path, body: dict[str, Any], person_index: int | None,
                  settings: DetectSettings,
                  pose_factory: Callable[[DetectSettings], Any] | None = None
                  ) -> tuple[StartResult, np.ndarray]:
    """Find the person in the photo and plan the subject: (subject.json content and the
    report line, the subject image uint8 [h, w, 3]). Writes nothing; errors name the photo."""
    from data_prep import light_pose

    image = read_photo(photo)  # [H, W, 3]; ValueError when not an image
    height, width = image.shape[:2]
    make = pose_factory or (lambda s: light_pose.LightPose(s.detector_model, s.landmark_model,
                                                           s.min_detection_score))
    pose = make(settings)
    try:
        result = pose(image, person_index)
    except ValueError as error:
        if "no person found" in str(error):
            raise ValueError(f"photo {photo}: no person found (detector score >= "
                             f"{settings.min_detection_score}, setting "
                             "detect.min_detection_score)") from error
        raise ValueError(f"photo {photo}: {error} (--person-index)") from error
    chosen = result.people[result.chosen]
    box = person_box(result.mask, result.landmarks, chosen.body_box)
    person_height = float(box[3] - box[1])
    if person_height < settings.min_person_height:
        raise ValueError(f"photo {photo}: the person is {person_height:.0f} px tall, under "
                         f"detect.min_person_height = {settings.min_person_height:.0f} px; use "
                         "a photo where the person is larger")
    crop = plan_crop(box, (width, height), settings)
    record = result.person_record()
    record.update({"box_in_photo": [round(float(v), 2) for v in box],
                   "height_px_in_photo": round(person_height, 2),
                   "hip_in_subject": [round(v, 3) for v in crop.to_subject(
                       chosen.keypoints[light_pose.KP_HIP])],
                   "requested_index": person_index})
    subject_json = {
        "format_version": FORMAT_VERSION, "name": None, "body": body,
        "source_photo": photo.name,
        "photo": {"file": photo.name, "sha256": file_sha256(photo), "size": [width, height]},
        "crop": crop.record((width, height)),
        "person": record,
        "missing": list(MISSING_ON_CPU),
        "missing_reason": "no CPU model here estimates depth, normals or part segmentation, "
                          "and video generation needs a GPU (docs/REAL_DATA.md, 'From a photo "
                          "on a CPU')",
        "prep": "persona prep photo",
    }
    rule = "largest" if person_index is None else f"--person-index {person_index}"
    message = (f"{len(result.people)} person(s) found in {photo.name}; kept person "
               f"{result.chosen} ({rule}, score {chosen.score:.2f}, {person_height:.0f} px "
               f"tall)")
    if len(result.people) > 1 and person_index is None:
        message += ("; choose another with --person-index K (K = 0.."
                    f"{len(result.people) - 1}, best detector score first)")
    message += (f"; crop {list(crop.box)} x {crop.scale:.3g} -> {crop.size[0]}x{crop.size[1]}")
    return StartResult(subject_json, message), apply_crop(image, crop)


def write_subject(root: Path, subject_json: dict[str, Any], image: np.ndarray,
                  replace: bool = False) -> None:
    """subject.json and captured/images/0.png into a staging folder (this process's own),
    renamed to ``root``; with ``replace`` an existing ``root`` is removed just before (so a
    failed start leaves the old subject as it was)."""
    staging = root.parent / f".{root.name}{STAGING_SUFFIX}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    subject_json = {**subject_json, "name": subject_json.get("name") or root.name}
    try:
        write_json(staging / "subject.json", subject_json)
        write_png(staging / FramePaths(CAPTURED, 0).image, image)
        if replace and root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise FileExistsError(f"{root}: could not create the subject ({error})") from error


def check_same_request(root: Path, photo: Path, body: dict[str, Any],
                       person_index: int | None) -> None:
    """A subject being resumed must come from the same photo, person and body."""
    config_path = root / "subject.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{config_path}: unreadable ({error}); pass --overwrite to start "
                         "again") from error
    recorded = config.get("photo", {}) if isinstance(config, dict) else {}
    checks = (("photo.sha256", recorded.get("sha256"), file_sha256(photo)),
              ("person.requested_index", config.get("person", {}).get("requested_index"),
               person_index),
              ("body.kind", config.get("body", {}).get("kind"), body["kind"]),
              ("body.gender", config.get("body", {}).get("gender"), body["gender"]))
    for name, was, now in checks:
        if was != now:
            raise ValueError(f"{config_path}: [{name}] is {was!r}, this run asks for {now!r}: "
                             "the subject was started differently; pass --overwrite to start "
                             "again")


# ----------------------------------------------------------------------------------------------
# The chain
# ----------------------------------------------------------------------------------------------
def chain_stages(subject: Path, settings: PhotoSettings) -> list[ChainStage]:
    """The Lightning stages after start, with their arguments."""
    config = json.loads((subject / "subject.json").read_text())
    near = config.get("person", {}).get("hip_in_subject")
    detect = settings.detect
    light = ["--model.init_args.detector_model", detect.detector_model,
             "--model.init_args.landmark_model", detect.landmark_model,
             "--model.init_args.min_detection_score", str(detect.min_detection_score)]
    if near is not None:
        light += ["--model.init_args.person_near", json.dumps(near)]
    fit_outputs = STAGE_OUTPUTS["fit"]
    args = {
        "keypoints": light + ["--data.splits", "[captured]"],
        "mask": light + ["--data.splits", "[captured]"],
        "fit": ["--data.splits", "[captured]", "--data.skip_if_exists",
                json.dumps([path for path in fit_outputs if path.startswith(CAPTURED)])],
        "albedo": ["--data.splits", "[captured]"],
    }
    return [ChainStage(name, settings.stage_configs[name], STAGE_OUTPUTS[name], args[name])
            for name in STAGE_OUTPUTS]


def outputs_exist(root: Path, outputs: Sequence[str]) -> bool:
    return all((root / path).is_file() for path in outputs)


def read_log(root: Path) -> dict[str, Any]:
    path = root / PHOTO_LOG
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def progress(step: int, total: int, name: str, text: str) -> None:
    print(f"persona prep photo: [{step}/{total}] {name}: {text}", flush=True)


def run_chain(photo: str | Path, subject: str | Path, body: dict[str, Any],
              person_index: int | None = None, config: str | Path = DEFAULT_CONFIG,
              overwrite: bool = False, until: str | None = None,
              run_stage: Callable[[list[str]], int] | None = None) -> dict[str, Any]:
    """Run every stage in order; returns the log written to ``SUBJECT/prep_photo.json``.
    Raises ValueError / FileNotFoundError (one line, naming the file) on bad input; a failed
    Lightning stage raises RuntimeError after its own message."""
    from data_prep.cli import main as prep_main

    photo, root = Path(photo), Path(subject)
    settings = read_settings(config)
    if until is not None and until not in STAGE_NAMES:
        raise ValueError(f"--until {until!r}: choose one of {', '.join(STAGE_NAMES)}")
    if not photo.is_file():
        raise FileNotFoundError(f"photo {photo} does not exist")
    check_body_available(body)
    total = len(STAGE_NAMES)
    run_stage = run_stage or prep_main
    log: dict[str, Any] = {"photo": str(photo), "stages": {}}
    if root.exists() and not overwrite:
        check_same_request(root, photo, body, person_index)
        log = {**read_log(root), "photo": str(photo)}
        log.setdefault("stages", {})
        progress(1, total, "start", "skipped (subject.json and the image exist)")
    else:
        began = time.perf_counter()
        result, image = start_subject(photo, body, person_index, settings.detect)
        write_subject(root, result.subject_json, image, replace=overwrite)
        seconds = time.perf_counter() - began
        log["stages"]["start"] = {"status": "done", "seconds": round(seconds, 3),
                                  "people": result.message}
        progress(1, total, "start", f"{result.message} ({seconds:.1f} s)")
    write_json(root / PHOTO_LOG, log)
    if until == "start":
        return log
    for step, stage in enumerate(chain_stages(root, settings), start=2):
        if outputs_exist(root, stage.outputs):
            progress(step, total, stage.name, "skipped (outputs exist)")
        else:
            began = time.perf_counter()
            status = run_stage(["--config", stage.config, "--data.subject_dir", str(root),
                                *stage.args])
            seconds = time.perf_counter() - began
            if status != 0 or not outputs_exist(root, stage.outputs):
                missing = [p for p in stage.outputs if not (root / p).is_file()]
                raise RuntimeError(f"stage {stage.name} ({stage.config}) failed on {root}"
                                   + (f"; missing {missing}" if missing else ""))
            log["stages"][stage.name] = {"status": "done", "seconds": round(seconds, 3)}
            write_json(root / PHOTO_LOG, log)
            progress(step, total, stage.name, f"done ({seconds:.1f} s)")
        if until == stage.name:
            return log
    report = json.loads((root / STAGE_OUTPUTS["fit"][-1]).read_text())
    log["reprojection"] = {key: report[key] for key in (
        "median_error_px", "person_height_px", "median_error_percent_of_height",
        "keypoints_used", "min_score")}
    write_json(root / PHOTO_LOG, log)
    return log


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="persona prep photo",
        description="the whole CPU chain from one photo to a training subject: start (person, "
                    "crop), keypoints, mask, fit, albedo; resumable (docs/REAL_DATA.md)")
    parser.add_argument("photo", help="the input photo (whole body visible)")
    parser.add_argument("subject", help="the subject folder to create or resume")
    parser.add_argument("--body", default="open", choices=("open", "smplx"),
                        help="open (no licence) or real SMPL-X ($PERSONA_SMPLX_PATH)")
    parser.add_argument("--gender", default="neutral", choices=("neutral", "male", "female"))
    parser.add_argument("--num-betas", type=int, default=10)
    parser.add_argument("--num-expression", type=int, default=10)
    parser.add_argument("--smplx-path", default=None,
                        help=f"folder holding smplx/SMPLX_*.npz (sets ${SMPLX_PATH_ENV})")
    parser.add_argument("--person-index", type=int, default=None,
                        help="keep the K-th person by detector score (default: the largest)")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="chain settings (YAML)")
    parser.add_argument("--overwrite", action="store_true", help="start the subject again")
    parser.add_argument("--until", default=None, choices=STAGE_NAMES,
                        help="stop after this stage")
    args = parser.parse_args(argv)
    for name in QUIET_LOGGERS:  # the stages' "Seed set", "GPU available" lines
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.smplx_path:
        os.environ[SMPLX_PATH_ENV] = args.smplx_path
    body = body_section(args.body, args.gender, args.num_betas, args.num_expression)
    try:
        if args.person_index is not None and args.person_index < 0:
            raise ValueError(f"--person-index must be >= 0, got {args.person_index}")
        log = run_chain(args.photo, args.subject, body, args.person_index, args.config,
                        args.overwrite, args.until)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError, ImportError) as error:
        print(f"persona prep photo: error: {error}", file=sys.stderr)
        return 1
    if args.until not in (None, STAGE_NAMES[-1]):
        return 0
    problems = validate_subject(args.subject)
    if problems:
        print(format_report(args.subject, problems), file=sys.stderr)
        return 1
    reprojection = log.get("reprojection", {})
    print(f"persona prep photo: {args.subject} is ready (`persona subject check` OK); fit "
          f"reprojects {reprojection.get('keypoints_used')} keypoints with a median error of "
          f"{reprojection.get('median_error_px', float('nan')):.1f} px = "
          f"{reprojection.get('median_error_percent_of_height') or float('nan'):.2f} % of the "
          f"person's {reprojection.get('person_height_px', float('nan')):.0f} px height; "
          f"missing: {', '.join(MISSING_ON_CPU)} (train on the input image alone: "
          "docs/REAL_DATA.md)")
    return 0
