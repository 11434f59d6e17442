"""Reading the input of `persona track`: a video (frames + timestamps) or a single image.

The frame rate comes from the timestamps (the median step between presentation timestamps), not
from the container's average rate, which a video with dropped frames under-reports. A step
longer than DROP_TOLERANCE steps means frames are missing there: they are counted, placed on the
regular time grid and reported (the tracker interpolates them).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from persona.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
IMAGE_FPS = 30.0  # frames per second written for a one-frame motion made from a photo
DROP_TOLERANCE = 1.5  # a timestamp step > this x the regular step means dropped frames
MS_PER_SECOND = 1000.0


@dataclass
class VideoInfo:
    """What the tracker knows about its input once it is read."""

    path: Path
    width: int
    height: int
    fps: float  # frames per second of the regular time grid
    num_read: int  # frames decoded
    timestamps_ms: np.ndarray  # [num_read] presentation time of each decoded frame
    grid_index: np.ndarray  # [num_read] int: each decoded frame's slot on the regular grid
    dropped: list[int] = field(default_factory=list)  # grid slots with no decoded frame
    is_image: bool = False

    @property
    def num_frames(self) -> int:
        """Frames of the regular grid (decoded + dropped)."""
        return int(self.grid_index[-1]) + 1 if len(self.grid_index) else 0


def _open_video(path: Path) -> cv2.VideoCapture:
    """A capture that can decode at least one frame, or a UserError naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (check the path)")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise UserError(f"{path}: not a readable video or image (give an mp4/mov/avi/webm "
                        f"video or a png/jpg photo)")
    return capture


def read_image(path: Path) -> np.ndarray | None:
    """uint8 RGB [H, W, 3] of an image file, or None when it is not a readable image."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def frame_grid(timestamps_ms: np.ndarray, fallback_fps: float
               ) -> tuple[float, np.ndarray, list[int]]:
    """Timestamps [N] (ms, increasing) -> (fps, grid slot of each frame [N] int, dropped slots).

    The regular step is the median timestamp step (1000 / fallback_fps with < 2 frames); a step of
    k regular steps (k > DROP_TOLERANCE, rounded) leaves k - 1 dropped slots before the frame."""
    times = np.asarray(timestamps_ms, dtype=np.float64)
    if times.size < 2 or not np.all(np.diff(times) > 0):
        return fallback_fps, np.arange(times.size), []
    steps = np.diff(times)  # [N - 1]
    step = float(np.median(steps))
    slots = np.zeros(times.size, dtype=np.int64)
    dropped: list[int] = []
    for i, gap in enumerate(steps, start=1):
        advance = int(round(gap / step)) if gap > DROP_TOLERANCE * step else 1
        slots[i] = slots[i - 1] + advance
        dropped.extend(range(slots[i - 1] + 1, slots[i]))
    return MS_PER_SECOND / step, slots, dropped


def probe(path: str | Path, max_frames: int | None = None) -> VideoInfo:
    """Read every timestamp (the first max_frames only, when given) -> VideoInfo; UserError for
    a file that is neither a video nor an image, or a video without a decodable frame."""
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (check the path)")
        image = read_image(path)
        if image is None:
            raise UserError(f"{path}: not a readable image (re-save it as PNG or JPEG)")
        height, width = image.shape[:2]
        return VideoInfo(path, width, height, IMAGE_FPS, 1, np.zeros(1), np.zeros(1, np.int64),
                         is_image=True)
    capture = _open_video(path)
    try:
        container_fps = float(capture.get(cv2.CAP_PROP_FPS)) or IMAGE_FPS
        times, width, height = [], 0, 0
        while max_frames is None or len(times) < max_frames:
            ok = capture.grab()
            if not ok:
                break
            times.append(float(capture.get(cv2.CAP_PROP_POS_MSEC)))
            if not width:
                width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
                height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        capture.release()
    if not times:
        raise UserError(f"{path}: not a readable video or image (no frame could be decoded)")
    fps, slots, dropped = frame_grid(np.array(times), container_fps)
    return VideoInfo(path, width, height, fps, len(times), np.array(times), slots, dropped)


def iter_frames(info: VideoInfo) -> Iterator[np.ndarray]:
    """The decoded frames, uint8 RGB [H, W, 3], in order (info.num_read of them)."""
    if info.is_image:
        image = read_image(info.path)
        if image is None:
            raise UserError(f"{info.path}: not a readable image")
        yield image
        return
    capture = _open_video(info.path)
    try:
        for _ in range(info.num_read):
            ok, frame = capture.read()
            if not ok:
                raise UserError(f"{info.path}: the video ended early while decoding (corrupt?)")
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()
