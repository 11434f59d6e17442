"""The `persona` command.

`persona fit|validate|test|predict --config ...` is LightningCLI (Lightning 2.x installs no
`lightning` command of its own, so this is the project's `lightning fit --config`). The other
subcommands are small tools, each living next to the code it drives; they are imported lazily so
that `persona --help` stays fast.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping

# torch's OpenMP worker threads (libgomp) wait for work between parallel regions. Measured on
# this 2-core CPU (docs/RENDERING.md, "Threads"): sleeping at once (PASSIVE) costs ~30 % of a
# demo training step on a quiet machine; libgomp's own default (spin ~3 ms) made a render 10x
# slower while other processes loaded the cores; a short spin takes the first without the
# second's collapse. A user who sets either variable keeps their choice.
OPENMP_USER_CHOICE = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
OPENMP_DEFAULTS = {
    "GOMP_SPINCOUNT": "1000",  # spin iterations (~10 us) before a waiting thread sleeps
    "OMP_WAIT_POLICY": "PASSIVE",  # and no spin at all with more threads than free CPUs
}


def openmp_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The OpenMP settings to add to `environ`: OPENMP_DEFAULTS, or nothing when the user set
    OMP_WAIT_POLICY or GOMP_SPINCOUNT. Read by libgomp when torch loads: apply before that."""
    if any(name in environ for name in OPENMP_USER_CHOICE):
        return {}
    return dict(OPENMP_DEFAULTS)


os.environ.update(openmp_environment(os.environ))

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")

# subcommand -> (module, function, one-line help). Each function takes argv (list[str]) -> int.
TOOLS: dict[str, tuple[str, str, str]] = {
    "synth": ("persona.data.synth_cli", "main", "build a ground-truth synthetic subject"),
    "subject": ("persona.data.subject_cli", "main", "`subject check DIR`: validate a subject"),
    "body": ("persona.body.cli", "main", "`body check|build|show`: body models"),
    "export": ("persona.export.cli", "export_main",
               "export an avatar: 3DGS PLY/SPZ/npz, a PLY per frame, a bundle"),
    "animate": ("persona.export.cli", "animate_main", "render an avatar along a motion to mp4"),
    "track": ("persona.track.cli", "main", "a video of a person -> a motion npz for `animate`"),
    "view": ("persona.export.viewer", "main",
             "write and serve a web viewer of an avatar (run, checkpoint or bundle)"),
    "prep": ("data_prep.cli", "main", "run a preprocessing stage over a subject (multi-GPU)"),
    "sweep": ("persona.study.sweep", "main",
              "run a W&B-format sweep file locally (N at a time, resumable) or via wandb agent"),
    "trial": ("persona.study.trial", "main", "one sweep point: `persona fit` then `persona test`"),
    "compare": ("persona.study.compare", "main",
                "compare finished runs: tables over seeds, curves, media, one HTML report"),
    "convert": ("persona.data.convert.cli", "main",
                "convert a benchmark (X-Humans, NeuMan) into subject folders"),
    "doctor": ("persona.doctor", "main", "check the environment, weights and bodies"),
    "demo": ("persona.demo", "main", "the main job on the embedded default, end to end"),
}


def _usage() -> str:
    lines = ["usage: persona <command> [options]", "", "Lightning commands (LightningCLI):"]
    lines += [f"  {c:<10} --config FILE.yaml [--config more.yaml] [--dotted.key value]"
              for c in LIGHTNING_SUBCOMMANDS]
    lines += ["", "Tools:"] + [f"  {name:<10} {h}" for name, (_, _, h) in TOOLS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user error ends as one line on stderr and status 1 (persona/errors.py),
    `--debug` anywhere (or PERSONA_DEBUG=1) shows its traceback instead."""
    from persona.errors import DEBUG_ENV, run_user_command, split_debug

    from_console = argv is None
    argv, debug = split_debug(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command = argv[0]
    if command in LIGHTNING_SUBCOMMANDS:
        if from_console:  # LightningCLI (and a DDP relaunch) read sys.argv: without --debug
            sys.argv[1:] = argv
            if debug:
                os.environ[DEBUG_ENV] = "1"  # DDP workers re-run the command line
        return run_user_command(command, _run_lightning, argv, debug)
    if command in TOOLS:
        return run_user_command(command, _tool(command), argv[1:], debug)
    print(f"persona: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2


def _run_lightning(argv: list[str]) -> int:
    """`persona fit|validate|test|predict ...` (argv starts with the subcommand)."""
    from persona.lightning_cli import run_lightning_cli

    # LightningCLI reads sys.argv itself when args is None (the console-script case).
    run_lightning_cli(None if argv == sys.argv[1:] else argv)
    return 0


def _tool(command: str):
    """The function of a tool subcommand: argv (list[str]) -> exit status."""
    module_name, function_name, _ = TOOLS[command]
    return getattr(importlib.import_module(module_name), function_name)


def entry_point() -> None:
    """Console-script entry: exit with main()'s status."""
    sys.exit(main())
