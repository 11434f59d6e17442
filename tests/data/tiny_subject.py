"""A hand-made tiny subject (no body model, no renderer) for the format, validator and loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from persona.body.types import Identity, PoseParams
from persona.data.palette import labels_to_rgb
from persona.data.subject import (
    ALBEDO_RELPATH,
    CAPTURED_SPLIT,
    FRAME_LIST_NAME,
    FramePaths,
    camera_to_json,
    float_to_uint8,
    pose_to_json,
    write_frame_list,
    write_identity,
    write_json,
    write_npy,
    write_png,
)
from persona.render.types import Camera

TINY_WIDTH, TINY_HEIGHT = 24, 32
TINY_NUM_BETAS, TINY_NUM_EXPRESSION = 10, 10
# split -> frame indices written (generated splits list only some of them, as the authors' do)
TINY_SPLITS = {"captured": [0], "generated_0": [0, 1, 2], "generated_1": [0, 1], "test": [0, 1]}


def write_tiny_frame(root: Path, split: str, index: int, rng: np.random.Generator) -> None:
    paths = FramePaths(split, index)
    h, w = TINY_HEIGHT, TINY_WIDTH
    image = rng.random((h, w, 3)).astype(np.float32)
    # the frame's identity is readable from pixel (0, 0): red = split id, green = index
    image[0, 0] = [len(split) / 255.0, index / 255.0, 0.0]
    write_png(root / paths.image, float_to_uint8(image))
    mask = np.zeros((h, w), np.uint8)
    mask[4:28, 6:18] = 255
    write_png(root / paths.mask, mask)
    depth = np.where(mask > 0, 4.0 + 0.01 * index, 0.0).astype(np.float32)
    write_npy(root / paths.depth, depth)
    normal = np.zeros((h, w, 3), np.float32)
    normal[mask > 0] = [0.0, 0.0, -1.0]
    write_npy(root / paths.normal, normal)
    labels = np.where(mask > 0, 21, 0)
    write_png(root / paths.seg, labels_to_rgb(labels))
    focal = 2000.0 * w / 576.0
    camera = Camera(torch.tensor([[focal, 0, w / 2], [0, focal, h / 2], [0, 0, 1.0]]),
                    torch.eye(3), torch.zeros(3), w, h)
    write_json(root / paths.camera, camera_to_json(camera))
    full_pose = 0.1 * torch.from_numpy(rng.standard_normal((1, 55, 3))).float()
    pose = PoseParams(full_pose, torch.zeros(1, TINY_NUM_EXPRESSION),
                      torch.tensor([[0.0, 0.1 * index, 4.5]]))
    write_json(root / paths.smplx, pose_to_json(pose))


def make_tiny_subject(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    write_json(root / "subject.json", {
        "format_version": 1, "name": "tiny-handmade",
        "body": {"kind": "procedural", "gender": "neutral", "num_betas": TINY_NUM_BETAS,
                 "num_expression": TINY_NUM_EXPRESSION}})
    write_identity(root, Identity(torch.zeros(TINY_NUM_BETAS), None, torch.zeros(55, 3)))
    for split, indices in TINY_SPLITS.items():
        for index in indices:
            write_tiny_frame(root, split, index, rng)
        if split != CAPTURED_SPLIT:
            write_frame_list(root / split / FRAME_LIST_NAME, indices)
    albedo = rng.random((TINY_HEIGHT, TINY_WIDTH, 3))
    write_png(root / ALBEDO_RELPATH, float_to_uint8(albedo))
    return root
