"""Kill harness: `persona fit` and `persona synth` killed with SIGKILL at random (seeded) moments,
then re-run with the same command line, end as an uninterrupted run does and never leave a
partial file (docs/ERRORS.md, "Kills, locks and non-finite steps").

PERSONA_KILLS (default 2) kills per command; PERSONA_KILL_SEED (default 0) seeds the moments.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import random
import re
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


# -------------------------------------------------------------------------------------- prep
PREP_CONFIGS = REPO / "configs" / "prep"
# what the prep subject takes from the synthetic one, per split: the frames and, for the
# generated splits, what the generation stage writes (params, cameras, frame list); masks,
# keypoints, depths, normals and segs are left for the stages to write
PREP_COPIED = ("images", "cam_params", "smplx_optimized", "frame_idx_list.txt")
PREP_SUBJECT_FILES = ("subject.json", "smplx_optimized")  # the subject's own files, copied
FOOTFIX_MARKER = "footfix.json"  # data_prep.footfix: the one output with a wall-time field
FOOTFIX_TIMING = ("diagnostics", "seconds")
FOOTFIX_STATE_KEY = "state"  # footfix.json while the fix is being written: "in progress"
# the temporary names the prep writers use: persona.atomic.atomic_write writes
# ".{name}.tmp-{pid}-{random}{suffix}" then renames (the earlier writers ".{name}.tmp-{pid}";
# init_subject's ".{name}.partial" folder is the subject's sibling, outside it);
# PARTIAL_MARKERS (".tmp") finds both kinds of name. Matched whole (fullmatch)
PREP_TEMPORARY = re.compile(r"\..+\.tmp-\d+(?:-[a-z0-9_]+(?:\.[^.]+)?)?")
# a stage's kill moment, in units of its write window (first write to exit, measured on the
# uninterrupted chain) from the killed run's own first write (its start-up time varies with the
# machine's load): uniform in [-PREP_KILL_LEAD, 1 + PREP_KILL_LAG]; a negative one kills that
# long before the uninterrupted run's first write (in the start-up, nothing written yet), one
# past 1 a run that has, or has nearly, finished
PREP_KILL_LEAD = 0.5
PREP_KILL_LAG = 0.1
# the prep kills' seed is SEED + this: with the default seed and 2 kills, the first draws
# (0.41, 0.19) kill the geometry stage and the foot fix mid-run, not in start-up or exit
PREP_SEED_OFFSET = 10


def _data_prep_test_module(name: str):  # noqa: ANN202
    """A module of tests/data_prep (its tiny-model builders), imported as pytest does."""
    folder = str(REPO / "tests" / "data_prep")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def tiny_prep_weights(root: Path) -> dict[str, Path]:
    """Tiny random SAM and Sapiens (pose, depth, normal, seg) saved in the released formats."""
    sam_tests = _data_prep_test_module("test_sam_segment")
    sapiens_tests = _data_prep_test_module("test_sapiens")
    root.mkdir(parents=True, exist_ok=True)
    paths = {"sam": root / "sam_vit_b_01ec64.pth"}
    torch.save(sam_tests.tiny_sam_by_hand().state_dict(), paths["sam"])
    for task, module in sapiens_tests.tiny_modules().items():
        traced = torch.jit.trace(module.eval(), torch.zeros(sapiens_tests.INPUT_SHAPE),
                                 check_trace=False)
        paths[task] = root / sapiens_tests.FILE_NAMES[task]
        torch.jit.save(traced, str(paths[task]))
    return paths


def prep_commands(subject: Path, weights: dict[str, Path]) -> list[list[str]]:
    """The chain, each stage its own `persona prep` command: Sapiens keypoints -> SAM masks
    (prompted by them) -> Sapiens depth, normals and parts -> the foot fix of the generated
    splits (rewrites their params in place, its marker last)."""
    sam_tiny = _data_prep_test_module("test_sam_segment").TINY
    sam_arch = "{" + ", ".join(f"{k}: {v}" for k, v in sam_tiny.items()) + "}"

    def stage(config: str, *args: str) -> list[str]:
        return python_command("prep", "--config", str(PREP_CONFIGS / config),
                              "--data.subject_dir", str(subject), "--trainer.accelerator",
                              "cpu", *args)

    return [
        stage("keypoints.yaml", "--model.init_args.pose_checkpoint", str(weights["pose"])),
        stage("segment.yaml", "--model.init_args.checkpoint", str(weights["sam"]),
              "--model.init_args.model_type", "vit_b", "--model.init_args.architecture",
              sam_arch),
        stage("geometry.yaml", *(a for task in ("depth", "normal", "seg") for a in (
            f"--model.init_args.{task}_checkpoint", str(weights[task])))),
        stage("footfix.yaml"),
    ]


def prep_subject(synthetic: Path, out: Path) -> Path:
    """A subject as the generation stage leaves it, from the synthetic one (PREP_COPIED)."""
    out.mkdir(parents=True)
    for name in PREP_SUBJECT_FILES:
        source = synthetic / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, out / name)
    for split in sorted(p for p in synthetic.iterdir() if (p / "images").is_dir()):
        for name in PREP_COPIED:
            source = split / name
            if source.is_dir():
                shutil.copytree(source, out / split.name / name)
            elif source.is_file():
                shutil.copy2(source, out / split.name / name)
    return out


def prep_tree(root: Path) -> dict[str, bytes]:
    """relative path -> content, the foot fix markers without their wall time."""
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name == FOOTFIX_MARKER:
            marker = json.loads(data)
            marker.get(FOOTFIX_TIMING[0], {}).pop(FOOTFIX_TIMING[1], None)
            data = json.dumps(marker, sort_keys=True).encode()
        files[str(path.relative_to(root))] = data
    return files


def prep_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def file_stamps(subject: Path) -> dict[Path, int]:
    """path -> mtime (ns) of the subject's files, the lock file aside."""
    stamps = {}
    for path in subject.rglob("*"):
        if path.name != LOCK_NAME:
            with contextlib.suppress(FileNotFoundError):  # a temporary renamed meanwhile
                stamps[path] = path.stat().st_mtime_ns
    return stamps


def kill_after_first_write(command: list[str], subject: Path, after: float) -> bool:
    """Start `command`, SIGKILL it `after` seconds after its first write into `subject`;
    True when it had already finished."""
    before = file_stamps(subject)
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    while process.poll() is None and file_stamps(subject) == before:
        time.sleep(CHECKPOINT_POLL_S)
    try:
        process.wait(timeout=after)
        return True
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        return False


def write_window(command: list[str], subject: Path) -> tuple[float, float]:
    """Run one stage uninterrupted, watching the subject's files: (s from start to its first
    write, s to its exit)."""
    started, before = time.monotonic(), file_stamps(subject)
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    first = None
    while process.poll() is None:
        if first is None and file_stamps(subject) != before:
            first = time.monotonic() - started
        time.sleep(CHECKPOINT_POLL_S)
    assert process.wait(timeout=RUN_TIMEOUT_S) == 0, process.stderr.read()[-3000:]
    end = time.monotonic() - started
    return (end if first is None else first), end


@pytest.fixture(scope="module")
def prep_reference(reference_subject: tuple[Path, float], tmp_path_factory
                   ) -> dict[str, object]:
    """The tiny weights, the subject before the chain, the same subject after an
    uninterrupted chain, each stage's write window (s) and the subject before each stage."""
    root = tmp_path_factory.mktemp("prep")
    weights = tiny_prep_weights(root / "weights")
    before = prep_subject(reference_subject[0], root / "before")
    straight = root / "straight"
    shutil.copytree(before, straight)
    windows, stages = [], []
    for number, command in enumerate(prep_commands(straight, weights)):
        stages.append(shutil.copytree(straight, root / f"before_stage_{number}"))
        windows.append(write_window(command, straight))
    return {"weights": weights, "before": before, "straight": straight, "windows": windows,
            "stages": stages}


def test_killed_prep_chain_reruns_to_the_same_subject_and_leaves_no_partial_file(
        prep_reference: dict[str, object], tmp_path: Path):
    before, straight = prep_reference["before"], prep_reference["straight"]
    windows: list[tuple[float, float]] = prep_reference["windows"]
    expected = prep_tree(straight)
    original = prep_tree(before)
    changed = [n for n, data in expected.items() if original.get(n) != data]  # new, rewritten
    assert partial_files(straight) == [] and not (straight / LOCK_NAME).exists()
    assert len(prep_files(straight) - prep_files(before)) >= 3 * len(windows)  # it wrote

    subject = tmp_path / "subject"
    commands = prep_commands(subject, prep_reference["weights"])
    # kill j goes to stage n-1-(j mod n): with the default 2 kills, the foot fix (rewrites
    # files in place) and the geometry stage (writes the most files)
    per_stage = [sum(1 for j in range(KILLS) if len(commands) - 1 - j % len(commands) == s)
                 for s in range(len(commands))]
    # the chain starts at the first stage killed, from the uninterrupted chain's subject there
    first_killed = next((s for s, kills in enumerate(per_stage) if kills), 0)
    shutil.copytree(prep_reference["stages"][first_killed], subject)

    def check() -> str:
        """After a kill: every file is as before the chain or as the uninterrupted chain
        leaves it (a foot fix marker may be the in-progress one, holding the same driving
        ankles); only temporaries of atomic writes and the lock file are extra."""
        now = prep_tree(subject)
        temporaries = [n for n in now if PREP_TEMPORARY.fullmatch(Path(n).name)]
        in_progress = []
        for name, data in now.items():
            if name in temporaries or name == LOCK_NAME:
                continue
            if Path(name).name == FOOTFIX_MARKER and FOOTFIX_STATE_KEY in json.loads(data):
                marker, final = json.loads(data), json.loads(expected[name])
                assert marker["driving_ankles"] == final["driving_ankles"], name
                in_progress.append(name)
                continue
            assert data in (original.get(name), expected.get(name)), name
        done = sum(1 for n in changed if now.get(n) == expected[n])
        return (f"{done}/{len(changed)} written, {len(temporaries)} tmp"
                + (f", {len(in_progress)} foot fix in progress" if in_progress else ""))

    rng = random.Random(SEED + PREP_SEED_OFFSET)
    started, report = time.monotonic(), KillReport()
    for number in range(first_killed, len(commands)):
        command, (first, end) = commands[number], windows[number]
        window = end - first
        for _ in range(per_stage[number]):
            moment = rng.uniform(-PREP_KILL_LEAD, 1.0 + PREP_KILL_LAG)  # write windows
            finished = (kill_at(command, first + moment * window) if moment < 0
                        else kill_after_first_write(command, subject, moment * window))
            report.finished_first.append(finished)
            report.moments.append(round(moment, 2))
            report.left.append(check())
            if finished:  # the stage is done: back to before it, so the next kill meets a run
                shutil.rmtree(subject)
                shutil.copytree(prep_reference["stages"][number], subject)
        run_to_end(command)  # the same command line after its kills: the stage completes
    print_report("prep", report, time.monotonic() - started)
    print("prep: kill moments are in write windows from the first write; windows (first "
          "write, exit) s: "
          f"{[(round(a, 2), round(b, 2)) for a, b in windows]}")
    assert partial_files(subject) == []  # no .tmp-<pid> left: the next run removed them
    assert not (subject / LOCK_NAME).exists()
    got = prep_tree(subject)
    assert got.keys() == expected.keys()
    for name, data in expected.items():  # byte for byte (the foot fix's wall time aside)
        assert got[name] == data, name


def test_foot_fix_killed_between_its_params_reruns_from_the_driving_ankles(
        prep_reference: dict[str, object], tmp_path: Path):
    """What a kill inside the foot fix's writes leaves (random kills rarely land in that
    window): generated_0 with 2 of its 4 params fixed, the in-progress marker, a temporary
    of the third. The rerun removes the temporary, fixes the split again from the marker's
    driving ankles (not from the half-fixed params) and ends as the uninterrupted chain."""
    straight = prep_reference["straight"]
    subject = shutil.copytree(prep_reference["stages"][-1], tmp_path / "subject")
    params = Path("generated_0/smplx_optimized/smplx_params")
    for index in (0, 1):
        shutil.copy2(straight / params / f"{index}.json", subject / params / f"{index}.json")
    marker = json.loads((straight / params.parent / FOOTFIX_MARKER).read_text())
    in_progress = {"frames": marker["frames"], "driving_ankles": marker["driving_ankles"],
                   FOOTFIX_STATE_KEY: "in progress"}
    (subject / params.parent / FOOTFIX_MARKER).write_text(json.dumps(in_progress))
    temporary = subject / params / ".2.json.tmp-4242-k3x9q_7z.json"  # atomic_write's name
    temporary.write_text('{"body_pose": [0.0, ')  # cut short
    assert partial_files(subject) == [temporary]
    run_to_end(prep_commands(subject, prep_reference["weights"])[-1])
    assert partial_files(subject) == []
    assert prep_tree(subject) == prep_tree(straight)
