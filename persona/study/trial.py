"""`persona trial [fit arguments]`: one sweep point, `persona fit` then `persona test`.

Takes what `persona fit` takes (--config files, dotted overrides in either `--key value` or the
W&B agent's `--key=value` form). The run folder is the resolved `trainer.default_root_dir`; under a
W&B agent without one (WANDB_SWEEP_ID set), it is runs/sweeps/<sweep id>/<W&B run id>.

Resumable: when RUN already holds a fit of the same resolved config (RUN/config.yaml hashes equal,
persona/study/identity.py) and its checkpoints/last.ckpt, the fit resumes from it
(`--ckpt_path last`) instead of starting again; a RUN of another config is an error. When the fit
and test are done, RUN/trial.json (written last, atomically) records the config hash, the command
and the test metrics: `persona sweep` treats a point with that file as finished.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from persona.errors import UserError
from persona.study.identity import (
    config_hash,
    read_json,
    resolve_config,
    write_json_atomic,
)

TRIAL_FILE = "trial.json"  # RUN/trial.json: the finished-point record
TRIAL_SCHEMA = 1
ROOT_KEY = "--trainer.default_root_dir"
AGENT_ROOT = Path("runs") / "sweeps"  # run folders of W&B-agent trials without a root dir
LAST_CKPT = Path("checkpoints") / "last.ckpt"
JOB_TYPE_ENV = "WANDB_JOB_TYPE"  # W&B job type of the runs this process starts


def has_root_dir(args: list[str]) -> bool:
    return any(a == ROOT_KEY or a.startswith(ROOT_KEY + "=") for a in args)


def agent_root_dir(environ: dict[str, str]) -> Path | None:
    """runs/sweeps/<sweep>/<run> for a trial started by a W&B agent (its env vars)."""
    sweep, run = environ.get("WANDB_SWEEP_ID"), environ.get("WANDB_RUN_ID")
    if not sweep or not run:
        return None
    return AGENT_ROOT / sweep / run


def finished_trial(run_dir: Path, digest: str) -> dict[str, Any] | None:
    """RUN/trial.json when it records a finished trial of config hash `digest`."""
    record = read_json(run_dir / TRIAL_FILE)
    if isinstance(record, dict) and record.get("config_hash") == digest \
            and record.get("schema") == TRIAL_SCHEMA:
        return record
    return None


def written_config_hash(run_dir: Path) -> str | None:
    """The hash of RUN/config.yaml (written by a fit that started), None without one."""
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return config_hash(config) if isinstance(config, dict) else None


def resume_args(run_dir: Path, digest: str) -> list[str]:
    """["--ckpt_path", "last"] when RUN holds a started fit of this config with a checkpoint;
    UserError when RUN holds another config's run."""
    written = written_config_hash(run_dir)
    if written is None:
        return []
    if written != digest:
        raise UserError(f"{run_dir}: holds a run of another config (config.yaml differs); "
                        "remove the folder or choose another --trainer.default_root_dir")
    return ["--ckpt_path", "last"] if (run_dir / LAST_CKPT).is_file() else []


def git_commit() -> dict[str, Any]:
    """The checkout's commit and whether it had uncommitted changes (None outside git)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError):
            return None
        return done.stdout.strip()

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def run_trial(args: list[str], environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Fit (or resume) and test one configuration; returns the trial record."""
    from persona.cli import main as persona

    environ = dict(os.environ) if environ is None else environ
    if not has_root_dir(args):
        root = agent_root_dir(environ)
        if root is not None:
            args = [*args, ROOT_KEY, str(root)]
    config = resolve_config(args)
    digest = config_hash(config)
    run_dir = Path(config.get("trainer", {}).get("default_root_dir") or os.getcwd())
    done = finished_trial(run_dir, digest)
    if done is not None:
        print(f"[trial] {run_dir}: finished earlier ({TRIAL_FILE}); nothing to do")
        return done
    fit = ["fit", *args, *resume_args(run_dir, digest)]
    start = time.perf_counter()
    os.environ[JOB_TYPE_ENV] = "fit"  # W&B: the fit's and the test's runs, told apart
    status = persona(fit)
    if status:
        raise UserError(f"[trial] {run_dir}: persona fit ended with status {status}")
    fitted = time.perf_counter()
    test = ["test", "--config", str(run_dir / "config.yaml"), "--ckpt_path",
            str(run_dir / LAST_CKPT)]
    os.environ[JOB_TYPE_ENV] = "test"
    status = persona(test)
    if status:
        raise UserError(f"[trial] {run_dir}: persona test ended with status {status}")
    tested = time.perf_counter()
    report = read_json(run_dir / "metrics.json") or {}
    record = {
        "schema": TRIAL_SCHEMA,
        "config_hash": digest,
        "args": args,
        "run_dir": str(run_dir),
        "resumed": "--ckpt_path" in fit,
        "git": git_commit(),
        "metrics": report.get("mean"),
        "seconds": {"fit": fitted - start, "test": tested - fitted},
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_json_atomic(run_dir / TRIAL_FILE, record)
    return record


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    record = run_trial(list(argv))
    print(f"[trial] done: {record['run_dir']} ({TRIAL_FILE})", file=sys.stderr)
    return 0
