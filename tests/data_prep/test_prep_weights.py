"""`persona doctor`'s preprocessing rows: every weight a stage config names, present or not."""

from __future__ import annotations

from pathlib import Path

from data_prep.weights import CONFIG_DIR, describe_prep_weights


def test_rows_name_every_setting_and_say_present_or_missing(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "a.yaml").write_text(
        "model:\n  init_args:\n    checkpoint: w/sam.pth\n    threshold: 0.5\n"
        "    generate:\n      svd_dir: w/svd\n      seed: 1\n")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "sam.pth").write_bytes(b"x")
    rows = describe_prep_weights(configs, cwd=tmp_path)
    assert rows == [("prep a", "model.init_args.checkpoint = w/sam.pth: present"),
                    ("prep a", "model.init_args.generate.svd_dir = w/svd: missing "
                               "(docs/PREPROCESSING.md#weights)")]


def test_the_shipped_configs_name_seven_weights() -> None:
    settings = sorted(row[1].split(" = ")[0] for row in describe_prep_weights(CONFIG_DIR))
    assert settings == sorted([
        "model.init_args.checkpoint", "model.init_args.generate.svd_dir",
        "model.init_args.generate.checkpoint", "model.init_args.depth_checkpoint",
        "model.init_args.normal_checkpoint", "model.init_args.seg_checkpoint",
        "model.init_args.pose_checkpoint"])
