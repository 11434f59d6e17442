"""Atomic writes: a file or a folder appears at its name complete or not at all.

A file is written under a hidden temporary name in its own folder, then renamed onto its name
(`atomic_write`); a folder is renamed in over an earlier one (`replace_folder`). A crash or kill
leaves the earlier version (and at worst a hidden leftover that `TEMPORARY_NAME` recognises),
never half a file."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPLACED_SUFFIX = ".replaced"  # the earlier folder's name while the new one is renamed in
TEMPORARY_MARK = ".tmp-"  # between the target's name and the writer's pid in a temporary's name
FILE_MODE = 0o666  # what open() asks for before the umask (mkstemp makes 0o600)
UMASK_FIELD = "Umask:"  # the umask's line in /proc/self/status (Linux 4.7 on)
PROC_STATUS = Path("/proc/self/status")
OCTAL = 8
# a temporary of atomic_write, ".{name}.tmp-{pid}-{random}{suffix}" (random: mkstemp's letters,
# digits and underscores; suffix: the target's), or of the earlier writers, ".{name}.tmp-{pid}";
# match whole names (fullmatch): one left behind is a write killed before its rename
TEMPORARY_NAME = re.compile(r"\..+\.tmp-\d+(?:-[a-z0-9_]+(?:\.[^.]+)?)?")


def _swapped_umask() -> int:
    """The umask read the only portable way, by setting it and back (not thread-safe: a file
    another thread creates in between gets mode bits from umask 0)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


IMPORT_UMASK = _swapped_umask()  # read once, while importing (no other thread writes yet)


def proc_umask(status: str) -> int | None:
    """The umask in the text of /proc/self/status; None when it has no Umask line."""
    for line in status.splitlines():
        if line.startswith(UMASK_FIELD):
            return int(line[len(UMASK_FIELD):].strip(), OCTAL)
    return None


def current_umask() -> int:
    """The process's umask, read without changing it from /proc/self/status where the kernel
    shows it; elsewhere the one at import."""
    try:
        mask = proc_umask(PROC_STATUS.read_text())
    except OSError:
        mask = None
    return IMPORT_UMASK if mask is None else mask


def usual_mode() -> int:
    """The mode a file created by open() gets: FILE_MODE less the umask's bits."""
    return FILE_MODE & ~current_umask()


def temporary_prefix(path: Path) -> str:
    """The start of a temporary's name for `path`: hidden, the target's name, this pid."""
    return f".{path.name}{TEMPORARY_MARK}{os.getpid()}-"


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call write(temporary) and rename the temporary onto `path`; `path`.

    The temporary is a new empty file in `path`'s folder (made with the parents), unique to the
    call (threads and processes may write the same path at once: the last rename wins), named
    ".{name}.tmp-{pid}-{random}{suffix}" so writers that infer the format from the suffix
    (np.save, savefig, PIL) work. It gets the usual mode (0o666 less the umask) before the
    rename; when anything raises (a KeyboardInterrupt too) it is removed and an earlier file at
    `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path),
                                    suffix=path.suffix)
    os.close(handle)  # write() opens it by name (an external program may write it)
    temporary = Path(name)
    try:
        write(temporary)
        os.chmod(temporary, usual_mode())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """`data` to `path` through `atomic_write`; `path`."""
    return atomic_write(path, lambda temporary: temporary.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """`text` to `path` through `atomic_write`, its newlines as they are (newline=""; what
    CSV needs); `path`."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """`obj` as indented JSON (one space, a final newline) to `path` through `atomic_write`;
    `path`."""
    return atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


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
