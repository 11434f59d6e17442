"""`persona doctor`: what this environment can run, and why not the rest."""

from __future__ import annotations

import importlib
import os
import platform


def _version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - report any import failure as text
        return f"not importable ({type(exc).__name__}: {exc})"
    return str(getattr(mod, "__version__", "installed"))


def report() -> list[tuple[str, str]]:
    """(item, status) rows describing packages, devices, bodies and weights."""
    import torch

    rows = [("python", platform.python_version())]
    for module in ("torch", "lightning", "smplx", "torchmetrics", "wandb", "lpips", "gsplat",
                   "anny", "diffusers", "segment_anything"):
        rows.append((module, _version(module)))
    rows.append(("cuda", torch.cuda.get_device_name(0) if torch.cuda.is_available()
                 else "not available: CPU renderer only, gsplat tests skipped"))
    from persona.cli import OPENMP_USER_CHOICE

    waits = ", ".join(f"{name}={os.environ.get(name, 'unset')}" for name in OPENMP_USER_CHOICE)
    rows.append(("cpu threads", f"{torch.get_num_threads()} torch threads; OpenMP waits: {waits} "
                 "(docs/RENDERING.md, 'Threads')"))
    try:
        from persona.body.loader import describe_bodies

        rows += describe_bodies()
    except ImportError as exc:
        rows.append(("bodies", f"body loader unavailable: {exc}"))
    try:
        from persona.metrics.lpips_weights import describe_weights

        rows += describe_weights()
    except ImportError as exc:
        rows.append(("lpips weights", f"unavailable: {exc}"))
    try:
        from data_prep.weights import describe_prep_weights

        rows += describe_prep_weights()
    except ImportError as exc:
        rows.append(("prep weights", f"unavailable: {exc}"))
    return rows


def main(argv: list[str]) -> int:
    for item, status in report():
        print(f"{item:<22} {status}")
    return 0
