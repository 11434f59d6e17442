"""experiments/bench/train_step.py: its part accounting, backward attribution, and the JSON of a
--smoke run at two subdivision levels (structure only: no timing assertions)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from experiment_scripts import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "bench" / "train_step.py"
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
SMOKE_TIMEOUT_S = 300  # a hung run fails instead of stalling the suite (~35 s when it works)
# parts every training step of the demo config runs (both kinds), so each takes time
ALWAYS_RUN = ("posing.smplx", "posing.lbs", "skinning_lookup.grid_sample", "deformer.triplane",
              "deformer.mlp", "render.base", "render.refined", "losses.image_geometry",
              "losses.regularisers", "backward", "optimizer")
# the demo skins level 0 with the template's weights; the smoke run times the authors' volume
# lookup instead, so every part (the 13-point lookup included) is exercised
SMOKE_OVERRIDE = ("model.skinning.method", "volume")
INPUT_ONLY = ("render.face_patch", "losses.face_patch")  # the input image's face patch terms


bench = load_script("bench/train_step.py", "train_step_bench")


class FakeClock:
    """time.perf_counter stand-in: advances only when told to."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_nested_parts_count_exclusive_time_and_patches_are_undone(monkeypatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(bench, "time", clock)
    timer = bench.PartTimer()

    def inner() -> None:
        clock.now += 5.0

    def work() -> None:
        clock.now += 1.0
        module.inner()
        module.inner()

    owner = types.SimpleNamespace(work=work)
    module = types.ModuleType("fake")
    module.inner = inner
    targets = [(owner, "work", lambda fn: bench.timed(timer, "outer", fn)),
               (module, "inner", lambda fn: bench.timed(timer, "inner", fn))]
    with pytest.raises(RuntimeError), bench.patched(targets):
        owner.work()
        assert timer.totals == {"outer": 1.0, "inner": 10.0}  # inner's time not in outer's
        assert timer.calls == {"outer": 1, "inner": 2}
        raise RuntimeError("restored even on error")
    assert owner.work is work and module.inner is inner


def test_backward_nodes_go_to_the_range_of_their_forward_op() -> None:
    p, node = bench.RANGE_PREFIX, bench.BACKWARD_NODE
    events = [  # (name, start ns, end ns, sequence nr)
        (p + "forward.other", 0, 100, -1),
        (p + "render.base", 10, 40, -1),
        ("aten::mul", 12, 14, 7),
        (p + "deformer.mlp", 50, 90, -1),
        (p + "deformer.triplane", 55, 60, -1),
        ("aten::grid_sampler_2d", 56, 58, 8),
        ("aten::addmm", 70, 80, 9),
        (p + "backward", 200, 300, -1),
        (node + "AddmmBackward0", 210, 240, 9),
        (node + "GridSampler2DBackward0", 240, 250, 8),
        (node + "MulBackward0", 250, 270, 7),
        ("aten::mul", 251, 260, 12),  # an op inside a node: counted with the node
        (node + "torch::autograd::AccumulateGrad", 270, 280, -1),
    ]
    shares, nodes = bench.backward_shares(events)
    assert shares["total"] == pytest.approx(100e-9)
    assert shares["deformer.mlp"] == pytest.approx(30e-9)
    assert shares["deformer.triplane"] == pytest.approx(10e-9)
    assert shares["render.base"] == pytest.approx(20e-9)
    assert shares["backward.accumulate_grad"] == pytest.approx(10e-9)
    assert shares["backward.engine"] == pytest.approx(30e-9)  # the uncovered 30 ns
    assert nodes["deformer.triplane: GridSampler2DBackward0"] == pytest.approx(10e-9)
    report = bench.backward_report(shares, backward_median=2.0)
    assert report["deformer.mlp"]["estimate_s"] == pytest.approx(0.6)
    assert sum(r["fraction_of_backward"] for r in report.values()) == pytest.approx(1.0)


def test_a_missing_subject_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="make demo"):
        bench.main(["--subject", str(tmp_path / "nowhere"), "--levels", "0"])


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    """The --smoke JSON at levels 0 and 1, run as `make test` runs (passive OpenMP waits: with
    spinning threads on a shared 2-core machine the run took 4x longer), in a subprocess so the
    run's global torch settings (deterministic algorithms, seeds) stay out of this process."""
    out = tmp_path_factory.mktemp("bench") / "train_step.json"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--levels", "0", "1",
                           "--set", *SMOKE_OVERRIDE, "--out", str(out)],
                          cwd=SCRIPT.parents[2], env=env,
                          capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list(out.parent.glob(".*.tmp*"))  # written via a temporary name, renamed
    document = json.loads(out.read_text())
    assert json.loads(done.stdout) == document  # printed and written alike
    return document


def test_smoke_reports_setup_and_both_levels(smoke) -> None:
    doc = smoke
    assert doc["torch"] == torch.__version__ and doc["threads"] >= 1
    demo = yaml.safe_load(bench.DEMO_CONFIG.read_text())
    assert doc["deterministic_algorithms"] is bool(demo["trainer"].get("deterministic", False))
    if doc["deterministic_algorithms"]:  # the fit's setting (persona/lightning_cli.py)
        from persona.lightning_cli import FILL_UNINITIALIZED_MEMORY

        assert doc["fill_uninitialized_memory"] is FILL_UNINITIALIZED_MEMORY
    assert doc["reference"]["before_s"] > 0 and doc["reference"]["after_s"] > 0
    assert doc["overrides"] == dict([SMOKE_OVERRIDE])
    levels = doc["levels"]
    assert [lv["subdivision_levels"] for lv in levels] == [0, 1]
    assert levels[1]["gaussians"] > 3 * levels[0]["gaussians"]  # one 1-to-4 split
    for lv in levels:
        assert lv["pixels"] == lv["width"] * lv["height"] > 0
        assert lv["renderer"] == "TorchRenderer"  # the demo config's settings, not defaults
        assert lv["lpips"] == demo["model"]["losses"]["lpips"]
        assert lv["face_patch_size"] == demo["model"]["losses"]["face_patch_size"]
        assert lv["skinning"]["grid_size"] == demo["model"]["skinning"]["grid_size"]
        assert lv["skinning"]["method"] == SMOKE_OVERRIDE[1]  # --set reached the system
        assert lv["triplane_resolution"] == demo["model"]["deformer"]["triplane_resolution"]
        assert set(lv["kinds"]) == {"input", "generated"}


def test_smoke_parts_add_up_to_the_step(smoke) -> None:
    doc = smoke
    for lv in doc["levels"]:
        for kind, rep in lv["kinds"].items():
            assert rep["step_median_s"] > 0 and rep["reference_s"] > 0
            assert len(rep["step_s"]) == bench.SMOKE_STEPS
            parts = rep["parts"]
            assert list(parts) == list(bench.PARTS)
            for name, row in parts.items():
                assert 0.0 <= row["fraction"] <= 1.0, (kind, name)
                assert row["median_s"] >= 0.0 and math.isfinite(row["over_reference"])
            assert sum(r["fraction"] for r in parts.values()) == pytest.approx(1.0)
            assert sum(r["fraction"] for r in rep["groups"].values()) == pytest.approx(1.0)
            assert set(rep["groups"]) == set(bench.GROUPS)
            for name in ALWAYS_RUN:
                assert parts[name]["median_s"] > 0 and parts[name]["calls_per_step"] >= 1, \
                    (kind, name)
            for name in INPUT_ONLY:  # the two kinds run different loss terms
                assert (parts[name]["calls_per_step"] >= 1) == (kind == "input"), (kind, name)
            forward = [r["median_s"] for n, r in parts.items()
                       if n not in ("backward", "optimizer", "other")]
            assert sum(forward) < 2 * rep["step_median_s"]


def test_smoke_splits_the_backward_by_part(smoke) -> None:
    doc = smoke
    for lv in doc["levels"]:
        for kind, rep in lv["kinds"].items():
            backward = rep["backward_by_part"]
            assert rep["profiled_backward_s"] > 0
            assert sum(r["fraction_of_backward"] for r in backward.values()) == \
                pytest.approx(1.0, abs=0.02)
            for name in ("deformer.mlp", "deformer.triplane", "render.base", "render.refined"):
                assert backward[name]["estimate_s"] > 0, (kind, name)
            assert "posing.mesh" not in backward  # posed without gradient
            assert rep["top_backward_nodes"] and all(
                0 < r["fraction_of_backward"] <= 1 for r in rep["top_backward_nodes"].values())
