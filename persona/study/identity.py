"""What makes two runs the same run: their resolved config, without where they live.

`resolve_config(argv)` is the config `persona fit argv` would write to RUN/config.yaml (through
LightningCLI's --print_config, without fitting); `config_hash` hashes it without LOCATION_KEYS, so
a sweep recognises a finished point wherever its folder is.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shlex
from pathlib import Path
from typing import Any

import yaml

from persona.atomic import atomic_write_bytes
from persona.errors import UserError

# resolved-config keys that only say where a run lives or how chatty it is, not what it computes
LOCATION_KEYS: tuple[tuple[str, ...], ...] = (
    ("trainer", "default_root_dir"), ("data", "subject_dir"), ("ckpt_path",),
)


def normalise_config(config: dict) -> dict:
    """The resolved config without LOCATION_KEYS (a copy; the input is left alone)."""
    config = json.loads(json.dumps(config))
    for path in LOCATION_KEYS:
        node: Any = config
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return config


def config_hash(config: dict) -> str:
    """sha256 of the normalised config as canonical JSON (key order irrelevant)."""
    text = json.dumps(normalise_config(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def resolve_config(fit_args: list[str]) -> dict:
    """The config `persona fit *fit_args` would write to RUN/config.yaml, without fitting."""
    from persona.cli import main as persona

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            status = persona(["fit", *fit_args, "--print_config"])
        except SystemExit as exit_info:
            status = exit_info.code
    if status not in (0, None):
        raise UserError(f"persona fit {shlex.join(fit_args)}: the config does not resolve "
                        f"(exit {status}); run it alone to see why")
    config = yaml.safe_load(printed.getvalue())
    if not isinstance(config, dict):
        raise UserError(f"persona fit {shlex.join(fit_args)} --print_config printed no config")
    return config


def write_json_atomic(path: Path, data: Any) -> None:
    """JSON through persona.atomic.atomic_write_bytes (temporary name, then rename)."""
    atomic_write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode())


def read_json(path: Path) -> Any | None:
    """A JSON file's content, None when it is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
