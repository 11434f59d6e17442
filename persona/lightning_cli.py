"""LightningCLI for PERSONA: `persona fit|validate|test|predict --config ...`.

Configs layer by repeating `--config` (later files override earlier ones) and accept dotted
overrides (`--model.subdivision_levels 1`); `--print_config` shows the resolved result. The
parser runs in omegaconf mode, so YAML may interpolate (`${trainer.default_root_dir}`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from persona.callbacks.loggers import make_loggers
from persona.data.datamodule import PersonaDataModule
from persona.system import PersonaSystem


class SaveAndLogConfig(SaveConfigCallback):
    """Writes RUN/config.yaml (LightningCLI's behaviour) and pushes the same resolved config to
    every logger, so W&B can group and filter runs by any key (model.deformer.mode, ...)."""

    def save_config(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": resolved})


class PersonaCLI(LightningCLI):
    """LightningCLI with the PERSONA system and data module as the defaults."""

    def before_instantiate_classes(self) -> None:
        # W&B is offline unless the user says otherwise; it must never block a run or a test.
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Default loggers and checkpoint folder live under `trainer.default_root_dir` (RUN):
        `logger: true` becomes W&B (offline unless WANDB_MODE=online) + CSV in RUN, and a
        ModelCheckpoint without dirpath writes to RUN/checkpoints."""
        trainer = super().instantiate_trainer(**kwargs)
        root = Path(trainer.default_root_dir)
        for callback in trainer.callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = str(root / "checkpoints")
        return trainer

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Trainer:
        if config.get("logger") in (None, True):
            root = config.get("default_root_dir") or os.getcwd()
            config["logger"] = make_loggers(root, offline=None)
        return super()._instantiate_trainer(config, callbacks)


BASE_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "base.yaml"


def default_config_files() -> list[str]:
    """configs/base.yaml (the method's defaults) is always the first layer when present."""
    return [str(BASE_CONFIG)] if BASE_CONFIG.is_file() else []


def run_lightning_cli(argv: list[str] | None, run: bool = True) -> PersonaCLI:
    """Run one LightningCLI subcommand (fit, validate, test, predict) on argv; with run=False,
    argv has no subcommand and the CLI only instantiates the model, data and trainer."""
    parser_kwargs: dict[str, Any] = {"parser_mode": "omegaconf",
                                     "default_config_files": default_config_files()}
    if run:
        parser_kwargs = {sub: dict(parser_kwargs) for sub in ("fit", "validate", "test",
                                                              "predict")}
    arguments = sys.argv[1:] if argv is None else argv
    # Only `fit` writes RUN/config.yaml: test/validate/predict runs read it and must not
    # overwrite it with their own subcommand options.
    save_config = SaveAndLogConfig if run and arguments[:1] == ["fit"] else None
    program = sys.argv[:1]
    if argv is not None:  # called in-process: LightningCLI must not also see sys.argv
        sys.argv, saved = program, sys.argv
    try:
        cli = PersonaCLI(
            PersonaSystem,
            PersonaDataModule,
            args=argv,
            run=run,
            parser_kwargs=parser_kwargs,
            save_config_callback=save_config,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
        )
    finally:
        if argv is not None:
            sys.argv = saved
    if run:
        finish_wandb_runs(cli.trainer)
    return cli


def finish_wandb_runs(trainer: Trainer) -> None:
    """Close the W&B runs a command opened, so that its offline run file is complete and the
    next command in the same process (the demo runs several) starts a run of its own."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()
