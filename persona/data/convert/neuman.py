"""NeuMan (Jiang et al., ECCV 2022) -> a converted subject (docs/BENCHMARKS.md).

Source layout of one sequence (apple/ml-neuman data_io/neuman_helper.py, colmap_helper.py,
preprocess/optimize_smpl.py, export_alignment.py; the split files and SMPL-X fits of
ExAvatar/PERSONA, whose avatar/data/NeuMan/NeuMan.py reads them):

    SEQ/images/00000.png ...                     RGB frames (name = frame number)
    SEQ/sparse/cameras.txt, images.txt           COLMAP text model: PINHOLE (or SIMPLE_RADIAL,
                                                 OPENCV with distortion ignored, as NeuMan does);
                                                 images.txt: IMAGE_ID QW QX QY QZ TX TY TZ
                                                 CAMERA_ID NAME, world-to-camera
    SEQ/segmentations/00000.png                  Detectron2 masks: 255 = background (or .npy)
    SEQ/smpl_output_optimized.pkl                joblib dict {1: {'pose': [N][72], 'betas':
                                                 [N][10]}}, indexed by frame number, SMPL
                                                 (not SMPL-X), transl zero
    SEQ/alignments.npy                           dict name -> [4, 3]: world = [x, 1] @ M (a
                                                 scaled rotation and a shift, per frame)
    SEQ/{train,val,test}_split.txt               "00012.png" per line (ExAvatar's Google Drive
                                                 files, made with NeuMan's create_split_files)
    SEQ/masks/00000.png                          the authors' SAM masks, 255 = person (optional)
    SEQ/smplx_optimized/smplx_params/0.json      the authors' SMPL-X fits (optional; keys
                                                 root_pose, body_pose, ..., trans), paired with
                                                 the COLMAP cameras as their loader pairs them
    SEQ/smplx_optimized/shape_param.json         their SMPL-X betas (a bare list)

SMPL -> SMPL-X (when the authors' SMPL-X fits are absent): SMPL joints 0-21 are SMPL-X joints
0-21 (global_orient = pose[0:3], body_pose = pose[3:66]); SMPL's hand joints 22-23 have no SMPL-X
counterpart and are dropped; fingers, jaw, eyes and expression are zero; SMPL betas are not SMPL-X
betas and are not used. The alignment's scale s, rotation A and shift b are folded into each
frame's camera (R' = R_c A, t' = (R_c b + t_c) / s), so the SMPL-X body with transl 0 projects
where NeuMan's SMPL does, up to the SMPL / SMPL-X pelvis difference that the test-pose fit of
the protocol refines.
"""

from __future__ import annotations

import json
import pickle
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from persona.data.convert.common import (
    CONVERTER_VERSION,
    INPUT_ANNOTATIONS,
    NUM_BETAS,
    NUM_EXPRESSION,
    ConvertedSubject,
    Frame,
    body_section,
    camera_json,
    expression_of,
    fit_length,
    flat_array,
    quaternion_to_matrix,
    read_grey,
    read_rgb,
    require_dir,
    require_file,
    smplx_json,
    split_similarity,
)
from persona.data.subject import AUTHOR_KEY_ALIASES, SMPLX_POSE_KEYS
from persona.errors import UserError

PAPER_SEQUENCES = ("bike", "citron", "jogging", "lab", "parkinglot", "seattle")  # Table 3
IMAGES_DIR = "images"
CAMERAS_TXT, IMAGES_TXT = "sparse/cameras.txt", "sparse/images.txt"
SEGMENTATIONS_DIR = "segmentations"  # NeuMan's Detectron2 masks
AUTHOR_MASKS_DIR = "masks"  # ExAvatar/PERSONA's SAM masks
SPLIT_NAME = "{}_split.txt"
SMPL_NAME, ALIGNMENTS_NAME = "smpl_output_{}.pkl", "alignments.npy"
AUTHOR_SMPLX_DIR = "smplx_optimized/smplx_params"
AUTHOR_SHAPE_NAME = "smplx_optimized/shape_param.json"
SEGMENTATION_BACKGROUND = 255  # NeuMan: value 255 = background, anything else = person
AUTHOR_MASK_THRESHOLD = 127  # the authors' masks: > 0.5 x 255 = person
NUM_SMPL_POSE = 72  # 24 joints x 3
NUM_SHARED_JOINTS = 22  # SMPL joints 0-21 = SMPL-X joints 0-21
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SMPLX_SOURCES = ("auto", "authors", "smpl")
SMPL_TYPES = ("optimized", "romp")


# ---------------------------------------------------------------------------- COLMAP
def read_colmap_cameras(path: Path) -> dict[int, dict[str, Any]]:
    """cameras.txt -> camera id -> {width, height, focal, princpt, model}."""
    require_file(path, "COLMAP cameras")
    cameras = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        where = f"{path}: line {number}"
        try:
            camera_id, model = int(tokens[0]), tokens[1]
            width, height, *params = (float(v) for v in tokens[2:])
        except (ValueError, IndexError) as error:
            raise UserError(f"{where}: not 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS'") from error
        if model == "PINHOLE" and len(params) == 4:
            focal, princpt = (params[0], params[1]), (params[2], params[3])
        elif model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL") and len(params) >= 3:
            focal, princpt = (params[0], params[0]), (params[1], params[2])
        elif model == "OPENCV" and len(params) >= 4:
            focal, princpt = (params[0], params[1]), (params[2], params[3])
        else:
            raise UserError(f"{where}: camera model {model} with {len(params)} parameters is not "
                            f"supported (PINHOLE, SIMPLE_PINHOLE, SIMPLE_RADIAL, OPENCV)")
        cameras[camera_id] = {"width": int(width), "height": int(height), "focal": focal,
                              "princpt": princpt, "model": model}
    if not cameras:
        raise UserError(f"{path}: no cameras")
    return cameras


def read_colmap_images(path: Path) -> dict[str, dict[str, Any]]:
    """images.txt -> image name -> {R, t, camera_id} (world-to-camera)."""
    require_file(path, "COLMAP image poses")
    images = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        tokens = line.split()
        if len(tokens) != 10 or tokens[0].startswith("#") \
                or not tokens[9].lower().endswith(IMAGE_SUFFIXES):
            continue  # comments, and the POINTS2D line after each image line
        try:
            qw, qx, qy, qz, tx, ty, tz = (float(v) for v in tokens[1:8])
            camera_id = int(tokens[8])
        except ValueError as error:
            raise UserError(f"{path}: line {number}: not 'IMAGE_ID QW QX QY QZ TX TY TZ "
                            f"CAMERA_ID NAME'") from error
        images[tokens[9]] = {"R": quaternion_to_matrix(qw, qx, qy, qz),
                             "t": np.array([tx, ty, tz]), "camera_id": camera_id}
    if not images:
        raise UserError(f"{path}: no image poses")
    return images


# ---------------------------------------------------------------------------- splits
def official_split(names: list[str]) -> dict[str, list[str]]:
    """NeuMan's create_split_files (data_io/neuman_helper.py): over the frames in name order,
    every `length`-th from `length // 2` is held out; the first half of those is test, the rest
    val, all others train."""
    n = len(names)
    num_val = n // 5
    if num_val < 2:
        raise UserError(f"{n} registered frames: too few for NeuMan's split rule (needs >= 10)")
    length = int(1 / num_val * n)
    held_out = list(range(n))[length // 2::length]
    test = held_out[:len(held_out) // 2]
    val = held_out[len(held_out) // 2:]
    train = [i for i in range(n) if i not in set(held_out)]
    return {key: [names[i] for i in idx] for key, idx in
            (("train", train), ("val", val), ("test", test))}


def read_split(root: Path, split: str, names: list[str]) -> tuple[list[str], str]:
    """The split's image names: SEQ/<split>_split.txt, else NeuMan's rule. Returns (names, how)."""
    path = root / SPLIT_NAME.format(split)
    if not path.is_file():
        return official_split(names)[split], "computed with NeuMan's create_split_files rule"
    listed = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    unknown = [name for name in listed if name not in names]
    if unknown:
        raise UserError(f"{path}: {unknown[0]} is not in {IMAGES_TXT} ({len(unknown)} unknown)")
    return listed, f"read from {path.name}"


def frame_number(name: str) -> int:
    try:
        return int(Path(name).stem)
    except ValueError as error:
        raise UserError(f"{name}: NeuMan image names are frame numbers (00012.png)") from error


# ---------------------------------------------------------------------------- masks
def read_mask(root: Path, name: str, prefer_authors: bool) -> np.ndarray:
    """bool [H, W]: the authors' masks/ (255 = person) when asked for, else NeuMan's
    segmentations/ (.npy first, as NeuMan's reader; 255 = background)."""
    if prefer_authors:
        author = require_file(root / AUTHOR_MASKS_DIR / name, "the authors' mask")
        return read_grey(author) > AUTHOR_MASK_THRESHOLD
    npy = root / SEGMENTATIONS_DIR / f"{name}.npy"
    if npy.is_file():
        value = np.load(npy)
        value = value[..., 0] if value.ndim == 3 else value
        return value != SEGMENTATION_BACKGROUND
    png = require_file(root / SEGMENTATIONS_DIR / name, "NeuMan segmentation mask")
    return read_grey(png) != SEGMENTATION_BACKGROUND


# ---------------------------------------------------------------------------- SMPL(-X)
def load_pickle(path: Path) -> Any:
    """A joblib or plain pickle. joblib's own format needs joblib installed."""
    require_file(path, "NeuMan SMPL estimates")
    try:
        import joblib  # noqa: PLC0415 - optional; NeuMan wrote these files with joblib.dump
    except ImportError:
        joblib = None
    try:
        if joblib is not None:
            return joblib.load(path)
        with open(path, "rb") as handle:
            return pickle.load(handle, encoding="latin1")
    except ModuleNotFoundError as error:
        raise UserError(f"{path}: written by joblib.dump; install joblib (pip install joblib) "
                        f"to read it") from error
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as error:
        raise UserError(f"{path}: not a readable pickle ({error})") from error


def read_smpl_table(root: Path, smpl_type: str) -> dict[str, Any]:
    """smpl_output_<type>.pkl -> {'pose': [N, 72], ...} (NeuMan asserts a single person)."""
    path = root / SMPL_NAME.format(smpl_type)
    data = load_pickle(path)
    if not isinstance(data, dict) or len(data) != 1:
        raise UserError(f"{path}: expected a dict with one person (NeuMan's layout)")
    person = next(iter(data.values()))
    if not isinstance(person, dict) or "pose" not in person:
        raise UserError(f"{path}: field 'pose' is missing")
    return person


def read_alignments(root: Path) -> dict[str, np.ndarray]:
    path = require_file(root / ALIGNMENTS_NAME, "SMPL-to-scene alignments")
    try:
        data = np.load(path, allow_pickle=True).item()
    except (OSError, ValueError, EOFError) as error:
        raise UserError(f"{path}: not a readable dict of [4, 3] matrices ({error})") from error
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a dict image name -> [4, 3] matrix")
    return data


def smpl_frame(table: dict[str, Any], alignments: dict[str, np.ndarray], name: str,
               colmap_R: np.ndarray, colmap_t: np.ndarray, root: Path, smpl_type: str
               ) -> tuple[dict[str, list[float]], np.ndarray, np.ndarray]:
    """NeuMan's SMPL at one frame -> (our SMPL-X JSON, camera R, camera t) with the alignment
    folded into the camera (module docstring)."""
    where = f"{root / SMPL_NAME.format(smpl_type)} frame {name}"
    frame = frame_number(name)
    poses = table["pose"]
    if frame >= len(poses):
        raise UserError(f"{where}: field 'pose' has {len(poses)} frames, no frame {frame}")
    pose = flat_array({"pose": poses[frame]}, "pose", NUM_SMPL_POSE, where)
    if name not in alignments:
        raise UserError(f"{root / ALIGNMENTS_NAME}: no alignment for {name}")
    M = np.asarray(alignments[name], dtype=np.float64)
    if M.shape != (4, 3):
        raise UserError(f"{root / ALIGNMENTS_NAME}: {name} has shape {list(M.shape)}, "
                        f"expected [4, 3]")
    scale, A = split_similarity(M[:3].T, f"{root / ALIGNMENTS_NAME}: {name}")
    b = M[3]
    R = colmap_R @ A
    t = (colmap_R @ b + colmap_t) / scale
    joints = pose.reshape(-1, 3)  # [24, 3]
    smplx = {key: np.zeros(3 * n) for key, (_, n) in SMPLX_POSE_KEYS.items()}
    smplx["global_orient"] = joints[0]
    smplx["body_pose"] = joints[1:NUM_SHARED_JOINTS].reshape(-1)
    return smplx_json(smplx, np.zeros(NUM_EXPRESSION), np.zeros(3)), R, t


def author_smplx(root: Path, frame: int) -> dict[str, list[float]]:
    """The authors' smplx_optimized/smplx_params/<frame>.json -> our keys."""
    path = require_file(root / AUTHOR_SMPLX_DIR / f"{frame}.json", "the authors' SMPL-X fit")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: not valid JSON ({error})") from error
    data = {AUTHOR_KEY_ALIASES.get(key, key): value for key, value in data.items()}
    pose = {key: flat_array(data, key, 3 * n, str(path),
                            default=None if key in ("global_orient", "body_pose") else 0.0)
            for key, (_, n) in SMPLX_POSE_KEYS.items()}
    return smplx_json(pose, expression_of(data, "expression", str(path)),
                      flat_array(data, "transl", 3, str(path)))


# ---------------------------------------------------------------------------- conversion
def convert_neuman(src: str | Path, input_frame: int | None = None, smplx_source: str = "auto",
                   smpl_type: str = "optimized", input_annotations: str = "none",
                   masks: str = "auto", body_kind: str = "smplx", gender: str = "neutral"
                   ) -> ConvertedSubject:
    """Read one NeuMan sequence: the input photo (a train frame) and the test frames."""
    if input_annotations not in INPUT_ANNOTATIONS:
        raise UserError(f"--input-annotations: expected one of {INPUT_ANNOTATIONS}")
    if smplx_source not in SMPLX_SOURCES:
        raise UserError(f"--smplx: expected one of {SMPLX_SOURCES}")
    if smpl_type not in SMPL_TYPES:
        raise UserError(f"--smpl-type: expected one of {SMPL_TYPES}")
    root = require_dir(Path(src), "a NeuMan sequence folder")
    require_dir(root / IMAGES_DIR, "NeuMan frames")
    cameras = read_colmap_cameras(root / CAMERAS_TXT)
    images = read_colmap_images(root / IMAGES_TXT)
    names = sorted(images)  # NeuMan's order='video'
    use_authors = smplx_source == "authors" or (
        smplx_source == "auto" and (root / AUTHOR_SMPLX_DIR).is_dir())
    table = alignments = None
    if not use_authors:
        table, alignments = read_smpl_table(root, smpl_type), read_alignments(root)
    prefer_author_masks = masks == "authors" or (masks == "auto" and
                                                 (root / AUTHOR_MASKS_DIR).is_dir())

    def record(name: str, annotated: bool) -> Frame:
        image = partial(read_rgb, root / IMAGES_DIR / name)
        if not annotated:
            return Frame(name, image)
        pose = images[name]
        if pose["camera_id"] not in cameras:
            raise UserError(f"{root / IMAGES_TXT}: {name} uses camera {pose['camera_id']}, "
                            f"absent from {CAMERAS_TXT}")
        intr = cameras[pose["camera_id"]]
        if use_authors:
            smplx, R, t = author_smplx(root, frame_number(name)), pose["R"], pose["t"]
        else:
            smplx, R, t = smpl_frame(table, alignments, name, pose["R"], pose["t"], root,
                                     smpl_type)
        return Frame(name, image, partial(read_mask, root, name, prefer_author_masks),
                     camera_json(R, t, intr["focal"], intr["princpt"]), smplx)

    test_names, split_how = read_split(root, "test", names)
    train_names, _ = read_split(root, "train", names)
    if input_frame is None:
        input_name = max(train_names, key=lambda n: (read_mask(root, n, prefer_author_masks)
                                                     .sum(), -frame_number(n)))
    else:
        matches = [n for n in names if frame_number(n) == input_frame]
        if not matches:
            raise UserError(f"{root / IMAGES_TXT}: no registered frame {input_frame}")
        input_name = matches[0]
    with_dataset = input_annotations == "dataset"
    betas = None
    if with_dataset:
        betas = [0.0] * NUM_BETAS  # SMPL betas are not SMPL-X betas
        if use_authors:
            path = require_file(root / AUTHOR_SHAPE_NAME, "the authors' SMPL-X betas")
            betas = fit_length(np.asarray(json.loads(path.read_text()), dtype=np.float64)
                               .reshape(-1), NUM_BETAS).tolist()
    smplx_how = ("the authors' SMPL-X fits (smplx_optimized/smplx_params), COLMAP cameras"
                 if use_authors else
                 f"NeuMan's SMPL ({SMPL_NAME.format(smpl_type)}) mapped to SMPL-X: joints 0-21 "
                 "kept, SMPL hand joints 22-23 dropped, fingers/jaw/eyes/expression zero, "
                 "betas not used, transl 0, alignments.npy folded into each camera; persona prep "
                 "fit and the protocol's test-pose fit must refine the body")
    source = {
        "dataset": "NeuMan", "converter": f"persona.data.convert.neuman v{CONVERTER_VERSION}",
        "sequence": root.name, "input_frame": input_name,
        "input_frame_rule": "given" if input_frame is not None
        else "the train frame with the largest person mask",
        "test_split": split_how, "num_test_frames": len(test_names),
        "input_annotations": input_annotations, "smplx": smplx_how,
        "masks": "the authors' masks/ (SAM)" if prefer_author_masks
        else "NeuMan's segmentations/ (Detectron2, 255 = background)",
        "camera_models": sorted({c["model"] for c in cameras.values()}),
    }
    return ConvertedSubject(
        name=root.name, body=body_section(body_kind, gender, False),
        captured=record(input_name, with_dataset),
        test_frames=[record(name, True) for name in test_names], source=source, betas=betas)
