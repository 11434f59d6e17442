"""Loading a script under experiments/ (not a package) as a module, for its tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def load_script(relative: str, name: str | None = None) -> ModuleType:
    """experiments/<relative> as a module named `name` (default: the file's stem), registered in
    sys.modules while it executes (dataclasses look their module up then)."""
    path = EXPERIMENTS / relative
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
