"""`persona sweep`: W&B sweep files expanded as W&B does, runs scheduled N at a time with their
threads, GPU, W&B group/tags/name, a restart that skips finished points (recognised by their
resolved config) and resumes the interrupted one, and `--agent` handing the file to wandb."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from persona.errors import UserError
from persona.study import sweep as sweep_module
from persona.study.sweep import (
    agent_commands,
    parse_sweep_id,
    plan,
    run_points,
    slot_environment,
)
from persona.study.sweep_spec import (
    command_argv,
    load_sweep,
    run_name,
    sweep_points,
    unique_names,
)
from persona.study.trial import TRIAL_FILE, agent_root_dir, resume_args

REPO = Path(__file__).resolve().parents[2]


def write_sweep(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


GRID = {
    "program": "persona",
    "name": "study",
    "method": "grid",
    "parameters": {
        "model.deformer.mode": {"values": ["mean", "off"]},
        "seed_everything": {"values": [0, 1, 2]},
        "trainer.max_steps": {"value": 5},
    },
    "command": ["${program}", "trial", "--config", "configs/tiny.yaml", "${args}"],
}


# ---------------------------------------------------------------------------- the file


def test_grid_is_every_combination_in_file_order(tmp_path: Path):
    spec = load_sweep(write_sweep(tmp_path / "s.yaml", GRID))
    points = sweep_points(spec)
    assert len(points) == 6
    assert points[0] == {"model.deformer.mode": "mean", "seed_everything": 0,
                         "trainer.max_steps": 5}
    assert [p["seed_everything"] for p in points] == [0, 1, 2, 0, 1, 2]
    assert [p["model.deformer.mode"] for p in points[2:4]] == ["mean", "off"]
    assert spec.varying == ("model.deformer.mode", "seed_everything")
    assert sweep_points(spec, count=4) == points[:4]


def test_random_draws_are_reproducible_and_follow_their_distributions(tmp_path: Path):
    data = {"method": "random", "run_cap": 200, "program": "persona", "parameters": {
        "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
        "steps": {"distribution": "int_uniform", "min": 2, "max": 4},
        "q": {"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.25},
        "mode": {"values": ["a", "b"], "probabilities": [0.9, 0.1]},
        "fixed": {"value": 7}}}
    spec = load_sweep(write_sweep(tmp_path / "r.yaml", data))
    points = sweep_points(spec)
    assert points == sweep_points(load_sweep(tmp_path / "r.yaml"))  # same file, same points
    assert len(points) == 200 and sweep_points(spec, count=5) == points[:5]
    lrs = np.array([p["lr"] for p in points])
    assert lrs.min() >= 1e-4 and lrs.max() <= 1e-1
    # log-uniform: about a third of the draws in each decade
    assert 0.2 < np.mean(lrs < 1e-3) < 0.47 and 0.2 < np.mean(lrs > 1e-2) < 0.47
    assert {p["steps"] for p in points} == {2, 3, 4}
    assert all(isinstance(p["steps"], int) for p in points)
    assert {p["q"] for p in points} <= {0.0, 0.25, 0.5, 0.75, 1.0}
    assert 0.8 < np.mean([p["mode"] == "a" for p in points]) < 0.97
    assert {p["fixed"] for p in points} == {7}
    data["parameters"]["fixed"]["value"] = 8  # another file: other draws
    other = sweep_points(load_sweep(write_sweep(tmp_path / "r2.yaml", data)))
    assert [p["lr"] for p in other] != [p["lr"] for p in points]


@pytest.mark.parametrize(("change", "message"), [
    ({"method": "bayes"}, "--agent"),
    ({"method": "hyperband"}, "method"),
    ({"paramters": {}}, "paramters"),
    ({"parameters": {"a": {"values": []}}}, "parameters.a.values"),
    ({"parameters": {"a": {"distribution": "uniform", "min": 1}}}, "needs max"),
    ({"parameters": {"a": {"distribution": "uniform", "min": 0, "max": 1}}}, "a grid needs"),
    ({"parameters": {"a": {"parameters": {"b": {"value": 1}}}}}, "nested"),
    ({"command": "persona fit"}, "command"),
    ({"run_cap": 0}, "run_cap"),
])
def test_bad_sweep_files_name_the_file_and_field(tmp_path: Path, change: dict, message: str):
    path = write_sweep(tmp_path / "bad.yaml", {**GRID, **change})
    with pytest.raises(UserError, match=message) as caught:
        load_sweep(path)
    assert str(path) in str(caught.value)


def test_random_search_without_a_count_is_a_clear_error(tmp_path: Path):
    spec = load_sweep(write_sweep(tmp_path / "r.yaml", {
        "method": "random", "parameters": {"a": {"values": [1, 2]}}}))
    with pytest.raises(UserError, match="run_cap"):
        sweep_points(spec)


def test_command_macros_expand_as_a_wandb_agent_does(tmp_path: Path):
    data = {**GRID, "command": ["${env}", "${interpreter}", "train.py", "${args_no_hyphens}",
                                "${args_json}", "--flag"],
            "parameters": {"a": {"value": True}, "b": {"value": 0.5}, "c": {"value": "x y"}}}
    spec = load_sweep(write_sweep(tmp_path / "s.yaml", data))
    point = sweep_points(spec)[0]
    assert command_argv(spec, point) == [sys.executable, "train.py", "a=true", "b=0.5",
                                         "c=x y", json.dumps(point), "--flag"]
    spec = load_sweep(write_sweep(tmp_path / "t.yaml", GRID))
    argv = command_argv(spec, sweep_points(spec)[3], ["--trainer.default_root_dir=R"])
    # `persona` runs through this interpreter; the extra arguments come right after the point's
    assert argv == [sys.executable, "-m", "persona", "trial", "--config", "configs/tiny.yaml",
                    "--model.deformer.mode=off", "--seed_everything=0", "--trainer.max_steps=5",
                    "--trainer.default_root_dir=R"]


def test_runs_are_named_after_what_differs(tmp_path: Path):
    spec = load_sweep(write_sweep(tmp_path / "s.yaml", GRID))
    names = [run_name(p, spec.varying) for p in sweep_points(spec)]
    assert names[:4] == ["mode=mean_seed=0", "mode=mean_seed=1", "mode=mean_seed=2",
                         "mode=off_seed=0"]
    assert run_name({"lr": 0.000123456, "x": "a b c"}, ["lr", "x"]) == "lr=0.0001235_x=a-b-c"
    # a config fragment's path is named by its file stem (before, two long paths were cut to
    # the same prefix and told apart only by a numeric suffix)
    assert run_name({"config": "configs/ablation/image_weight_0.01.yaml"}, ["config"]) == (
        "config=image_weight_0.01")
    assert unique_names(["a", "a", "b", "a"]) == ["a", "a-1", "b", "a-2"]
    points = plan(spec, tmp_path / "out")
    assert points[4].run_dir == tmp_path / "out" / "mode=off_seed=1"
    expected_root = tmp_path / "out" / "mode=off_seed=1"
    assert points[4].argv[-1] == f"--trainer.default_root_dir={expected_root}"


def test_each_slot_gets_its_share_of_threads_or_its_own_gpu_and_wandb_labels(tmp_path: Path):
    spec = load_sweep(write_sweep(tmp_path / "s.yaml", GRID))
    point = plan(spec, tmp_path)[4]
    env = slot_environment(spec, point, slot=1, parallel=2, environ={}, cpus=2, gpus=0)
    assert env["OMP_NUM_THREADS"] == "1" and "CUDA_VISIBLE_DEVICES" not in env
    assert env["WANDB_RUN_GROUP"] == "study" and env["WANDB_NAME"] == "mode=off_seed=1"
    assert env["WANDB_TAGS"] == "sweep:study,seed:1" and env["WANDB_MODE"] == "offline"
    env = slot_environment(spec, point, slot=3, parallel=4, environ={"WANDB_MODE": "online"},
                           cpus=16, gpus=2)
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["OMP_NUM_THREADS"] == "4"
    assert env["WANDB_MODE"] == "online"


# ---------------------------------------------------------------------------- scheduling


PROBE = """\
import json, os, sys, time
args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
out = os.environ["PROBE_OUT"]
start = time.time()
time.sleep(float(args["sleep"]))
with open(os.path.join(out, args["i"] + ".json"), "w") as f:
    json.dump({"start": start, "end": time.time(), "threads": os.environ["OMP_NUM_THREADS"],
               "name": os.environ["WANDB_NAME"]}, f)
sys.exit(int(args.get("fail", 0)))
"""


def probe_sweep(tmp_path: Path, count: int, fail: bool = False) -> Path:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    values = list(range(count))
    data = {"name": "probe", "method": "grid", "program": str(script),
            "parameters": {"i": {"values": values}, "sleep": {"value": 1.0}},
            "command": ["${interpreter}", "${program}", "${args}"]}
    if fail:
        data["command"] = ["${interpreter}", "${program}", "${args}", "--fail=1"]
    return write_sweep(tmp_path / "probe.yaml", data)


def test_runs_go_n_at_a_time_and_the_index_records_them(tmp_path: Path, monkeypatch):
    (tmp_path / "probe").mkdir()
    monkeypatch.setenv("PROBE_OUT", str(tmp_path / "probe"))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    spec = load_sweep(probe_sweep(tmp_path, 4))
    points = plan(spec, tmp_path / "out")
    assert all("--trainer.default_root_dir" not in " ".join(p.argv) for p in points)
    run_points(spec, points, tmp_path / "out", parallel=2, environ=dict(os.environ), cpus=2,
               gpus=0, log=lambda _: None)
    runs = [json.loads((tmp_path / "probe" / f"{i}.json").read_text()) for i in range(4)]
    assert [r["name"] for r in runs] == [f"i={i}" for i in range(4)]
    assert {r["threads"] for r in runs} == {"1"}
    overlaps = sum(a["start"] < b["end"] and b["start"] < a["end"]
                   for k, a in enumerate(runs) for b in runs[k + 1:])
    assert overlaps >= 2  # pairs ran together ...
    assert max(sum(r["start"] <= t < r["end"] for r in runs)
               for t in [r["start"] for r in runs]) == 2  # ... never three
    index = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert [p["state"] for p in index["points"]] == ["done"] * 4
    assert all(p["returncode"] == 0 and p["seconds"] >= 1.0 for p in index["points"])


def test_a_failing_run_is_reported_and_the_sweep_exits_1(tmp_path: Path, monkeypatch, capsys):
    (tmp_path / "probe").mkdir()
    monkeypatch.setenv("PROBE_OUT", str(tmp_path / "probe"))
    path = probe_sweep(tmp_path, 2, fail=True)
    status = sweep_module.main([str(path), "--out", str(tmp_path / "out"), "--parallel", "2"])
    assert status == 1
    printed = capsys.readouterr().out
    assert "failed: i=0, i=1" in printed and "exit 1" in printed
    index = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert [p["state"] for p in index["points"]] == ["failed", "failed"]
    assert "sweep.log" in printed


# ---------------------------------------------------------------------------- W&B agent


def test_agent_mode_hands_the_file_to_wandb(tmp_path: Path, monkeypatch):
    spec = load_sweep(write_sweep(tmp_path / "s.yaml", GRID))
    assert agent_commands(spec, 2, 3, "me/persona/abc") == [
        ["wandb", "agent", "--count", "3", "me/persona/abc"]] * 2
    assert agent_commands(spec, 1, None)[0] == ["wandb", "sweep", str(spec.path)]
    printed = ("wandb: Creating sweep from: s.yaml\nwandb: Creating sweep with ID: abc\n"
               "wandb: Run sweep agent with: wandb agent me/persona/abc\n")
    assert parse_sweep_id(printed) == "me/persona/abc"
    # a stand-in `wandb` on PATH records its calls: create, then two agents
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    fake = bin_dir / "wandb"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n"
                    f"[ \"$1\" = sweep ] && echo 'wandb: Run sweep agent with: wandb agent "
                    "me/persona/abc' >&2\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert sweep_module.main([str(spec.path), "--agent", "--parallel", "2", "--count", "1"]) == 0
    lines = calls.read_text().splitlines()
    assert lines[0] == f"sweep {spec.path}"
    assert lines[1:] == ["agent --count 1 me/persona/abc"] * 2


def test_trial_under_an_agent_picks_its_run_folder_and_refuses_another_config(tmp_path: Path):
    assert agent_root_dir({"WANDB_SWEEP_ID": "abc", "WANDB_RUN_ID": "r1"}) == \
        Path("runs/sweeps/abc/r1")
    assert agent_root_dir({}) is None
    run = tmp_path / "run"
    run.mkdir()
    assert resume_args(run, "h") == []  # nothing started there
    (run / "config.yaml").write_text(yaml.safe_dump({"seed_everything": 3}))
    with pytest.raises(UserError, match="another config"):
        resume_args(run, "not-its-hash")


# ---------------------------------------------------------------------------- persona trial


@pytest.fixture(scope="module")
def tiny_garment_subject(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep_subject") / "subject"
    subprocess.run([sys.executable, "-m", "persona", "synth", "--preset", "tiny", "--seed", "1",
                    "--out", str(out)], cwd=REPO, check=True, capture_output=True)
    return out


def trial_sweep(tmp_path: Path, subject: Path) -> Path:
    return write_sweep(tmp_path / "trial.yaml", {
        "name": "trials", "method": "grid", "program": "persona",
        "parameters": {"seed_everything": {"values": [0, 1]}},
        "command": ["${program}", "trial", "--config", "configs/tiny.yaml",
                    "--data.subject_dir", str(subject), "--trainer.max_steps", "2",
                    "--trainer.logger", "false", "--trainer.limit_test_batches", "1",
                    "${args}"]})


def sweep_process(path: Path, out: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "persona", "sweep", str(path), "--out",
                             str(out)], cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


@pytest.mark.slow
def test_a_killed_sweep_restarts_without_redoing_finished_runs(tiny_garment_subject: Path,
                                                               tmp_path: Path):
    path = trial_sweep(tmp_path, tiny_garment_subject)
    out = tmp_path / "out"
    first = sweep_process(path, out, tmp_path / "first.log")
    deadline = time.monotonic() + 600
    while not (out / "seed=0" / TRIAL_FILE).exists():  # the first point finishes ...
        assert first.poll() is None, (tmp_path / "first.log").read_text()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    while not (out / "seed=1" / "sweep.log").exists():  # ... and the second has started
        time.sleep(0.2)
    time.sleep(1.0)
    children = subprocess.run(["pgrep", "-P", str(first.pid)], capture_output=True, text=True)
    first.send_signal(signal.SIGKILL)
    first.wait()
    orphan_pids = [int(p) for p in children.stdout.split()]
    assert orphan_pids, "the sweep had no child running when killed"
    time.sleep(2.0)
    assert not any(alive(p) for p in orphan_pids), "a run outlived its killed sweep"
    finished = (out / "seed=0" / TRIAL_FILE).read_bytes()
    assert not (out / "seed=1" / TRIAL_FILE).exists()

    second = subprocess.run([sys.executable, "-m", "persona", "sweep", str(path), "--out",
                             str(out)], cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "2 points, 1 finished earlier, 1 to run" in second.stdout
    assert "start seed=0" not in second.stdout
    assert (out / "seed=0" / TRIAL_FILE).read_bytes() == finished  # not redone
    records = [json.loads((out / f"seed={s}" / TRIAL_FILE).read_text()) for s in range(2)]
    assert len({r["config_hash"] for r in records}) == 2
    assert all(r["metrics"]["psnr"] > 0 for r in records)
    index = json.loads((out / "sweep.json").read_text())
    assert [p["state"] for p in index["points"]] == ["finished", "done"]
    # a third start finds everything finished and runs nothing
    third = subprocess.run([sys.executable, "-m", "persona", "sweep", str(path), "--out",
                            str(out), "--dry-run"], cwd=REPO, capture_output=True, text=True)
    assert "2 finished earlier, 0 to run" in third.stdout


def unshare_available() -> bool:
    return subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not unshare_available(),
                    reason="unshare -rn (a network namespace without a route out) is not "
                           "allowed here")
def test_sweep_and_compare_run_with_the_network_really_off(tiny_garment_subject: Path,
                                                           tmp_path: Path):
    """`persona sweep` of a real tiny `persona trial` (W&B logging on, offline) and `persona
    compare` of its run, inside a network namespace with only loopback: no route out, no DNS."""
    sweep = write_sweep(tmp_path / "offline.yaml", {
        "name": "offline", "method": "grid", "program": "persona",
        "parameters": {"seed_everything": {"value": 0}},
        "command": ["${program}", "trial", "--config", "configs/tiny.yaml",
                    "--data.subject_dir", str(tiny_garment_subject), "--trainer.max_steps", "2",
                    "--trainer.limit_test_batches", "1", "${args}"]})
    out, report = tmp_path / "out", tmp_path / "report"
    python = sys.executable
    script = (
        "ip link set lo up 2>/dev/null || true; "
        "python3 -c 'import socket; socket.getaddrinfo(\"pypi.org\", 443)' 2>/dev/null "
        "&& { echo 'the namespace resolved a public name'; exit 3; }; "
        f"{python} -m persona sweep {sweep} --out {out} && "
        f"{python} -m persona compare {out} --out {report}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    done = subprocess.run(["unshare", "-rn", "bash", "-c", script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = [p.parent for p in out.glob(f"*/{TRIAL_FILE}")]
    assert len(runs) == 1, done.stdout
    record = json.loads((runs[0] / TRIAL_FILE).read_text())
    assert record["metrics"]["psnr"] > 0
    assert list((runs[0] / "wandb").rglob("run-*.wandb")), "no offline W&B run was written"
    assert (report / "compare.html").is_file()
    assert (report / "compare.md").read_text().startswith("# Comparison of 1 run")


@pytest.mark.parametrize("path", sorted((REPO / "experiments" / "sweeps").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_sweep_files_load_and_name_real_settings(path: Path) -> None:
    import dataclasses

    from persona.losses.table import LossWeights

    spec = load_sweep(path)
    points = sweep_points(spec)
    assert points and len(set(unique_names([run_name(p, spec.varying) for p in points]))) == len(
        points)
    argv = list(spec.command)
    configs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--config"]
    configs += [str(p["config"]) for p in points if "config" in p]
    assert configs and all((REPO / c).is_file() for c in configs), configs
    weights = {f.name for f in dataclasses.fields(LossWeights)}
    for parameter in spec.parameters:
        if parameter.name.startswith("model.losses."):
            assert parameter.name.removeprefix("model.losses.") in weights, parameter.name
