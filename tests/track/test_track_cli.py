"""`persona track` end to end on small real inputs (the BSD-3 sports2d crop of
tests/data_prep/real, README there) and bad input: each bad input is one line naming the file
and nothing is written, or a reported fallback. Needs the BlazePose files (skips without)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from test_track_video import write_video_with_gap
from track_helpers import BLAZEPOSE_DIR, REAL_PHOTO, SPORTS2D_VIDEO, needs_pose_models

from persona.cli import main
from persona.data.motions import load_motion
from persona.track.output import read_track_report
from persona.track.overlay import SHEET_TILE_HEIGHT

pytestmark = needs_pose_models
FAST = ["--body", "procedural", "--quiet",  # the procedural body builds in < 1 s
        "--weights", str(BLAZEPOSE_DIR)]


def _photo() -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(REAL_PHOTO)), cv2.COLOR_BGR2RGB)


def _save(path: Path, image: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def _track(capsys, *argv: str) -> tuple[int, str]:
    status = main(["track", *argv, *FAST])
    return status, capsys.readouterr().err


def _one_line_error(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("persona track: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_a_photo_becomes_a_one_frame_motion_with_an_overlay(tmp_path: Path, capsys) -> None:
    out, sheet = tmp_path / "m.npz", tmp_path / "s.png"
    status, err = _track(capsys, str(REAL_PHOTO), "--out", str(out), "--sheet", str(sheet))
    assert status == 0, err
    motion = load_motion(out)
    assert motion.num_frames == 1 and motion.fps == 30.0
    assert np.abs(motion.poses[0, 1:22]).max() > 0.05  # a fitted pose, not the rest pose
    missing, dropped, report = read_track_report(out)
    assert missing == [] and dropped == [] and report["max_people"] == 1
    assert report["reprojection"]["median_px"] < 12.0  # px on a 287 px high photo
    assert cv2.imread(str(sheet)).shape[0] == SHEET_TILE_HEIGHT


def test_not_a_video_is_one_line_and_writes_nothing(tmp_path: Path, capsys) -> None:
    notes = tmp_path / "notes.mp4"
    notes.write_text("hello\n")
    status, err = _track(capsys, str(notes), "--out", str(tmp_path / "m.npz"))
    assert status == 1
    _one_line_error(err, "notes.mp4", "not a readable video")
    assert list(tmp_path.iterdir()) == [notes]


def test_no_person_is_one_line_and_writes_nothing(tmp_path: Path, capsys) -> None:
    empty = _save(tmp_path / "wall.png", np.full((256, 256, 3), 128, np.uint8))
    status, err = _track(capsys, str(empty), "--out", str(tmp_path / "m.npz"),
                         "--overlay", str(tmp_path / "o.mp4"))
    assert status == 1
    _one_line_error(err, "wall.png", "no person found")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wall.png"]


def test_a_tiny_person_is_one_line_and_writes_nothing(tmp_path: Path, capsys) -> None:
    status, err = _track(capsys, str(REAL_PHOTO), "--out", str(tmp_path / "m.npz"),
                         "--min-person-px", "2000")
    assert status == 1
    _one_line_error(err, REAL_PHOTO.name, "too small", "--min-person-px 2000")
    assert not (tmp_path / "m.npz").exists()


def test_two_people_report_the_choice(tmp_path: Path, capsys) -> None:
    photo = _photo()
    canvas = np.full((photo.shape[0], photo.shape[1] * 2 + 40, 3), 200, np.uint8)
    canvas[:, :photo.shape[1]] = photo
    canvas[:, -photo.shape[1]:] = photo[:, ::-1]  # her mirror image beside her
    pair = _save(tmp_path / "pair.png", canvas)
    out = tmp_path / "m.npz"
    status, err = _track(capsys, str(pair), "--out", str(out))
    assert status == 0, err
    assert "pair.png: 2 people found over the clip" in err and "the most prominent" in err
    _, _, report = read_track_report(out)
    assert report["max_people"] == 2
    assert report["person"] == {"rule": "most prominent", "index": 0, "num_tracks": 2,
                                "frames_detected": 1, "first_frame": 0}
    status, err = _track(capsys, str(pair), "--out", str(out), "--person-index", "2")
    assert status == 1
    _one_line_error(err, "--person-index 2", "2 person(s) were found")
    assert report["reprojection"]["median_px"] < 15.0  # one of them is fitted, not a mix


def test_dropped_frames_are_reported_and_interpolated(tmp_path: Path, capsys) -> None:
    photo = _photo()[:286]  # even height for H.264
    frames = [np.roll(photo, 2 * i, axis=1) for i in range(8)]
    video = write_video_with_gap(tmp_path / "gap.mp4", frames, 10.0, (3, 4))
    out = tmp_path / "m.npz"
    status, err = _track(capsys, str(video), "--out", str(out))
    assert status == 0, err
    assert "gap.mp4: 2 (3, 4) dropped frame(s)" in err
    motion = load_motion(out)
    assert motion.num_frames == 8 and motion.fps == pytest.approx(10.0)
    missing, dropped, _ = read_track_report(out)
    assert dropped == [3, 4] and set(dropped) <= set(missing)
    assert np.isfinite(motion.poses).all() and np.abs(motion.poses[3, 1:22]).max() > 0.05


def test_a_tracked_video_plays_in_animate(tmp_path: Path, capsys, body) -> None:
    import imageio.v3 as iio
    from test_track_output import MeshAvatar

    from persona.export.cli import animate_avatar
    from persona.render import make_renderer

    photo = _photo()[:286]
    frames = [np.roll(photo, 3 * i, axis=1) for i in range(5)]
    video = write_video_with_gap(tmp_path / "clip.mp4", frames, 10.0, (9, 9))  # no gap
    out = tmp_path / "clip.npz"
    status, err = _track(capsys, str(video), "--out", str(out))
    assert status == 0, err
    motion = load_motion(out)
    path, timing = animate_avatar(MeshAvatar(body), motion.poses, motion.transl, None,
                                  tmp_path / "played.mp4", make_renderer("torch"), motion.fps,
                                  48, 64)
    played = iio.imread(path)
    assert played.shape == (5, 64, 48, 3) and timing.frames == 5
    assert played[:, 20:44, 16:32].mean() < 235  # the body is on screen, not lost off-frame


@pytest.mark.skipif(not SPORTS2D_VIDEO.is_file(),
                    reason=f"{SPORTS2D_VIDEO} missing: python -m persona.track.sports2d install")
def test_the_sports2d_video_start(tmp_path: Path, capsys) -> None:
    out = tmp_path / "walk.npz"
    status, err = _track(capsys, str(SPORTS2D_VIDEO), "--out", str(out), "--max-frames", "12")
    assert status == 0, err
    motion = load_motion(out)
    assert motion.num_frames == 12 and motion.fps == pytest.approx(30.0)
    missing, _, report = read_track_report(out)
    assert len(missing) <= 2 and report["reprojection"]["median_px"] < 15.0
