"""LightningCLI for PERSONA: `persona fit|validate|test|predict --config ...`.

Configs layer by repeating `--config` (later files override earlier ones) and accept dotted
overrides (`--model.subdivision_levels 1`); `--print_config` shows the resolved result. The
parser runs in omegaconf mode, so YAML may interpolate (`${trainer.default_root_dir}`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NoReturn

import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from persona.callbacks.loggers import make_loggers
from persona.data.datamodule import PersonaDataModule
from persona.errors import suggestion
from persona.locks import lock_folder
from persona.runs import (
    EVAL_CHECKPOINT_KEYS,
    RESUME_CHECKPOINT_KEYS,
    STATE_DICT_ERROR,
    load_checkpoint,
    model_mismatch_error,
)
from persona.system import PersonaSystem

PROG = "persona"  # the name in usage lines and `tip: ... --help`
# ckpt_path values Lightning resolves itself (not files); "registry:..." too
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")
# With deterministic algorithms on, torch also fills every new tensor with NaN / the largest
# integer (a check for reads of uninitialised memory, not needed for reproducible results);
# off: ~5 % of a demo training step on this CPU, the same numbers (docs/RENDERING.md)
FILL_UNINITIALIZED_MEMORY = False
# subcommand -> what its --ckpt_path must hold (fit resumes: optimiser and loop state too)
CKPT_KEYS: dict[str, Sequence[str]] = {"fit": RESUME_CHECKPOINT_KEYS,
                                       "validate": EVAL_CHECKPOINT_KEYS,
                                       "test": EVAL_CHECKPOINT_KEYS,
                                       "predict": EVAL_CHECKPOINT_KEYS}


class SuggestingArgumentParser(LightningArgumentParser):
    """LightningCLI's parser; an unknown key (on the command line or in a --config file) is
    also answered with the nearest valid keys."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        parser = getattr(ex, "subcommand_parser", None) or self
        hint = suggestion(message, parser_keys(parser))
        super().error(f"{message}; {hint}" if hint else message, ex)


def parser_keys(parser: LightningArgumentParser) -> list[str]:
    """The dotted keys a (subcommand) parser accepts."""
    return [action.dest for action in parser._actions
            if action.dest != "help" and not action.dest.endswith(".help")]


def is_checkpoint_file(ckpt_path: Any) -> bool:
    """A local checkpoint file (not "last"/"best"/registry names, not a URL)."""
    if not isinstance(ckpt_path, (str, Path)):
        return False
    text = str(ckpt_path)
    return text.partition(":")[0] not in LIGHTNING_CKPT_NAMES and "://" not in text


def check_ckpt_path(ckpt_path: Any, required_keys: Sequence[str],
                    weights_only: bool | None = None) -> None:
    """UserError naming --ckpt_path when it is missing, truncated, corrupt or lacks
    `required_keys`; cheap (the tensors are memory-mapped, not read)."""
    if is_checkpoint_file(ckpt_path):
        load_checkpoint(ckpt_path, map_location="cpu", required_keys=required_keys,
                        weights_only=weights_only, mmap=True)


class SaveAndLogConfig(SaveConfigCallback):
    """Writes RUN/config.yaml (LightningCLI's behaviour) and pushes the same resolved config to
    every logger, so W&B can group and filter runs by any key (model.deformer.mode, ...)."""

    def save_config(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": resolved})


class PersonaCLI(LightningCLI):
    """LightningCLI with the PERSONA system and data module as the defaults. `fit` holds its
    run folder's lock (persona/locks.py) from parsing on, in `locks` (the caller closes it)."""

    def __init__(self, *args: Any, locks: ExitStack | None = None, **kwargs: Any) -> None:
        self.locks = locks
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """One seed per run, as in the authors' code: `seed_everything` also seeds the data
        module's sampling order (`data.seed` follows it; without the link, runs of different
        seeds drew the same frames in the same order, and a variant without random init, e.g.
        deformer off, came out bitwise identical across seeds)."""
        parser.link_arguments("seed_everything", "data.seed")

    def before_instantiate_classes(self) -> None:
        # W&B is offline unless the user says otherwise; it must never block a run or a test.
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        if self.config.get("subcommand") == "fit" and self.locks is not None:
            root = self.config["fit"]["trainer"].get("default_root_dir") or os.getcwd()
            self.locks.enter_context(lock_folder(root, "persona fit"))

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then check --ckpt_path before Lightning reads it (right after parsing, for
        the model's hyperparameters; then again to restore the weights)."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand in CKPT_KEYS:
            settings = self.config[subcommand]
            check_ckpt_path(settings.get("ckpt_path"), CKPT_KEYS[subcommand],
                            settings.get("weights_only"))

    # Trainer.fit/validate/test/predict run through these (LightningCLI calls a CLI method of
    # the subcommand's name when there is one).
    def fit(self, **kwargs: Any) -> None:
        self._run_checked("fit", kwargs)

    def validate(self, **kwargs: Any) -> None:
        self._run_checked("validate", kwargs)

    def test(self, **kwargs: Any) -> None:
        self._run_checked("test", kwargs)

    def predict(self, **kwargs: Any) -> None:
        self._run_checked("predict", kwargs)

    def _run_checked(self, subcommand: str, kwargs: dict[str, Any]) -> None:
        """trainer.<subcommand>(**kwargs); a --ckpt_path whose tensors do not fit the model
        (another subject, body or settings) is a UserError."""
        ckpt = kwargs.get("ckpt_path")
        try:
            getattr(self.trainer, subcommand)(**kwargs)
        except RuntimeError as error:
            if not is_checkpoint_file(ckpt) or STATE_DICT_ERROR not in str(error):
                raise
            raise model_mismatch_error(ckpt, None, error) from error

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Default loggers and checkpoint folder live under `trainer.default_root_dir` (RUN):
        `logger: true` becomes W&B (offline unless WANDB_MODE=online) + CSV in RUN, and a
        ModelCheckpoint without dirpath writes to RUN/checkpoints. With trainer.deterministic,
        torch's filling of every new tensor (FILL_UNINITIALIZED_MEMORY) is set off."""
        trainer = super().instantiate_trainer(**kwargs)
        if torch.are_deterministic_algorithms_enabled():  # trainer.deterministic: true
            torch.utils.deterministic.fill_uninitialized_memory = FILL_UNINITIALIZED_MEMORY
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
        parser_kwargs["prog"] = PROG
    arguments = sys.argv[1:] if argv is None else argv
    # Only `fit` writes RUN/config.yaml: test/validate/predict runs read it and must not
    # overwrite it with their own subcommand options. Every subcommand logs its resolved config
    # (a test's W&B run groups by config keys like the fit's).
    save_config = SaveAndLogConfig if run else None
    save_config_kwargs = ({"overwrite": True} if arguments[:1] == ["fit"]
                          else {"save_to_log_dir": False})
    program = sys.argv[:1]
    if argv is not None:  # called in-process: LightningCLI must not also see sys.argv
        sys.argv, saved = program, sys.argv
    try:
        with ExitStack() as locks:  # `fit`: the run folder's lock, held to the end
            cli = PersonaCLI(
                PersonaSystem,
                PersonaDataModule,
                args=argv,
                run=run,
                parser_kwargs=parser_kwargs,
                parser_class=SuggestingArgumentParser,
                save_config_callback=save_config,
                save_config_kwargs=save_config_kwargs,
                seed_everything_default=0,
                locks=locks if run else None,
            )
            if run:
                finish_wandb_runs(cli.trainer)
    finally:
        if argv is not None:
            sys.argv = saved
    return cli


def finish_wandb_runs(trainer: Trainer) -> None:
    """Close the W&B runs a command opened, so that its offline run file is complete and the
    next command in the same process (the demo runs several) starts a run of its own."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()
