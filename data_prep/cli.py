"""`persona prep --config configs/prep/<stage>.yaml --data.subject_dir DIR [...]`.

A LightningCLI without subcommands: ``model.class_path`` picks the stage (any ``PrepStage``
subclass), ``data`` is :class:`data_prep.stage.PrepData`, and the command always runs Lightning
``predict`` with ``return_predictions=False`` (the stage's ``SubjectWriter`` writes the files).
Several GPUs: ``--trainer.devices N --trainer.strategy ddp``; several machines add
``--trainer.num_nodes M`` (one process per GPU on every node, e.g. SLURM's ``srun``:
experiments/slurm/). Ranks are Lightning's global ones: frames are dealt over all M x N
processes and only global rank 0 locks the subject and prints the summary.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningCLI

from data_prep.stage import PrepData, PrepStage, remove_stale_temporaries
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


def subject_lock(subject: Path, global_rank: int, wait: bool | None
                 ) -> contextlib.AbstractContextManager[Any]:
    """The subject's one-writer lock, held by global rank 0 only: the other ranks of the run
    (other GPUs, other nodes; srun starts them all at once, none sets RANK) write their frames
    under it. A missing folder is the stage's own error, so nothing is locked then."""
    if global_rank != 0 or not subject.is_dir():
        return contextlib.nullcontext()
    return lock_folder(subject, "persona prep", wait)


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
    one; ``persona prep photo PHOTO SUBJECT`` runs the whole CPU chain); returns the exit
    status."""
    if argv and argv[0] == "init":
        from data_prep.init_subject import main as init_main

        return init_main(list(argv[1:]))
    if argv and argv[0] == "photo":  # the whole CPU chain from a photo (data_prep/photo.py)
        from data_prep.photo import main as photo_main

        return photo_main(list(argv[1:]))
    wait = WAIT_FLAG in argv or None  # None: PERSONA_LOCK_WAIT decides
    cli = build_cli([arg for arg in argv if arg != WAIT_FLAG])
    subject = Path(cli.datamodule.subject_dir)
    with subject_lock(subject, cli.trainer.global_rank, wait):
        if cli.trainer.global_rank == 0 and subject.is_dir():  # under the lock, before any
            removed = remove_stale_temporaries(subject)  # rank writes: what kills left
            if removed:
                print(f"persona prep: removed {len(removed)} temporary file(s) left in "
                      f"{subject} by an interrupted run", file=sys.stderr)
        cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    frames = cli.datamodule.frames
    if cli.trainer.is_global_zero and frames is not None:
        print(f"persona prep: {type(cli.model).__name__} on {cli.datamodule.subject_dir}: "
              f"{len(frames)} item(s) processed, {getattr(frames, 'num_skipped', 0)} "
              "already done")
    return 0


if __name__ == "__main__":  # `python -m data_prep.cli ...` (DDP re-runs this command line)
    sys.exit(main(sys.argv[1:]))
