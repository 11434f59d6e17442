"""experiments/slurm/: the SLURM examples cannot rot silently.

Each ``.sbatch`` file passes ``bash -n``; its ``#SBATCH`` lines come before the first command
(sbatch ignores later ones); the job's shape agrees with the command it runs (prep: nodes =
``--trainer.num_nodes``, ntasks-per-node = GPUs per node = ``--trainer.devices``; sweep agents:
one task and one GPU per array task). Run under bash with a stand-in ``srun`` on PATH, each
script hands its arguments on as documented, and the prep command line is accepted by
``persona prep``'s parser under the SLURM variables of that job shape.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLURM_DIR = REPO / "experiments" / "slurm"
PREP_SCRIPT = SLURM_DIR / "prep_multinode.sbatch"
SWEEP_SCRIPT = SLURM_DIR / "sweep_agents.sbatch"
DIRECTIVE = "#SBATCH"
# sbatch's one-letter options used in directives -> their long names
SHORT_OPTIONS = {"-N": "nodes", "-n": "ntasks", "-c": "cpus-per-task", "-t": "time",
                 "-J": "job-name", "-o": "output", "-e": "error", "-a": "array", "-G": "gpus"}
# a stand-in for srun: records its arguments (one per line) and WANDB_MODE, then succeeds
FAKE_SRUN = """#!/bin/bash
printf '%s\\n' "$@" > "$SRUN_RECORD"
printf '%s' "${WANDB_MODE:-}" > "$SRUN_RECORD.wandb_mode"
"""


def sbatch_options(path: Path) -> dict[str, str]:
    """The #SBATCH options of a batch script, by long name ("nodes": "2")."""
    options: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.startswith(DIRECTIVE + " "):
            continue
        tokens = shlex.split(line[len(DIRECTIVE):], comments=True)
        while tokens:
            token = tokens.pop(0)
            if token.startswith("--"):
                name, _, value = token[2:].partition("=")
                options[name] = value if _ else tokens.pop(0)
            elif token in SHORT_OPTIONS:
                options[SHORT_OPTIONS[token]] = tokens.pop(0)
            else:
                raise AssertionError(f"{path}: unknown #SBATCH token {token!r}")
    return options


def gpus_per_node(path: Path, options: dict[str, str]) -> int:
    """--gres=gpu:N or gpu:TYPE:N -> N."""
    gres = options.get("gres", "")
    assert gres.startswith("gpu:"), f"{path}: #SBATCH --gres=gpu:N is missing"
    return int(gres.rsplit(":", 1)[1])


def command_lines(path: Path) -> list[str]:
    """The script's lines with backslash continuations joined and comments dropped."""
    joined = path.read_text().replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def command_with(path: Path, words: tuple[str, ...]) -> list[str]:
    """The one command line containing ``words`` in a row, split into words."""
    found = []
    for line in command_lines(path):
        argv = shlex.split(line)
        if any(tuple(argv[i:i + len(words)]) == words for i in range(len(argv))):
            found.append(argv)
    assert len(found) == 1, f"{path}: expected one `{' '.join(words)}` line, found {found}"
    return found[0]


def option_value(argv: list[str], name: str) -> str:
    """The value of ``--name V`` or ``--name=V`` in argv."""
    for i, word in enumerate(argv):
        if word == name:
            return argv[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    raise AssertionError(f"{name} missing from {argv}")


def run_script(script: Path, args: list[str], tmp_path: Path) -> tuple[int, list[str], str]:
    """Run a batch script under bash with the fake srun first on PATH: (status, srun's
    arguments, WANDB_MODE srun saw)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    srun = bin_dir / "srun"
    srun.write_text(FAKE_SRUN)
    srun.chmod(0o755)
    record = tmp_path / "srun_args.txt"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "SRUN_RECORD": str(record), "SLURM_SUBMIT_DIR": str(REPO)}
    env.pop("WANDB_MODE", None)
    result = subprocess.run(["bash", str(script), *args], env=env, capture_output=True,
                            text=True, timeout=30)
    if result.returncode != 0:
        return result.returncode, [], result.stderr
    mode = Path(f"{record}.wandb_mode").read_text()
    return 0, record.read_text().splitlines(), mode


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("script", [PREP_SCRIPT, SWEEP_SCRIPT], ids=lambda p: p.name)
def test_scripts_parse_and_directives_come_first(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = script.read_text().splitlines()
    assert lines[0] == "#!/bin/bash"
    first_command = next(i for i, line in enumerate(lines)
                         if line.strip() and not line.lstrip().startswith("#"))
    directives = [i for i, line in enumerate(lines) if line.startswith(DIRECTIVE)]
    assert directives and max(directives) < first_command, \
        f"{script}: sbatch ignores #SBATCH lines after the first command"


def test_prep_job_shape_matches_its_persona_command() -> None:
    options = sbatch_options(PREP_SCRIPT)
    nodes, tasks = int(options["nodes"]), int(options["ntasks-per-node"])
    assert nodes > 1, "the example is a multi-node one"
    argv = command_with(PREP_SCRIPT, ("persona", "prep"))
    assert argv[0] == "srun", "SLURM starts the ranks: persona prep runs under srun"
    assert int(option_value(argv, "--trainer.num_nodes")) == nodes
    # Lightning needs one task per device on every node
    assert int(option_value(argv, "--trainer.devices")) == tasks
    assert gpus_per_node(PREP_SCRIPT, options) == tasks
    assert option_value(argv, "--trainer.strategy") == "ddp"
    assert "ntasks" not in options, "--ntasks without --ntasks-per-node is refused by Lightning"


def test_sweep_job_is_an_array_of_one_gpu_agents() -> None:
    options = sbatch_options(SWEEP_SCRIPT)
    assert "array" in options
    assert int(options["nodes"]) == 1 and int(options["ntasks-per-node"]) == 1
    assert gpus_per_node(SWEEP_SCRIPT, options) == 1
    argv = command_with(SWEEP_SCRIPT, ("wandb", "agent"))
    assert argv[0] == "srun" and "--count" in argv


def test_sweep_script_runs_one_agent_with_the_given_sweep(tmp_path: Path) -> None:
    status, srun_args, wandb_mode = run_script(SWEEP_SCRIPT, ["me/persona/abc123", "3"],
                                               tmp_path)
    assert status == 0
    assert srun_args == ["wandb", "agent", "--count", "3", "me/persona/abc123"]
    assert wandb_mode == "online"  # the sweep reads the runs' metrics from the server
    status, _, stderr = run_script(SWEEP_SCRIPT, [], tmp_path)
    assert status != 0 and "usage: sbatch sweep_agents.sbatch ENTITY/PROJECT/SWEEP_ID" in stderr
    # the installed W&B client has the flag the script uses
    wandb = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "wandb"
    if not wandb.exists():
        pytest.skip("no wandb executable next to the interpreter")
    help_text = subprocess.run([str(wandb), "agent", "--help"], capture_output=True,
                               text=True, timeout=60).stdout
    assert "--count" in help_text


@pytest.fixture
def slurm_job_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The SLURM variables of task 0 of the prep example's job; Lightning's process-wide
    rank_zero_only.rank is restored afterwards."""
    from lightning.fabric.utilities import rank_zero as fabric_rank_zero
    from lightning.pytorch.utilities import rank_zero as pytorch_rank_zero
    from lightning_utilities.core import rank_zero as utils_rank_zero

    options = sbatch_options(PREP_SCRIPT)
    nodes, tasks = int(options["nodes"]), int(options["ntasks-per-node"])
    launcher = [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC_"))]
    for name in ["RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR",
                 "MASTER_PORT", *launcher]:
        monkeypatch.setenv(name, "")  # recorded, so that a value Lightning sets is undone
        monkeypatch.delenv(name)
    variables = {"SLURM_NTASKS": str(nodes * tasks), "SLURM_NTASKS_PER_NODE": str(tasks),
                 "SLURM_NNODES": str(nodes), "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                 "SLURM_NODEID": "0", "SLURM_JOB_NAME": options["job-name"],
                 "SLURM_JOB_ID": "77", "SLURM_NODELIST": "node[01-02]"}
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    holders = (fabric_rank_zero.rank_zero_only, pytorch_rank_zero.rank_zero_only,
               utils_rank_zero.rank_zero_only)
    saved = [getattr(holder, "rank", None) for holder in holders]
    yield variables
    for holder, rank in zip(holders, saved, strict=True):
        if rank is not None:
            holder.rank = rank


def test_prep_script_command_is_accepted_by_persona_prep(tmp_path: Path,
                                                         slurm_job_env: dict[str, str]) -> None:
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from data_prep.cli import build_cli

    config = tmp_path / "stage.yaml"  # the base stage: constructing it loads nothing
    config.write_text("model:\n  class_path: data_prep.stage.PrepStage\n")
    subject = tmp_path / "subject"
    status, srun_args, _ = run_script(
        PREP_SCRIPT, [str(config), str(subject), "--data.splits", "[captured]"], tmp_path)
    assert status == 0
    assert srun_args[0] == "--kill-on-bad-exit=1" and srun_args[1:3] == ["persona", "prep"]
    prep_args = srun_args[3:]
    assert prep_args[:4] == ["--config", str(config), "--data.subject_dir", str(subject)]
    assert prep_args[-2:] == ["--data.splits", "[captured]"]  # extra options come last
    # this machine has no GPUs: a later --trainer.accelerator cpu overrides the script's gpu
    cli = build_cli([*prep_args, "--trainer.accelerator", "cpu"])
    trainer = cli.trainer
    assert isinstance(trainer.strategy.cluster_environment, SLURMEnvironment)
    assert trainer.world_size == int(slurm_job_env["SLURM_NTASKS"])
    assert trainer.num_nodes == int(slurm_job_env["SLURM_NNODES"])
    assert trainer.num_devices == int(slurm_job_env["SLURM_NTASKS_PER_NODE"])
    # the check Lightning makes when predict launches (raises on a mismatch)
    trainer.strategy.cluster_environment.validate_settings(num_devices=trainer.num_devices,
                                                           num_nodes=trainer.num_nodes)
    assert trainer.global_rank == 0 and cli.datamodule.splits == ["captured"]
