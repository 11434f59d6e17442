"""persona/metrics/deformation.py: the offset and garment-image metrics recover known answers."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from persona.data.subject import write_png
from persona.metrics import deformation as dm

MM = 1e-3  # metres per mm


def _truth(seed: int = 0, poses: int = 6, gaussians: int = 9) -> torch.Tensor:
    """Random true offsets [T, G, 3] of a few cm."""
    return torch.randn(poses, gaussians, 3, generator=torch.Generator().manual_seed(seed)) * 0.02


def _norm_mean_mm(vectors: torch.Tensor) -> float:
    return float(np.linalg.norm(vectors.numpy(), axis=-1).mean()) * 1000.0


# ---------------------------------------------------------------------------- offset metrics
def test_hand_computed_errors_of_a_zero_avatar() -> None:
    # one Gaussian, two poses: truth +1 mm and +3 mm along x, training mean 2 mm
    truth = torch.tensor([[[1.0, 0, 0]], [[3.0, 0, 0]]]) * MM  # [2, 1, 3]
    mean = torch.tensor([[2.0, 0, 0]]) * MM  # [1, 3]
    zero = dm.offset_errors(torch.zeros_like(truth), torch.zeros(1, 3), truth, mean)
    assert zero["gaussians"] == 1
    assert zero["total_error_mm"] == pytest.approx(2.0)  # (1 + 3) / 2
    assert zero["zero_offset_error_mm"] == pytest.approx(2.0)
    assert zero["static_only_error_mm"] == pytest.approx(2.0)
    assert zero["deformer_error_mm"] == pytest.approx(1.0)  # |0 - (-1)|, |0 - 1|
    assert zero["deformer_zero_error_mm"] == pytest.approx(1.0)
    assert math.isnan(zero["deformer_correlation"])  # a constant deformer: undefined


def test_static_at_the_truth_mean_scores_the_pose_dependent_part() -> None:
    truth = _truth()
    mean = truth.mean(0)  # [G, 3]
    scores = dm.offset_errors(torch.zeros_like(truth), mean, truth, mean)
    expected = _norm_mean_mm(truth - mean)  # |truth - mean|
    assert scores["static_only_error_mm"] == pytest.approx(expected, rel=1e-5)
    assert scores["total_error_mm"] == pytest.approx(expected, rel=1e-5)  # deformer off
    assert scores["zero_offset_error_mm"] == pytest.approx(_norm_mean_mm(truth), rel=1e-5)
    assert scores["deformer_zero_error_mm"] == pytest.approx(expected, rel=1e-5)


def test_a_perfect_deformer_has_zero_error_and_correlation_one() -> None:
    truth = _truth(1)
    mean = _truth(2, poses=20).mean(0) + truth.mean(0)  # a training mean that is not the test's
    perfect = dm.offset_errors(truth - mean, mean, truth, mean)
    assert perfect["deformer_error_mm"] == pytest.approx(0.0, abs=1e-5)
    assert perfect["total_error_mm"] == pytest.approx(0.0, abs=1e-5)
    assert perfect["deformer_correlation"] == pytest.approx(1.0)
    assert perfect["deformer_zero_error_mm"] == pytest.approx(_norm_mean_mm(truth - mean),
                                                              rel=1e-5)
    # a deformer of twice the right shape still correlates 1, one of the opposite sign -1
    assert dm.offset_errors(2 * (truth - mean), mean, truth, mean)["deformer_correlation"] \
        == pytest.approx(1.0)
    flipped = dm.offset_errors(mean - truth, mean, truth, mean)
    assert flipped["deformer_correlation"] == pytest.approx(-1.0)
    assert flipped["deformer_error_mm"] == pytest.approx(2 * perfect["deformer_zero_error_mm"],
                                                         rel=1e-5)


def test_pose_part_correlation_does_not_see_a_carried_mean() -> None:
    """A deformer whose pose dependence is right but which also carries a mean offset: the whole
    output reads negative against the truth's pose part in poses where that has a mean of its
    own, its own pose part correlates 1; one of the opposite dependence -1; none given: NaN."""
    train = _truth(3, poses=30)  # [30, G, 3] pose parts of ~2 cm
    mean = train.mean(0)
    carried = 3 * _truth(4, poses=1)[0]  # [G, 3] ~6 cm of mean offset the deformer carries
    test = train[:5] - 0.5 * carried  # poses whose pose part has a mean of its own, against it
    deformer = (test - mean) + carried
    own_mean = (train - mean).mean(0) + carried  # its mean over the training poses
    scores = dm.offset_errors(deformer, mean - carried, test, mean, own_mean)
    assert scores["deformer_correlation"] < 0  # what the whole output reads
    assert scores["pose_part_correlation"] == pytest.approx(1.0)
    inverse = dm.offset_errors(-(test - mean) + carried, mean, test, mean, own_mean - 2 * (
        (train - mean).mean(0)))
    assert inverse["pose_part_correlation"] == pytest.approx(-1.0)
    assert math.isnan(dm.offset_errors(deformer, mean, test, mean)["pose_part_correlation"])
    with pytest.raises(ValueError, match="deformer_train_mean"):
        dm.offset_errors(deformer, mean, test, mean, own_mean[:1])


def test_offset_errors_rejects_mismatched_shapes() -> None:
    truth = _truth()
    with pytest.raises(ValueError, match="must be"):
        dm.offset_errors(truth[:, :3], truth[0], truth, truth[0])


def test_region_errors_select_their_gaussians() -> None:
    truth = _truth(3)
    mean = truth.mean(0)
    part = torch.tensor([True, False] * 4 + [True])  # [9]
    deformer = torch.zeros_like(truth)
    deformer[:, ~part] = 1.0  # a big error only outside the part
    report = dm.region_errors(deformer, mean, truth, mean,
                              {"garment": torch.ones(9, dtype=torch.bool), "part": part},
                              prefix="train_")
    assert sorted(report) == ["train_garment", "train_part"]
    assert report["train_part"]["gaussians"] == 5
    assert report["train_part"]["deformer_error_mm"] == pytest.approx(
        _norm_mean_mm((truth - mean)[:, part]), rel=1e-5)
    assert report["train_garment"]["deformer_error_mm"] > 500.0


def test_world_errors_of_known_displacements() -> None:
    """refined 3 mm, base 4 mm and the bare body 5 mm from the true posed garment."""
    posed = torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(3))  # [T, G, 3]
    refined = posed + torch.tensor([0.003, 0.0, 0.0])
    base = posed + torch.tensor([0.0, -0.004, 0.0])
    bare = posed + torch.tensor([0.0, 0.0, 0.005])
    errors = dm.world_errors(refined, base, posed, bare)
    assert errors == pytest.approx({"world_error_mm": 3.0, "world_static_only_error_mm": 4.0,
                                    "world_zero_offset_error_mm": 5.0}, rel=1e-5)
    with pytest.raises(ValueError, match="world_errors"):
        dm.world_errors(refined[:, :3], base, posed, bare)

def test_report_scalars_and_summary() -> None:
    values = dict.fromkeys(dm.OFFSET_KEYS, 1.5)
    values["deformer_correlation"] = math.nan  # not logged
    values["pose_part_correlation"] = 0.25
    report = {"matching": "vertex_index", "garment": values, "train_cape": dict(values),
              "garment_image": {"garment_psnr": 30.0}}
    scalars = dm.report_scalars(report, "test/deformation")
    assert scalars["test/deformation/total_error_mm"] == 1.5
    assert scalars["test/deformation/train_cape/static_only_error_mm"] == 1.5
    assert scalars["test/deformation/pose_part_correlation"] == 0.25
    assert not any("deformer_correlation" in k or "garment_image" in k for k in scalars)
    lines = dm.summary_lines(report)
    assert len(lines) == 3 and lines[1].startswith("garment")
    assert lines[2].split()[-2:] == ["-", "0.250"]  # corr (NaN), pose-c


# ---------------------------------------------------------------------------- matching
def test_matching_by_index_then_by_nearest_neighbour() -> None:
    points = torch.rand(50, 3, generator=torch.Generator().manual_seed(0))
    index, method = dm.match_gaussians(points, points.clone())
    assert method == "vertex_index" and torch.equal(index, torch.arange(50))
    order = torch.randperm(50, generator=torch.Generator().manual_seed(1))
    index, method = dm.match_gaussians(points[order], points + 1e-4)
    assert method == "nearest_neighbour" and torch.equal(order[index], torch.arange(50))
    subset = torch.arange(50) % 3 == 0  # [50] bool
    index, method = dm.match_subset(points, points.clone(), subset)
    assert method == "vertex_index" and torch.equal(index, torch.nonzero(subset)[:, 0])
    index, method = dm.match_subset(points[order], points + 1e-4, subset)
    assert method == "nearest_neighbour" and torch.equal(order[index],
                                                         torch.nonzero(subset)[:, 0])


# ---------------------------------------------------------------------------- images
def test_dilation_by_a_disc() -> None:
    mask = torch.zeros(9, 9, dtype=torch.bool)
    mask[4, 4] = True
    assert torch.equal(dm.dilate(mask, 0), mask)
    assert int(dm.dilate(mask, 1).sum()) == 5  # a plus
    two = dm.dilate(mask, 2)
    assert int(two.sum()) == 13 and bool(two[4, 6]) and not bool(two[6, 6])
    with pytest.raises(ValueError, match="radius"):
        dm.dilate(mask, -1)


def test_garment_region_is_resized_by_nearest_then_dilated() -> None:
    native = torch.zeros(20, 20)
    native[8:12, 8:12] = 1.0  # a 4 x 4 block at twice the scored resolution
    region = dm.garment_region(native, 10, 10, dilation_px=0)
    assert region.shape == (10, 10) and int(region.sum()) == 4 and bool(region[4:6, 4:6].all())
    dilated = dm.garment_region(native, 10, 10, dilation_px=1)
    assert int(dilated.sum()) == 4 + 8  # one pixel on each side of the 2 x 2 block, no corners


def test_masked_psnr_counts_only_the_region() -> None:
    target = torch.full((6, 6, 3), 0.5)
    pred = target.clone()
    pred[0, 0] += 0.1  # inside the region
    pred[5, 5] = 1.0  # outside: ignored
    region = torch.zeros(6, 6, dtype=torch.bool)
    region[0:2, 0:2] = True  # 4 pixels
    assert dm.masked_psnr(pred, target, region) == pytest.approx(10 * math.log10(4 / 0.01),
                                                                 rel=1e-6)
    assert dm.masked_psnr(target, target, region) == pytest.approx(100.0)  # MIN_MSE cap
    assert math.isnan(dm.masked_psnr(pred, target, torch.zeros(6, 6, dtype=torch.bool)))


def test_region_mask_iou_ignores_pixels_outside_the_region() -> None:
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[:, :4] = True
    target = torch.zeros(8, 8)
    target[:4, :4] = 1.0  # 16 px
    alpha = torch.zeros(8, 8, 1)
    alpha[:2, :4] = 0.9  # 8 px inside, all on the target
    alpha[:, 4:] = 1.0  # outside the region: not counted
    assert dm.region_mask_iou(alpha, target, region) == pytest.approx(50.0)
    assert math.isnan(dm.region_mask_iou(alpha, target, torch.zeros(8, 8, dtype=torch.bool)))


def test_garment_image_metrics_from_a_mask_file(tmp_path: Path) -> None:
    subject = tmp_path / "subject"
    assert not dm.has_garment_masks(subject, "test")
    path = dm.garment_mask_path(subject, "test", 3)
    assert path == subject / "test" / "garment_masks" / "3.png"
    with pytest.raises(FileNotFoundError, match="3.png"):
        dm.read_garment_mask(path)
    native = np.zeros((16, 12), dtype=np.uint8)
    native[4:8, 2:6] = 255  # at 2x the scored 8 x 6
    write_png(path, native)
    assert dm.has_garment_masks(subject, "test")
    garment = dm.read_garment_mask(path)  # [16, 12] in [0, 1]
    target = torch.zeros(8, 6, 3)
    pred = target.clone()
    pred[2, 1] = 0.1  # inside the garment
    pred[7, 5] = 1.0  # farther than the dilation: ignored
    alpha = torch.zeros(8, 6, 1)
    alpha[2:4, 1:3] = 1.0  # exactly the garment at the scored resolution
    scores = dm.garment_image_metrics(pred, target, alpha, garment, dilation_px=1)
    region = 4 + 8  # the 2 x 2 garment and its one-pixel plus-dilation
    assert scores["garment_psnr"] == pytest.approx(10 * math.log10(region / 0.01), rel=1e-6)
    assert scores["garment_mask_iou"] == pytest.approx(100.0)


# ---------------------------------------------------------------------------- the subject
@dataclass
class _Inner:
    width: float = 1.0


@dataclass
class _Outer:
    names: tuple[str, ...] = ("a",)
    inner: _Inner = field(default_factory=_Inner)
    seed: int = 0


def test_dataclass_from_meta_json_drops_unknown_keys() -> None:
    built = dm.dataclass_from(_Outer, {"names": ["x", "y"], "inner": {"width": 2.0, "gone": 1},
                                       "removed": 3})
    assert built == _Outer(names=("x", "y"), inner=_Inner(2.0), seed=0)
    assert dm.unknown_settings(_Outer, {"names": [], "inner": {"width": 2.0, "gone": 1},
                                        "removed": 3}) == ["inner.gone", "removed"]
    assert dm.unknown_settings(_Outer, {"seed": 1}) == []


def test_only_synth_subjects_are_recognised(tmp_path: Path) -> None:
    assert dm.read_synth_meta(tmp_path) is None  # no meta.json
    (tmp_path / "meta.json").write_text(json.dumps({"generator": "someone else"}))
    assert dm.read_synth_meta(tmp_path) is None
    with pytest.raises(ValueError, match="not a synthetic subject"):
        dm.synth_config(tmp_path)
    assert dm.build_truth(tmp_path, []) is None
    (tmp_path / "meta.json").write_text(json.dumps({"generator": dm.SYNTH_GENERATOR}))
    with pytest.raises(ValueError, match="'config'"):
        dm.read_synth_meta(tmp_path)
    stale = {"generator": dm.SYNTH_GENERATOR, "config": {"seed": 1, "garment": {
        "hem_amplitude": 0.3}}}  # a setting of an older synth's garment
    (tmp_path / "meta.json").write_text(json.dumps(stale))
    with pytest.raises(dm.StaleSubjectError, match=r"garment\.hem_amplitude"):
        dm.build_truth(tmp_path, [])
    (tmp_path / "meta.json").write_text("{broken")
    with pytest.raises(ValueError, match="meta.json: not valid JSON"):
        dm.read_synth_meta(tmp_path)


def test_spread_and_distinct_poses() -> None:
    from persona.body.types import PoseParams

    assert dm.spread(10, None) == list(range(10)) and dm.spread(3, 5) == [0, 1, 2]
    assert dm.spread(9, 3) == [0, 4, 8]
    poses = [PoseParams(torch.full((1, 55, 3), float(v)), torch.zeros(1, 4), torch.zeros(1, 3))
             for v in (0, 1, 0, 2, 1)]
    distinct = dm.distinct_poses(poses)
    assert [float(p.full_pose[0, 0, 0]) for p in distinct] == [0.0, 1.0, 2.0]
