"""`persona compare` (persona/study/compare.py): grouping, mean ± sample std over seeds, baseline
effect sizes, skipped runs, the CSV/Markdown files and the self-contained HTML report, on fake run
folders with chosen numbers; one real tiny `persona fit` + `persona test` run; and the report in
headless Chromium (driven over the DevTools protocol: no console error, no exception, nothing
fetched besides the page itself, every image decoded). The browser test skips with the reason
when Chromium (/usr/bin/chromium, or PERSONA_CHROMIUM) is missing."""

from __future__ import annotations

import base64
import csv
import json
import math
import os
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from persona.cli import main as persona
from persona.errors import UserError
from persona.study import compare
from persona.study.compare import (
    build_comparison,
    differing_keys,
    mean_curve,
    read_csv_logs,
)

MODE = "model.deformer.mode"
# the fake study: group -> [(seed, psnr, ssim)]
PSNR = {"mean": [(0, 20.0, 0.90), (1, 22.0, 0.92), (2, 27.0, 0.94)],
        "off": [(0, 25.0, 0.95), (1, 26.0, 0.95)]}
DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
CHROMIUM = os.environ.get("PERSONA_CHROMIUM", "/usr/bin/chromium")
BROWSER_TIMEOUT_S = 60  # the whole headless session
PIPE_READ_BYTES = 1 << 16


# ---------------------------------------------------------------------------- fake runs
def _png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (12, 8)) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), colour, np.uint8)).save(path)
    return path.read_bytes()


def _config(run: Path, seed: int, mode: str, lpips: float = 0.0) -> dict:
    """A resolved config as `persona fit` writes it, with the keys compare reads."""
    return {"seed_everything": seed,
            "trainer": {"default_root_dir": str(run), "max_steps": 10,
                        "logger": [{"class_path": "CSVLogger",
                                    "init_args": {"save_dir": str(run)}}]},
            "model": {"deformer": {"mode": mode, "ring_size": 4},
                      "losses": {"lpips": lpips}, "cache_dir": str(run / "cache")},
            "data": {"subject_dir": f"/subjects/{run.name}", "epoch_length": 5},
            "ckpt_path": None}


def fake_run(root: Path, name: str, seed: int, mode: str, psnr: float, ssim: float,
             lpips: float = 0.0, curve_offset: float = 0.0,
             extra: dict[str, float] | None = None) -> Path:
    """RUN with config.yaml, metrics.json, two CSV logger versions (fit, test) and media."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(_config(run, seed, mode, lpips)))
    (run / "metrics.json").write_text(json.dumps({
        "protocol": {"name": "authors"}, "num_frames": 2, "frames": [],
        "mean": {"psnr": psnr, "ssim": ssim, "lpips": None, "flag": True, **(extra or {})},
        "deformation": {"garment": {"total_error_mm": 10.0 + seed, "gaussians": 5}}}))
    fit_log = run / "csv" / "version_0" / "metrics.csv"
    fit_log.parent.mkdir(parents=True)
    fit_log.write_text("epoch,step,train/loss,val/psnr\n"
                       f"0,0,{4.0 + curve_offset},\n0,1,{3.0 + curve_offset},\n"
                       f"0,1,,{psnr - 1}\n0,2,{2.0 + curve_offset},\n")
    test_log = run / "csv" / "version_1" / "metrics.csv"
    test_log.parent.mkdir(parents=True)
    test_log.write_text(f"epoch,step,test/psnr\n,2,{psnr}\n")
    _png(run / "media" / "train_grid_0000000.png", (255, 0, 0))
    _png(run / "media" / "val_grid_0000002.png", (0, 255, 0))
    _png(run / "media" / "val_grid_0000010.png", (0, 0, seed * 40 + (100 if mode == "off" else 0)))
    return run


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """STUDY/<mode>_s<seed>: the PSNR table's runs, train/loss offset by +1 in group "off"."""
    root = tmp_path / "study"
    for mode, rows in PSNR.items():
        for seed, psnr, ssim in rows:
            fake_run(root, f"{mode}_s{seed}", seed, mode, psnr, ssim,
                     curve_offset=1.0 if mode == "off" else 0.0)
    return root


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


# ---------------------------------------------------------------------------- the tables
def test_groups_by_the_differing_key_with_mean_and_sample_std(study: Path, tmp_path: Path):
    out = tmp_path / "out"
    assert compare.main([str(study / "*"), "--out", str(out)]) == 0
    rows = {row["group"]: row for row in _csv(out / "compare.csv")}
    assert list(rows) == ["model.deformer.mode=mean", "model.deformer.mode=off"]
    mean, off = rows["model.deformer.mode=mean"], rows["model.deformer.mode=off"]
    assert mean[MODE] == "mean" and mean["n"] == "3" and mean["seeds"] == "0 1 2"
    assert float(mean["psnr_mean"]) == pytest.approx(23.0)
    assert float(mean["psnr_std"]) == pytest.approx(math.sqrt((9 + 1 + 16) / 2))  # ddof 1
    assert float(mean["ssim_mean"]) == pytest.approx(0.92)
    assert float(mean["ssim_std"]) == pytest.approx(0.02)
    assert float(off["psnr_mean"]) == pytest.approx(25.5)
    assert float(off["psnr_std"]) == pytest.approx(math.sqrt(0.5))
    assert off["n"] == "2" and off["psnr_n"] == "2"
    # the deformation section's garment keys are flattened; null and boolean entries are not
    assert float(mean["deform_total_error_mm_mean"]) == pytest.approx(11.0)
    assert "lpips_mean" not in mean and "flag_mean" not in mean
    markdown = (out / "compare.md").read_text()
    assert "| model.deformer.mode=mean | 3 | 0 1 2 | 23.00 ± 3.61 | 0.9200 ± 0.0200 |" \
        in markdown
    assert "| model.deformer.mode=off | 2 | 0 1 | 25.50 ± 0.71 | 0.9500 ± 0.0000 |" in markdown
    assert "Grouped by the config keys that differ between the runs: `model.deformer.mode`." \
        in markdown


def test_default_grouping_ignores_seed_and_location_keys(study: Path):
    comparison = build_comparison([str(study)])  # a folder of runs stands for its runs
    # the seed, default_root_dir, logger save_dir, cache_dir and subject_dir differ too
    assert comparison.keys == [MODE]
    assert differing_keys([_config(Path("/a"), 0, "x"), _config(Path("/b"), 1, "x")]) == []
    same = build_comparison([str(study / "mean_s*")])
    assert same.keys == [] and list(same.groups) == ["all runs"]
    assert [r.seed for r in same.groups["all runs"]] == [0, 1, 2]


def test_by_groups_by_the_given_keys_and_names_the_others(study: Path, tmp_path: Path):
    fake_run(study, "mean_lpips", 3, "mean", 30.0, 0.96, lpips=0.1)
    comparison = build_comparison([str(study)])
    assert comparison.keys == [MODE, "model.losses.lpips"]
    by = build_comparison([str(study)], by=["model.losses.lpips"])
    assert list(by.groups) == ["model.losses.lpips=0.0", "model.losses.lpips=0.1"]
    assert [r.seed for r in by.groups["model.losses.lpips=0.0"]] == [0, 0, 1, 1, 2]
    assert by.summary["model.losses.lpips=0.1"]["psnr"]["n"] == 1
    assert by.other_keys == [MODE]
    both = build_comparison([str(study)], by=[MODE, "model.deformer.ring_size"])
    assert list(both.groups) == ["model.deformer.mode=mean, model.deformer.ring_size=4",
                                 "model.deformer.mode=off, model.deformer.ring_size=4"]
    # a subtree groups by its whole value
    assert len(build_comparison([str(study)], by=["model.losses"]).groups) == 2
    out = tmp_path / "out"
    assert compare.main([str(study), "--by", "model.losses.lpips", "--out", str(out)]) == 0
    assert "Also differing, not grouped by: `model.deformer.mode`." in \
        (out / "compare.md").read_text()
    with pytest.raises(UserError, match=r"--by model\.deformer\.mdoe: .*did you mean "
                                        r"model\.deformer\.mode\?"):
        build_comparison([str(study)], by=["model.deformer.mdoe"])


def test_by_config_groups_by_the_fragments_each_command_layered(tmp_path: Path):
    """A sweep over config fragments (experiments/sweeps/paper_ablations.yaml) is grouped by the
    fragment stems read from trial.json; the files every run layered are left out; region world
    errors are columns."""
    root = tmp_path / "sweep"
    fragments = {"base": [], "seams_off": ["configs/ablation/seams_off.yaml"],
                 "both": ["configs/ablation/seams_off.yaml", "x/image_weight_1.yaml"]}
    for name, extra in fragments.items():
        for seed in (0, 1):
            run = fake_run(root, f"{name}_s{seed}", seed, "mean", 20.0 + seed + len(extra), 0.9,
                           extra=None)
            report = json.loads((run / "metrics.json").read_text())
            report["deformation"]["skirt"] = {"world_error_mm": 30.0 + len(extra)}
            (run / "metrics.json").write_text(json.dumps(report))
            args = ["--config", "configs/demo.yaml", *[f"--config={f}" for f in extra],
                    f"--seed_everything={seed}"]
            (run / "trial.json").write_text(json.dumps({"args": args}))
    # the resolved configs are identical: only the fragments tell the runs apart
    assert build_comparison([str(root)]).keys == []
    by = build_comparison([str(root)], by=["config"], baseline="(base)")
    assert list(by.groups) == ["config=(base)", "config=seams_off",
                               "config=seams_off+image_weight_1"]
    assert by.summary["config=seams_off"]["psnr"]["mean"] == pytest.approx(21.5)
    assert by.summary["config=seams_off+image_weight_1"]["skirt_world_error_mm"]["mean"] == 32.0
    assert by.differences["config=seams_off"]["psnr"][0] == pytest.approx(1.0)
    # a run without trial.json has no known fragments
    (root / "base_s1" / "trial.json").unlink()
    assert "config=(unset)" in build_comparison([str(root)], by=["config"]).groups
    for run in root.iterdir():
        (run / "trial.json").unlink(missing_ok=True)
    with pytest.raises(UserError, match=r"--by config: no run has trial\.json"):
        build_comparison([str(root)], by=["config"])


def test_baseline_difference_in_pooled_seed_stds(study: Path, tmp_path: Path):
    out = tmp_path / "out"
    assert compare.main([str(study), "--baseline", "mean", "--out", str(out)]) == 0
    rows = {row["group"]: row for row in _csv(out / "compare.csv")}
    pooled = math.sqrt((2 * 13.0 + 1 * 0.5) / 3)  # (n-1)-weighted variances of both groups
    off = rows["model.deformer.mode=off"]
    assert float(off["psnr_diff"]) == pytest.approx(2.5)
    assert float(off["psnr_effect"]) == pytest.approx(2.5 / pooled)
    assert float(rows["model.deformer.mode=mean"]["psnr_diff"]) == 0.0
    markdown = (out / "compare.md").read_text()
    assert "## Difference to `model.deformer.mode=mean`" in markdown
    assert f"| model.deformer.mode=off | +2.50 (+{2.5 / pooled:.1f}σ) |" in markdown
    with pytest.raises(UserError, match="--baseline nope: no such group"):
        build_comparison([str(study)], baseline="nope")


def test_metrics_subset_and_the_per_run_csv(study: Path, tmp_path: Path):
    out = tmp_path / "out"
    assert compare.main([str(study), "--metrics", "ssim,psnr", "--out", str(out)]) == 0
    head = next(csv.reader(open(out / "compare.csv")))
    assert head == ["group", MODE, "n", "seeds", "ssim_mean", "ssim_std", "ssim_n",
                    "psnr_mean", "psnr_std", "psnr_n"]
    runs = _csv(out / "compare_runs.csv")
    assert [(r["run"], r[MODE], r["seed"], float(r["psnr"])) for r in runs] == [
        (str(study / f"{mode}_s{seed}"), mode, str(seed), psnr)
        for mode, rows in PSNR.items() for seed, psnr, _ in rows]
    assert list(runs[0]) == ["run", "group", MODE, "seed", "ssim", "psnr"]
    with pytest.raises(UserError, match=r"--metrics nope: in no run's metrics\.json"):
        build_comparison([str(study)], metrics=["nope"])


DOCS = Path(__file__).resolve().parents[2] / "docs" / "EXPERIMENTS.md"
# the docs' example: the tiny runs' metrics.json values (psnr, ssim, mask_iou, garment_psnr)
DOCS_RUNS = {("mean", 0): (23.076423643069724, 0.9171954291251249, 86.64886241856672,
                           17.825067421836),
             ("mean", 1): (23.109840716820493, 0.9178448138435046, 86.6378041499309,
                           17.805953061055778),
             ("off", 0): (23.07187764574589, 0.9173565052081454, 86.66624880620338,
                          17.756909036695436),
             ("off", 1): (23.07187764574589, 0.9173565052081454, 86.66624880620338,
                          17.756909036695436)}


def test_the_docs_example_is_what_compare_writes(tmp_path: Path):
    """docs/EXPERIMENTS.md shows compare.md of its example command; the same runs' metrics
    give the same text."""
    text = DOCS.read_text()
    command = re.search(r"^persona compare runs/cmp (.*) --out runs/cmp/compare$", text, re.M)
    shown = re.search(r"^(# Comparison of 4 runs\n.*?)^```$", text, re.M | re.S)
    assert command and shown, "the example is missing from docs/EXPERIMENTS.md"
    root = tmp_path / "cmp"
    for (mode, seed), (psnr, ssim, mask_iou, garment_psnr) in DOCS_RUNS.items():
        fake_run(root, f"{mode}_s{seed}", seed, mode, psnr, ssim,
                 extra={"mask_iou": mask_iou, "garment_psnr": garment_psnr})
    out = tmp_path / "out"
    assert compare.main([str(root), *command.group(1).split(), "--out", str(out)]) == 0
    assert (out / "compare.md").read_text() == shown.group(1)


# ---------------------------------------------------------------------------- runs found
def test_unfinished_and_broken_runs_are_skipped_with_the_reason(study: Path, tmp_path: Path,
                                                                capsys):
    unfinished = fake_run(study, "unfinished", 5, "mean", 1.0, 0.1)
    (unfinished / "metrics.json").unlink()
    bad_yaml = fake_run(study, "bad_yaml", 6, "mean", 1.0, 0.1)
    (bad_yaml / "config.yaml").write_text("model: [unclosed\n")
    bad_json = fake_run(study, "bad_json", 7, "mean", 1.0, 0.1)
    (bad_json / "metrics.json").write_text('{"mean": {"psnr": 1.0')
    no_mean = fake_run(study, "no_mean", 8, "mean", 1.0, 0.1)
    (no_mean / "metrics.json").write_text('{"frames": []}')
    out = tmp_path / "out"
    assert persona(["compare", str(study / "*"), str(tmp_path / "missing*"),
                    "--out", str(out)]) == 0
    markdown = (out / "compare.md").read_text()
    skipped = markdown.split("## Skipped", 1)[1]
    assert f"- {unfinished}: unfinished: no metrics.json (run `persona test" in skipped
    assert f"- {bad_yaml}: config.yaml: unreadable (" in skipped
    assert f"- {bad_json}: metrics.json: unreadable (" in skipped
    assert f"- {no_mean}: metrics.json: no \"mean\" metrics" in skipped
    assert f"- {tmp_path / 'missing*'}: matched nothing" in skipped
    rows = {row["group"]: row for row in _csv(out / "compare.csv")}
    assert rows["model.deformer.mode=mean"]["n"] == "3"  # the skipped runs are not counted
    html = (out / "compare.html").read_text()
    assert "Skipped" in html and "unfinished: no metrics.json" in html
    assert "Traceback" not in capsys.readouterr().err


def test_no_runs_is_a_one_line_error_naming_the_patterns(tmp_path: Path, capsys):
    (tmp_path / "empty").mkdir()
    status = persona(["compare", str(tmp_path / "nothing*"), str(tmp_path / "empty"),
                      "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 1
    assert err.count("\n") == 1 and err.startswith("persona compare: no finished runs in ")
    assert str(tmp_path / "nothing*") in err and str(tmp_path / "empty") in err
    assert not (tmp_path / "out").exists()


def test_globs_are_expanded_here_and_runs_counted_once(study: Path):
    comparison = build_comparison([str(study / "off_*"), str(study / "off_s0"),
                                   str(study / "*_s1")])
    assert sorted(r.path.name for r in comparison.runs) == ["mean_s1", "off_s0", "off_s1"]


# ---------------------------------------------------------------------------- curves and HTML
def test_csv_logs_merge_versions_and_mean_curves_over_seeds(tmp_path: Path):
    run = tmp_path / "run"
    for version, text in ((0, "step,train/loss\n0,5.0\n1,4.0\n"),
                          (1, "step,train/loss,val/psnr\n1,3.0,\n2,2.0,nan\n,9.0,\n"),
                          (10, "step,train/loss\n3,1.0\n")):
        path = run / "csv" / f"version_{version}" / "metrics.csv"
        path.parent.mkdir(parents=True)
        path.write_text(text)
    logs = read_csv_logs(run)
    # version_1 (resumed) wins at step 1; version_10 is read after version_1; NaN, no step: out
    assert logs == {"train/loss": {0: 5.0, 1: 3.0, 2: 2.0, 3: 1.0}}
    points = mean_curve([{0: 1.0, 1: 2.0}, {0: 3.0}])
    assert points[0] == (0, 2.0, pytest.approx(math.sqrt(2.0)), 2)
    assert points[1][0] == 1 and points[1][1] == 2.0 and math.isnan(points[1][2])


def test_html_embeds_figures_and_media_and_fetches_nothing(study: Path, tmp_path: Path):
    out = tmp_path / "out"
    assert compare.main([str(study), "--out", str(out)]) == 0
    html = (out / "compare.html").read_text()
    images = [base64.b64decode(data) for data in DATA_URI.findall(html)]
    # 2 learning curves (train/loss, val/psnr) + the per-metric figure + 1 grid per group
    assert len(images) == 5
    assert all(data.startswith(b"\x89PNG\r\n\x1a\n") for data in images)
    # the media of each group is its first seed's newest val grid (val_grid_0000010.png)
    for group in ("mean", "off"):
        expected = (study / f"{group}_s0" / "media" / "val_grid_0000010.png").read_bytes()
        assert expected in images
    assert "learning curve train/loss" in html and "learning curve val/psnr" in html
    assert not re.search(r"https?://", html)
    assert "<script" not in html.lower() and "<link" not in html.lower()
    assert "@import" not in html and "url(" not in html
    assert not list(out.glob(".*.tmp*"))  # atomic writes leave no temporary file
    # the per-metric figure also stands alone, the same PNG as the page's
    assert (out / "compare_metrics.png").read_bytes() in images
    assert compare.main([str(study), "--out", str(out), "--media-per-group", "2",
                         "--curves", "train/loss,nope"]) == 0
    html = (out / "compare.html").read_text()
    assert len(DATA_URI.findall(html)) == 1 + 1 + 4
    assert "no run&#x27;s CSV logs (csv/version_*/metrics.csv) hold nope" in html


def test_curve_means_follow_the_logs(study: Path, monkeypatch):
    """The figure is drawn from the group means: group "off" sits 1.0 above "mean"."""
    drawn = {}
    monkeypatch.setattr(compare, "curve_figure",
                        lambda name, per_group: drawn.setdefault(name, per_group) and b"")
    compare.figures(build_comparison([str(study)]), ["train/loss"])
    curves = drawn["train/loss"]
    assert [p[:2] for p in curves["model.deformer.mode=mean"]] == [(0, 4.0), (1, 3.0), (2, 2.0)]
    assert [p[:2] for p in curves["model.deformer.mode=off"]] == [(0, 5.0), (1, 4.0), (2, 3.0)]
    assert all(p[2] == 0.0 and p[3] == 3 for p in curves["model.deformer.mode=mean"])


# ---------------------------------------------------------------------------- a real run
@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step `persona fit` then a one-frame `persona test` of the tiny config."""
    from persona.data.synth import preset_config, synthesize
    from persona.lightning_cli import BASE_CONFIG

    root = tmp_path_factory.mktemp("compare_real")
    subject = root / "subject"
    synthesize(subject, preset_config("tiny", seed=2))
    run = root / "run"
    assert persona(["fit", "--config", str(BASE_CONFIG.parent / "tiny.yaml"),
                    "--data.subject_dir", str(subject), "--trainer.default_root_dir", str(run),
                    "--trainer.max_steps", "2", "--data.epoch_length", "2",
                    "--trainer.max_epochs", "1",
                    "--model.eval_protocol.fit_test_pose", "false"]) == 0
    assert persona(["test", "--config", str(run / "config.yaml"), "--ckpt_path",
                    str(run / "checkpoints" / "last.ckpt"),
                    "--trainer.limit_test_batches", "1"]) == 0
    return run


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_real_tiny_run(real_run: Path, tmp_path: Path):
    """The real files: a copy with another deformer mode forms a second group."""
    other = tmp_path / "other"
    shutil.copytree(real_run, other, ignore=shutil.ignore_patterns("wandb", "checkpoints"))
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["model"]["deformer"]["mode"] = "off"
    config["trainer"]["default_root_dir"] = str(other)
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    assert compare.main([str(real_run), str(other), "--out", str(out)]) == 0
    report = json.loads((real_run / "metrics.json").read_text())
    rows = {row["group"]: row for row in _csv(out / "compare.csv")}
    assert list(rows) == ["model.deformer.mode=mean", "model.deformer.mode=off"]
    for row in rows.values():
        assert float(row["psnr_mean"]) == pytest.approx(report["mean"]["psnr"])
        assert row["psnr_std"] == "" and row["n"] == "1"
    garment = report["deformation"]["garment"]["total_error_mm"]
    assert float(rows["model.deformer.mode=mean"]["deform_total_error_mm_mean"]) == \
        pytest.approx(garment)
    logs = read_csv_logs(real_run)
    assert len(logs["train/loss"]) == 2  # one value per optimiser step
    html = (out / "compare.html").read_text()
    assert "learning curve train/loss" in html
    grid = sorted((real_run / "media").glob("val_grid_*.png"))[-1].read_bytes()
    assert grid in [base64.b64decode(d) for d in DATA_URI.findall(html)]


# ---------------------------------------------------------------------------- the browser
class DevToolsPipe:
    """Chrome DevTools protocol over --remote-debugging-pipe (fd 3: commands in, fd 4: replies
    out; each message JSON ending in a NUL byte)."""

    def __init__(self, write_fd: int, read_fd: int, deadline: float) -> None:
        self.write_fd, self.read_fd, self.deadline = write_fd, read_fd, deadline
        self.buffer, self.last_id, self.events = b"", 0, []

    def _read(self) -> dict:
        while b"\0" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply from Chromium")
            if select.select([self.read_fd], [], [], left)[0]:
                chunk = os.read(self.read_fd, PIPE_READ_BYTES)
                if not chunk:
                    raise EOFError("Chromium closed its pipe")
                self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self.last_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> None:
        while not any(event.get("method") == method for event in self.events):
            self.events.append(self._read())


# copies above 4 first: an inherited end may itself be numbered 3 or 4
EXEC_ON_FDS_3_4 = ("import fcntl, os, sys; "
                   "ends = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 5) for fd in sys.argv[1:3]]; "
                   "os.dup2(ends[0], 3); os.dup2(ends[1], 4); "
                   "os.execv(sys.argv[3], sys.argv[3:])")
IMAGES_DECODED = ("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                  ".length")


def load_page(path: Path, profile: Path) -> tuple[list[str], list[str], int]:
    """(console errors, exceptions and error log entries; URLs requested; images that did not
    decode) of `path` loaded in headless Chromium."""
    to_browser, from_us = os.pipe()
    from_browser, to_us = os.pipe()
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"]
    # a small Python parent puts the pipe ends on fds 3 and 4, then becomes the browser
    process = subprocess.Popen([sys.executable, "-c", EXEC_ON_FDS_3_4, str(to_browser),
                                str(to_us), *browser], pass_fds=(to_browser, to_us),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(to_browser)
    os.close(to_us)
    pipe = DevToolsPipe(from_us, from_browser, time.monotonic() + BROWSER_TIMEOUT_S)
    try:
        target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.call("Target.attachToTarget", {"targetId": target,
                                                      "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            pipe.call(f"{domain}.enable", session=session)
        pipe.call("Page.navigate", {"url": path.as_uri()}, session=session)
        pipe.wait_for("Page.loadEventFired")
        undecoded = pipe.call("Runtime.evaluate", {"expression": IMAGES_DECODED,
                                                   "returnByValue": True},
                              session=session)["result"]["value"]
        pipe.call("Browser.close")
    finally:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        os.close(from_us)
        os.close(from_browser)
    errors, requested = [], []
    for event in pipe.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(" ".join(str(a.get("value")) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            errors.append(json.dumps(params.get("exceptionDetails", {}))[:300])
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            errors.append(params["entry"].get("text", ""))
        elif method == "Network.requestWillBeSent":
            requested.append(params["request"]["url"])
    return errors, requested, undecoded


needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason=f"Chromium not found at {CHROMIUM} (apt-get install "
                                           "chromium, or set PERSONA_CHROMIUM)")


@needs_chromium
def test_report_loads_in_headless_chromium_without_console_errors(study: Path, tmp_path: Path):
    out = tmp_path / "out"
    assert compare.main([str(study), "--baseline", "mean", "--out", str(out)]) == 0
    page = out / "compare.html"
    errors, requested, undecoded = load_page(page, tmp_path / "profile")
    assert errors == []
    assert [url for url in requested if not url.startswith("data:")] == [page.as_uri()]
    assert undecoded == 0
    # the check itself sees errors: a console error, an exception and a missing image
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><img src="missing.png"><script>'
                   'console.error("boom"); undefinedFunction();</script></body></html>')
    errors, requested, undecoded = load_page(bad, tmp_path / "profile_bad")
    assert "boom" in errors and len(errors) == 3 and undecoded == 1
    assert (tmp_path / "missing.png").as_uri() in requested


def test_figure_ticks_name_the_groups_by_their_values() -> None:
    assert compare.short_label("model.deformer.mode=mean") == "mean"
    assert compare.short_label("a.b=1, c=off") == "1, off"
    long = compare.short_label("config=" + "x" * 40)
    assert len(long) == compare.TICK_CHARS and long.endswith("…")


def test_a_comparison_without_a_figure_leaves_no_earlier_one(study: Path, tmp_path: Path,
                                                              monkeypatch) -> None:
    out = tmp_path / "out"
    assert compare.main([str(study), "--out", str(out)]) == 0
    assert (out / compare.FIGURE_NAME).is_file()
    # the same folder again, this time without matplotlib: no figure, and not the old one
    monkeypatch.setattr(compare, "figures", lambda comparison, curve_names: (
        {}, None, ["no figures: matplotlib is not installed in this environment"]))
    assert compare.main([str(study), "--out", str(out)]) == 0
    assert not (out / compare.FIGURE_NAME).exists()
