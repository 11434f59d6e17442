"""`persona sweep FILE.yaml [--parallel N] [--count K] [--out DIR] [--dry-run] [--agent]`.

Runs a W&B sweep file (persona/study/sweep_spec.py: grid and random, the same file `wandb sweep`
accepts) on this machine, offline, N runs at a time:
- each point runs its command (usually `persona trial ...`: fit then test) in a child process with
  `--trainer.default_root_dir OUT/<name>` appended, its output in OUT/<name>/sweep.log; the name
  says what differs (`mode=off_seed=1`);
- on a CPU the cores are split between the N runs (OMP_NUM_THREADS); with several GPUs each run
  gets its own (CUDA_VISIBLE_DEVICES);
- W&B: every run is in group <sweep name>, tagged `sweep:<name>` and `seed:<seed>`, named after
  the point (WANDB_RUN_GROUP, WANDB_TAGS, WANDB_NAME), offline unless WANDB_MODE=online;
- resumable: a point whose resolved config (persona/study/identity.py) matches a finished
  trial in OUT is skipped; an unfinished one is re-run and `persona trial` resumes its fit from
  the last checkpoint. Children die with the sweep (kill -9 included), so a restart never races
  an orphan;
- OUT/sweep.json (rewritten atomically as runs end) lists every point and its state.
`--agent` hands the file to W&B instead (`wandb sweep`, then N `wandb agent` processes): online,
and for many machines (experiments/slurm/).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from persona.errors import UserError
from persona.study.identity import config_hash, read_json, resolve_config, write_json_atomic
from persona.study.sweep_spec import (
    SEED_KEY,
    SweepSpec,
    command_argv,
    load_sweep,
    run_name,
    sweep_points,
    unique_names,
    value_text,
)
from persona.study.trial import ROOT_KEY, TRIAL_FILE, finished_trial

SWEEP_INDEX = "sweep.json"  # OUT/sweep.json: the points and their states
RUN_LOG = "sweep.log"  # OUT/<name>/sweep.log: the run's stdout and stderr
DEFAULT_OUT = Path("runs") / "sweeps"  # OUT default: runs/sweeps/<sweep name>
POLL_S = 0.5  # how often the scheduler looks at its children
PR_SET_PDEATHSIG = 1  # prctl option: a signal for the child when its parent dies (Linux)
TRIAL_COMMANDS = ("trial", "fit")  # persona subcommands that take --trainer.default_root_dir


@dataclass
class Point:
    """One point of the sweep and where it runs."""

    index: int
    name: str
    values: dict[str, Any]
    argv: list[str]
    run_dir: Path
    config_hash: str | None = None
    state: str = "pending"  # pending | finished (earlier) | running | done | failed
    seconds: float | None = None
    returncode: int | None = None


# ---------------------------------------------------------------------------- planning


def takes_root_dir(argv: list[str]) -> bool:
    """Whether the command is `persona trial|fit ...` (gets --trainer.default_root_dir)."""
    tail = argv[3:] if argv[1:3] == ["-m", "persona"] else argv[1:]
    return bool(tail) and tail[0] in TRIAL_COMMANDS


def fit_args_of(argv: list[str]) -> list[str] | None:
    """The `persona fit` arguments of a `persona trial|fit` command line, else None."""
    if not takes_root_dir(argv):
        return None
    tail = argv[3:] if argv[1:3] == ["-m", "persona"] else argv[1:]
    return tail[1:]


def plan(spec: SweepSpec, out: Path, count: int | None = None) -> list[Point]:
    """The sweep's points with names, command lines and run folders."""
    values = sweep_points(spec, count)
    names = unique_names([run_name(v, spec.varying) for v in values])
    points = []
    for index, (name, point) in enumerate(zip(names, values, strict=True)):
        run_dir = out / name
        probe = command_argv(spec, point)
        extra = [f"{ROOT_KEY}={run_dir}"] if takes_root_dir(probe) else []
        points.append(Point(index, name, point, command_argv(spec, point, extra), run_dir))
    return points


def finished_points(points: list[Point], out: Path) -> None:
    """Mark the points whose resolved config matches a finished trial anywhere in OUT (their
    config_hash is filled in for every `persona trial|fit` point)."""
    records: dict[str, Path] = {}
    for path in sorted(out.glob(f"*/{TRIAL_FILE}")):
        record = read_json(path)
        if isinstance(record, dict) and record.get("config_hash"):
            records.setdefault(record["config_hash"], path.parent)
    for point in points:
        args = fit_args_of(point.argv)
        if args is None:
            continue
        point.config_hash = config_hash(resolve_config(args))
        found = records.get(point.config_hash)
        if found is not None and finished_trial(found, point.config_hash) is not None:
            point.state, point.run_dir = "finished", found


# ---------------------------------------------------------------------------- running


def slot_environment(spec: SweepSpec, point: Point, slot: int, parallel: int,
                     environ: dict[str, str], cpus: int, gpus: int) -> dict[str, str]:
    """The child's environment: threads or GPU of its slot, and its W&B group, tags and name."""
    env = dict(environ)
    if gpus > 0:
        env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    threads = str(max(1, cpus // parallel))
    env.setdefault("OMP_NUM_THREADS", threads)
    env.setdefault("MKL_NUM_THREADS", threads)
    env["WANDB_RUN_GROUP"] = spec.name
    tags = [f"sweep:{spec.name}"]
    if SEED_KEY in point.values:
        tags.append(f"seed:{value_text(point.values[SEED_KEY])}")
    env["WANDB_TAGS"] = ",".join(tags)
    env["WANDB_NAME"] = point.name
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("WANDB_SILENT", "true")
    return env


def die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the sweep process dies (Linux prctl)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # not Linux: children of a killed sweep finish on their own


def start(point: Point, env: dict[str, str]) -> subprocess.Popen:
    point.run_dir.mkdir(parents=True, exist_ok=True)
    log = open(point.run_dir / RUN_LOG, "ab")  # noqa: SIM115 (closed when the child ends)
    log.write(f"\n# {datetime.now(UTC).isoformat(timespec='seconds')} "
              f"{shlex.join(point.argv)}\n".encode())
    log.flush()
    process = subprocess.Popen(point.argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                               preexec_fn=die_with_parent if sys.platform == "linux" else None)
    log.close()
    return process


def index_record(spec: SweepSpec, points: list[Point]) -> dict[str, Any]:
    return {
        "sweep": spec.name,
        "file": str(spec.path),
        "file_sha256": spec.digest,
        "method": spec.method,
        "points": [{"index": p.index, "name": p.name, "values": p.values, "argv": p.argv,
                    "run_dir": str(p.run_dir), "config_hash": p.config_hash, "state": p.state,
                    "seconds": p.seconds, "returncode": p.returncode} for p in points],
        "updated": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def run_points(spec: SweepSpec, points: list[Point], out: Path, parallel: int,
               environ: dict[str, str], cpus: int, gpus: int,
               log=print) -> list[Point]:
    """Run the pending points, `parallel` at a time; returns them with their end states."""
    pending = [p for p in points if p.state == "pending"]
    running: dict[int, tuple[Point, subprocess.Popen, float]] = {}
    total = len(pending)
    started = 0
    write_json_atomic(out / SWEEP_INDEX, index_record(spec, points))
    while pending or running:
        for slot in range(parallel):
            if slot in running or not pending:
                continue
            point = pending.pop(0)
            env = slot_environment(spec, point, slot, parallel, environ, cpus, gpus)
            running[slot] = (point, start(point, env), time.perf_counter())
            point.state = "running"
            started += 1
            device = (f"GPU {env['CUDA_VISIBLE_DEVICES']}" if gpus > 0
                      else f"{env['OMP_NUM_THREADS']} thread(s)")
            log(f"[sweep] {started}/{total} start {point.name} (slot {slot}, {device}) "
                f"-> {point.run_dir / RUN_LOG}")
        time.sleep(POLL_S)
        for slot, (point, process, began) in list(running.items()):
            code = process.poll()
            if code is None:
                continue
            del running[slot]
            point.returncode, point.seconds = code, time.perf_counter() - began
            point.state = "done" if code == 0 else "failed"
            log(f"[sweep] {point.state} {point.name} in {point.seconds / 60:.1f} min"
                + ("" if code == 0 else f" (exit {code}; see {point.run_dir / RUN_LOG})"))
            write_json_atomic(out / SWEEP_INDEX, index_record(spec, points))
    return points


# ---------------------------------------------------------------------------- W&B agent


def agent_commands(spec: SweepSpec, parallel: int, count: int | None,
                   sweep_id: str | None = None) -> list[list[str]]:
    """`wandb sweep FILE` (when no sweep id is given) and the `wandb agent` lines."""
    commands = [] if sweep_id else [["wandb", "sweep", str(spec.path)]]
    agent = ["wandb", "agent", *(["--count", str(count)] if count else []),
             sweep_id or "<sweep id printed by wandb sweep>"]
    return commands + [agent] * parallel


def parse_sweep_id(output: str) -> str | None:
    """The `entity/project/id` that `wandb sweep` prints in its `wandb agent ...` hint."""
    for line in output.splitlines():
        if "wandb agent" in line:
            return line.split("wandb agent", 1)[1].strip().split()[0]
    return None


def run_agent(spec: SweepSpec, parallel: int, count: int | None, sweep_id: str | None,
              print_id: bool, log=print) -> int:
    """Create the sweep on the W&B server (unless given) and run `parallel` agents."""
    if sweep_id is None:
        created = subprocess.run(["wandb", "sweep", str(spec.path)], capture_output=True,
                                 text=True, check=False)
        sweep_id = parse_sweep_id(created.stdout + created.stderr)
        if created.returncode or sweep_id is None:
            raise UserError(f"wandb sweep {spec.path} failed (exit {created.returncode}): "
                            f"{(created.stderr or created.stdout).strip()[-300:]}; "
                            "online sweeps need `wandb login` and WANDB_MODE=online")
        log(f"[sweep] created W&B sweep {sweep_id}")
    if print_id:
        print(sweep_id)
        return 0
    agents = [subprocess.Popen(argv, preexec_fn=die_with_parent)
              for argv in agent_commands(spec, parallel, count, sweep_id)]
    return max(agent.wait() for agent in agents)


# ---------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="persona sweep", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", help="a W&B sweep file (grid or random)")
    parser.add_argument("--parallel", type=int, default=1,
                        help="runs at a time (CPU: the cores are split; GPUs: one each)")
    parser.add_argument("--count", type=int, default=None,
                        help="grid: the first K points; random: K draws (default run_cap); "
                             "--agent: runs per agent")
    parser.add_argument("--out", default=None, help="sweep folder (default runs/sweeps/<name>)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the points, their commands and states; run nothing")
    parser.add_argument("--agent", action="store_true",
                        help="online: `wandb sweep` FILE, then --parallel `wandb agent`s")
    parser.add_argument("--sweep-id", default=None,
                        help="--agent: join this existing sweep (entity/project/id)")
    parser.add_argument("--print-id", action="store_true",
                        help="--agent: create the sweep, print its id, run no agent")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.parallel < 1:
        raise UserError(f"--parallel: expected a positive number of runs, got {args.parallel}")
    if args.count is not None and args.count < 1:
        raise UserError(f"--count: expected a positive number, got {args.count}")
    spec = load_sweep(args.file)
    if args.agent:
        return run_agent(spec, args.parallel, args.count, args.sweep_id, args.print_id)
    out = Path(args.out) if args.out else DEFAULT_OUT / spec.name
    points = plan(spec, out, args.count)
    finished_points(points, out)
    todo = [p for p in points if p.state == "pending"]
    print(f"[sweep] {spec.name}: {len(points)} points, {len(points) - len(todo)} finished "
          f"earlier, {len(todo)} to run, {args.parallel} at a time -> {out}")
    if args.dry_run:
        for point in points:
            print(f"  {point.state:<9} {point.name}: {shlex.join(point.argv)}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpus = cuda_device_count()
    run_points(spec, points, out, args.parallel, dict(os.environ), cpus or 1, gpus)
    failed = [p.name for p in points if p.state == "failed"]
    print(f"[sweep] {spec.name}: {sum(p.state in ('done', 'finished') for p in points)}/"
          f"{len(points)} finished" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def cuda_device_count() -> int:
    """GPUs this process may use (0 without torch CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
