"""The user-facing path on the tiny subject: `persona fit` (LightningCLI, offline W&B + CSV),
`persona test` (metrics.json), `persona export` (PLY) and `--print_config`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from persona.callbacks.wandb_offline import (
    find_run_files,
    history_column,
    read_history,
    wait_for_run,
)
from persona.cli import main
from persona.data.synth import preset_config, synthesize
from persona.export.cli import canonical_pose
from persona.export.ply import read_gaussians_ply
from persona.lightning_cli import BASE_CONFIG

TINY = str(BASE_CONFIG.parent / "tiny.yaml")


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory) -> Path:
    """One `persona fit` of 4 steps + validation on the tiny subject; returns RUN."""
    root = tmp_path_factory.mktemp("cli")
    subject = root / "subject"
    synthesize(subject, preset_config("tiny", seed=2))
    run = root / "run"
    assert main(["fit", "--config", TINY, "--data.subject_dir", str(subject),
                 "--trainer.default_root_dir", str(run), "--trainer.max_steps", "-1",
                 "--data.epoch_length", "4", "--trainer.max_epochs", "1"]) == 0
    return run


def test_fit_writes_config_checkpoint_and_an_offline_wandb_run(fitted_run: Path):
    assert (fitted_run / "config.yaml").is_file()
    assert (fitted_run / "checkpoints" / "last.ckpt").is_file()
    files = find_run_files(fitted_run / "wandb")
    assert len(files) == 1
    wait_for_run(files[0])
    rows = read_history(files[0])
    losses = history_column(rows, "train/loss/image_base")
    weights = history_column(rows, "train/weight/image_base")
    assert len(losses) == 4 and all(np.isfinite(v) for _, v in losses)
    assert all(v == pytest.approx(1.0) for _, v in weights)
    assert len(history_column(rows, "val/psnr")) == 1
    assert history_column(rows, "val/mask_iou")[0][1] > 50.0  # the step-0 avatar fits the mask
    from persona.callbacks.wandb_offline import read_config

    config = read_config(files[0])
    assert "config" in config and "model" in json.dumps(config["config"])  # resolved config
    media = [r for r in rows if "media/train_grid" in r or "media/val_grid" in r]
    assert media, "no media grid in the W&B run"
    assert list((fitted_run / "media").glob("*.png"))


def test_test_command_writes_metrics_json_with_protocol_and_versions(fitted_run: Path):
    written = (fitted_run / "config.yaml").read_bytes()
    runs_before = set(find_run_files(fitted_run / "wandb"))
    assert main(["test", "--config", str(fitted_run / "config.yaml"), "--ckpt_path",
                 str(fitted_run / "checkpoints" / "last.ckpt")]) == 0
    assert (fitted_run / "config.yaml").read_bytes() == written  # only fit writes it
    from persona.callbacks.wandb_offline import read_config

    test_runs = [f for f in find_run_files(fitted_run / "wandb") if f not in runs_before]
    assert len(test_runs) == 1
    wait_for_run(test_runs[0])
    # the test's W&B run carries the resolved config too: grouped by config keys like the fit's
    assert "deformer" in json.dumps(read_config(test_runs[0]).get("config"))
    report = json.loads((fitted_run / "metrics.json").read_text())
    assert report["protocol"]["name"] == "authors"
    assert report["versions"]["torch"] == torch.__version__
    assert report["num_frames"] == len(report["frames"]) == 5
    for name in ("psnr", "ssim", "lpips", "mask_iou", "depth_l1_mm", "normal_deg"):
        assert np.isfinite(report["mean"][name]), name
    assert 10.0 < report["mean"]["psnr"] < 60.0


def test_exported_ply_matches_the_avatar_gaussians(fitted_run: Path, tmp_path: Path):
    from persona.runs import load_trained_system

    ckpt = fitted_run / "checkpoints" / "last.ckpt"
    out = tmp_path / "avatar.ply"
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out)]) == 0
    system, _ = load_trained_system(ckpt)
    with torch.no_grad():
        gaussians, colours = system.posed_gaussians(canonical_pose(system.body.num_expression))
    ply = read_gaussians_ply(out)
    np.testing.assert_allclose(ply.means, gaussians.means.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.exp(ply.log_scales), gaussians.scales.numpy(), rtol=1e-5)
    np.testing.assert_allclose(ply.rgb, colours["rgb"].numpy(), atol=1e-6)
    from plyfile import PlyData

    names = [p.name for p in PlyData.read(str(out))["vertex"].properties]
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[-8:] == ["opacity", "scale_0", "scale_1", "scale_2",
                          "rot_0", "rot_1", "rot_2", "rot_3"]


def test_print_config_layers_base_demo_and_an_ablation(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(BASE_CONFIG.parent / "demo.yaml"), "--config",
              str(BASE_CONFIG.parent / "ablation" / "deformer_off.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "mode: 'off'" in out or "mode: off" in out
    assert "subdivision_levels: 0" in out  # demo overrides base's 2
    assert "input_ratio: 0.5" in out  # from base.yaml, always the first layer


FRAGMENTS = sorted([*(BASE_CONFIG.parent / "ablation").glob("*.yaml"),
                    *(BASE_CONFIG.parent / "study").glob("*.yaml")])


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out |= _leaves(value, f"{name}.") if isinstance(value, dict) else {name: value}
    return out


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_config_fragment_layers_on_the_demo(fragment: Path, capsys):
    """Each shipped fragment (configs/ablation, configs/study) names real settings: layered on
    configs/demo.yaml it parses, and every value it sets is in the resolved config."""
    import yaml

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(BASE_CONFIG.parent / "demo.yaml"), "--config",
              str(fragment), "--print_config"])
    assert exit_info.value.code == 0
    resolved = _leaves(yaml.safe_load(capsys.readouterr().out))
    for key, value in _leaves(yaml.safe_load(fragment.read_text())).items():
        assert key in resolved, key
        assert resolved[key] == value, (key, resolved[key], value)


def test_predict_renders_every_test_frame(fitted_run: Path):
    from persona.lightning_cli import run_lightning_cli

    cli = run_lightning_cli(["predict", "--config", str(fitted_run / "config.yaml"),
                             "--ckpt_path", str(fitted_run / "checkpoints" / "last.ckpt")])
    predictions = cli.trainer.predict_loop.predictions
    assert len(predictions) == 5
    first = predictions[0]
    assert first["split"] == "test" and first["rgb"].shape[-1] == 3
    assert float(first["rgb"].min()) >= 0.0 and float(first["alpha"].max()) > 0.9


def test_a_second_fit_into_the_same_run_replaces_last_ckpt(fitted_run: Path):
    """RUN/checkpoints/last.ckpt is always the newest fit (no stale last.ckpt + last-v1.ckpt)."""
    ckpt = fitted_run / "checkpoints" / "last.ckpt"
    before = ckpt.stat().st_mtime_ns
    assert main(["fit", "--config", str(fitted_run / "config.yaml"),
                 "--trainer.max_epochs", "1", "--data.epoch_length", "2"]) == 0
    # last.ckpt and the one epoch checkpoint base.yaml keeps for resuming, both replaced
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["epoch_end.ckpt", "last.ckpt"]
    assert ckpt.stat().st_mtime_ns > before


def test_renderer_by_class_path_builds_and_names_still_work(tmp_path: Path):
    """model.renderer takes a LightningCLI class_path (with init_args) as well as a name."""
    from persona.lightning_cli import run_lightning_cli
    from persona.render import TorchRenderer, make_renderer

    common = ["--config", TINY, "--data.subject_dir", str(tmp_path / "unused"),
              "--trainer.logger", "false"]
    cli = run_lightning_cli(common + ["--model.renderer", '{"class_path": '
                                      '"persona.render.TorchRenderer", "init_args": '
                                      '{"max_alpha": 0.9}}'], run=False)
    renderer = make_renderer(cli.model.renderer_choice)
    assert isinstance(renderer, TorchRenderer) and renderer.max_alpha == 0.9
    assert cli.model.hparams["renderer"]["class_path"] == "persona.render.TorchRenderer"
    cli = run_lightning_cli(common, run=False)
    assert cli.model.renderer_choice == "torch"


CONSTANT_DEFORMER = """
import torch
from torch import nn

from persona.avatar.deformer import DeformerOutput


class ConstantDeformer(nn.Module):
    \"\"\"One learned offset for every deformable Gaussian.\"\"\"

    def __init__(self, start: float = 0.0) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.full((3,), start))

    def forward(self, triplane_positions, dominant_joint, body_pose_6d, zero_mask, active=None):
        keep = (~zero_mask)[None, :, None].to(self.offset.dtype)  # [1, N, 1]
        return DeformerOutput(self.offset * keep.expand(body_pose_6d.shape[0], -1, 3))
"""


def test_deformer_by_class_path_from_a_yaml_builds_after_lpips_and_trains(tmp_path: Path,
                                                                           monkeypatch):
    """model.deformer_class: {class_path, init_args} in a YAML layer gives the deformer (built
    in build(), after the LPIPS networks: the random-number order of a run is unchanged), its
    parameters train in the "mlp" group and config.yaml keeps the class_path. Old behaviour:
    the key did not exist (the CLI rejected it); model.deformer always built a PoseDeformer."""
    import persona.metrics.lpips as lpips_module
    from persona.data.datamodule import collate_frames
    from persona.lightning_cli import run_lightning_cli

    (tmp_path / "my_deformers.py").write_text(CONSTANT_DEFORMER)
    monkeypatch.syspath_prepend(str(tmp_path))
    layer = tmp_path / "deformer.yaml"
    layer.write_text("model:\n  deformer_class:\n    class_path: my_deformers.ConstantDeformer\n"
                     "    init_args:\n      start: 0.01\n")
    subject = tmp_path / "subject"
    synthesize(subject, preset_config("tiny", seed=2))
    built: list[str] = []
    original = lpips_module.load_lpips_distance
    monkeypatch.setattr(lpips_module, "load_lpips_distance",
                        lambda *a, **k: built.append("lpips") or original(*a, **k))
    cli = run_lightning_cli(["--config", TINY, "--config", str(layer), "--data.subject_dir",
                             str(subject), "--trainer.logger", "false"], run=False)
    system = cli.model
    assert system.hparams["deformer_class"]["class_path"] == "my_deformers.ConstantDeformer"
    assert system.hparams["deformer_class"]["init_args"] == {"start": 0.01}
    factory = system.deformer_factory
    system.deformer_factory = lambda: built.append("deformer") or factory()
    system.build_from_datamodule(cli.datamodule)
    assert built == ["lpips", "deformer"]
    assert type(system.deformer).__name__ == "ConstantDeformer"
    assert torch.allclose(system.deformer.offset, torch.full((3,), 0.01))
    from persona.system_config import optimizer_groups

    groups = {g["name"]: g["params"] for g in optimizer_groups(
        system.avatar, system.deformer, system.frame_params, system.optim_cfg)}
    assert "triplane" not in groups and groups["mlp"] == [system.deformer.offset]
    system.log = lambda *a, **k: None
    dm = cli.datamodule
    loss = system.training_step(collate_frames([dm.train_dataset()[dm.generated_rows[0]]]), 0)
    loss.backward()
    assert system.deformer.offset.grad is not None and bool(system.deformer.offset.grad.any())


def test_seed_everything_also_seeds_the_sampling_order(tmp_path: Path):
    """One seed per run: `seed_everything` is the data module's sampling seed too, so two seeds
    draw different frame orders (before the link, a deformer-off study gave bitwise-identical
    runs for seeds 0, 1, 2), and `data.seed` is no longer a separate knob."""
    from persona.lightning_cli import run_lightning_cli

    subject = tmp_path / "subject"
    synthesize(subject, preset_config("tiny", seed=2))
    orders = {}
    for seed in (0, 1, 2):
        cli = run_lightning_cli(["--config", TINY, "--data.subject_dir", str(subject),
                                 "--trainer.logger", "false", "--seed_everything", str(seed)],
                                run=False)
        assert cli.datamodule.seed == seed
        cli.datamodule.setup("fit")
        orders[seed] = list(cli.datamodule.train_dataloader().sampler)
    assert orders[0] != orders[1] != orders[2] != orders[0]
    with pytest.raises(SystemExit):
        run_lightning_cli(["--config", TINY, "--data.subject_dir", str(subject),
                           "--data.seed", "3"], run=False)


def test_deterministic_fits_skip_the_memory_fill_and_stay_bitwise_reproducible(tmp_path: Path):
    """trainer.deterministic: torch's NaN-filling of new tensors is set off
    (FILL_UNINITIALIZED_MEMORY), and two fits of the same config still end with identical
    weights (an op reading uninitialised memory would make them differ)."""
    from persona.lightning_cli import FILL_UNINITIALIZED_MEMORY

    subject = tmp_path / "subject"
    synthesize(subject, preset_config("tiny", seed=2))
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.utils.deterministic.fill_uninitialized_memory)
    weights = []
    try:
        for name in ("a", "b"):
            torch.utils.deterministic.fill_uninitialized_memory = True
            run = tmp_path / name
            assert main(["fit", "--config", TINY, "--data.subject_dir", str(subject),
                         "--trainer.default_root_dir", str(run), "--trainer.max_steps", "3",
                         "--trainer.limit_val_batches", "0", "--trainer.logger", "false",
                         "--trainer.deterministic", "true"]) == 0
            assert torch.utils.deterministic.fill_uninitialized_memory is FILL_UNINITIALIZED_MEMORY
            state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu",
                               weights_only=False)["state_dict"]
            weights.append(state)
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.utils.deterministic.fill_uninitialized_memory = before[1]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert float(weights[0]["avatar.mean_offset"].abs().max()) > 0  # the fit moved them
