"""A motion as a numbered sequence of 3DGS PLY files: `persona export --motion M --out DIR/`.

DIR/frame_00000.ply ... (the standard 3DGS layout of persona/export/ply.py, one file per motion
frame: the avatar's own posed Gaussians, pose-dependent offsets applied) and DIR/sequence.json
(fps, frame count, motion, variant, file names). The folder appears whole or not at all: frames
are written into a temporary sibling folder that is renamed onto DIR at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from persona.atomic import replace_folder
from persona.export.ply import export_gaussians
from persona.export.poses import PosableAvatar, frame_count, posed_frame

SEQUENCE_FORMAT = "persona_ply_sequence"  # sequence.json "format"
SEQUENCE_VERSION = 1  # sequence.json "version"; bump on an incompatible change
SEQUENCE_INDEX = "sequence.json"  # the index file inside DIR
FRAME_PREFIX = "frame_"  # DIR/frame_00000.ply
MIN_FRAME_DIGITS = 5  # zero padding of frame numbers (more when a motion has >= 100000 frames)
PARTIAL_SUFFIX = ".partial"  # a temporary sibling folder being written
FOLDER_MODE = 0o755  # mkdtemp makes 0o700 folders; a finished sequence is readable by all


@dataclass
class SequenceResult:
    folder: Path  # the finished sequence folder
    num_frames: int
    num_gaussians: int
    fps: float


def frame_name(index: int, num_frames: int) -> str:
    """frame_00000.ply: zero-padded to MIN_FRAME_DIGITS (wider for long motions)."""
    digits = max(MIN_FRAME_DIGITS, len(str(max(num_frames - 1, 0))))
    return f"{FRAME_PREFIX}{index:0{digits}d}.ply"


def check_replaceable(out: Path) -> None:
    """A sequence may replace nothing, an empty folder or an earlier sequence (it has
    sequence.json), never a file or another folder with contents."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder (a PLY sequence is a folder)")
    if any(out.iterdir()) and not (out / SEQUENCE_INDEX).is_file():
        raise ValueError(f"--out {out}: a non-empty folder without {SEQUENCE_INDEX}; refusing "
                         "to replace it (choose a new folder or remove it)")


@contextmanager
def atomic_folder(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to `out`; on success it is renamed to `out` (an earlier
    sequence there is replaced), on any error it is removed and `out` is left as it was."""
    out = Path(out)
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=PARTIAL_SUFFIX))
    try:
        yield tmp
        tmp.chmod(FOLDER_MODE)
        replace_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sequence_index(motion_name: str, fps: float, files: list[str], num_gaussians: int,
                   variant: str) -> dict[str, object]:
    """The content of sequence.json."""
    return {"format": SEQUENCE_FORMAT, "version": SEQUENCE_VERSION, "motion": motion_name,
            "fps": fps, "num_frames": len(files), "num_gaussians": num_gaussians,
            "variant": variant, "layout": "3DGS PLY, binary little endian (docs/EXPORT.md)",
            "files": files}


def write_ply_sequence(avatar: PosableAvatar, motion, out: str | os.PathLike,
                       variant: str = "refined", max_frames: int | None = None
                       ) -> SequenceResult:
    """Pose the avatar at each frame of `motion` (a `persona.data.motions.Motion`: poses
    [T, 55, 3], transl [T, 3], expression [T, E] or None, fps, name) and write the sequence
    folder `out` atomically."""
    total = frame_count(motion.num_frames, max_frames, f"motion {motion.name!r}")
    files: list[str] = []
    num_gaussians = 0
    with atomic_folder(out) as folder:
        for t in range(total):
            gaussians, channels = posed_frame(avatar, motion.poses, motion.transl,
                                              motion.expression, t, variant)
            files.append(frame_name(t, total))
            export_gaussians(folder / files[-1], gaussians, channels, fmt="ply")
            num_gaussians = int(gaussians.means.shape[0])
        index = sequence_index(motion.name, float(motion.fps), files, num_gaussians, variant)
        (folder / SEQUENCE_INDEX).write_text(json.dumps(index, indent=1) + "\n")
    return SequenceResult(Path(out), total, num_gaussians, float(motion.fps))
