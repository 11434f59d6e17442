"""Replacing a finished output folder without a moment in which neither version exists."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

REPLACED_SUFFIX = ".replaced"  # the earlier folder's name while the new one is renamed in


def replace_folder(new: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Rename the finished folder `new` to `out` (a sibling). An earlier `out` is first renamed
    aside and removed only once `new` is in place, so a crash or kill at any moment leaves either
    the earlier folder at `out` or the new one (and at worst a hidden leftover), never neither;
    when the rename fails the earlier folder is put back and the error raised."""
    new, out = Path(new), Path(out)
    if not out.exists():
        os.rename(new, out)
        return out
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=REPLACED_SUFFIX))
    os.replace(out, old)  # onto an empty folder: a rename
    try:
        os.rename(new, out)
    except OSError:
        os.replace(old, out)  # put the earlier folder back
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out
