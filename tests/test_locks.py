"""persona/locks.py: one writer per run or subject folder; a second command stops at once with one
line naming the folder and the holder, or waits; a killed holder leaves no stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from persona.cli import main
from persona.errors import UserError
from persona.locks import (
    LOCK_NAME,
    WAIT_ENV,
    is_worker_process,
    lock_folder,
    lock_replaced_folder,
)

REPO = Path(__file__).resolve().parent.parent
TINY_CONFIG = str(REPO / "configs" / "tiny.yaml")
HOLDER_READY_S = 60.0  # how long a test waits for the holder process to take its lock
RELEASE_AFTER_S = 1.0  # how long the releasing holder keeps the lock


def start_holder(folder: Path, replaced: bool = False, hold_s: float = 600.0
                 ) -> subprocess.Popen:
    """A separate process holding `folder`'s lock for hold_s seconds (started and locked)."""
    function = "lock_replaced_folder" if replaced else "lock_folder"
    script = textwrap.dedent(f"""
        import time
        from persona.locks import {function}
        with {function}({str(folder)!r}, "holder"):
            print("locked", flush=True)
            time.sleep({hold_s})
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    line = holder.stdout.readline()  # blocks until the lock is held (or the script died)
    assert line.strip() == "locked", "the holder process did not take the lock"
    return holder


def kill(holder: subprocess.Popen) -> None:
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=HOLDER_READY_S)


def test_fit_on_a_locked_run_folder_stops_at_once_and_runs_once_the_holder_is_killed(
        tmp_path: Path, capsys):
    run = tmp_path / "run"
    holder = start_holder(run)
    argv = ["fit", "--config", TINY_CONFIG, "--trainer.default_root_dir", str(run),
            "--data.subject_dir", str(tmp_path / "no_subject")]
    try:
        started = time.monotonic()
        assert main(argv) == 1
        assert time.monotonic() - started < HOLDER_READY_S  # no waiting
        err = [line for line in capsys.readouterr().err.splitlines()
               if line.startswith("persona")]  # (Lightning logs "Seed set to 0" first)
        assert len(err) == 1 and err[0].startswith("persona fit: ")
        assert str(run) in err[0] and f"PID {holder.pid}" in err[0] and "in use" in err[0]
        assert "Traceback" not in err[0]
    finally:
        kill(holder)
    assert (run / LOCK_NAME).exists()  # left by the kill -9: not stale, the kernel dropped it
    # the lock is free: fit goes on to the next problem (the missing subject)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "no_subject" in err and "in use" not in err
    assert not (run / LOCK_NAME).exists()  # released and removed


def test_synth_on_a_locked_out_folder_stops_and_leaves_it_alone(tmp_path: Path, capsys):
    out = tmp_path / "subject"
    holder = start_holder(out, replaced=True)
    try:
        assert main(["synth", "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("persona synth: ") and str(out) in err
        assert f"PID {holder.pid}" in err and "--wait" in err
        assert not out.exists()
        assert not out.with_name(f".{out.name}.tmp-synth").exists()  # nothing started
    finally:
        kill(holder)
    with lock_replaced_folder(out, "test", wait=False):  # free after the kill
        pass


def test_prep_on_a_locked_subject_stops(tmp_path: Path, capsys):
    subject = tmp_path / "subject"
    subject.mkdir()
    holder = start_holder(subject)
    try:
        status = main(["prep", "--config", str(REPO / "configs" / "prep" / "albedo.yaml"),
                       "--data.subject_dir", str(subject)])
        err = capsys.readouterr().err
        assert status == 1 and str(subject) in err and f"PID {holder.pid}" in err
    finally:
        kill(holder)


def test_a_second_lock_in_the_same_process_is_refused_then_free(tmp_path: Path):
    with lock_folder(tmp_path, "first", wait=False):
        with pytest.raises(UserError, match=f"PID {os.getpid()} .*first"):
            with lock_folder(tmp_path, "second", wait=False):
                pass
    with lock_folder(tmp_path, "third", wait=False):
        assert f"PID {os.getpid()}" in (tmp_path / LOCK_NAME).read_text()


def test_wait_blocks_until_the_holder_exits(tmp_path: Path, monkeypatch):
    holder = start_holder(tmp_path, hold_s=RELEASE_AFTER_S)
    monkeypatch.setenv(WAIT_ENV, "1")
    started = time.monotonic()
    with lock_folder(tmp_path, "waiter"):
        waited = time.monotonic() - started
    holder.wait(timeout=HOLDER_READY_S)
    assert waited > RELEASE_AFTER_S / 2  # it waited for the holder's sleep, not failed


def test_concurrent_waiters_never_hold_the_lock_together(tmp_path: Path):
    inside, overlaps = [0], [0]
    guard = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            with lock_folder(tmp_path, "thread", wait=True):  # flock per open file: threads too
                with guard:
                    inside[0] += 1
                    overlaps[0] += int(inside[0] > 1)
                time.sleep(0.002)
                with guard:
                    inside[0] -= 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps[0] == 0
    assert not (tmp_path / LOCK_NAME).exists()


def test_worker_processes_of_a_multi_process_launch_do_not_lock():
    assert not is_worker_process({})
    assert not is_worker_process({"LOCAL_RANK": "0", "RANK": "0"})
    assert is_worker_process({"LOCAL_RANK": "1"})
    assert is_worker_process({"RANK": "3", "LOCAL_RANK": "0"})
