"""Kill harness: `persona fit` and `persona synth` killed with SIGKILL at random (seeded) moments,
then re-run with the same command line, end as an uninterrupted run does and never leave a
partial file (docs/ERRORS.md, "Kills, locks and non-finite steps").

PERSONA_KILLS (default 2) kills per command; PERSONA_KILL_SEED (default 0) seeds the moments.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml

from persona.locks import LOCK_NAME
from persona.runs import RESUME_CHECKPOINT_KEYS, load_checkpoint

REPO = Path(__file__).resolve().parent.parent
KILLS = int(os.environ.get("PERSONA_KILLS", "2"))  # kills per command
SEED = int(os.environ.get("PERSONA_KILL_SEED", "0"))  # seeds the kill moments
# kill moments are drawn uniformly in [KILL_FROM, KILL_TO] x the uninterrupted run's wall time:
# the first ~half of a run is interpreter start and imports, which write nothing; near the end a
# run may already be done (runs vary in length)
KILL_FROM = 0.4
KILL_TO = 0.95
RUN_TIMEOUT_S = 600.0  # one command, uninterrupted
PARTIAL_MARKERS = (".tmp",)  # a name holding one of these is a write that did not finish
SYNTH_TIMING_KEY = "seconds"  # meta.json: the synth's wall time, the one field that may differ
# the tiny fit, made resumable at epoch boundaries: 3 epochs of 2 steps, a checkpoint after each
# (save_top_k 1 without a monitor keeps the newest epoch=E-step=S.ckpt, and last.ckpt beside it:
# as configs/base.yaml now does; with save_top_k 0 Lightning 2.6 writes last.ckpt only at the end),
# deterministic kernels (CPU runs are then bitwise reproducible)
FIT_EPOCHS = 3 + KILLS  # a kill costs at most the epoch it interrupts: room for every kill
# fit kill moments: the run's start-up (to its first training step, measured on the
# uninterrupted run) plus uniform [0, FIT_KILL_EPOCHS] epochs, so most kills land in training,
# before, between or right after checkpoints
FIT_KILL_EPOCHS = 2.5
CHECKPOINT_POLL_S = 0.02  # how often the uninterrupted fit's last.ckpt is looked at
FIT_OVERRIDES = {
    "trainer": {"max_epochs": FIT_EPOCHS, "max_steps": -1, "deterministic": True, "logger": False,
                "limit_val_batches": 0, "enable_progress_bar": False,
                "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                               "init_args": {"save_last": True, "save_top_k": 1,
                                             "every_n_epochs": 1,
                                             "enable_version_counter": False}}]},
    "data": {"epoch_length": 2},
}


@dataclass
class KillReport:
    """What the kills of one command hit: the moments (s), whether the run had already
    finished by then (nothing to kill) and what each kill left (check()'s answer)."""

    moments: list[float] = field(default_factory=list)
    finished_first: list[bool] = field(default_factory=list)
    left: list[str] = field(default_factory=list)


def python_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "persona", *args]


def run_to_end(command: list[str]) -> float:
    """Run `command` uninterrupted; its wall time (s). Fails the test on a non-zero status."""
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return time.monotonic() - started


def kill_at(command: list[str], moment: float) -> bool:
    """Start `command`, SIGKILL it `moment` seconds later; True when it had already finished."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        process.wait(timeout=moment)
        return True
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        return False


def kill_repeatedly(command: list[str], draw, check) -> KillReport:  # noqa: ANN001
    """KILLS kills of `command` at moments `draw()` (s); `check()` after each: what a kill
    leaves behind (it asserts that is sound)."""
    report = KillReport()
    for _ in range(KILLS):
        moment = draw()
        finished = kill_at(command, moment)
        report.moments.append(round(moment, 2))
        report.finished_first.append(finished)
        report.left.append(check())
    return report


def partial_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if any(m in p.name for m in PARTIAL_MARKERS)]


def print_report(name: str, report: KillReport, seconds: float) -> None:
    killed = report.finished_first.count(False)
    print(f"\n{name}: {len(report.moments)} kill moment(s) {report.moments}, {killed} killed "
          f"mid-run, left: {report.left}, {seconds:.1f} s in all")


# ------------------------------------------------------------------------------------- synth
def synth_command(out: Path) -> list[str]:
    return python_command("synth", "--out", str(out), "--preset", "tiny", "--seed", "1")


def tree_bytes(root: Path) -> dict[str, bytes]:
    """relative path -> content; meta.json without its wall-time field."""
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name == "meta.json" and path.parent == root:
            meta = json.loads(data)
            meta.pop(SYNTH_TIMING_KEY, None)
            data = json.dumps(meta, sort_keys=True).encode()
        files[str(path.relative_to(root))] = data
    return files


@pytest.fixture(scope="module")
def reference_subject(tmp_path_factory) -> tuple[Path, float]:
    """An uninterrupted `persona synth` (also the fit's subject) and its wall time, measured
    after a first run that fills the body cache (a cold run is several times slower)."""
    folder = tmp_path_factory.mktemp("reference")
    run_to_end(synth_command(folder / "warm_up"))
    out = folder / "subject"
    return out, run_to_end(synth_command(out))


def test_killed_synth_reruns_to_the_same_subject_and_leaves_no_partial_folder(
        reference_subject: tuple[Path, float], tmp_path: Path):
    reference, duration = reference_subject
    expected = tree_bytes(reference)
    parent = tmp_path / "subjects"
    parent.mkdir()
    out = parent / "subject"
    started = time.monotonic()

    def check() -> str:
        """After a kill: the subject is absent or complete, never partial. A complete one (the
        kill came after the rename) is removed, so that the next kill meets a run again (synth
        without --overwrite does not re-run onto a finished subject)."""
        if out.exists():
            assert tree_bytes(out) == expected
            shutil.rmtree(out)
            return "complete"
        return "temporary" if out.with_name(f".{out.name}.tmp-synth").exists() else "nothing"

    rng = random.Random(SEED)
    report = kill_repeatedly(synth_command(out),
                             lambda: rng.uniform(KILL_FROM, KILL_TO) * duration, check)
    run_to_end(synth_command(out))  # the same command line after the last kill
    print_report("synth", report, time.monotonic() - started)
    assert tree_bytes(out) == expected  # byte for byte (meta.json's wall time aside)
    assert sorted(p.name for p in parent.iterdir()) == ["subject"]  # no .tmp-synth, no lock


# --------------------------------------------------------------------------------------- fit
def fit_command(config: Path, subject: Path, run: Path) -> list[str]:
    return python_command("fit", "--config", str(REPO / "configs" / "tiny.yaml"),
                          "--config", str(config), "--data.subject_dir", str(subject),
                          "--trainer.default_root_dir", str(run), "--ckpt_path", "last")


def check_run_folder(run: Path) -> list[Path]:
    """No partial file; every checkpoint loads with what resuming needs; the checkpoints."""
    assert partial_files(run) == []
    checkpoints = sorted(run.rglob("*.ckpt"))
    for path in checkpoints:
        load_checkpoint(path, map_location="cpu", required_keys=RESUME_CHECKPOINT_KEYS)
    return checkpoints


def fit_timing(command: list[str], run: Path) -> tuple[float, float]:
    """Run the fit uninterrupted, watching its last.ckpt: (start-up s: start to the first
    training step, one epoch s)."""
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    last, moments = run / "checkpoints" / "last.ckpt", []
    seen = None
    while process.poll() is None:
        stamp = last.stat().st_mtime_ns if last.exists() else None
        if stamp != seen:
            seen = stamp
            moments.append(time.monotonic() - started)
        time.sleep(CHECKPOINT_POLL_S)
    assert process.wait(timeout=RUN_TIMEOUT_S) == 0, process.stderr.read()[-3000:]
    assert len(moments) >= 2, "the fit wrote fewer than two checkpoints"
    epoch = (moments[-1] - moments[0]) / (len(moments) - 1)
    return moments[0] - epoch, epoch


def left_by_kill(run: Path) -> str:
    """After a kill: the run folder is sound; "step N" of its last.ckpt, or "no checkpoint"."""
    if not run.exists() or not check_run_folder(run):
        return "no checkpoint"
    return f"step {final_state(run)[0]}"


def final_state(run: Path) -> tuple[int, dict[str, torch.Tensor]]:
    checkpoint = load_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu",
                                 required_keys=RESUME_CHECKPOINT_KEYS)
    return int(checkpoint["global_step"]), checkpoint["state_dict"]


def test_killed_fit_resumes_to_the_parameters_of_an_uninterrupted_run(
        reference_subject: tuple[Path, float], tmp_path: Path):
    subject = reference_subject[0]
    config = tmp_path / "kills.yaml"
    config.write_text(yaml.safe_dump(FIT_OVERRIDES))
    straight = tmp_path / "straight"
    startup, epoch = fit_timing(fit_command(config, subject, straight), straight)
    expected_step, expected = final_state(straight)
    assert expected_step == FIT_EPOCHS * FIT_OVERRIDES["data"]["epoch_length"]

    run = tmp_path / "killed"
    started = time.monotonic()
    rng = random.Random(SEED + 1)
    report = kill_repeatedly(fit_command(config, subject, run),
                             lambda: startup + rng.uniform(0.0, FIT_KILL_EPOCHS) * epoch,
                             lambda: left_by_kill(run))
    run_to_end(fit_command(config, subject, run))  # the same command line: resumes from last
    print_report("fit", report, time.monotonic() - started)
    print(f"fit: start-up {startup:.2f} s, one epoch {epoch:.2f} s (uninterrupted run)")
    assert run / "checkpoints" / "last.ckpt" in check_run_folder(run)
    assert not (run / LOCK_NAME).exists()  # released by the last run
    yaml.safe_load((run / "config.yaml").read_text())  # complete
    step, state = final_state(run)
    assert step == expected_step
    assert state.keys() == expected.keys()
    for name, value in expected.items():  # bitwise
        torch.testing.assert_close(state[name], value, rtol=0, atol=0, msg=name)
