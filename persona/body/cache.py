"""The on-disk cache of built bodies and skinning volumes: location, keys, atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

CACHE_ENV = "PERSONA_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/persona")


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """`cache_dir` if given, else $PERSONA_CACHE_DIR, else ~/.cache/persona."""
    chosen = cache_dir if cache_dir not in (None, "") else os.environ.get(CACHE_ENV)
    return Path(chosen if chosen else DEFAULT_CACHE_DIR).expanduser()


def settings_key(settings: dict[str, Any], length: int = 16) -> str:
    """A stable short hash of JSON-serialisable settings."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """A cheap identity of a file for cache keys: resolved path, size and mtime."""
    stat = Path(path).stat()
    return f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call write(temporary_path) in the target folder, then rename onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp" + path.suffix,
                                         dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; use the usual mode
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))
