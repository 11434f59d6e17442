"""The fitted body drawn over the input: an mp4 (streamed, atomic) and a contact sheet PNG."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from persona.atomic import atomic_write, atomic_write_bytes

OVERLAY_MAX_HEIGHT = 720  # px: taller inputs are scaled down for the overlay video
OVERLAY_QUALITY = 7  # imageio-ffmpeg's 0-10 quality scale
FITTED_RGB = (40, 220, 60)  # skeleton of the fitted body
INTERPOLATED_RGB = (255, 150, 0)  # the same on a frame without landmarks (interpolated)
DETECTED_RGB = (230, 30, 30)  # BlazePose's keypoints
LINE_PX = 3  # skeleton line width at 720 px height
DOT_PX = 3  # keypoint dot radius at 720 px height
SHEET_TILES = 6  # frames on a contact sheet
SHEET_TILE_HEIGHT = 280  # px per tile (6 tiles of a walk: a PNG under 500 KB)
SHEET_MARGIN = 0.15  # crop margin around the fitted body, fraction of its box
# COCO body + feet skeleton (pairs of keypoints 0-22)
SKELETON = ((5, 7), (7, 9), (6, 8), (8, 10), (5, 6), (11, 12), (5, 11), (6, 12), (11, 13),
            (13, 15), (12, 14), (14, 16), (15, 19), (15, 17), (16, 22), (16, 20), (0, 1), (0, 2),
            (1, 3), (2, 4))


def draw_frame(image: np.ndarray, fitted: np.ndarray, detected: np.ndarray | None,
               interpolated: bool, scale: float = 1.0) -> np.ndarray:
    """uint8 RGB [H, W, 3] + fitted pixels [23, 2] + detected [23, 3] (x, y, score) or None ->
    a drawn copy; coordinates are multiplied by `scale` (the image is already scaled)."""
    out = np.ascontiguousarray(image.copy())
    unit = max(out.shape[0] / OVERLAY_MAX_HEIGHT, 0.5)
    width, radius = max(int(LINE_PX * unit), 1), max(int(DOT_PX * unit), 1)
    colour = INTERPOLATED_RGB if interpolated else FITTED_RGB
    points = np.round(fitted * scale).astype(int)
    for a, b in SKELETON:
        cv2.line(out, tuple(points[a]), tuple(points[b]), colour, width, cv2.LINE_AA)
    if detected is not None:
        for x, y, score in detected:
            if score > 0:
                cv2.circle(out, (int(round(x * scale)), int(round(y * scale))), radius,
                           DETECTED_RGB, -1, cv2.LINE_AA)
    if interpolated:
        cv2.putText(out, "interpolated", (10, int(30 * unit)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.8 * unit, colour, max(int(2 * unit), 1), cv2.LINE_AA)
    return out


def overlay_scale(height: int) -> float:
    return min(1.0, OVERLAY_MAX_HEIGHT / height)


def write_overlay(path: str | Path, frames: Iterable[np.ndarray], slots: np.ndarray,
                  fitted: np.ndarray, detected: np.ndarray, interpolated: np.ndarray,
                  fps: float) -> Path:
    """Stream the drawn frames (decoded frame i sits at grid slot slots[i]; fitted [T, 23, 2],
    detected [T, 23, 3], interpolated [T] bool) into an H.264 mp4, atomically."""
    return atomic_write(path, lambda temporary: stream_overlay(
        temporary, frames, slots, fitted, detected, interpolated, fps, Path(path)))


def stream_overlay(target: Path, frames: Iterable[np.ndarray], slots: np.ndarray,
                   fitted: np.ndarray, detected: np.ndarray, interpolated: np.ndarray,
                   fps: float, name: Path) -> None:
    """Encode the drawn frames (see write_overlay) into the mp4 `target`; ValueError naming
    `name` when there is no frame."""
    import imageio_ffmpeg

    writer = None
    for slot, image in zip(slots, frames, strict=False):
        scale = overlay_scale(image.shape[0])
        size = (int(round(image.shape[1] * scale)) // 2 * 2,
                int(round(image.shape[0] * scale)) // 2 * 2)
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        drawn = draw_frame(small, fitted[slot], None if interpolated[slot] else
                           detected[slot], bool(interpolated[slot]), scale)
        if writer is None:
            writer = imageio_ffmpeg.write_frames(
                str(target), size, fps=float(fps), codec="libx264", pix_fmt_in="rgb24",
                pix_fmt_out="yuv420p", quality=OVERLAY_QUALITY, macro_block_size=2,
                ffmpeg_log_level="error")
            writer.send(None)
        writer.send(np.ascontiguousarray(drawn))
    if writer is None:
        raise ValueError(f"{name}: no frame to write")
    writer.close()


def sheet_slots(valid_slots: list[int], count: int = SHEET_TILES) -> list[int]:
    """`count` slots evenly spread over the given ones."""
    if len(valid_slots) <= count:
        return list(valid_slots)
    picks = np.linspace(0, len(valid_slots) - 1, count).round().astype(int)
    return [valid_slots[i] for i in picks]


def crop_tile(image: np.ndarray, fitted: np.ndarray, height: int = SHEET_TILE_HEIGHT
              ) -> np.ndarray:
    """The region around the fitted body [23, 2] (plus a margin), resized to `height` rows."""
    low, high = fitted.min(0), fitted.max(0)
    margin = SHEET_MARGIN * (high - low).max()
    x0, y0 = np.floor(np.maximum(low - margin, 0)).astype(int)
    x1 = int(min(np.ceil(high[0] + margin), image.shape[1]))
    y1 = int(min(np.ceil(high[1] + margin), image.shape[0]))
    crop = image[y0:max(y1, y0 + 2), x0:max(x1, x0 + 2)]
    width = max(int(round(crop.shape[1] * height / crop.shape[0])), 1)
    return cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA)


def write_sheet(path: str | Path, tiles: list[np.ndarray]) -> Path:
    """Tiles (uint8 RGB, same height) side by side -> PNG, atomically."""
    if not tiles:
        raise ValueError(f"{path}: no frame for the contact sheet")
    sheet = np.concatenate(tiles, axis=1)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise ValueError(f"{path}: PNG encoding failed")
    return atomic_write_bytes(path, encoded.tobytes())
