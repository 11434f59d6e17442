"""The default loggers: W&B (offline unless configured) and a CSV logger beside it."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_PROJECT = "persona"  # W&B project when neither the argument nor WANDB_PROJECT is set


def wandb_offline_by_default(offline: bool | None) -> bool:
    """offline=None: offline unless WANDB_MODE is "online" (W&B never contacted by default)."""
    if offline is not None:
        return offline
    return os.environ.get("WANDB_MODE", "offline").lower() != "online"


def make_loggers(save_dir: str | os.PathLike, project: str | None = None,
                 entity: str | None = None, offline: bool | None = True,
                 name: str | None = None) -> list:
    """[WandbLogger, CSVLogger] writing under save_dir.

    project/entity: arguments, else $WANDB_PROJECT / $WANDB_ENTITY (project default "persona").
    offline: True (default) never touches the network; None follows $WANDB_MODE (online only
    when it says "online"); False logs online (needs `wandb login`).
    The W&B run starts lazily, on the first logged value.
    """
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    is_offline = wandb_offline_by_default(offline)
    wandb_logger = WandbLogger(
        save_dir=str(save_dir), project=project or os.environ.get("WANDB_PROJECT")
        or DEFAULT_PROJECT, entity=entity or os.environ.get("WANDB_ENTITY"), name=name,
        offline=is_offline, log_model=False)
    csv_logger = CSVLogger(save_dir=str(save_dir), name="csv")
    return [wandb_logger, csv_logger]
