"""Contact sheet of a synthetic subject: identity details, garment swing and simulated faults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from persona.data.subject import (
    ALBEDO_RELPATH,
    CAPTURED_SPLIT,
    TEST_SPLIT,
    FramePaths,
    float_to_uint8,
    read_frame_indices,
    read_image,
    read_seg,
    write_png,
)
from persona.render.projection import project_points

THUMB_HEIGHT = 256  # pixels: height of every tile
LABEL_HEIGHT = 14  # pixels: caption strip above each tile
TILES_PER_VIDEO = 4  # generated frames shown per video
DIFF_GAIN = 3.0  # |fault - clean| is shown multiplied by this


def _tile(image: np.ndarray, label: str) -> Image.Image:
    """float [H, W, 3] in [0, 1] or uint8 -> captioned PIL tile of THUMB_HEIGHT."""
    array = image if image.dtype == np.uint8 else float_to_uint8(image)
    picture = Image.fromarray(array)
    width = max(1, round(picture.width * THUMB_HEIGHT / picture.height))
    picture = picture.resize((width, THUMB_HEIGHT), Image.Resampling.LANCZOS)
    tile = Image.new("RGB", (width, THUMB_HEIGHT + LABEL_HEIGHT), (255, 255, 255))
    tile.paste(picture, (0, LABEL_HEIGHT))
    ImageDraw.Draw(tile).text((2, 1), label, fill=(0, 0, 0))
    return tile


def _crop_zoom(image: np.ndarray, centre: np.ndarray, half: int) -> np.ndarray:
    """A square crop [2 half, 2 half, 3] around (u, v), clamped inside the image."""
    h, w = image.shape[:2]
    u = int(np.clip(centre[0], half, w - half))
    v = int(np.clip(centre[1], half, h - half))
    return image[v - half:v + half, u - half:u + half]


def _project(camera: Any, point: Any) -> np.ndarray:
    return project_points(point[None], camera)[0][0].numpy()  # [2]


def contact_sheet(root: Path, body: Any, avatar: Any, true_poses: dict[str, list[Any]],
                  renderer: Any, config: Any) -> Path:
    """Write ``root/contact_sheet.png``; returns its path."""
    from persona.data.synth import front_camera, posed_means, render_frame

    rows: list[list[Image.Image]] = []
    image = read_image(root / FramePaths(CAPTURED_SPLIT, 0).image)
    normal = np.load(root / FramePaths(CAPTURED_SPLIT, 0).normal)
    camera = front_camera(config.width, config.height)
    pose = _captured_pose(root)
    means = posed_means(body, avatar, pose, config.garment)[0]
    head = means[avatar.regions["head"]].mean(0)
    logo = means[avatar.regions["logo"]].mean(0) if avatar.regions["logo"].any() else head
    half = max(8, config.height // 16)
    rows.append([
        _tile(image, "input (baked shading)"),
        _tile(read_image(root / ALBEDO_RELPATH), "albedo"),
        _tile(np.where(normal != 0, normal * np.array([0.5, -0.5, -0.5]) + 0.5, 1.0)
              .astype(np.float32), "normals"),
        _tile(read_seg(root / FramePaths(CAPTURED_SPLIT, 0).seg), "part-seg"),
        _tile(_crop_zoom(image, _project(camera, head), half), "face (zoom)"),
        _tile(_crop_zoom(image, _project(camera, logo), half), "logo (zoom)"),
    ])
    for split, poses in true_poses.items():
        indices = read_frame_indices(root, split)
        shown = sorted({indices[int(i)] for i in np.linspace(0, len(indices) - 1,
                                                              TILES_PER_VIDEO)})
        row = [_tile(read_image(root / FramePaths(split, i).image), f"{split}/{i}")
               for i in shown]
        last = shown[-1]
        clean = render_frame(body, avatar, poses[last], camera, renderer, config).image
        faulty = read_image(root / FramePaths(split, last).image)
        row.append(_tile(clean, f"clean GT of {last}"))
        row.append(_tile(np.clip(np.abs(faulty - clean) * DIFF_GAIN, 0, 1).astype(np.float32),
                         f"|faults| x{DIFF_GAIN:g}"))
        rows.append(row)
    test_indices = read_frame_indices(root, TEST_SPLIT)
    shown = [test_indices[int(i)] for i in np.linspace(0, len(test_indices) - 1,
                                                       min(6, len(test_indices)))]
    rows.append([_tile(read_image(root / FramePaths(TEST_SPLIT, i).image), f"test/{i}")
                 for i in sorted(set(shown))])
    width = max(sum(t.width for t in row) for row in rows)
    sheet = Image.new("RGB", (width, len(rows) * (THUMB_HEIGHT + LABEL_HEIGHT)),
                      (255, 255, 255))
    for r, row in enumerate(rows):
        x = 0
        for tile in row:
            sheet.paste(tile, (x, r * (THUMB_HEIGHT + LABEL_HEIGHT)))
            x += tile.width
    path = root / "contact_sheet.png"
    write_png(path, np.asarray(sheet))
    return path


def _captured_pose(root: Path) -> Any:
    import json

    from persona.data.subject import pose_from_json

    data = json.loads((root / FramePaths(CAPTURED_SPLIT, 0).smplx).read_text())
    return pose_from_json(data)
