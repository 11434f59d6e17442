"""Sapiens-lite backends and stages (data_prep/sapiens.py) with tiny TorchScript models.

The tiny models are traced with torch.jit.trace on a (1, 3, 1024, 768) dummy, like the released
ones, produce the real heads' output shapes, and are saved as ``*_torchscript.pt2`` and loaded
through the same loader real weights use.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch import Trainer
from PIL import Image
from torch import nn

from data_prep.cli import build_cli
from data_prep.cli import main as prep_main
from data_prep.sapiens import (
    DARK_BLUR_KERNEL,
    SAPIENS_RELEASES,
    SapiensGeometryStage,
    SapiensKeypointStage,
    SapiensModel,
    box_to_crop,
    dark_udp_refine,
    decode_keypoints,
    depth_map,
    depth_to_subject,
    foreground_from,
    heatmap_argmax,
    normal_map,
    normals_to_subject,
    person_box,
    pose_input_image,
    preprocess_dense,
    run_batched,
    seg_labels,
    seg_to_subject,
)
from data_prep.stage import PrepData, read_keypoints
from persona.data.subject import validate_subject
from persona.losses.geometry import silog_depth_loss

INPUT_SHAPE = (1, 3, 1024, 768)
HEATMAP_HW = (256, 192)
TORSO, HAIR, RIGHT_HAND, BACKGROUND = 21, 3, 14, 0
# Palette colours copied by hand from PREPROCESSING.md section 2.5 (independent of palette.py).
PALETTE_BY_HAND = {BACKGROUND: (50, 50, 50), TORSO: (14, 204, 0), HAIR: (255, 0, 109),
                   RIGHT_HAND: (255, 0, 0)}
NORMAL_BIAS = (0.2, -0.3, 0.9)  # the tiny normal model's constant output (Sapiens axes)
HEATMAP_SIGMA = 2.0


def _load_tiny_subject_module():
    path = Path(__file__).resolve().parents[1] / "data" / "tiny_subject.py"
    spec = importlib.util.spec_from_file_location("sapiens_test_tiny_subject", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------
# Tiny heads with the released output shapes
# ----------------------------------------------------------------------------------------------
class TinyHead(nn.Module):
    """avg-pool by ``pool`` then a 1x1 conv (+ a constant map): [B, 3, 1024, 768] -> [B, C, ...]."""

    def __init__(self, channels: int, pool: int, seed: int, constant: torch.Tensor | None = None,
                 zero_conv: bool = False):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.pool = pool
        self.conv = nn.Conv2d(3, channels, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator))
            self.conv.bias.copy_(torch.randn(channels, generator=generator))
            if zero_conv:
                self.conv.weight.zero_()
                self.conv.bias.zero_()
        self.register_buffer("constant", torch.zeros(1) if constant is None else constant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool > 1:
            x = F.avg_pool2d(x, self.pool)
        return self.conv(x) + self.constant


def gaussian_heatmap(center_xy: tuple[float, float], sigma: float = HEATMAP_SIGMA,
                     amplitude: float = 1.0, hw: tuple[int, int] = HEATMAP_HW) -> np.ndarray:
    ys, xs = np.mgrid[0:hw[0], 0:hw[1]].astype(np.float64)
    d2 = (xs - center_xy[0]) ** 2 + (ys - center_xy[1]) ** 2
    return (amplitude * np.exp(-d2 / (2 * sigma ** 2))).astype(np.float32)


def pose_centres() -> np.ndarray:
    """A distinct sub-pixel heatmap location per keypoint, [133, 2] (x, y)."""
    k = np.arange(133)
    return np.stack([20.0 + (k % 19) * 8.3 + 0.37, 30.0 + (k // 19) * 27.1 + 0.61], -1)


def pose_heatmaps() -> torch.Tensor:
    maps = np.stack([gaussian_heatmap(tuple(c), amplitude=0.8) for c in pose_centres()])
    return torch.from_numpy(maps)[None]  # [1, 133, 256, 192]


def tiny_modules() -> dict[str, nn.Module]:
    seg_constant = torch.zeros(1, 28, 1, 1)
    seg_constant[0, TORSO] = 100.0  # Torso wins everywhere
    normal_constant = torch.tensor(NORMAL_BIAS).view(1, 3, 1, 1)
    return {
        "seg": TinyHead(28, 2, 0, seg_constant),
        "normal": TinyHead(3, 2, 1, normal_constant, zero_conv=True),
        "depth": TinyHead(1, 1, 2),
        "pose": TinyHead(133, 4, 3, pose_heatmaps(), zero_conv=True),
    }


FILE_NAMES = {
    "depth": "sapiens_1b_render_people_epoch_88_torchscript.pt2",
    "normal": "sapiens_1b_normal_render_people_epoch_115_torchscript.pt2",
    "seg": "sapiens_1b_goliath_best_goliath_mIoU_7994_epoch_151_torchscript.pt2",
    "pose": "sapiens_1b_coco_wholebody_best_coco_wholebody_AP_727_torchscript.pt2",
}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, nn.Module]]:
    folder = tmp_path_factory.mktemp("sapiens_weights")
    saved = {}
    for task, module in tiny_modules().items():
        module.eval()
        traced = torch.jit.trace(module, torch.zeros(INPUT_SHAPE), check_trace=False)
        path = folder / FILE_NAMES[task]
        torch.jit.save(traced, str(path))
        saved[task] = (path, module)
    return saved


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
def test_missing_checkpoint_names_the_setting_and_the_release(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        SapiensModel(tmp_path / "nope_torchscript.pt2", "model.init_args.depth_checkpoint",
                     "depth")
    message = str(info.value)
    assert "model.init_args.depth_checkpoint" in message
    assert "facebook/sapiens-depth-1b-torchscript" in message
    assert "sapiens_1b_render_people_epoch_88_torchscript.pt2" in message
    bf16 = tmp_path / "sapiens_1b_render_people_epoch_88_bfloat16.pt2"
    bf16.write_bytes(b"x")
    with pytest.raises(ValueError, match="only the TorchScript release"):
        SapiensModel(bf16, "model.init_args.depth_checkpoint", "depth")
    with pytest.raises(FileNotFoundError, match="pose_checkpoint"):
        SapiensKeypointStage(pose_checkpoint=str(tmp_path / "missing.pt2"))
    with pytest.raises(ValueError, match="normal_checkpoint"):
        SapiensGeometryStage(depth_checkpoint=None, tasks=("normal",))


def test_loader_gives_the_head_shapes_and_the_traced_values(tiny_models) -> None:
    expected = {"seg": (2, 28, 512, 384), "normal": (2, 3, 512, 384),
                "depth": (2, 1, 1024, 768), "pose": (2, 133, 256, 192)}
    x = torch.randn(2, 3, 1024, 768, generator=torch.Generator().manual_seed(5))
    for task, (path, module) in tiny_models.items():
        model = SapiensModel(path, f"model.init_args.{task}_checkpoint", task)
        assert not any(p.requires_grad for p in model.parameters())
        out = run_batched(model, x, batch_size=1)  # two chunks of one
        assert tuple(out.shape) == expected[task]
        with torch.no_grad():
            torch.testing.assert_close(out, module(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="1024, 768"):
        model(torch.zeros(1, 3, 512, 384))


# ----------------------------------------------------------------------------------------------
# Pre- and post-processing
# ----------------------------------------------------------------------------------------------
def test_preprocess_of_a_constant_image_is_the_analytic_value() -> None:
    rgb = (200, 30, 90)
    image = np.empty((37, 53, 3), np.uint8)
    image[:] = rgb
    x = preprocess_dense(image)
    assert tuple(x.shape) == (3, 1024, 768)
    want = [(200 - 123.5) / 58.5, (30 - 116.5) / 57.0, (90 - 103.5) / 57.5]  # RGB order
    for c in range(3):
        torch.testing.assert_close(x[c], torch.full((1024, 768), want[c]), rtol=0, atol=1e-6)


def test_preprocess_is_a_plain_stretch() -> None:
    image = np.zeros((10, 40, 3), np.uint8)  # wide image: no aspect-preserving pad
    image[:, 20:] = 255  # right half white
    x = preprocess_dense(image)
    black, white = -123.5 / 58.5, (255 - 123.5) / 58.5
    # source column 19 | 20 edge maps to output columns 374..393 (scale 768 / 40 = 19.2)
    assert torch.allclose(x[0, :, :373], torch.tensor(black))
    assert torch.allclose(x[0, :, 394:], torch.tensor(white))
    assert bool((x[0, 0, 374:393] > black).all() and (x[0, 0, 374:393] < white).all())
    assert torch.allclose(x[0, 0], x[0, -1])  # every row the same: no pad above or below


def test_seg_logits_give_the_expected_palette_image() -> None:
    logits = torch.zeros(28, 512, 384)
    pattern = torch.zeros(512, 384, dtype=torch.long)
    pattern[:256, 192:] = TORSO
    pattern[256:, :192] = HAIR
    pattern[256:, 192:] = RIGHT_HAND
    logits.scatter_(0, pattern[None], 10.0)
    labels = seg_labels(logits, (64, 48))
    assert labels.dtype == np.uint8 and labels.shape == (64, 48)
    rgb = seg_to_subject(labels)
    want = np.zeros((64, 48, 3), np.uint8)
    want[:32, :24] = PALETTE_BY_HAND[BACKGROUND]
    want[:32, 24:] = PALETTE_BY_HAND[TORSO]
    want[32:, :24] = PALETTE_BY_HAND[HAIR]
    want[32:, 24:] = PALETTE_BY_HAND[RIGHT_HAND]
    np.testing.assert_array_equal(rgb, want)


def test_normals_are_unit_on_the_foreground_and_zero_off_it() -> None:
    raw = torch.tensor(NORMAL_BIAS).view(3, 1, 1).expand(3, 512, 384) * 3.0
    sapiens = normal_map(raw, (20, 10))
    n = np.array(NORMAL_BIAS)
    np.testing.assert_allclose(sapiens[5, 5], n / (np.linalg.norm(n) + 1e-5 / 3.0) / 1.0,
                               rtol=1e-5)
    foreground = np.zeros((20, 10), bool)
    foreground[4:15, 2:8] = True
    out = normals_to_subject(sapiens, foreground, (1.0, -1.0, -1.0))
    assert out.dtype == np.float32
    want = np.array([0.2, 0.3, -0.9]) / np.linalg.norm(n)
    np.testing.assert_allclose(out[foreground], np.broadcast_to(want, (66, 3)), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out[foreground], axis=-1), 1.0, atol=1e-6)
    assert np.all(out[~foreground] == 0)
    # a surface facing the Sapiens camera (+z toward the viewer) faces it in OpenCV too (n_z < 0)
    facing = normals_to_subject(np.array([[[0.0, 0.0, 1.0]]]), np.ones((1, 1), bool))
    np.testing.assert_array_equal(facing[0, 0], [0.0, 0.0, -1.0])
    with pytest.raises(ValueError, match="normal_axis_signs"):
        normals_to_subject(sapiens, foreground, (1.0, 2.0, 1.0))


def test_depth_is_positive_on_the_foreground_and_keeps_the_loss() -> None:
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(30, 20)).astype(np.float32)  # relative depth, negatives included
    foreground = np.zeros((30, 20), bool)
    foreground[5:25, 4:16] = True
    out = depth_to_subject(raw, foreground, offset=0.5)
    assert out.dtype == np.float32
    assert np.all(out[~foreground] == 0) and np.all(out[foreground] > 0)
    assert out[foreground].min() == pytest.approx(0.5)
    np.testing.assert_allclose(out[foreground], raw[foreground] - raw[foreground].min() + 0.5,
                               rtol=1e-6)
    # the training loss only sees min-max normalised depths: a positive affine copy of the raw
    # depth as the prediction matches the written target exactly
    pred = torch.from_numpy(np.where(foreground, 3.0 * (raw - raw.min()) + 7.0, 0.0))
    target = torch.from_numpy(out)
    assert float(silog_depth_loss(pred.float(), target)) < 1e-4
    flipped = depth_to_subject(raw, foreground, offset=0.5, larger_is_farther=False)
    np.testing.assert_allclose(flipped[foreground], raw[foreground].max() - raw[foreground] + 0.5,
                               rtol=1e-6)
    assert float(silog_depth_loss(pred.float(), torch.from_numpy(flipped))) > 0.1
    raw_map = depth_map(torch.from_numpy(raw)[None], (60, 40))
    assert raw_map.shape == (60, 40) and raw_map.dtype == np.float32


def test_foreground_prefers_the_mask() -> None:
    labels = np.array([[0, 21], [3, 0]])
    mask = np.array([[True, False], [False, False]])
    np.testing.assert_array_equal(foreground_from(mask, labels), mask)
    np.testing.assert_array_equal(foreground_from(None, labels), [[False, True], [True, False]])


# ----------------------------------------------------------------------------------------------
# Keypoints
# ----------------------------------------------------------------------------------------------
def test_dark_udp_recovers_a_subpixel_peak() -> None:
    centres = [(50.4, 70.6), (100.45, 20.55), (10.3, 200.7), (180.6, 240.35)]
    for sigma in (2.0, 3.0):
        heatmaps = np.stack([gaussian_heatmap(c, sigma) for c in centres])
        locations, values = heatmap_argmax(heatmaps)
        np.testing.assert_array_equal(locations, np.round(np.array(centres)))
        refined = dark_udp_refine(locations, heatmaps, DARK_BLUR_KERNEL)
        assert np.abs(refined - np.array(centres)).max() < 0.05
        assert np.abs(locations - np.array(centres)).max() > 0.3  # the refinement mattered


def test_heatmap_argmax_marks_non_positive_peaks() -> None:
    heatmaps = np.zeros((2, 8, 6), np.float32)
    heatmaps[0, 3, 4] = 0.7
    heatmaps[1] = -0.2
    locations, values = heatmap_argmax(heatmaps)
    np.testing.assert_array_equal(locations, [[4, 3], [-1, -1]])
    np.testing.assert_allclose(values, [0.7, -0.2])


def test_person_box_and_crop() -> None:
    mask = np.zeros((40, 30), bool)
    mask[5:25, 10:16] = True
    np.testing.assert_array_equal(person_box(mask, (40, 30)), [9.5, 4.5, 15.5, 24.5])
    np.testing.assert_array_equal(person_box(None, (40, 30)), [0, 0, 30, 40])
    crop = box_to_crop(np.array([9.5, 4.5, 15.5, 24.5]), (40, 30))
    np.testing.assert_allclose(crop.center, [12.5, 14.5])
    np.testing.assert_allclose(crop.scale, [25.0 * 0.75, 25.0])  # tall box: height x 1.25
    wide = box_to_crop(np.array([0.0, 0.0, 20.0, 2.0]), (40, 30))
    np.testing.assert_allclose(wide.scale, [25.0, 25.0 / 0.75])  # wide box: width x 1.25


def test_a_point_survives_crop_heatmap_and_decode() -> None:
    """A blob at a known original pixel, through the lite crop (warp + resize), found in the
    network input, placed on a heatmap (UDP: index scales by (w_hm - 1) / (w_in - 1)), decoded
    and mapped back, lands on the original pixel."""
    height, width = 160, 120
    point = np.array([47.3, 90.6])  # index coordinates (pixel centres at integers)
    ys, xs = np.mgrid[0:height, 0:width]
    blob = np.exp(-((xs - point[0]) ** 2 + (ys - point[1]) ** 2) / (2 * 2.5 ** 2))
    image = np.repeat((blob * 250)[..., None], 3, axis=2).astype(np.uint8)
    mask = np.zeros((height, width), bool)
    mask[40:140, 20:80] = True
    crop = box_to_crop(person_box(mask, (height, width)), (height, width))
    net = pose_input_image(image, crop)[..., 0].astype(np.float64)  # [1024, 768]
    weights = np.where(net > 20, net, 0.0)
    iy, ix = np.mgrid[0:1024, 0:768]
    centroid = np.array([(weights * ix).sum(), (weights * iy).sum()]) / weights.sum()
    on_heatmap = centroid * np.array([191 / 767, 255 / 1023])
    heatmaps = np.zeros((133, 256, 192), np.float32)
    heatmaps[7] = gaussian_heatmap(tuple(on_heatmap), amplitude=0.9)
    keypoints = decode_keypoints(heatmaps, crop)
    assert keypoints.shape == (133, 3)
    np.testing.assert_allclose(keypoints[7, :2], point + 0.5, atol=0.1)
    assert keypoints[7, 2] == pytest.approx(heatmaps[7].max())
    assert keypoints[0, 2] <= 0  # an empty heatmap: score 0


# ----------------------------------------------------------------------------------------------
# Stages on a tiny subject
# ----------------------------------------------------------------------------------------------
def _trainer() -> Trainer:
    return Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                   enable_checkpointing=False, enable_model_summary=False)


@pytest.fixture
def tiny_subject(tmp_path: Path) -> Path:
    root = _load_tiny_subject_module().make_tiny_subject(tmp_path / "tiny")
    return root


def _without_mask(root: Path) -> tuple[Path, bytes]:
    """Hide one frame's SAM mask (the stage must fall back); returns it to restore later."""
    path = root / "generated_1" / "masks" / "1.png"
    data = path.read_bytes()
    path.unlink()
    return path, data


def test_geometry_stage_writes_a_valid_subject(tiny_models, tiny_subject: Path) -> None:
    root = tiny_subject
    stage = SapiensGeometryStage(depth_checkpoint=str(tiny_models["depth"][0]),
                                 normal_checkpoint=str(tiny_models["normal"][0]),
                                 seg_checkpoint=str(tiny_models["seg"][0]), depth_offset=2.0,
                                 model_batch_size=2)
    for split in ("captured", "test"):  # written fresh by the stage
        for sub in ("depths", "normals", "segs"):
            for path in (root / split / sub).glob("*"):
                path.unlink()
    mask_path, mask_png = _without_mask(root)
    _trainer().predict(stage, datamodule=PrepData(str(root), overwrite=True, batch_size=3),
                       return_predictions=False)
    mask_path.write_bytes(mask_png)
    problems = validate_subject(root)
    assert problems == [], problems
    mask = np.zeros((32, 24), bool)
    mask[4:28, 6:18] = True  # tests/data/tiny_subject.py mask
    want_normal = np.array([0.2, 0.3, -0.9]) / np.linalg.norm(NORMAL_BIAS)
    for split, index, has_mask in (("captured", 0, True), ("test", 1, True),
                                   ("generated_1", 1, False)):
        fg = mask if has_mask else np.ones_like(mask)  # no mask: seg (all Torso) is foreground
        depth = np.load(root / split / "depths" / f"{index}.npy")
        normal = np.load(root / split / "normals" / f"{index}.npy")
        seg = np.asarray(Image.open(root / split / "segs" / f"{index}.png"))
        assert np.all(depth[~fg] == 0) and np.all(depth[fg] > 0)
        assert depth[fg].min() == pytest.approx(2.0)
        np.testing.assert_allclose(normal[fg], np.broadcast_to(want_normal, normal[fg].shape),
                                   atol=1e-6)
        assert np.all(normal[~fg] == 0)
        assert np.all(seg == PALETTE_BY_HAND[TORSO])
    # the depth equals the pure-function chain on the original (untraced) module's output
    image = np.asarray(Image.open(root / "captured/images/0.png"))
    with torch.no_grad():
        raw = tiny_models["depth"][1](preprocess_dense(image)[None])[0]
    want = depth_to_subject(depth_map(raw, (32, 24)), mask, 2.0)
    np.testing.assert_allclose(np.load(root / "captured/depths/0.npy"), want, rtol=1e-5)


def test_keypoint_stage_decodes_known_heatmap_peaks(tiny_models, tiny_subject: Path) -> None:
    root = tiny_subject
    stage = SapiensKeypointStage(pose_checkpoint=str(tiny_models["pose"][0]))
    _without_mask(root)
    _trainer().predict(stage, datamodule=PrepData(str(root), splits=["captured", "generated_1"],
                                                  batch_size=2), return_predictions=False)
    centres = pose_centres()
    peaks = pose_heatmaps()[0].flatten(1).max(1).values.numpy()
    # mask box [5.5, 3.5, 17.5, 27.5] -> centre (11.5, 15.5), size x1.25 (15, 30) -> aspect
    # 24/32 fixed: scale (22.5, 30); the full image [0, 0, 24, 32] -> (12, 16), (30, 40)
    for split, index, center, scale in (("captured", 0, (11.5, 15.5), (22.5, 30.0)),
                                        ("generated_1", 1, (12.0, 16.0), (30.0, 40.0))):
        keypoints = read_keypoints(root / split / "keypoints" / f"{index}.json")
        want = (centres / np.array([191.0, 255.0]) * np.array(scale) + np.array(center)
                - 0.5 * np.array(scale) + 0.5)
        np.testing.assert_allclose(keypoints[:, :2], want, atol=0.01)
        np.testing.assert_allclose(keypoints[:, 2], peaks, rtol=1e-5)


def test_configs_name_the_released_files_and_run_through_the_cli(tiny_models,
                                                                 tiny_subject: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    geometry = yaml.safe_load((repo / "configs/prep/geometry.yaml").read_text())
    keypoints = yaml.safe_load((repo / "configs/prep/keypoints.yaml").read_text())
    args = {**geometry["model"]["init_args"], **keypoints["model"]["init_args"]}
    for task in ("depth", "normal", "seg", "pose"):
        path = Path(args[f"{task}_checkpoint"])
        assert path.parent == Path("weights/sapiens")
        assert path.name == Path(SAPIENS_RELEASES[task][1]).name == FILE_NAMES[task]
    assert list(args["normal_axis_signs"]) == [1.0, -1.0, -1.0]
    with pytest.raises(ValueError, match="model.init_args.depth_checkpoint"):
        build_cli(["--config", str(repo / "configs/prep/geometry.yaml"),
                   "--data.subject_dir", str(tiny_subject), "--trainer.accelerator", "cpu"])
    status = prep_main(["--config", str(repo / "configs/prep/keypoints.yaml"),
                        "--data.subject_dir", str(tiny_subject), "--data.splits", "[test]",
                        "--model.init_args.pose_checkpoint", str(tiny_models["pose"][0]),
                        "--trainer.accelerator", "cpu"])
    assert status == 0
    written = sorted(p.name for p in (tiny_subject / "test" / "keypoints").glob("*.json"))
    assert written == ["0.json", "1.json"]
