"""What every benchmark converter shares: the converted frame, the subject writer (built in a
hidden sibling folder and renamed at the end), cameras, masks and SMPL-X parameter checks.

A converted subject (docs/BENCHMARKS.md) holds the input image as frame 0 of ``captured`` and the
benchmark's test frames as ``test/0..N-1`` with the dataset's cameras, SMPL-X parameters and masks,
in the layout of docs/SUBJECT_FORMAT.md. Depth, normals, part segmentation, the albedo, the
generated videos and (by default) the input image's body fit come from `persona prep`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from persona.atomic import atomic_write_bytes, replace_folder
from persona.data.subject import (
    CAPTURED_SPLIT,
    FORMAT_VERSION,
    FRAME_LIST_NAME,
    INPUT_FRAME_INDEX,
    SMPLX_POSE_KEYS,
    TEST_SPLIT,
    FramePaths,
    write_frame_list,
    write_json,
    write_png,
)
from persona.errors import UserError

ORIGINAL_IDS_NAME = "frame_idx_orig.txt"  # the authors' name: one source frame id per line
ROTATION_TOLERANCE = 1e-4  # max |R^T R - I| of a source rotation after removing its scale
MASK_ON, MASK_OFF = 255, 0  # our masks: 8-bit, 255 = person
NUM_BETAS = 10  # both benchmarks ship 10 shape coefficients
NUM_EXPRESSION = 10  # X-Humans ships 10 expression coefficients (NeuMan none)
INPUT_ANNOTATIONS = ("none", "dataset")  # what the converter writes for the input image
CONVERTER_VERSION = 1  # recorded in subject.json "source"


@dataclass
class Frame:
    """One converted frame. `camera` is our cam_params dict, `smplx` our SMPL-X JSON dict."""

    source_id: str  # where it came from, e.g. "test Take1 12" or "00012.png"
    load_image: Callable[[], np.ndarray]  # -> uint8 [H, W, 3]
    load_mask: Callable[[], np.ndarray] | None = None  # -> bool [H, W]
    camera: dict[str, Any] | None = None
    smplx: dict[str, list[float]] | None = None


@dataclass
class ConvertedSubject:
    """Everything the writer needs; `source` goes into subject.json for the record."""

    name: str
    body: dict[str, Any]
    captured: Frame
    test_frames: list[Frame]
    source: dict[str, Any] = field(default_factory=dict)
    betas: list[float] | None = None  # written as smplx_optimized/shape_param.json when given


# ---------------------------------------------------------------------------- source files
def require_file(path: Path, what: str) -> Path:
    """`path` must exist as a file; the error names it and what it is."""
    if not path.is_file():
        raise UserError(f"{path}: missing ({what})")
    return path


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{path}: missing folder ({what})")
    return path


def read_rgb(path: Path) -> np.ndarray:
    """Any image PIL reads -> uint8 [H, W, 3]; errors name the file."""
    require_file(path, "image")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"{path}: not a readable image ({error})") from error


def read_grey(path: Path, mode: str = "L") -> np.ndarray:
    """First channel of an image (mode L: uint8, mode F: float32) -> [H, W]."""
    require_file(path, "mask or depth image")
    try:
        with Image.open(path) as image:
            if mode == "F":
                return np.asarray(image.convert("F"), dtype=np.float32).copy()
            if image.mode not in ("L", "1", "P", "I", "I;16"):
                image = image.getchannel(0)
            return np.asarray(image.convert("L"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"{path}: not a readable image ({error})") from error


def flat_array(data: dict[str, Any], key: str, size: int, where: str,
               default: float | None = None) -> np.ndarray:
    """data[key] as float64 [size] (any nesting). Missing: zeros when `default` is given, else
    an error naming the file and the field; a wrong size or NaN is an error too."""
    if key not in data or data[key] is None:
        if default is None:
            raise UserError(f"{where}: field '{key}' is missing")
        return np.full(size, default, dtype=np.float64)
    try:
        value = np.asarray(data[key], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as error:
        raise UserError(f"{where}: field '{key}' is not numeric ({error})") from error
    if value.size != size:
        raise UserError(f"{where}: field '{key}' has {value.size} values, expected {size}")
    if not np.isfinite(value).all():
        raise UserError(f"{where}: field '{key}' holds NaN/inf")
    return value


def fit_length(values: np.ndarray, size: int) -> np.ndarray:
    """Truncate or zero-pad a coefficient vector to `size` (expression coefficients)."""
    out = np.zeros(size, dtype=np.float64)
    n = min(size, values.size)
    out[:n] = values[:n]
    return out


def expression_of(data: dict[str, Any], key: str, where: str) -> np.ndarray:
    """data[key] (any length, absent = zeros) truncated or zero-padded to NUM_EXPRESSION."""
    if data.get(key) is None:
        return np.zeros(NUM_EXPRESSION)
    value = flat_array(data, key, int(np.size(data[key])), where)
    return fit_length(value, NUM_EXPRESSION)


def smplx_json(pose: dict[str, np.ndarray], expression: np.ndarray,
               transl: np.ndarray) -> dict[str, list[float]]:
    """Our SMPL-X JSON (docs/SUBJECT_FORMAT.md) from arrays keyed as SMPLX_POSE_KEYS."""
    out = {}
    for key, (_, n) in SMPLX_POSE_KEYS.items():
        value = np.asarray(pose[key], dtype=np.float64).reshape(-1)
        if value.size != 3 * n:
            raise ValueError(f"{key}: expected {3 * n} values, got {value.size}")
        out[key] = value.tolist()
    out["expression"] = np.asarray(expression, dtype=np.float64).reshape(-1).tolist()
    out["transl"] = np.asarray(transl, dtype=np.float64).reshape(3).tolist()
    return out


def camera_json(R: np.ndarray, t: np.ndarray, focal: tuple[float, float],
                princpt: tuple[float, float]) -> dict[str, Any]:
    """cam_params dict: world-to-camera x_cam = R x + t, pixel centres at integer + 0.5."""
    return {"R": np.asarray(R, dtype=np.float64).reshape(3, 3).tolist(),
            "t": np.asarray(t, dtype=np.float64).reshape(3).tolist(),
            "focal": [float(focal[0]), float(focal[1])],
            "princpt": [float(princpt[0]), float(princpt[1])]}


def project(camera: dict[str, Any], points: np.ndarray) -> np.ndarray:
    """[N, 3] world points -> [N, 2] pixels through a cam_params dict."""
    cam = points @ np.asarray(camera["R"]).T + np.asarray(camera["t"])  # [N, 3]
    focal, princpt = np.asarray(camera["focal"]), np.asarray(camera["princpt"])
    return cam[:, :2] / cam[:, 2:3] * focal + princpt


def split_similarity(A: np.ndarray, where: str) -> tuple[float, np.ndarray]:
    """A = s R with s > 0 and R a rotation -> (s, R); anything else is an error naming `where`."""
    det = float(np.linalg.det(A))
    if not np.isfinite(det) or det <= 0:
        raise UserError(f"{where}: not a scaled rotation (determinant {det:.3g})")
    scale = det ** (1.0 / 3.0)
    R = A / scale
    error = float(np.abs(R.T @ R - np.eye(3)).max())
    if error > ROTATION_TOLERANCE:
        raise UserError(f"{where}: not a scaled rotation (max |R^T R - I| = {error:.3g})")
    return scale, R


def quaternion_to_matrix(qw: float, qx: float, qy: float, qz: float) -> np.ndarray:
    """Unit quaternion (COLMAP's QW QX QY QZ, Hamilton) -> [3, 3] rotation."""
    q = np.array([qw, qx, qy, qz], dtype=np.float64)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def mask_to_png(mask: np.ndarray) -> np.ndarray:
    """bool [H, W] -> uint8 {0, 255}."""
    return np.where(mask, MASK_ON, MASK_OFF).astype(np.uint8)


# ---------------------------------------------------------------------------- writing
def staging_path(out: Path) -> Path:
    return out.parent / f".{out.name}.partial-{os.getpid()}"


def write_subject(subject: ConvertedSubject, out: str | Path, overwrite: bool = False,
                  log: Callable[[str], None] | None = None) -> Path:
    """Write the subject under a hidden sibling name, then rename it to `out`."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out}: exists; pass --overwrite to replace it")
    staging = staging_path(out)
    if staging.exists():
        shutil.rmtree(staging)
    try:
        _write_all(subject, staging, log)
        replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _write_all(subject: ConvertedSubject, root: Path, log: Callable[[str], None] | None) -> None:
    write_json(root / "subject.json", {"format_version": FORMAT_VERSION, "name": subject.name,
                                       "body": subject.body, "source": subject.source})
    if subject.betas is not None:
        write_json(root / "smplx_optimized" / "shape_param.json", {"betas": subject.betas})
    _write_frame(root, FramePaths(CAPTURED_SPLIT, INPUT_FRAME_INDEX), subject.captured)
    atomic_write_bytes(root / CAPTURED_SPLIT / ORIGINAL_IDS_NAME,
                       f"{subject.captured.source_id}\n".encode())
    for index, frame in enumerate(_logged(subject.test_frames, log)):
        _write_frame(root, FramePaths(TEST_SPLIT, index), frame)
    write_frame_list(root / TEST_SPLIT / FRAME_LIST_NAME, list(range(len(subject.test_frames))))
    atomic_write_bytes(root / TEST_SPLIT / ORIGINAL_IDS_NAME,
                       "".join(f"{frame.source_id}\n" for frame in subject.test_frames).encode())


def _logged(frames: list[Frame], log: Callable[[str], None] | None) -> Iterator[Frame]:
    step = max(1, len(frames) // 10)  # ~10 progress lines per subject
    for i, frame in enumerate(frames):
        if log is not None and (i % step == 0 or i == len(frames) - 1):
            log(f"test frame {i + 1}/{len(frames)} ({frame.source_id})")
        yield frame


def _write_frame(root: Path, paths: FramePaths, frame: Frame) -> None:
    image = frame.load_image()  # [H, W, 3]
    write_png(root / paths.image, image)
    if frame.load_mask is not None:
        mask = frame.load_mask()  # [H, W] bool
        if mask.shape != image.shape[:2]:
            raise UserError(f"{frame.source_id}: mask {mask.shape[1]}x{mask.shape[0]} differs "
                            f"from the image {image.shape[1]}x{image.shape[0]} (WxH)")
        write_png(root / paths.mask, mask_to_png(mask))
    if frame.camera is not None:
        write_json(root / paths.camera, frame.camera)
    if frame.smplx is not None:
        write_json(root / paths.smplx, frame.smplx)


def body_section(kind: str, gender: str, flat_hand_mean: bool) -> dict[str, Any]:
    """subject.json's body (the keys `persona prep init` writes)."""
    return {"kind": kind, "gender": gender, "num_betas": NUM_BETAS,
            "num_expression": NUM_EXPRESSION, "flat_hand_mean": flat_hand_mean}


def pick(items: Iterable[str], wanted: str, what: str, where: Path) -> str:
    """`wanted` must be among `items`; the error lists them."""
    items = sorted(items)
    if wanted not in items:
        raise UserError(f"{where}: no {what} {wanted!r} (present: {', '.join(items) or 'none'})")
    return wanted
