"""`persona prep --config configs/prep/<stage>.yaml --data.subject_dir DIR [...]`.

A LightningCLI without subcommands: ``model.class_path`` picks the stage (any ``PrepStage``
subclass), ``data`` is :class:`data_prep.stage.PrepData`, and the command always runs Lightning
``predict`` with ``return_predictions=False`` (the stage's ``SubjectWriter`` writes the files).
Several GPUs: ``--trainer.devices N --trainer.strategy ddp``.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningCLI

from data_prep.stage import PrepData, PrepStage
from persona.locks import lock_folder

WAIT_FLAG = "--wait"  # wait while another command writes the subject (default: stop at once)

# Trainer defaults for preprocessing: no logger, no checkpoints, quiet (a config may override).
PREP_TRAINER_DEFAULTS: dict[str, Any] = {
    "accelerator": "auto",
    "devices": 1,
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


class PrepCLI(LightningCLI):
    """LightningCLI for preprocessing stages: instantiates the stage, data and trainer only."""


def build_cli(argv: list[str]) -> PrepCLI:
    """Parse argv (no subcommand) and instantiate model, data module and trainer."""
    # LightningCLI must read only argv. sys.argv is restored before predict: a DDP launch
    # re-runs the original command line (`persona prep ...`) in each worker.
    sys.argv, saved = sys.argv[:1], sys.argv
    try:
        return PrepCLI(
            PrepStage,
            PrepData,
            subclass_mode_model=True,
            args=argv,
            run=False,
            trainer_defaults=PREP_TRAINER_DEFAULTS,
            save_config_callback=None,
            seed_everything_default=0,
            parser_kwargs={"parser_mode": "omegaconf"},
        )
    finally:
        sys.argv = saved


UNION_ERRORS = "Errors:\n"  # jsonargparse lists each candidate type's failure after this line
NOT_NONE = "Expected a <class 'NoneType'>"  # the Optional[...] candidate: noise


def concise_message(error: Exception) -> str:
    """The stage's own message out of jsonargparse's wrapping of a failed instantiation (it
    reports every candidate type of ``model``); other errors as they are."""
    text = str(error)
    if UNION_ERRORS not in text:
        return text
    bullets = [line.strip()[2:] for line in text.split(UNION_ERRORS, 1)[1].splitlines()
               if line.strip().startswith("- ") and NOT_NONE not in line]
    return "\n".join(bullets) or text


def main(argv: list[str]) -> int:
    """`persona prep ...`; bad input and missing files end with a one-paragraph message naming
    the file or setting and exit status 1 (no traceback)."""
    try:
        return _run(argv)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"persona prep: error: {concise_message(error)}", file=sys.stderr)
        return 1


def _run(argv: list[str]) -> int:
    """Run one stage's ``predict`` over a subject (``persona prep init PHOTO SUBJECT`` starts
    one); returns the exit status."""
    if argv and argv[0] == "init":
        from data_prep.init_subject import main as init_main

        return init_main(list(argv[1:]))
    wait = WAIT_FLAG in argv or None  # None: PERSONA_LOCK_WAIT decides
    cli = build_cli([arg for arg in argv if arg != WAIT_FLAG])
    subject = Path(cli.datamodule.subject_dir)
    # the stage writes into the subject: one writer at a time (a missing folder is the
    # stage's own error)
    lock = (lock_folder(subject, "persona prep", wait) if subject.is_dir()
            else contextlib.nullcontext())
    with lock:
        cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    frames = cli.datamodule.frames
    if cli.trainer.is_global_zero and frames is not None:
        print(f"persona prep: {type(cli.model).__name__} on {cli.datamodule.subject_dir}: "
              f"{len(frames)} item(s) processed, {getattr(frames, 'num_skipped', 0)} "
              "already done")
    return 0


if __name__ == "__main__":  # `python -m data_prep.cli ...` (DDP re-runs this command line)
    sys.exit(main(sys.argv[1:]))
