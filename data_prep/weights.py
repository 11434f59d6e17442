"""Which preprocessing weights the stage configs point at, and whether they are there
(`persona doctor`). Reads the default paths of `configs/prep/*.yaml`; loads nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "prep"  # the repository's configs
WEIGHT_KEYS = ("checkpoint", "svd_dir")  # init_args keys (and their suffixes) naming weights


def weight_settings(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(setting, path) of every weight a stage config names, nested blocks included."""
    found: list[tuple[str, str]] = []

    def walk(block: Any, prefix: str) -> None:
        if not isinstance(block, dict):
            return
        for key, value in block.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}.{key}")
            elif isinstance(value, str) and key.endswith(WEIGHT_KEYS):
                found.append((f"{prefix}.{key}", value))

    walk((config.get("model") or {}).get("init_args") or {}, "model.init_args")
    return found


def describe_prep_weights(config_dir: Path = CONFIG_DIR, cwd: Path | None = None
                          ) -> list[tuple[str, str]]:
    """Rows for `persona doctor`: one per weight file of each stage config."""
    cwd = Path.cwd() if cwd is None else cwd
    rows: list[tuple[str, str]] = []
    for path in sorted(config_dir.glob("*.yaml")):
        config = yaml.safe_load(path.read_text()) or {}
        for setting, value in weight_settings(config):
            target = Path(value) if Path(value).is_absolute() else cwd / value
            status = "present" if target.exists() else "missing (docs/PREPROCESSING.md#weights)"
            rows.append((f"prep {path.stem}", f"{setting} = {value}: {status}"))
    return rows
