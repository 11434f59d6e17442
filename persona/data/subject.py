"""The subject format on disk: reading, atomic writing and validation.

Layout (docs/SUBJECT_FORMAT.md, compatible with the authors' release, METHOD.md section 10):
``subject.json``, ``smplx_optimized/{shape_param,face_offset,joint_offset}.json``, and per split
(``captured``, ``generated_<k>``, ``test``) ``images/ masks/ depths/ normals/ segs/ cam_params/
smplx_optimized/smplx_params/`` with one file per frame index, ``frame_idx_list.txt`` for the
generated and test splits, and ``captured/image_intrinsics/0_albedo.png``.

The validator reports every problem it finds (file, field, message), not just the first.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from persona.atomic import atomic_write_bytes, atomic_write_json
from persona.body.types import NUM_JOINTS, Identity, PoseParams
from persona.data.palette import rgb_to_labels
from persona.render.types import Camera

FORMAT_VERSION = 1
CAPTURED_SPLIT = "captured"
TEST_SPLIT = "test"
GENERATED_PREFIX = "generated_"
INPUT_FRAME_INDEX = 0  # the input image is frame 0 of the captured split
KNOWN_BODY_KINDS: tuple[str, ...] = ("open", "smplx", "procedural")
KNOWN_GENDERS: tuple[str, ...] = ("neutral", "male", "female")
FRAME_LIST_NAME = "frame_idx_list.txt"
ALBEDO_RELPATH = "captured/image_intrinsics/0_albedo.png"
# subject.json "missing": what a subject declares it has not (no model made it, e.g. the CPU
# chain `persona prep photo`). The validator does not ask for these files, the data module
# gives zero maps (= invalid) and switches their loss terms off; "generated" = no
# generated_<k> split (training on the input image alone).
MISSING_KEY = "missing"
MISSABLE_MAPS: tuple[str, ...] = ("depth", "normal", "seg")
MISSABLE: tuple[str, ...] = (*MISSABLE_MAPS, "generated")

# SMPL-X parameter JSON: key -> (first joint in full_pose, number of joints). Axis-angle.
SMPLX_POSE_KEYS: dict[str, tuple[int, int]] = {
    "global_orient": (0, 1),
    "body_pose": (1, 21),
    "jaw_pose": (22, 1),
    "leye_pose": (23, 1),
    "reye_pose": (24, 1),
    "left_hand_pose": (25, 15),
    "right_hand_pose": (40, 15),
}
# The authors' key names (ExAvatar/PERSONA release) -> ours.
AUTHOR_KEY_ALIASES: dict[str, str] = {
    "root_pose": "global_orient",
    "lhand_pose": "left_hand_pose",
    "rhand_pose": "right_hand_pose",
    "expr": "expression",
    "trans": "transl",
}
ROTATION_TOLERANCE = 1e-3  # max |R^T R - I| and |det R - 1| accepted for camera rotations
NORMAL_TOLERANCE = 2e-2  # stored normals must have length 1 +- this (or be exactly 0 = invalid)

# Problem kinds reported by the validator.
MISSING_FILE = "missing_file"
UNREADABLE = "unreadable"
MISSING_FIELD = "missing_field"
WRONG_SHAPE = "wrong_shape"
NOT_FINITE = "not_finite"
BAD_VALUE = "bad_value"
SIZE_MISMATCH = "size_mismatch"
CAMERA_MISMATCH = "camera_mismatch"
BAD_ROTATION = "bad_rotation"
UNKNOWN_BODY = "unknown_body"
MISSING_FRAME = "missing_frame"
BAD_FRAME_LIST = "bad_frame_list"
OFF_PALETTE = "off_palette"
BAD_IMAGE_MODE = "bad_image_mode"
UNSUPPORTED_VERSION = "unsupported_version"
MISSING_SPLIT = "missing_split"


# ----------------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FramePaths:
    """Every file of one frame, relative to the subject root."""

    split: str
    index: int

    @property
    def image(self) -> str:
        return f"{self.split}/images/{self.index}.png"

    @property
    def mask(self) -> str:
        return f"{self.split}/masks/{self.index}.png"

    @property
    def depth(self) -> str:
        return f"{self.split}/depths/{self.index}.npy"

    @property
    def normal(self) -> str:
        return f"{self.split}/normals/{self.index}.npy"

    @property
    def seg(self) -> str:
        return f"{self.split}/segs/{self.index}.png"

    @property
    def garment_mask(self) -> str:
        """Synthetic test frames only: uint8 {0, 255}, pixels the true garment covers."""
        return f"{self.split}/garment_masks/{self.index}.png"

    @property
    def camera(self) -> str:
        return f"{self.split}/cam_params/{self.index}.json"

    @property
    def smplx(self) -> str:
        return f"{self.split}/smplx_optimized/smplx_params/{self.index}.json"


def generated_split(k: int) -> str:
    return f"{GENERATED_PREFIX}{k}"


def list_splits(root: str | Path) -> list[str]:
    """The splits present: captured, generated_0.. (numeric order), test."""
    root = Path(root)
    generated = []
    for entry in root.iterdir() if root.is_dir() else []:
        match = re.fullmatch(rf"{GENERATED_PREFIX}(\d+)", entry.name)
        if match and entry.is_dir():
            generated.append((int(match.group(1)), entry.name))
    splits = [CAPTURED_SPLIT] if (root / CAPTURED_SPLIT).is_dir() else []
    splits += [name for _, name in sorted(generated)]
    if (root / TEST_SPLIT).is_dir():
        splits.append(TEST_SPLIT)
    return splits


def is_generated(split: str) -> bool:
    return re.fullmatch(rf"{GENERATED_PREFIX}\d+", split) is not None


# ----------------------------------------------------------------------------------------------
# Atomic writers
# ----------------------------------------------------------------------------------------------
HASH_CHUNK_BYTES = 1 << 20  # read size of file_sha256


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_json(path, obj)


def write_png(path: str | Path, array: np.ndarray) -> None:
    """uint8 [H, W] (8-bit grey) or [H, W, 3] (RGB) -> PNG."""
    if array.dtype != np.uint8:
        raise ValueError(f"{path}: PNG data must be uint8, got {array.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def write_npy(path: str | Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(path, buffer.getvalue())


def write_frame_list(path: str | Path, indices: list[int]) -> None:
    atomic_write_bytes(path, "".join(f"{i}\n" for i in indices).encode())


def float_to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 with rounding."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# JSON <-> cameras, poses, identity
# ----------------------------------------------------------------------------------------------
def camera_to_json(camera: Camera) -> dict[str, Any]:
    K = camera.K.detach().cpu().double()
    return {
        "R": camera.R.detach().cpu().double().tolist(),
        "t": camera.t.detach().cpu().double().tolist(),
        "focal": [float(K[0, 0]), float(K[1, 1])],
        "princpt": [float(K[0, 2]), float(K[1, 2])],
    }


def camera_from_json(data: dict[str, Any], width: int, height: int) -> Camera:
    """cam_params JSON -> Camera (the image size comes from the image file)."""
    fx, fy = (float(v) for v in data["focal"])
    cx, cy = (float(v) for v in data["princpt"])
    K = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float32)
    R = torch.tensor(data["R"], dtype=torch.float32).reshape(3, 3)
    t = torch.tensor(data["t"], dtype=torch.float32).reshape(3)
    return Camera(K=K, R=R, t=t, width=width, height=height)


def pose_to_json(pose: PoseParams, b: int = 0) -> dict[str, list[float]]:
    """One element of a PoseParams batch -> the SMPL-X parameter JSON dict."""
    full_pose = pose.full_pose[b].detach().cpu().double()  # [55, 3]
    out = {key: full_pose[start:start + n].reshape(-1).tolist()
           for key, (start, n) in SMPLX_POSE_KEYS.items()}
    out["expression"] = pose.expression[b].detach().cpu().double().tolist()
    out["transl"] = pose.transl[b].detach().cpu().double().tolist()
    return out


def canonical_smplx_keys(data: dict[str, Any]) -> dict[str, Any]:
    """Rename the authors' keys (root_pose, lhand_pose, rhand_pose, expr, trans) to ours."""
    return {AUTHOR_KEY_ALIASES.get(key, key): value for key, value in data.items()}


def pose_from_json(data: dict[str, Any], num_expression: int | None = None) -> PoseParams:
    """SMPL-X parameter JSON -> PoseParams with batch 1. Missing expression -> zeros."""
    data = canonical_smplx_keys(data)
    full_pose = torch.zeros(NUM_JOINTS, 3, dtype=torch.float32)
    for key, (start, n) in SMPLX_POSE_KEYS.items():
        if key in data:
            full_pose[start:start + n] = torch.tensor(data[key], dtype=torch.float32).reshape(n, 3)
    expression = torch.tensor(data.get("expression", []), dtype=torch.float32).reshape(-1)
    if num_expression is not None and expression.numel() == 0:
        expression = torch.zeros(num_expression)
    transl = torch.tensor(data.get("transl", [0.0, 0.0, 0.0]), dtype=torch.float32).reshape(3)
    return PoseParams(full_pose[None], expression[None], transl[None])


def write_identity(root: str | Path, identity: Identity) -> None:
    base = Path(root) / "smplx_optimized"
    write_json(base / "shape_param.json", {"betas": identity.betas.detach().cpu().tolist()})
    if identity.face_offset is not None:
        write_json(base / "face_offset.json",
                   {"face_offset": identity.face_offset.detach().cpu().tolist()})
    if identity.joint_offset is not None:
        write_json(base / "joint_offset.json",
                   {"joint_offset": identity.joint_offset.detach().cpu().tolist()})


def read_identity(root: str | Path) -> Identity:
    base = Path(root) / "smplx_optimized"
    betas = torch.tensor(_read_json(base / "shape_param.json")["betas"], dtype=torch.float32)
    face = joint = None
    if (base / "face_offset.json").exists():
        face = torch.tensor(_read_json(base / "face_offset.json")["face_offset"],
                            dtype=torch.float32)
    if (base / "joint_offset.json").exists():
        joint = torch.tensor(_read_json(base / "joint_offset.json")["joint_offset"],
                             dtype=torch.float32)
    return Identity(betas.reshape(-1), face, joint)


def read_subject_config(root: str | Path) -> dict[str, Any]:
    return _read_json(Path(root) / "subject.json")


def _read_json(path: Path) -> Any:
    with open(path) as handle:
        return json.load(handle)


# ----------------------------------------------------------------------------------------------
# Frames
# ----------------------------------------------------------------------------------------------
@dataclass
class FrameRecord:
    """One frame of a subject: where it is, its camera and its SMPL-X parameters."""

    split: str
    index: int
    camera: Camera
    pose: PoseParams  # batch 1
    is_input: bool

    @property
    def paths(self) -> FramePaths:
        return FramePaths(self.split, self.index)


def read_frame_indices(root: str | Path, split: str) -> list[int]:
    """Frame indices of a split: [0] for captured, frame_idx_list.txt otherwise."""
    if split == CAPTURED_SPLIT:
        return [INPUT_FRAME_INDEX]
    text = (Path(root) / split / FRAME_LIST_NAME).read_text()
    return [int(line) for line in text.split() if line.strip()]


def read_frame_record(root: str | Path, split: str, index: int,
                      num_expression: int | None = None) -> FrameRecord:
    root = Path(root)
    paths = FramePaths(split, index)
    with Image.open(root / paths.image) as image:
        width, height = image.size
    camera = camera_from_json(_read_json(root / paths.camera), width, height)
    pose = pose_from_json(_read_json(root / paths.smplx), num_expression)
    return FrameRecord(split, index, camera, pose, split == CAPTURED_SPLIT)


def read_frame_records(root: str | Path, splits: list[str],
                       num_expression: int | None = None) -> list[FrameRecord]:
    return [read_frame_record(root, split, index, num_expression)
            for split in splits for index in read_frame_indices(root, split)]


def read_image(path: str | Path) -> np.ndarray:
    """PNG -> float32 [H, W, 3] in [0, 1] (an alpha channel is dropped)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def read_mask(path: str | Path) -> np.ndarray:
    """8-bit PNG -> float32 [H, W] in [0, 1]."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def read_seg(path: str | Path) -> np.ndarray:
    """Palette PNG -> uint8 [H, W, 3]."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def declared_missing(config: dict[str, Any]) -> frozenset[str]:
    """subject.json's ``missing`` list as a set (unknown names are the validator's concern)."""
    value = config.get(MISSING_KEY, []) if isinstance(config, dict) else []
    return frozenset(v for v in value if isinstance(v, str)) if isinstance(value, list) \
        else frozenset()


def read_frame_maps(root: str | Path, split: str, index: int,
                    missing: frozenset[str] = frozenset()) -> dict[str, np.ndarray]:
    """All per-pixel maps of a frame at native resolution (float32 unless noted).

    image [H,W,3], mask [H,W], depth [H,W], normal [H,W,3], seg uint8 [H,W,3], and albedo
    [H,W,3] for the input image. A map named in ``missing`` (subject.json) is not read: it is
    all zeros, the "invalid" value of depth and normals.
    """
    root = Path(root)
    paths = FramePaths(split, index)
    image = read_image(root / paths.image)
    height, width = image.shape[:2]
    maps = {
        "image": image,
        "mask": read_mask(root / paths.mask),
        "depth": (np.zeros((height, width), np.float32) if "depth" in missing
                  else np.load(root / paths.depth).astype(np.float32)),
        "normal": (np.zeros((height, width, 3), np.float32) if "normal" in missing
                   else np.load(root / paths.normal).astype(np.float32)),
        "seg": (np.zeros((height, width, 3), np.uint8) if "seg" in missing
                else read_seg(root / paths.seg)),
    }
    if split == CAPTURED_SPLIT and index == INPUT_FRAME_INDEX:
        maps["albedo"] = read_image(root / ALBEDO_RELPATH)
    return maps


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One thing wrong with a subject: the file (relative to the root), the field and why."""

    file: str
    field: str
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: [{self.field}] {self.message} ({self.kind})"


class SubjectError(ValueError):
    """An invalid subject; the message is the full validation report."""

    def __init__(self, root: str | Path, problems: list[Problem]):
        self.root = root
        self.problems = problems
        super().__init__(format_report(root, problems))


def format_report(root: str | Path, problems: list[Problem]) -> str:
    if not problems:
        return f"subject {root}: OK"
    lines = [f"subject {root}: {len(problems)} problem(s)"]
    lines += [f"  {problem}" for problem in problems]
    return "\n".join(lines)


class _Report:
    """Collects problems; helpers that read a file return None after reporting a failure."""

    def __init__(self, root: Path):
        self.root = root
        self.problems: list[Problem] = []

    def add(self, file: str, field: str, kind: str, message: str) -> None:
        self.problems.append(Problem(file, field, kind, message))

    def exists(self, rel: str) -> bool:
        if not (self.root / rel).is_file():
            self.add(rel, "file", MISSING_FILE, "file is missing")
            return False
        return True

    def json(self, rel: str) -> Any:
        if not self.exists(rel):
            return None
        try:
            return _read_json(self.root / rel)
        except (OSError, ValueError) as error:
            self.add(rel, "file", UNREADABLE, f"not valid JSON: {error}")
            return None

    def png(self, rel: str) -> Image.Image | None:
        if not self.exists(rel):
            return None
        try:
            image = Image.open(self.root / rel)
            image.load()
            return image
        except (OSError, ValueError, SyntaxError) as error:
            self.add(rel, "file", UNREADABLE, f"not a readable image: {error}")
            return None

    def npy(self, rel: str) -> np.ndarray | None:
        if not self.exists(rel):
            return None
        try:
            return np.load(self.root / rel, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            self.add(rel, "file", UNREADABLE, f"not a readable .npy array: {error}")
            return None

    def array_field(self, rel: str, data: dict, key: str, shape: tuple[int | None, ...],
                    required: bool = True) -> np.ndarray | None:
        """A numeric JSON field: present, of the given shape (None = any), finite."""
        if key not in data:
            if required:
                self.add(rel, key, MISSING_FIELD, "field is missing")
            return None
        try:
            value = np.asarray(data[key], dtype=np.float64)
        except (TypeError, ValueError):
            self.add(rel, key, WRONG_SHAPE, "not a numeric array")
            return None
        if value.ndim != len(shape) or any(s is not None and s != v
                                           for s, v in zip(shape, value.shape, strict=False)):
            want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            self.add(rel, key, WRONG_SHAPE, f"expected shape {want}, got {list(value.shape)}")
            return None
        if not np.isfinite(value).all():
            self.add(rel, key, NOT_FINITE, f"{int((~np.isfinite(value)).sum())} NaN/inf value(s)")
            return None
        return value


def validate_subject(root: str | Path, max_off_palette_fraction: float = 0.0) -> list[Problem]:
    """Check a subject and return every problem found (empty list = valid).

    ``max_off_palette_fraction``: share of part-seg pixels allowed to be off the goliath palette.
    """
    root = Path(root)
    report = _Report(root)
    if not root.is_dir():
        report.add(str(root), "directory", MISSING_FILE, "subject directory does not exist")
        return report.problems
    config = _check_subject_json(report)
    num_betas = config.get("num_betas")
    num_expression = config.get("num_expression")
    missing = config.get(MISSING_KEY, frozenset())
    _check_identity(report, num_betas)
    splits = list_splits(root)
    if CAPTURED_SPLIT not in splits:
        report.add(CAPTURED_SPLIT, "split", MISSING_SPLIT, "the captured split is missing")
    if not any(is_generated(s) for s in splits) and "generated" not in missing:
        report.add(f"{GENERATED_PREFIX}0", "split", MISSING_SPLIT,
                   "no generated_<k> split: training needs generated frames (or declare "
                   "\"generated\" in subject.json \"missing\" to train on the input image alone)")
    for split in splits:
        indices = _check_frame_list(report, split)
        for index in indices:
            _check_frame(report, FramePaths(split, index), num_expression,
                         max_off_palette_fraction, missing)
    if CAPTURED_SPLIT in splits:
        _check_albedo(report)
    return report.problems


def _check_subject_json(report: _Report) -> dict[str, Any]:
    """Returns the usable body settings (num_betas/num_expression when valid)."""
    rel = "subject.json"
    data = report.json(rel)
    if data is None:
        return {}
    if not isinstance(data, dict):
        report.add(rel, "file", UNREADABLE, "expected a JSON object")
        return {}
    if data.get("format_version") != FORMAT_VERSION:
        report.add(rel, "format_version", UNSUPPORTED_VERSION,
                   f"expected {FORMAT_VERSION}, got {data.get('format_version')!r}")
    body = data.get("body")
    if not isinstance(body, dict):
        report.add(rel, "body", MISSING_FIELD, "the body model section is missing")
        return {}
    usable: dict[str, Any] = {}
    kind = body.get("kind")
    if kind not in KNOWN_BODY_KINDS:
        report.add(rel, "body.kind", UNKNOWN_BODY,
                   f"unknown body model {kind!r}; known: {', '.join(KNOWN_BODY_KINDS)}")
    gender = body.get("gender", "neutral")
    if gender not in KNOWN_GENDERS:
        report.add(rel, "body.gender", BAD_VALUE,
                   f"unknown gender {gender!r}; known: {', '.join(KNOWN_GENDERS)}")
    for key, minimum in (("num_betas", 1), ("num_expression", 1)):
        value = body.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            report.add(rel, f"body.{key}", BAD_VALUE, f"expected an integer >= {minimum}, "
                       f"got {value!r}")
        else:
            usable[key] = value
    declared = data.get(MISSING_KEY, [])
    if not isinstance(declared, list) or any(v not in MISSABLE for v in declared):
        report.add(rel, MISSING_KEY, BAD_VALUE, f"expected a list of names from "
                   f"{', '.join(MISSABLE)}, got {declared!r}")
    else:
        usable[MISSING_KEY] = frozenset(declared)
    return usable


def _check_identity(report: _Report, num_betas: int | None) -> None:
    rel = "smplx_optimized/shape_param.json"
    data = report.json(rel)
    if isinstance(data, dict):
        report.array_field(rel, data, "betas", (num_betas,))
    elif data is not None:
        report.add(rel, "file", UNREADABLE, "expected a JSON object")
    for name, shape in (("face_offset", (None, 3)), ("joint_offset", (NUM_JOINTS, 3))):
        rel = f"smplx_optimized/{name}.json"
        if not (report.root / rel).exists():
            continue  # optional
        data = report.json(rel)
        if isinstance(data, dict):
            report.array_field(rel, data, name, shape)
        elif data is not None:
            report.add(rel, "file", UNREADABLE, "expected a JSON object")


def _check_frame_list(report: _Report, split: str) -> list[int]:
    if split == CAPTURED_SPLIT:
        return [INPUT_FRAME_INDEX]
    rel = f"{split}/{FRAME_LIST_NAME}"
    if not report.exists(rel):
        return []
    indices: list[int] = []
    for line_number, line in enumerate((report.root / rel).read_text().splitlines(), start=1):
        token = line.strip()
        if not token:
            continue
        if not re.fullmatch(r"\d+", token):
            report.add(rel, f"line {line_number}", BAD_FRAME_LIST,
                       f"expected a non-negative frame index, got {token!r}")
        elif int(token) in indices:
            report.add(rel, f"line {line_number}", BAD_FRAME_LIST, f"duplicate frame {token}")
        else:
            indices.append(int(token))
    if not indices:
        report.add(rel, "file", BAD_FRAME_LIST, "lists no frames")
    missing = [i for i in indices if not (report.root / FramePaths(split, i).image).exists()]
    for i in missing:
        report.add(rel, f"frame {i}", MISSING_FRAME,
                   f"frame {i} is listed but {FramePaths(split, i).image} does not exist")
    return [i for i in indices if i not in missing]


def _check_size(report: _Report, rel: str, field: str, size_hw: tuple[int, ...],
                image_hw: tuple[int, int] | None, image_rel: str) -> None:
    if image_hw is not None and tuple(size_hw[:2]) != image_hw:
        report.add(rel, field, SIZE_MISMATCH, f"size {size_hw[0]}x{size_hw[1]} (HxW) differs from "
                   f"{image_rel} {image_hw[0]}x{image_hw[1]}")


def _check_frame(report: _Report, paths: FramePaths, num_expression: int | None,
                 max_off_palette_fraction: float, missing: frozenset[str] = frozenset()
                 ) -> None:
    image_hw: tuple[int, int] | None = None
    image = report.png(paths.image)
    if image is not None:
        image_hw = (image.height, image.width)
        if image.mode not in ("RGB", "RGBA"):
            report.add(paths.image, "mode", BAD_IMAGE_MODE, f"expected RGB, got {image.mode}")
    mask = report.png(paths.mask)
    if mask is not None:
        if mask.mode != "L":
            report.add(paths.mask, "mode", BAD_IMAGE_MODE,
                       f"expected an 8-bit single-channel PNG (mode L), got {mask.mode}")
        _check_size(report, paths.mask, "size", (mask.height, mask.width), image_hw, paths.image)
    seg = None if "seg" in missing else report.png(paths.seg)
    if seg is not None:
        _check_size(report, paths.seg, "size", (seg.height, seg.width), image_hw, paths.image)
        if seg.mode not in ("RGB", "RGBA"):
            report.add(paths.seg, "mode", BAD_IMAGE_MODE, f"expected RGB, got {seg.mode}")
        else:
            labels = rgb_to_labels(np.asarray(seg.convert("RGB")))
            off = float((labels < 0).mean())
            if off > max_off_palette_fraction:
                report.add(paths.seg, "colours", OFF_PALETTE,
                           f"{100 * off:.2f}% of pixels are not goliath palette colours")
    if "depth" not in missing:
        _check_depth(report, paths.depth, image_hw, paths.image)
    if "normal" not in missing:
        _check_normal(report, paths.normal, image_hw, paths.image)
    _check_camera(report, paths.camera, image_hw)
    _check_smplx(report, paths.smplx, num_expression)


def _check_depth(report: _Report, rel: str, image_hw: tuple[int, int] | None,
                 image_rel: str) -> None:
    depth = report.npy(rel)
    if depth is None:
        return
    if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
        report.add(rel, "array", WRONG_SHAPE,
                   f"expected float [H, W], got {depth.dtype} {list(depth.shape)}")
        return
    _check_size(report, rel, "array", depth.shape, image_hw, image_rel)
    if not np.isfinite(depth).all():
        report.add(rel, "array", NOT_FINITE, f"{int((~np.isfinite(depth)).sum())} NaN/inf pixels")
    elif (depth < 0).any():
        report.add(rel, "array", BAD_VALUE, f"{int((depth < 0).sum())} negative depths")


def _check_normal(report: _Report, rel: str, image_hw: tuple[int, int] | None,
                  image_rel: str) -> None:
    normal = report.npy(rel)
    if normal is None:
        return
    if normal.ndim != 3 or normal.shape[2] != 3 or not np.issubdtype(normal.dtype, np.floating):
        report.add(rel, "array", WRONG_SHAPE,
                   f"expected float [H, W, 3], got {normal.dtype} {list(normal.shape)}")
        return
    _check_size(report, rel, "array", normal.shape, image_hw, image_rel)
    if not np.isfinite(normal).all():
        report.add(rel, "array", NOT_FINITE, f"{int((~np.isfinite(normal)).sum())} NaN/inf values")
        return
    length = np.linalg.norm(normal, axis=-1)  # [H, W]
    bad = (length > 0) & (np.abs(length - 1.0) > NORMAL_TOLERANCE)
    if bad.any():
        report.add(rel, "array", BAD_VALUE,
                   f"{int(bad.sum())} pixels are neither unit normals nor 0 (invalid)")


def _check_camera(report: _Report, rel: str, image_hw: tuple[int, int] | None) -> None:
    data = report.json(rel)
    if data is None:
        return
    if not isinstance(data, dict):
        report.add(rel, "file", UNREADABLE, "expected a JSON object")
        return
    R = report.array_field(rel, data, "R", (3, 3))
    report.array_field(rel, data, "t", (3,))
    focal = report.array_field(rel, data, "focal", (2,))
    princpt = report.array_field(rel, data, "princpt", (2,))
    if R is not None:
        orthogonality = float(np.abs(R.T @ R - np.eye(3)).max())
        determinant = float(np.linalg.det(R))
        if orthogonality > ROTATION_TOLERANCE or abs(determinant - 1.0) > ROTATION_TOLERANCE:
            report.add(rel, "R", BAD_ROTATION, f"not a rotation (max |R^T R - I| = "
                       f"{orthogonality:.3g}, det = {determinant:.3g})")
    if focal is not None and (focal <= 0).any():
        report.add(rel, "focal", BAD_VALUE, f"focal lengths must be positive, got {focal.tolist()}")
    if princpt is not None and image_hw is not None:
        height, width = image_hw
        if not (0 <= princpt[0] <= width and 0 <= princpt[1] <= height):
            report.add(rel, "princpt", CAMERA_MISMATCH, f"principal point {princpt.tolist()} lies "
                       f"outside the {width}x{height} (WxH) image")


def _check_smplx(report: _Report, rel: str, num_expression: int | None) -> None:
    data = report.json(rel)
    if data is None:
        return
    if not isinstance(data, dict):
        report.add(rel, "file", UNREADABLE, "expected a JSON object")
        return
    data = canonical_smplx_keys(data)
    for key, (_, n) in SMPLX_POSE_KEYS.items():
        report.array_field(rel, data, key, (3 * n,), required=key in ("global_orient",
                                                                      "body_pose"))
    report.array_field(rel, data, "transl", (3,))
    report.array_field(rel, data, "expression", (num_expression,), required=False)


def _check_albedo(report: _Report) -> None:
    albedo = report.png(ALBEDO_RELPATH)
    if albedo is None:
        return
    image_rel = FramePaths(CAPTURED_SPLIT, INPUT_FRAME_INDEX).image
    image_path = report.root / image_rel
    if image_path.is_file():
        try:
            with Image.open(image_path) as image:
                image_hw = (image.height, image.width)
        except OSError:
            return
        _check_size(report, ALBEDO_RELPATH, "size", (albedo.height, albedo.width), image_hw,
                    image_rel)


def require_valid_subject(root: str | Path,
                          validate: Callable[[str | Path], list[Problem]] = validate_subject
                          ) -> None:
    """Raise SubjectError with the full report when the subject has any problem."""
    problems = validate(root)
    if problems:
        raise SubjectError(root, problems)

