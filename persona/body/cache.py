"""The on-disk cache of built bodies and skinning volumes: location and keys (its files are
written with persona.atomic)."""

from __future__ import annotations

import hashlib
import json
import os
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


