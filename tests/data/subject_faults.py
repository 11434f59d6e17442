"""Corruptions of a valid subject, one per fault kind, with the problem each must produce.

Used on the hand-made tiny subject (tests/data/test_subject.py) and on a synthetic subject
(tests/data/test_synth.py). Each fault returns the (file, field, kind) it expects reported.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from persona.data import subject as S
from persona.data.subject import FramePaths, read_frame_indices

Expected = tuple[str, str, str]


def _frame(root: Path, split: str, position: int) -> FramePaths:
    return FramePaths(split, read_frame_indices(root, split)[position])


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def missing_mask(root: Path) -> Expected:
    paths = _frame(root, "generated_0", 0)
    (root / paths.mask).unlink()
    return paths.mask, "file", S.MISSING_FILE


def unreadable_depth(root: Path) -> Expected:
    paths = _frame(root, "generated_0", 1)
    (root / paths.depth).write_bytes(b"not an npy file")
    return paths.depth, "file", S.UNREADABLE


def small_mask(root: Path) -> Expected:
    paths = _frame(root, "generated_1", 0)
    with Image.open(root / paths.mask) as mask:
        mask.resize((mask.width // 2, mask.height // 2)).save(root / paths.mask)
    return paths.mask, "size", S.SIZE_MISMATCH


def nan_body_pose(root: Path) -> Expected:
    paths = _frame(root, "generated_1", 1)

    def edit(data: dict) -> None:
        data["body_pose"][5] = float("nan")
    _edit_json(root / paths.smplx, edit)
    return paths.smplx, "body_pose", S.NOT_FINITE


def short_hand_pose(root: Path) -> Expected:
    paths = FramePaths("captured", 0)

    def edit(data: dict) -> None:
        data["right_hand_pose"] = data["right_hand_pose"][:30]
    _edit_json(root / paths.smplx, edit)
    return paths.smplx, "right_hand_pose", S.WRONG_SHAPE


def listed_but_absent(root: Path) -> Expected:
    rel = f"generated_0/{S.FRAME_LIST_NAME}"
    with open(root / rel, "a") as handle:
        handle.write("999\n")
    return rel, "frame 999", S.MISSING_FRAME


def unknown_body(root: Path) -> Expected:
    def edit(data: dict) -> None:
        data["body"]["kind"] = "smpl-h"
    _edit_json(root / "subject.json", edit)
    return "subject.json", "body.kind", S.UNKNOWN_BODY


def camera_without_princpt(root: Path) -> Expected:
    paths = _frame(root, "test", 0)

    def edit(data: dict) -> None:
        del data["princpt"]
    _edit_json(root / paths.camera, edit)
    return paths.camera, "princpt", S.MISSING_FIELD


def scaled_rotation(root: Path) -> Expected:
    paths = _frame(root, "test", 1)

    def edit(data: dict) -> None:
        data["R"] = (2.0 * np.asarray(data["R"])).tolist()
    _edit_json(root / paths.camera, edit)
    return paths.camera, "R", S.BAD_ROTATION


def principal_point_outside(root: Path) -> Expected:
    paths = _frame(root, "generated_1", 1)

    def edit(data: dict) -> None:
        data["princpt"] = [data["princpt"][0] * 5.0, data["princpt"][1]]
    _edit_json(root / paths.camera, edit)
    return paths.camera, "princpt", S.CAMERA_MISMATCH


def off_palette_seg(root: Path) -> Expected:
    paths = FramePaths("captured", 0)
    with Image.open(root / paths.seg) as seg:
        pixels = np.asarray(seg.convert("RGB")).copy()
    pixels[:4, :4] = [1, 2, 3]
    Image.fromarray(pixels).save(root / paths.seg)
    return paths.seg, "colours", S.OFF_PALETTE


def rgb_mask(root: Path) -> Expected:
    paths = _frame(root, "generated_0", 2)
    with Image.open(root / paths.mask) as mask:
        mask.convert("RGB").save(root / paths.mask)
    return paths.mask, "mode", S.BAD_IMAGE_MODE


def nan_depth(root: Path) -> Expected:
    paths = _frame(root, "test", 0)
    depth = np.load(root / paths.depth)
    depth[0, 0] = np.nan
    np.save(root / paths.depth, depth)
    return paths.depth, "array", S.NOT_FINITE


def long_normals(root: Path) -> Expected:
    paths = _frame(root, "generated_0", 0)
    normal = np.load(root / paths.normal)
    normal[:] = [0.0, 0.0, 2.0]
    np.save(root / paths.normal, normal)
    return paths.normal, "array", S.BAD_VALUE


def short_betas(root: Path) -> Expected:
    rel = "smplx_optimized/shape_param.json"

    def edit(data: dict) -> None:
        data["betas"] = data["betas"][:5]
    _edit_json(root / rel, edit)
    return rel, "betas", S.WRONG_SHAPE


def garbage_frame_list_line(root: Path) -> Expected:
    rel = f"generated_1/{S.FRAME_LIST_NAME}"
    with open(root / rel, "a") as handle:
        handle.write("abc\n")
    line = len((root / rel).read_text().splitlines())
    return rel, f"line {line}", S.BAD_FRAME_LIST


def missing_albedo(root: Path) -> Expected:
    (root / S.ALBEDO_RELPATH).unlink()
    return S.ALBEDO_RELPATH, "file", S.MISSING_FILE


def future_format_version(root: Path) -> Expected:
    def edit(data: dict) -> None:
        data["format_version"] = 99
    _edit_json(root / "subject.json", edit)
    return "subject.json", "format_version", S.UNSUPPORTED_VERSION


FAULTS: tuple[Callable[[Path], Expected], ...] = (
    missing_mask, unreadable_depth, small_mask, nan_body_pose, short_hand_pose,
    listed_but_absent, unknown_body, camera_without_princpt, scaled_rotation,
    principal_point_outside, off_palette_seg, rgb_mask, nan_depth, long_normals, short_betas,
    garbage_frame_list_line, missing_albedo, future_format_version,
)
