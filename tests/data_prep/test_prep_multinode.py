"""`persona prep` on several nodes (data_prep/cli.py), tested as far as one machine allows.

- Two separate processes, each one "node" of ``--trainer.num_nodes 2 --trainer.devices 1
  --trainer.strategy ddp`` on CPU (gloo), told their place by the variables Lightning's
  ``LightningEnvironment`` reads (MASTER_ADDR, MASTER_PORT, NODE_RANK, WORLD_SIZE, LOCAL_RANK):
  every frame is written once, by the global rank the distributed sampler deals it to, and the
  files equal a single-process run's.
- Under SLURM variables (no process launched) the prep trainer takes its global rank and world
  size from ``SLURMEnvironment``, and only global rank 0 locks the subject.

The stage below is importable as ``test_prep_multinode.RankStage`` (tests/data_prep on
PYTHONPATH): the node processes name it as ``--model.class_path``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from data_prep.cli import build_cli, main, subject_lock
from data_prep.stage import PrepStage, split_frame_indices
from persona.locks import lock_folder

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
LUMA_THRESHOLD = 128  # the stage's known answer: mean RGB > 128 is "person"
SPLITS = ["generated_0", "generated_1", "test"]  # 3 + 2 + 2 = 7 frames: uneven over 2 nodes
NUM_NODES = 2  # emulated nodes (one process each)
NODE_TIMEOUT_S = 120  # a node process that hangs (e.g. a missed rendezvous) fails the test
RANK_TEMPLATE = "{split}/rank/{index}.json"  # where RankStage records who wrote a frame
# variables of an outer launcher that must not leak into the emulated nodes
LAUNCH_PREFIXES = ("SLURM_", "TORCHELASTIC_", "PMI_", "OMPI_", "LSB_", "PL_")
LAUNCH_NAMES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                "MASTER_ADDR", "MASTER_PORT", "KUBERNETES_PORT", "PERSONA_LOCK_WAIT")


class RankStage(PrepStage):
    """Known answers (mask = mean RGB > 128, the mean as float32 .npy) plus the global rank and
    world size of the process that processed the frame."""

    output_templates = ("{split}/masks/{index}.png",)

    def process(self, item: dict[str, Any]) -> dict[str, Any]:
        image = item["image"].cpu().numpy().astype(np.float32)  # [H, W, 3]
        mean = image.mean(axis=-1)  # [H, W]
        split, index = item["split"], int(item["index"])
        return {f"{split}/masks/{index}.png": mean > LUMA_THRESHOLD,
                f"{split}/luma/{index}.npy": mean.astype(np.float32),
                RANK_TEMPLATE.format(split=split, index=index): {
                    "rank": self.trainer.global_rank, "world": self.trainer.world_size}}


def make_subject(path: Path) -> Path:
    """tests/data/tiny_subject.py's subject (loaded under a private name: tests/ is no package)."""
    spec = importlib.util.spec_from_file_location("_multinode_tiny_subject",
                                                  REPO / "tests" / "data" / "tiny_subject.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_tiny_subject(path)


def frames_in_order(root: Path) -> list[tuple[str, int]]:
    """The items of the run in the data set's order (split by split, frame list order)."""
    return [(split, index) for split in SPLITS for index in split_frame_indices(root, split)]


def files_under(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


def prep_argv(subject: Path, num_nodes: int, strategy: str) -> list[str]:
    return ["--model.class_path", "test_prep_multinode.RankStage",
            "--data.subject_dir", str(subject), "--data.splits", json.dumps(SPLITS),
            "--data.overwrite", "true", "--trainer.accelerator", "cpu",
            "--trainer.num_nodes", str(num_nodes), "--trainer.devices", "1",
            "--trainer.strategy", strategy]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def node_env(node_rank: int, port: int) -> dict[str, str]:
    """One emulated node: Lightning's LightningEnvironment variables, nothing of a launcher."""
    env = {key: value for key, value in os.environ.items()
           if key not in LAUNCH_NAMES and not key.startswith(LAUNCH_PREFIXES)}
    env.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                "NODE_RANK": str(node_rank), "WORLD_SIZE": str(NUM_NODES), "LOCAL_RANK": "0",
                "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)]),
                "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"})
    return env


def run_nodes(subject: Path, cwd: Path) -> list[subprocess.CompletedProcess]:
    """Start both nodes at once (they meet at the rendezvous) and wait for both."""
    port = free_port()
    command = [sys.executable, "-m", "data_prep.cli",
               *prep_argv(subject, NUM_NODES, "ddp")]
    nodes = [subprocess.Popen(command, env=node_env(rank, port), cwd=cwd, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for rank in range(NUM_NODES)]
    results = []
    try:
        for node in nodes:
            stdout, stderr = node.communicate(timeout=NODE_TIMEOUT_S)
            results.append(subprocess.CompletedProcess(command, node.returncode, stdout, stderr))
    finally:
        for node in nodes:  # only the processes this test started
            if node.poll() is None:
                node.kill()
                node.wait()
    return results


def test_two_nodes_write_each_frame_once_as_one_process_would(tmp_path: Path) -> None:
    single = make_subject(tmp_path / "single")
    multi = make_subject(tmp_path / "multi")
    frames = frames_in_order(multi)
    assert len(frames) == 7
    for split, index in frames:  # the nodes must write the masks themselves
        (multi / split / "masks" / f"{index}.png").unlink()
    before = files_under(multi)
    # the reference: the same command, one process
    sys.path.insert(0, str(HERE))  # --model.class_path test_prep_multinode.RankStage
    try:
        assert main(prep_argv(single, 1, "auto")) == 0
    finally:
        sys.path.remove(str(HERE))
    start = time.perf_counter()
    results = run_nodes(multi, tmp_path)
    wall = time.perf_counter() - start
    for rank, result in enumerate(results):
        assert result.returncode == 0, f"node {rank}:\n{result.stderr[-3000:]}"
    # the distributed sampler deals item k of the list to global rank k % 2 (no padding):
    # a frame split on the local rank (0 on both nodes) would give both nodes every frame
    for k, (split, index) in enumerate(frames):
        record = json.loads((multi / RANK_TEMPLATE.format(split=split, index=index))
                            .read_text())
        assert record == {"rank": k % NUM_NODES, "world": NUM_NODES}, (split, index)
        single_record = json.loads((single / RANK_TEMPLATE.format(split=split, index=index))
                                   .read_text())
        assert single_record == {"rank": 0, "world": 1}
        for relpath in (f"{split}/masks/{index}.png", f"{split}/luma/{index}.npy"):
            assert (multi / relpath).read_bytes() == (single / relpath).read_bytes(), relpath
    # nothing else was written, and no temporary or lock file is left behind
    expected = {f"{s}/{kind}/{i}.{ext}" for s, i in frames
                for kind, ext in (("masks", "png"), ("luma", "npy"), ("rank", "json"))}
    assert files_under(multi) - before == expected
    assert not list(multi.rglob(".*"))
    # only global rank 0 prints the summary, over all 7 items of both nodes
    assert "7 item(s) processed" in results[0].stdout
    assert "item(s) processed" not in results[1].stdout
    print(f"2 emulated nodes (gloo): {wall:.1f} s")


# ----------------------------------------------------------------------------------------------
# SLURM: 2 nodes x 2 tasks; the process under test is task 3 (node 1, local 1)
SLURM_VARIABLES = {"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "2",
                   "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
                   "SLURM_JOB_NAME": "persona-prep", "SLURM_JOB_ID": "4242",
                   "SLURM_NODELIST": "gpu[07-08]"}


@pytest.fixture
def slurm_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """SLURM's variables for task 3 of 4, no other launcher's; Lightning's process-wide
    rank_zero_only.rank (a DDP trainer sets it on construction) is restored afterwards."""
    from lightning.fabric.utilities import rank_zero as fabric_rank_zero
    from lightning.pytorch.utilities import rank_zero as pytorch_rank_zero
    from lightning_utilities.core import rank_zero as utils_rank_zero

    for name in [*LAUNCH_NAMES, *(k for k in os.environ if k.startswith(LAUNCH_PREFIXES))]:
        monkeypatch.setenv(name, "")  # recorded, so that a value set by Lightning is undone
        monkeypatch.delenv(name)
    for name, value in SLURM_VARIABLES.items():
        monkeypatch.setenv(name, value)
    holders = (fabric_rank_zero.rank_zero_only, pytorch_rank_zero.rank_zero_only,
               utils_rank_zero.rank_zero_only)
    saved = [getattr(holder, "rank", None) for holder in holders]
    yield monkeypatch
    for holder, rank in zip(holders, saved, strict=True):
        if rank is None:
            if hasattr(holder, "rank"):
                del holder.rank
        else:
            holder.rank = rank


def slurm_argv(subject: Path, devices: int) -> list[str]:
    return ["--model.class_path", f"{RankStage.__module__}.RankStage",
            "--data.subject_dir", str(subject), "--trainer.accelerator", "cpu",
            "--trainer.num_nodes", "2", "--trainer.devices", str(devices),
            "--trainer.strategy", "ddp"]


def test_slurm_task_gets_global_rank_and_skips_the_lock(slurm_env: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    subject = make_subject(tmp_path / "tiny")
    trainer = build_cli(slurm_argv(subject, devices=2)).trainer
    assert isinstance(trainer.strategy.cluster_environment, SLURMEnvironment)
    assert (trainer.global_rank, trainer.world_size) == (3, 4)
    assert (trainer.local_rank, trainer.node_rank) == (1, 1)
    assert not trainer.is_global_zero
    assert trainer.strategy.distributed_sampler_kwargs == {"num_replicas": 4, "rank": 3}
    # srun sets none of RANK / LOCAL_RANK / NODE_RANK: the lock follows the trainer's rank.
    # Another writer holds the subject; task 3 runs under it, task 0 is refused
    with lock_folder(subject, "another writer", wait=False):
        with subject_lock(subject, trainer.global_rank, wait=False):
            pass
        slurm_env.setenv("SLURM_PROCID", "0")
        slurm_env.setenv("SLURM_LOCALID", "0")
        slurm_env.setenv("SLURM_NODEID", "0")
        zero = build_cli(slurm_argv(subject, devices=2)).trainer
        assert zero.global_rank == 0 and zero.is_global_zero
        with pytest.raises(ValueError, match="in use by"), \
                subject_lock(subject, zero.global_rank, wait=False):
            pass


def test_slurm_tasks_per_node_must_match_devices(slurm_env: pytest.MonkeyPatch,
                                                 tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    subject = make_subject(tmp_path / "tiny")
    # 2 tasks per node but 1 device: the step would hang at the rendezvous; Lightning refuses
    assert main(slurm_argv(subject, devices=1)) == 1
    message = capsys.readouterr().err
    assert message.startswith("persona prep: error:") and "ntasks-per-node=2" in message
