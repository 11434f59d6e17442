"""Re-create a trained avatar from its run: the saved config plus a checkpoint.

Parameters of `PersonaSystem` are built from the subject (`build_from_datamodule`), so loading a
checkpoint means: parse RUN/config.yaml exactly as `persona fit` did, build, then load the state
dict. Used by `persona export`, `persona animate` and the demo.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import yaml

MODEL_CONFIG_KEYS = ("seed_everything", "trainer", "model", "data")
GPU_ONLY_RENDERERS = ("auto", "gsplat")  # renderer names that may pick gsplat (CUDA only)
# trainer settings of the CLI that only instantiates the model (nothing runs on it)
LOADER_TRAINER = {"accelerator": "cpu", "devices": 1, "precision": "32-true"}


def run_config_for(ckpt: str | Path) -> Path:
    """RUN/config.yaml for RUN/checkpoints/<name>.ckpt (the layout `persona fit` writes)."""
    ckpt = Path(ckpt)
    for folder in (ckpt.parent, ckpt.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    raise FileNotFoundError(f"{ckpt}: no config.yaml beside it or in its parent folder; pass "
                            "--config RUN/config.yaml (written by `persona fit`)")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """"auto"/None -> cuda when available, else cpu; anything else as torch.device."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def renderer_for_device(name: str, device: torch.device) -> str:
    """The model's renderer for an avatar on `device`: gsplat draws CUDA tensors only, so
    "auto" and "gsplat" become "torch" off CUDA (on CUDA "auto" stays gsplat-when-available)."""
    if device.type != "cuda" and name in GPU_ONLY_RENDERERS:
        return "torch"
    return name


def load_trained_system(ckpt: str | Path, config: str | Path | None = None,
                        device: str | torch.device = "cpu"):
    """(PersonaSystem in eval mode on device, its PersonaDataModule) from a checkpoint.

    The system is built on `device` (its colour initialisation renders there) and the
    checkpoint's tensors are loaded onto `device` ("auto": cuda when available)."""
    from persona.lightning_cli import run_lightning_cli

    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    device = resolve_device(device)
    config = Path(config) if config is not None else run_config_for(ckpt)
    settings = yaml.safe_load(config.read_text())
    # keep what builds the model; drop `persona fit` subcommand options (ckpt_path, ...)
    settings = {k: v for k, v in settings.items() if k in MODEL_CONFIG_KEYS}
    model = settings.setdefault("model", {}) or {}
    settings["model"] = model
    model["renderer"] = renderer_for_device(model.get("renderer", "auto"), device)
    # The trainer only completes the CLI here (placement is explicit): a CPU one never asks
    # for a GPU, so a paper.yaml run (accelerator: gpu) loads on a CPU-only machine too.
    settings["trainer"] = {**(settings.get("trainer") or {}), **LOADER_TRAINER}
    with tempfile.TemporaryDirectory() as folder:
        resolved = Path(folder) / "config.yaml"
        resolved.write_text(yaml.safe_dump(settings))
        cli = run_lightning_cli(["--config", str(resolved), "--trainer.logger", "false"],
                                run=False)
    system, datamodule = cli.model, cli.datamodule
    system.build_from_datamodule(datamodule, device=device)
    checkpoint = torch.load(ckpt, map_location=device, weights_only=False)
    if "state_dict" not in checkpoint:
        raise ValueError(f"{ckpt}: not a Lightning checkpoint (no 'state_dict')")
    system.load_state_dict(checkpoint["state_dict"])
    return system.to(device).eval(), datamodule
