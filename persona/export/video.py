"""H.264 mp4 writing, turntable cameras and rendering a sequence of Gaussians to frames."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from persona.atomic import atomic_write
from persona.render.types import Camera, ChannelGroup, Gaussians, RenderSettings

WORLD_UP = (0.0, 1.0, 0.0)  # SMPL-X world: y up
DEFAULT_FOV_DEG = 30.0  # vertical field of view of auto-framed cameras
FRAME_MARGIN = 1.15  # auto framing leaves 15 % around the bounding box
WHITE = (1.0, 1.0, 1.0)


def pad_to_even(frames: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] -> [T, H', W', 3] with H', W' even (the last row/column repeated)."""
    _, h, w, _ = frames.shape
    if h % 2 == 0 and w % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_mp4(path: str | os.PathLike, frames: np.ndarray | Sequence[np.ndarray],
              fps: float, quality: int = 8) -> Path:
    """Write uint8 frames [T, H, W, 3] as H.264 yuv420p mp4 (dimensions padded to even) through
    imageio-ffmpeg's bundled ffmpeg; atomic (a temporary name, then a rename).

    quality: imageio-ffmpeg's 0-10 scale (10 best).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"write_mp4 {path}: frames must be [T, H, W, 3] with T >= 1, "
                         f"got {list(frames.shape)}")
    if frames.dtype != np.uint8:
        raise ValueError(f"write_mp4 {path}: frames must be uint8, got {frames.dtype}")
    if not fps > 0:
        raise ValueError(f"write_mp4 {path}: fps must be > 0, got {fps}")
    frames = pad_to_even(frames)
    return atomic_write(path, lambda temporary: encode_mp4(temporary, frames, fps, quality))


def encode_mp4(target: Path, frames: np.ndarray, fps: float, quality: int) -> None:
    """Encode checked uint8 frames [T, H, W, 3] (H, W even) into the mp4 `target`."""
    import imageio_ffmpeg

    _, h, w, _ = frames.shape
    writer = imageio_ffmpeg.write_frames(
        str(target), (w, h), fps=float(fps), codec="libx264", pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p", quality=quality, macro_block_size=2, ffmpeg_log_level="error")
    writer.send(None)  # start the generator
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def look_at(position: Tensor, target: Tensor, up: Sequence[float] = WORLD_UP) -> tuple[Tensor,
                                                                                      Tensor]:
    """World-to-camera (R [3, 3], t [3]) of an OpenCV camera at `position` looking at `target`."""
    forward = target - position  # [3]
    forward = forward / forward.norm()
    up_vector = torch.tensor(up, dtype=position.dtype)
    right = torch.linalg.cross(forward, up_vector)
    if right.norm() < 1e-8:
        raise ValueError("look_at: the viewing direction is parallel to the up vector")
    right = right / right.norm()
    down = torch.linalg.cross(forward, right)  # OpenCV y points down in the image
    R = torch.stack([right, down, forward])  # rows: camera axes in world coordinates
    return R, -R @ position


def intrinsics(width: int, height: int, fov_deg: float) -> Tensor:
    """K [3, 3] with square pixels, vertical field of view fov_deg, principal point centred."""
    focal = 0.5 * height / math.tan(math.radians(fov_deg) / 2)
    return torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])


def framing_distance(points: Tensor, width: int, height: int,
                     fov_deg: float = DEFAULT_FOV_DEG, margin: float = FRAME_MARGIN) -> tuple[
                         Tensor, float]:
    """(centre [3], distance) so a camera on a horizontal circle around the bounding box of
    points [N, 3] sees all of it from any azimuth."""
    low, high = points.min(0).values, points.max(0).values  # [3]
    centre = (low + high) / 2
    half_height = (high[1] - low[1]).item() / 2
    half_width = ((high[0] - low[0]) ** 2 + (high[2] - low[2]) ** 2).sqrt().item() / 2
    tan_y = math.tan(math.radians(fov_deg) / 2)
    tan_x = tan_y * width / height
    distance = max(half_height / tan_y, half_width / tan_x) * margin + half_width
    return centre, distance


def turntable_cameras(centre: Tensor, distance: float, num_frames: int, width: int, height: int,
                      fov_deg: float = DEFAULT_FOV_DEG, elevation_deg: float = 0.0,
                      start_azimuth_deg: float = 0.0) -> list[Camera]:
    """num_frames cameras on a circle around the vertical axis through `centre`, all looking at
    it; azimuth 0 looks from +z (the SMPL-X front), one full turn without repeating the start."""
    K = intrinsics(width, height, fov_deg)
    cameras = []
    elevation = math.radians(elevation_deg)
    for i in range(num_frames):
        azimuth = math.radians(start_azimuth_deg) + 2 * math.pi * i / num_frames
        offset = torch.tensor([math.sin(azimuth) * math.cos(elevation), math.sin(elevation),
                               math.cos(azimuth) * math.cos(elevation)]) * distance
        position = centre.float() + offset
        R, t = look_at(position, centre.float())
        cameras.append(Camera(K=K.clone(), R=R, t=t, width=width, height=height))
    return cameras


def to_uint8(image: Tensor) -> np.ndarray:
    """[H, W, 3] float in [0, 1] -> uint8 numpy (rounded)."""
    return (image.detach().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def wait_for_device(device: torch.device) -> None:
    """Block until the device's queued kernels finished (CUDA; a no-op elsewhere), so that a
    wall-clock reading covers the work it timed."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class RenderTiming:
    frames: int
    seconds: float

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else math.inf


def render_frames(items: Iterable[tuple[Gaussians, Tensor, Camera]], renderer,
                  background: Sequence[float] = WHITE) -> tuple[np.ndarray, RenderTiming]:
    """Render each (Gaussians, colours [N, 3] in [0, 1], Camera) and composite over background.

    renderer: a `persona.render.types.Renderer`; its "rgb" is composited on black, so the frame is
    rgb + (1 - alpha) * background. Returns uint8 frames [T, H, W, 3] and the render timing
    (time inside renderer.render only).
    """
    frames, seconds = [], 0.0
    settings = RenderSettings(depth=False)
    for gaussians, colours, camera in items:
        start = time.perf_counter()
        with torch.no_grad():
            out = renderer.render(gaussians, camera, {"rgb": ChannelGroup(colours)}, settings)
        wait_for_device(out["rgb"].device)  # CUDA kernels run asynchronously
        seconds += time.perf_counter() - start
        colour = torch.tensor(tuple(background), dtype=out["rgb"].dtype,
                              device=out["rgb"].device)
        frames.append(to_uint8(out["rgb"] + (1.0 - out["alpha"]) * colour))
    if not frames:
        raise ValueError("render_frames: nothing to render")
    return np.stack(frames), RenderTiming(len(frames), seconds)
