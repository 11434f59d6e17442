import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from subject_faults import FAULTS

from persona.data import motions as M
from persona.data import synth as S
from persona.data.subject import (
    FramePaths,
    read_frame_indices,
    read_image,
    read_mask,
    read_seg,
    validate_subject,
)


@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("synth") / "tiny"
    start = time.perf_counter()
    S.synthesize(out, S.preset_config("tiny", preview=True))
    return out, time.perf_counter() - start


@pytest.fixture(scope="module")
def procedural_avatar():
    from persona.body.loader import BodySpec, load_body

    body = load_body(BodySpec(kind="procedural", flat_hand_mean=True))
    config = S.preset_config("tiny")
    identity = S.subject_identity(body, 0)
    return body, S.build_avatar(body, identity, config), config


def test_tiny_preset_is_valid_and_recorded(tiny_synth):
    root, _ = tiny_synth  # no timing assertion: it failed at 48 s on a loaded 2-core machine
    assert validate_subject(root) == []
    meta = json.loads((root / "meta.json").read_text())
    assert meta["config"]["artifacts"] == 1.0 and meta["config"]["seed"] == 0
    assert meta["config"]["faults"]["hand_swirl"] == S.FaultSettings().hand_swirl
    assert meta["splits"] == {"generated_0": "punches", "generated_1": "kicks"}
    assert (root / "contact_sheet.png").is_file()
    assert read_frame_indices(root, "generated_0") == [0, 1, 2, 3]
    assert not list(root.parent.glob(".*tmp*"))  # built in a temporary folder, then renamed


def test_corrupted_synthetic_subject_is_fully_reported(tiny_synth, tmp_path: Path):
    copy = tmp_path / "corrupted"
    shutil.copytree(tiny_synth[0], copy)
    expected = {fault(copy) for fault in FAULTS}
    assert len({kind for _, _, kind in expected}) >= 10
    assert {(p.file, p.field, p.kind) for p in validate_subject(copy)} == expected


def _same_pose_both_ways(tmp_path: Path, artifacts: float, noise: bool) -> Path:
    """A subject whose generated_0 and test split hold the same poses from the same camera."""
    extra = {} if noise else {"depth_noise": 0.0, "normal_noise": 0.0}
    config = S.preset_config("tiny", motions=("wave",), test_motion="wave", frames=3,
                             test_frames=3, novel_views=(), artifacts=artifacts, **extra)
    return S.synthesize(tmp_path / f"both-{artifacts}-{noise}", config).root


def test_training_frames_equal_test_renders_without_faults(tmp_path: Path):
    root = _same_pose_both_ways(tmp_path, artifacts=0.0, noise=False)
    for i in range(3):
        train, test = FramePaths("generated_0", i), FramePaths("test", i)
        assert np.array_equal(read_image(root / train.image), read_image(root / test.image))
        assert np.array_equal(read_mask(root / train.mask), read_mask(root / test.mask))
        assert np.array_equal(read_seg(root / train.seg), read_seg(root / test.seg))
        assert np.array_equal(np.load(root / train.depth), np.load(root / test.depth))
        assert np.array_equal(np.load(root / train.normal), np.load(root / test.normal))
        assert (root / train.smplx).read_text() == (root / test.smplx).read_text()
        assert (root / train.camera).read_text() == (root / test.camera).read_text()


def test_training_frames_differ_from_test_renders_only_by_faults(tmp_path: Path):
    root = _same_pose_both_ways(tmp_path, artifacts=1.0, noise=True)
    for i in range(3):
        train, test = FramePaths("generated_0", i), FramePaths("test", i)
        # geometry stays reliable: same silhouette and parts, depth/normals within the noise
        assert np.array_equal(read_mask(root / train.mask), read_mask(root / test.mask))
        assert np.array_equal(read_seg(root / train.seg), read_seg(root / test.seg))
        depth_error = np.abs(np.load(root / train.depth) - np.load(root / test.depth))
        assert depth_error.max() < 6 * S.SynthConfig().depth_noise
        # the image shows the faults and the written pose carries small errors
        difference = np.abs(read_image(root / train.image) - read_image(root / test.image))
        foreground = read_mask(root / test.mask) > 0
        assert difference[foreground].mean() > 0.01
        written = json.loads((root / train.smplx).read_text())
        true = json.loads((root / test.smplx).read_text())
        error = np.abs(np.array(written["body_pose"]) - np.array(true["body_pose"]))
        assert 0 < error.mean() < 4 * S.FaultSettings().pose_noise_body


def test_drift_grows_with_distance_from_the_input_pose():
    faults = S.FaultSettings()
    casual = torch.from_numpy(M.casual_pose())
    assert S.drift_for(casual, casual, 1.0, faults, 1.0).hue == pytest.approx(0.0, abs=1e-6)
    kick = torch.from_numpy(M.make_kicks().poses[22])
    guard = torch.from_numpy(M.make_kicks().poses[0])
    near, far = (S.drift_for(p, casual, 1.0, faults, 1.0) for p in (guard, kick))
    assert 0 < near.hue < far.hue <= faults.drift_hue
    assert S.drift_for(kick, casual, 0.5, faults, 1.0).hue == pytest.approx(far.hue / 2)


def test_identity_regions_exist_on_the_avatar(procedural_avatar):
    _, avatar, _ = procedural_avatar
    for region in ("hair", "eyes", "brows", "lips", "top", "logo", "skirt", "trousers", "shoes",
                   "sleeves"):
        assert avatar.regions[region].any(), region
    colours = S.albedo_colours(avatar)
    drifted = S.albedo_colours(avatar, S.Drift(hue=0.5, pattern_phase=0.3, face=0.5))
    changed = (colours - drifted).abs().sum(-1) > 1e-4
    assert changed[avatar.regions["top"]].float().mean() > 0.9
    assert not changed[avatar.regions["hair"]].any()


def test_star_logo_shape():
    points = torch.tensor([[0.0, 0.0], [0.0, 0.9], [0.9 * math.sin(math.pi / 5),
                           0.9 * math.cos(math.pi / 5)], [0.3 * math.sin(math.pi / 5),
                                                          0.3 * math.cos(math.pi / 5)]])
    inside = S.star_inside(points[:, 0], points[:, 1], radius=1.0)
    assert inside.tolist() == [True, True, False, True]


def test_blur_and_swirl_preserve_flat_images():
    flat = np.full((20, 30, 3), 0.4, np.float32)
    np.testing.assert_allclose(S.gaussian_blur(flat, 1.5), flat, atol=1e-6)
    np.testing.assert_allclose(S.swirl(flat, np.array([15.0, 10.0]), 8.0, 2.0), flat,
                               atol=1e-6)
    ramp = np.tile(np.linspace(0, 1, 30, dtype=np.float32)[None, :, None], (20, 1, 3))
    swirled = S.swirl(ramp, np.array([15.0, 10.0]), 8.0, 2.0)
    assert np.abs(swirled - ramp).max() > 0.05
    assert np.array_equal(swirled[:, :5], ramp[:, :5])  # untouched outside the radius


POSE_FAULTS = ("pose_noise_body", "pose_noise_hands", "pose_noise_root", "transl_noise")
IMAGE_FAULTS = ("drift_hue", "drift_pattern_phase", "drift_face", "colour_gain_std",
                "colour_bias_std", "blur_sigma_max", "hand_swirl")


def _one_fault_group(tmp_path: Path, off: tuple[str, ...]) -> Path:
    from persona.data.synth_cli import main

    out = tmp_path / ("-".join(off[:1]) or "all")
    flags = [arg for name in off for arg in (f"--faults.{name}", "0")]
    assert main(["--out", str(out), "--motions", "wave", "--test-motion", "wave", "--frames",
                 "3", "--resolution", "64x112", *flags]) == 0
    return out


def test_faults_turn_off_one_group_at_a_time(tmp_path: Path, capsys):
    """--faults.NAME 0 removes that fault and leaves every other fault's random draw as it was:
    the images without pose noise are the full-fault images, the poses without image faults
    are the full-fault poses, and each group alone is exact where the other was removed."""
    full = _one_fault_group(tmp_path, ())
    no_pose = _one_fault_group(tmp_path, POSE_FAULTS)
    no_image = _one_fault_group(tmp_path, IMAGE_FAULTS)
    meta = json.loads((no_pose / "meta.json").read_text())
    assert meta["config"]["faults"]["pose_noise_body"] == 0.0
    assert meta["config"]["faults"]["hand_swirl"] == S.FaultSettings().hand_swirl
    for i in range(3):
        train, test = FramePaths("generated_0", i), FramePaths("test", i)
        image = {root: read_image(root / train.image) for root in (full, no_pose, no_image)}
        pose = {root: (root / train.smplx).read_text() for root in (full, no_pose, no_image)}
        assert np.array_equal(image[no_pose], image[full])
        assert pose[no_image] == pose[full]
        assert pose[no_pose] == (full / test.smplx).read_text() != pose[full]
        exact = read_image(full / test.image)
        assert np.abs(image[full] - exact).mean() > 1e-3
        # drift and colour leave the test render's shading: without them it is the test image
        assert np.array_equal(image[no_image], exact)
    from persona.data.synth_cli import main

    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "bad"), "--faults.blur_sigma_max", "-1"])
    assert "FaultSettings.blur_sigma_max" in capsys.readouterr().err


def test_cli_writes_a_valid_subject(tmp_path: Path, capsys):
    from persona.data.synth_cli import main

    out = tmp_path / "cli"
    assert main(["--out", str(out), "--frames", "2", "--resolution", "64x112",
                 "--motions", "dance", "rotation", "--artifacts", "0.5", "--seed", "3"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert validate_subject(out) == []
    meta = json.loads((out / "meta.json").read_text())
    assert meta["config"]["width"] == 64 and meta["config"]["artifacts"] == 0.5
    with pytest.raises(FileExistsError):
        main(["--out", str(out)])


@pytest.mark.slow
def test_demo_configuration_passes_the_validator(tmp_path: Path):
    """The demo preset (open body, 288 x 512, four motions) with fewer frames per video."""
    config = S.preset_config("demo", frames=2, test_frames=2, novel_views=(90.0,))
    result = S.synthesize(tmp_path / "demo", config)
    assert validate_subject(result.root) == []
    assert result.num_gaussians > 10_000
