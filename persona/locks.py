"""One writer per folder: an exclusive lock file that dies with its process (docs/ERRORS.md).

`persona fit` locks its run folder (RUN/.persona.lock), `persona synth --out DIR` the subject it
writes (DIR's sibling .DIR.persona.lock: synth replaces DIR by renaming a finished temporary
folder onto it) and `persona prep` the subject folder its stage writes into. A second command on
the same folder stops at once with one line naming the folder and the holder (PID, host,
command), or waits for it with `--wait` (synth, prep) or PERSONA_LOCK_WAIT=1 (any command).

The lock is `fcntl.flock` on an open file: the kernel drops it when the holder exits, however it
exits (kill -9 included), so a lock is never stale. The file holds the holder's description for
the message; it is removed on release (a file left by a killed holder is simply locked again).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from persona.errors import UserError

LOCK_NAME = ".persona.lock"  # the lock file inside a locked folder
WAIT_ENV = "PERSONA_LOCK_WAIT"  # 1/true/yes/on: wait for a held lock instead of stopping
WAIT_ENV_ON = ("1", "true", "yes", "on")
WAIT_POLL_S = 0.2  # seconds between tries while waiting for a held lock
# set (to a rank other than 0) in the extra processes of a multi-process (DDP) launch: they
# re-run the command line and must not lock the folder their rank-0 process already holds
RANK_ENV = ("RANK", "LOCAL_RANK", "NODE_RANK")


def wait_from_env(environ: dict[str, str] | None = None) -> bool:
    value = (os.environ if environ is None else environ).get(WAIT_ENV, "")
    return value.strip().lower() in WAIT_ENV_ON


def is_worker_process(environ: dict[str, str] | None = None) -> bool:
    """True in a non-zero rank of a multi-process launch (it must not take the lock)."""
    env = os.environ if environ is None else environ
    return any(env.get(name, "0") not in ("", "0") for name in RANK_ENV)


def holder_text(command: str) -> str:
    """What the lock file says about its holder: "PID 123 on host h (persona fit)"."""
    return f"PID {os.getpid()} on host {socket.gethostname()} ({command})"


def read_holder(lock_file: Path) -> str:
    """The holder's description, or "another process" when the file is empty or gone."""
    try:
        text = lock_file.read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    return text or "another process"


def held_message(folder: Path, lock_file: Path, command: str) -> str:
    return (f"{folder}: in use by {read_holder(lock_file)} (lock {lock_file}); wait for it to "
            f"finish, pass --wait or set {WAIT_ENV}=1 to wait, or use another folder")


def _try_lock(fd: int, wait: bool) -> bool:
    """flock(fd) exclusively; False when another process holds it and wait is False."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _same_file(fd: int, lock_file: Path) -> bool:
    """The locked descriptor is still the file at lock_file (a releasing holder removes it)."""
    try:
        on_disk = lock_file.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def acquire(lock_file: Path, folder: Path, command: str, wait: bool = False) -> int:
    """An open descriptor holding lock_file exclusively; UserError naming `folder` and the
    holder when another process holds it and wait is False."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd, wait=False):
            os.close(fd)
            if not wait:
                raise UserError(held_message(folder, lock_file, command))
            time.sleep(WAIT_POLL_S)
            continue
        if _same_file(fd, lock_file):  # else the holder removed it as we opened it: again
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, holder_text(command).encode("utf-8"))
    return fd


def release(fd: int, lock_file: Path) -> None:
    """Remove lock_file (while still holding it), then drop the lock."""
    with contextlib.suppress(FileNotFoundError):
        if _same_file(fd, lock_file):
            lock_file.unlink()
    os.close(fd)  # closing the last descriptor releases the flock


@contextlib.contextmanager
def locked(lock_file: str | os.PathLike, folder: str | os.PathLike, command: str,
           wait: bool | None = None) -> Iterator[Path]:
    """Hold lock_file exclusively for the block (wait None: PERSONA_LOCK_WAIT decides). A
    worker process of a multi-process launch does not lock (its rank 0 holds the lock)."""
    lock_file, folder = Path(lock_file), Path(folder)
    if is_worker_process():
        yield lock_file
        return
    fd = acquire(lock_file, folder, command, wait_from_env() if wait is None else wait)
    try:
        yield lock_file
    finally:
        release(fd, lock_file)


def lock_folder(folder: str | os.PathLike, command: str, wait: bool | None = None
                ) -> contextlib.AbstractContextManager[Path]:
    """Lock a folder written in place (a run folder, a subject a prep stage writes into):
    FOLDER/.persona.lock (the folder is created)."""
    folder = Path(folder)
    return locked(folder / LOCK_NAME, folder, command, wait)


def lock_replaced_folder(folder: str | os.PathLike, command: str, wait: bool | None = None
                         ) -> contextlib.AbstractContextManager[Path]:
    """Lock a folder that is built elsewhere and renamed into place (`persona synth --out`):
    the lock file is its sibling .NAME.persona.lock, which the rename leaves alone."""
    folder = Path(folder)
    return locked(folder.with_name(f".{folder.name}{LOCK_NAME}"), folder, command, wait)

