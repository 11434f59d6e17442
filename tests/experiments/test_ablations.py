"""experiments/ablations.py: aggregation, effect sizes, the paper-direction verdicts and row reuse
on fake rows (no fits), and one end-to-end smoke run (2 seeds x 2-step fits on the tiny subject)
whose second invocation reuses the stored rows."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
from experiment_scripts import load_script

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


abl = load_script("ablations.py")

GIT = {"commit": "c0ffee" * 6 + "abcd", "dirty": False, "source_hash": ""}
SUBJECT_META = b'{"config": {"seed": 0}}'


def _row(variant: str, seed: int, psnr: float, lpips: float = 0.03, deformation: dict | None = None,
         config_digest: str = "cfg", subject_digest: str | None = None) -> dict:
    """A stored row as run_one writes it, with only the fields aggregation and reuse read."""
    return {"schema": abl.ROW_SCHEMA, "variant": variant, "seed": seed, "git": dict(GIT),
            "config_hash": config_digest,
            "subject": {"path": "s",
                        "meta_sha256": subject_digest or abl.sha256_bytes(SUBJECT_META)},
            "metrics": {"psnr": psnr, "ssim": 0.9, "lpips": lpips, "mask_iou": 90.0},
            "identity": {"psnr_face": 22.0}, "deformation": deformation}


# ---------------------------------------------------------------------------- statistics


def test_summarise_is_the_mean_and_sample_std():
    stats = abl.summarise([1.0, 2.0, 3.0, 6.0])
    assert stats["mean"] == pytest.approx(3.0)
    assert stats["std"] == pytest.approx(math.sqrt((4 + 1 + 0 + 9) / 3))  # ddof 1
    assert stats["n"] == 4 and stats["values"] == [1.0, 2.0, 3.0, 6.0]
    single = abl.summarise([5.0])
    assert single["mean"] == 5.0 and math.isnan(single["std"])


def test_effect_size_is_the_difference_in_pooled_seed_stds():
    variant, default = abl.summarise([0.0, 2.0]), abl.summarise([1.0, 1.0, 1.0])
    # pooled variance = (1 * 2 + 2 * 0) / 3
    assert abl.pooled_std(variant, default) == pytest.approx(math.sqrt(2 / 3))
    assert abl.effect_size(variant, default) == pytest.approx(0.0)
    worse, base = abl.summarise([25.0, 25.2, 25.4]), abl.summarise([26.0, 26.2, 26.4])
    assert abl.effect_size(worse, base) == pytest.approx(-1.0 / 0.2)
    assert abl.effect_size(base, worse) == pytest.approx(5.0)


def test_effect_size_edge_cases():
    flat, higher = abl.summarise([1.0, 1.0]), abl.summarise([2.0, 2.0])
    assert abl.effect_size(higher, flat) == math.inf
    assert abl.effect_size(flat, higher) == -math.inf
    assert abl.effect_size(flat, flat) == 0.0
    assert math.isnan(abl.effect_size(abl.summarise([1.0]), flat))  # one seed: no spread


def test_verdict_follows_the_metric_direction_and_the_noise_threshold():
    # the paper says the default is better: a variant with lower PSNR agrees
    assert abl.verdict(-1.0, -5.0, higher_is_better=True) == "agrees"
    assert abl.verdict(+1.0, +5.0, higher_is_better=True) == "opposite"
    # LPIPS is lower-is-better: a variant with higher LPIPS agrees
    assert abl.verdict(+0.01, +3.0, higher_is_better=False) == "agrees"
    assert abl.verdict(-0.01, -3.0, higher_is_better=False) == "opposite"
    below = abl.NOISE_EFFECT_SIZE * 0.9
    assert abl.verdict(-1.0, -below, higher_is_better=True) == "within noise"
    assert abl.verdict(-1.0, -math.inf, higher_is_better=True) == "agrees"
    assert abl.verdict(-1.0, math.nan, higher_is_better=True) == "agrees (1 seed)"
    assert abl.verdict(math.nan, math.nan, higher_is_better=True) == "no data"


def test_variant_verdict_over_a_claims_metrics():
    assert abl.variant_verdict(["agrees", "within noise", "agrees"]) == "agrees"
    assert abl.variant_verdict(["agrees", "opposite"]) == "mixed"
    assert abl.variant_verdict(["opposite", "within noise"]) == "opposite"
    assert abl.variant_verdict(["within noise", "no data"]) == "within noise"
    assert abl.variant_verdict(["no data"]) == "no data"
    assert abl.variant_verdict(["agrees (1 seed)", "agrees"]) == "agrees (1 seed)"


def test_every_paper_claim_names_a_known_variant_and_metric():
    assert set(abl.PAPER_CLAIMS) == set(abl.PAPER_VARIANTS) - {abl.DEFAULT_VARIANT}
    for claim in abl.PAPER_CLAIMS.values():
        assert set(claim.metrics) <= set(abl.METRICS) and claim.source
    grouped = [m for _, group in abl.COLUMN_GROUPS for m in group]
    assert sorted(grouped) == sorted(abl.METRICS)  # every metric in exactly one table
    for fragments in abl.VARIANTS.values():
        for fragment in fragments:
            assert (abl.ABLATION_DIR / fragment).is_file(), fragment


def test_aggregate_means_differences_and_verdicts():
    deformation = {"garment": {"total_error_mm": 10.0, "deformer_error_mm": 4.0,
                               "deformer_correlation": 0.5},
                   "train_garment": {"total_error_mm": 8.0}, "matching": "vertex_index"}
    rows = {
        "default": [_row("default", s, p, 0.030, deformation) for s, p in
                    [(0, 26.0), (1, 26.2), (2, 26.4)]],
        # seams off: 1 dB worse and higher LPIPS -> agrees with the paper (Fig. 8)
        "seams_off": [_row("seams_off", s, p, lp) for s, p, lp in
                      [(0, 25.0, 0.040), (1, 25.2, 0.041), (2, 25.4, 0.042)]],
        # weight 1 better than the default -> opposite (Tab. S2 says 0.1 wins)
        "image_weight_1": [_row("image_weight_1", s, p, 0.030) for s, p in
                           [(0, 27.0), (1, 27.2), (2, 27.4)]],
    }
    summary = abl.aggregate(rows)
    psnr = summary["default"]["metrics"]["psnr"]
    assert psnr["mean"] == pytest.approx(26.2) and psnr["std"] == pytest.approx(0.2)
    assert summary["default"]["seeds"] == [0, 1, 2]
    assert summary["default"]["metrics"]["deform_total_error_mm"]["mean"] == 10.0
    assert summary["default"]["metrics"]["train_deform_total_error_mm"]["mean"] == 8.0
    assert "deform_total_error_mm" not in summary["seams_off"]["metrics"]  # absent: left out
    seams = summary["seams_off"]["vs_default"]
    assert seams["psnr"]["diff"] == pytest.approx(-1.0)
    assert seams["psnr"]["effect_size"] == pytest.approx(-5.0)
    assert seams["psnr"]["verdict"] == "agrees" and seams["lpips"]["verdict"] == "agrees"
    assert seams["ssim"]["verdict"] == "within noise"  # identical values
    assert "verdict" not in seams["mask_iou"]  # not among the paper's metrics for seams
    assert summary["seams_off"]["verdict"] == "agrees"
    assert summary["image_weight_1"]["vs_default"]["psnr"]["verdict"] == "opposite"
    assert summary["image_weight_1"]["verdict"] == "opposite"
    assert "vs_default" not in summary["default"]


def test_markdown_and_json_tables(tmp_path: Path):
    rows = {"default": [_row("default", s, 26.0 + 0.2 * s) for s in range(3)],
            "seams_off": [_row("seams_off", s, 25.0 + 0.2 * s) for s in range(3)]}
    abl.write_tables(tmp_path, rows, {"seams_off": ["seed 0: config_hash a != b"]}, ["# t"])
    table = (tmp_path / "ablations.md").read_text()
    assert "| default | 3 | 26.20 ± 0.20 |" in table
    assert "| seams_off* | -1.00 (-5.0σ) ✓ |" in table
    assert "seed 0: config_hash a != b" in table
    verdicts = table.split("## Against the paper")[1]
    assert "| seams_off* | PSNR, SSIM, LPIPS | Fig. 8" in verdicts and "| agrees |" in verdicts
    stored = json.loads((tmp_path / "ablations.json").read_text())
    assert stored["variants"]["seams_off"]["verdict"] == "agrees"
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "ablations.png").stat().st_size > 0


# ---------------------------------------------------------------------------- commands, hashes


def test_fit_argv_layers_fragments_seed_epochs_and_overrides_last(tmp_path: Path):
    argv = abl.fit_argv(["seams_off.yaml"], 2, tmp_path / "s", tmp_path / "r", 1,
                        ["trainer.max_steps=2", "model.renderer=torch"])
    assert argv[:3] == ["fit", "--config", str(abl.DEMO_CONFIG)]
    assert argv[3:5] == ["--config", str(abl.ABLATION_DIR / "seams_off.yaml")]
    assert argv[argv.index("--seed_everything") + 1] == "2"
    assert argv[argv.index("--trainer.max_epochs") + 1] == "1"
    assert argv[-4:] == ["--trainer.max_steps", "2", "--model.renderer", "torch"]
    with pytest.raises(FileNotFoundError, match="no_such.yaml"):
        abl.fit_argv(["no_such.yaml"], 0, tmp_path, tmp_path, None, [])


def test_parse_overrides_rejects_a_missing_value():
    assert abl.parse_overrides(["a.b=c=d"]) == ["--a.b", "c=d"]
    with pytest.raises(ValueError, match="KEY=VALUE"):
        abl.parse_overrides(["trainer.max_steps"])


def test_config_hash_ignores_run_locations_but_not_settings():
    config = {"seed_everything": 0, "trainer": {"default_root_dir": "a", "max_epochs": 3},
              "data": {"subject_dir": "x", "input_ratio": 0.5}, "ckpt_path": None}
    moved = json.loads(json.dumps(config))
    moved["trainer"]["default_root_dir"], moved["data"]["subject_dir"] = "b", "y"
    reordered = {"data": config["data"], "trainer": config["trainer"], "seed_everything": 0}
    assert abl.config_hash(moved) == abl.config_hash(config) == abl.config_hash(reordered)
    assert config["trainer"]["default_root_dir"] == "a"  # the input is left alone
    for path, value in ((("seed_everything",), 1), (("data", "input_ratio"), 0.0)):
        changed = json.loads(json.dumps(config))
        node = changed
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        assert abl.config_hash(changed) != abl.config_hash(config), path


def test_stale_reasons_name_each_changed_key():
    row = _row("default", 0, 26.0, config_digest="cfgA")
    key = abl.run_key(GIT, "cfgA", abl.sha256_bytes(SUBJECT_META))
    assert abl.stale_reasons(row, key) == []
    assert [r.split()[0] for r in abl.stale_reasons(row, {**key, "config_hash": "cfgB"})] == \
        ["config_hash"]
    assert [r.split()[0] for r in abl.stale_reasons(row, {**key, "commit": "other"})] == \
        ["commit"]
    assert [r.split()[0] for r in abl.stale_reasons(row, {**key, "subject_hash": "x"})] == \
        ["subject_hash"]
    assert [r.split()[0] for r in abl.stale_reasons(row, {**key, "source_hash": "x"})] == \
        ["source_hash"]
    assert abl.stale_reasons({**row, "schema": 0}, key) == [f"schema 0 != {abl.ROW_SCHEMA}"]


def test_git_state_hashes_uncommitted_source_changes(tmp_path: Path):
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path,
                       check=True, capture_output=True)

    (tmp_path / "persona").mkdir()
    (tmp_path / "persona" / "a.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "one")
    clean = abl.git_state(tmp_path)
    assert len(clean["commit"]) == 40 and not clean["dirty"] and clean["source_hash"] == ""
    (tmp_path / "notes.md").write_text("docs only\n")  # dirty, but not a source change
    docs = abl.git_state(tmp_path)
    assert docs["dirty"] and docs["source_hash"] == ""
    (tmp_path / "persona" / "b.py").write_text("y = 2\n")  # untracked source file
    first = abl.git_state(tmp_path)
    (tmp_path / "persona" / "b.py").write_text("y = 3\n")
    second = abl.git_state(tmp_path)
    (tmp_path / "persona" / "a.py").write_text("x = 2\n")  # tracked edit
    third = abl.git_state(tmp_path)
    hashes = {first["source_hash"], second["source_hash"], third["source_hash"]}
    assert len(hashes) == 3 and "" not in hashes
    assert first["commit"] == clean["commit"]


# ---------------------------------------------------------------------------- the study loop


@pytest.fixture
def fake_study(tmp_path: Path, monkeypatch):
    """main() with fits, config resolution and git replaced by fakes; returns (out, calls,
    config): calls lists the (variant, seed) fitted, config the resolved-config values."""
    subject = tmp_path / "subject"
    subject.mkdir()
    (subject / "meta.json").write_bytes(SUBJECT_META)
    calls: list[tuple[str, int]] = []
    config = {"model": {"lr": 1.0}}

    def resolve(argv: list[str]) -> dict:
        seed = int(argv[argv.index("--seed_everything") + 1])
        return {"seed_everything": seed, **json.loads(json.dumps(config))}

    def run_one(variant, seed, fit, key, git, subject_dir, out, regions_of, settings):
        calls.append((variant, seed))
        return {**_row(variant, seed, 26.0 + seed, config_digest=key["config_hash"],
                       subject_digest=key["subject_hash"]), "git": git}

    monkeypatch.setattr(abl, "resolve_config", resolve)
    monkeypatch.setattr(abl, "run_one", run_one)
    monkeypatch.setattr(abl, "ground_truth_regions", lambda subject: None)
    monkeypatch.setattr(abl, "git_state", lambda repo=abl.REPO: dict(GIT))
    out = tmp_path / "out"
    base = ["--out", str(out), "--subject", str(subject), "--variants", "default", "seams_off",
            "--seeds", "0", "1"]
    return out, calls, config, base


def test_rows_are_reused_until_the_config_changes(fake_study):
    out, calls, config, base = fake_study
    assert abl.main(base) == 0
    assert sorted(calls) == [("default", 0), ("default", 1), ("seams_off", 0), ("seams_off", 1)]
    assert abl.row_path(out, "seams_off", 1).is_file()
    calls.clear()
    assert abl.main(base) == 0
    assert calls == []  # everything current: reused
    config["model"]["lr"] = 2.0  # a changed resolved config: a changed hash, every row re-runs
    assert abl.main(base + ["--variants", "default"]) == 0
    assert sorted(calls) == [("default", 0), ("default", 1)]
    table = (out / "ablations.md").read_text()
    assert "seams_off" not in table  # only the variants asked for


def test_reuse_any_keeps_stale_rows_and_marks_them(fake_study, monkeypatch):
    out, calls, config, base = fake_study
    assert abl.main(base) == 0
    calls.clear()
    monkeypatch.setattr(abl, "git_state", lambda repo=abl.REPO: {**GIT, "commit": "new"})
    assert abl.main(base + ["--reuse-any"]) == 0
    assert calls == []
    table = (out / "ablations.md").read_text()
    assert "| default* |" in table and "commit" in table.split("although stale")[1]
    assert abl.main(base) == 0  # without --reuse-any the new commit re-runs them all
    assert len(calls) == 4


def test_a_missing_seed_row_runs_only_that_fit(fake_study):
    out, calls, _, base = fake_study
    assert abl.main(base) == 0
    abl.row_path(out, "default", 1).unlink()
    calls.clear()
    assert abl.main(base) == 0
    assert calls == [("default", 1)]


def test_dry_run_prints_commands_and_runs_nothing(fake_study, capsys):
    out, calls, _, base = fake_study
    assert abl.main(base + ["--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert calls == [] and not (out / "rows").exists()
    assert printed.count("-m persona fit --config") == 4
    assert printed.count("-m persona test --config") == 4
    assert "--seed_everything 1" in printed and "seams_off.yaml" in printed


def test_table_only_aggregates_stored_rows(fake_study):
    out, calls, _, base = fake_study
    assert abl.main(base + ["--seeds", "0"]) == 0
    calls.clear()
    (out / "ablations.md").unlink()
    assert abl.main(base + ["--table-only"]) == 0
    assert calls == []
    assert "| default | 1 |" in (out / "ablations.md").read_text()  # seed 1 was never run


# ---------------------------------------------------------------------------- end to end

SMOKE_OVERRIDES = ["trainer.max_steps=2", "trainer.limit_val_batches=0",
                   "model.subdivision_levels=0", "model.renderer=torch",
                   "model.skinning.grid_size=24", "model.deformer.triplane_resolution=16"]


@pytest.fixture
def _restore_determinism():
    """configs/demo.yaml's trainer.deterministic switches the process-wide torch flag."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def test_smoke_two_seeds_write_rows_then_reuse_them(tmp_path: Path, monkeypatch,
                                                    _restore_determinism):
    """~35 s on a quiet 2-core CPU with warm body/skinning caches (no wall-time assert: the
    shared CI cores make one flaky)."""
    from persona.data.synth import preset_config, synthesize

    subject = tmp_path / "subject"
    synthesize(subject, preset_config("tiny", seed=1))
    git = abl.git_state()  # pinned: another edit of the shared tree must not re-run the fits
    monkeypatch.setattr(abl, "git_state", lambda repo=abl.REPO: dict(git))
    out = tmp_path / "out"
    argv = ["--out", str(out), "--subject", str(subject), "--variants", "default",
            "--seeds", "0", "1", "--epochs", "1"]
    for item in SMOKE_OVERRIDES:
        argv += ["--override", item]
    assert abl.main(argv) == 0
    paths = [abl.row_path(out, "default", seed) for seed in (0, 1)]
    rows = [json.loads(p.read_text()) for p in paths]
    for seed, row in zip((0, 1), rows, strict=True):
        assert row["seed"] == seed and row["variant"] == "default"
        assert row["git"]["commit"] == git["commit"] and len(row["git"]["commit"]) == 40
        assert row["config"]["seed_everything"] == seed
        assert row["config"]["trainer"]["max_steps"] == 2
        assert row["config_hash"] == abl.config_hash(row["config"])
        assert row["subject"]["meta_sha256"] == abl.subject_hash(subject)
        assert math.isfinite(row["metrics"]["psnr"]) and row["seconds"]["total"] > 0
        assert row["identity"]  # face/logo PSNR of the tiny subject's ground truth
        assert "--seed_everything" in row["commands"]["fit"]
    assert rows[0]["config_hash"] != rows[1]["config_hash"]  # the seed is part of the config
    summary = json.loads((out / "ablations.json").read_text())["variants"]["default"]
    assert summary["seeds"] == [0, 1] and summary["metrics"]["psnr"]["n"] == 2
    mtimes = [p.stat().st_mtime_ns for p in paths]
    checkpoint = abl.run_dir_of(out, "default", 0) / "checkpoints" / "last.ckpt"
    checkpoint_mtime = checkpoint.stat().st_mtime_ns
    assert abl.main(argv) == 0  # same commit, config and subject: no fit
    assert [p.stat().st_mtime_ns for p in paths] == mtimes
    assert checkpoint.stat().st_mtime_ns == checkpoint_mtime
