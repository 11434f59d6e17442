"""Reading the input of `persona track` (persona/track/video.py): timestamps, fps, dropped
frames, photos, and files that are neither."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from persona.errors import UserError
from persona.track.video import frame_grid, iter_frames, probe


def test_frame_grid_finds_gaps_in_the_timestamps() -> None:
    times = np.array([0.0, 100, 200, 300, 700, 800])  # ms: 400-600 missing
    fps, slots, dropped = frame_grid(times, fallback_fps=25.0)
    assert fps == pytest.approx(10.0)
    assert slots.tolist() == [0, 1, 2, 3, 7, 8] and dropped == [4, 5, 6]
    fps, slots, dropped = frame_grid(np.array([0.0, 33.4, 66.6, 100.1]), 25.0)  # jitter: no gap
    assert fps == pytest.approx(30.0, rel=0.01) and dropped == [] and slots.tolist() == [0, 1,
                                                                                        2, 3]
    fps, slots, dropped = frame_grid(np.array([0.0]), 25.0)
    assert fps == 25.0 and slots.tolist() == [0] and dropped == []


def write_video_with_gap(path: Path, frames: list[np.ndarray], fps: float,
                         drop: tuple[int, int]) -> Path:
    """An H.264 mp4 of frames at fps with frames drop[0]..drop[1] removed, their timestamps
    kept (variable frame rate, as a phone that dropped frames writes)."""
    import imageio_ffmpeg

    full = path.with_name(path.stem + "_full.mp4")
    height, width = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(str(full), (width, height), fps=fps, codec="libx264",
                                         pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
                                         macro_block_size=2, ffmpeg_log_level="error")
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
                    "-i", str(full), "-vf", f"select='not(between(n\\,{drop[0]}\\,{drop[1]}))'",
                    "-fps_mode", "passthrough", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    str(path)], check=True)
    full.unlink()
    return path


def test_a_video_with_dropped_frames_keeps_its_frame_rate(tmp_path: Path) -> None:
    frames = [np.full((48, 64, 3), 20 * i, np.uint8) for i in range(10)]
    video = write_video_with_gap(tmp_path / "gap.mp4", frames, 10.0, (4, 6))
    info = probe(video)
    assert info.fps == pytest.approx(10.0) and info.num_read == 7
    assert info.dropped == [4, 5, 6] and info.num_frames == 10
    decoded = list(iter_frames(info))
    assert len(decoded) == 7 and decoded[0].shape == (48, 64, 3)
    assert abs(int(decoded[4].mean()) - 140) < 8  # the frame after the gap is frame 7
    assert probe(video, max_frames=3).num_frames == 3


def test_photos_and_files_that_are_neither(tmp_path: Path) -> None:
    import cv2

    photo = tmp_path / "one.png"
    cv2.imwrite(str(photo), np.zeros((20, 30, 3), np.uint8))
    info = probe(photo)
    assert info.is_image and (info.width, info.height, info.num_frames) == (30, 20, 1)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n")
    with pytest.raises(UserError, match="notes.mp4: not a readable video"):
        probe(text)
    fake_photo = tmp_path / "fake.jpg"
    fake_photo.write_text("nope")
    with pytest.raises(UserError, match="fake.jpg: not a readable image"):
        probe(fake_photo)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        probe(tmp_path / "missing.mp4")
