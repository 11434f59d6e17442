"""Evaluation protocols, per-frame evaluation and metrics.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from persona.metrics.images import psnr
from persona.metrics.protocol import (
    PASTED_KEY,
    CropBox,
    EvalProtocol,
    MetricsReport,
    composite,
    evaluate_frame,
    load_protocol,
    paste_crop,
)

CONFIGS = Path(__file__).parents[2] / "configs" / "protocol"


def test_fragments_load_as_documented() -> None:
    authors = load_protocol(CONFIGS / "authors.yaml")
    plain = load_protocol(CONFIGS / "plain.yaml")
    assert authors == EvalProtocol()  # the defaults are the authors' protocol
    assert (authors.mask_composite, authors.fit_test_pose, authors.lpips_net) == (True, True,
                                                                                 "alex")
    assert authors.background == (1.0, 1.0, 1.0) and authors.fit_steps == 40
    assert (plain.mask_composite, plain.fit_test_pose, plain.fit_steps) == (False, False, 0)
    assert authors.paste_into_full_image and not plain.paste_into_full_image
    assert (authors.fit_lr, authors.fit_hand_lr_factor, authors.fit_decay_at) == (1e-3, 0.1,
                                                                                  0.6875)
    assert not authors.fit_in_validation


def test_bad_fragments_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("protocol:\n  name: x\n  lpips: alex\n")
    with pytest.raises(ValueError, match=r"unknown protocol field\(s\) \['lpips'\]"):
        load_protocol(path)
    path.write_text("protocol:\n  name: x\n  lpips_net: squeeze\n")
    with pytest.raises(ValueError, match="lpips_net"):
        load_protocol(path)
    with pytest.raises(FileNotFoundError):
        load_protocol(tmp_path / "missing.yaml")


def _frame() -> dict[str, torch.Tensor]:
    """A 32x32 frame: the subject is the centre square; the background differs between the render
    (white) and the photo (grey), and the subject's colour is off by 0.1 in the render."""
    mask = torch.zeros(32, 32, 1)
    mask[8:24, 8:24] = 1.0
    target = torch.full((32, 32, 3), 0.5)
    target[8:24, 8:24] = torch.tensor([0.2, 0.4, 0.6])
    pred = torch.ones(32, 32, 3)
    pred[8:24, 8:24] = torch.tensor([0.3, 0.5, 0.7])
    alpha = mask.clone()
    alpha[8:24, 20:24] = 0.0  # the render misses a 16x4 strip
    return {"pred": pred, "target": target, "pred_alpha": alpha, "target_mask": mask}


def test_mask_compositing_changes_only_what_it_should() -> None:
    frame = _frame()
    masked = evaluate_frame(**frame, protocol=EvalProtocol())
    plain = evaluate_frame(**frame, protocol=load_protocol(CONFIGS / "plain.yaml"))
    # masked: both backgrounds become white, only the subject's 0.1 error remains
    mse = 0.1 ** 2 * (16 * 16) / (32 * 32)
    assert masked["psnr"] == pytest.approx(-10 * math.log10(mse), abs=1e-4)
    # plain: the white-vs-grey background counts too
    mse_plain = (0.1 ** 2 * 16 * 16 + 0.5 ** 2 * (32 * 32 - 16 * 16)) / (32 * 32)
    assert plain["psnr"] == pytest.approx(-10 * math.log10(mse_plain), abs=1e-4)
    assert masked["mask_iou"] == pytest.approx(100 * 12 / 16)
    assert "lpips" not in masked and "depth_l1_mm" not in masked
    assert masked[PASTED_KEY] == 0.0  # no crop box: scored as given, and recorded so


def test_paste_into_full_image_needs_a_crop_box() -> None:
    """With a crop box the 32x32 crop is scored inside its 64x48 original (the background
    outside is identical in both, so the PSNR rises by 10 log10(64 x 48 / 32 x 32)); without
    one the crop is scored as given and the frame records that it was not pasted."""
    frame = _frame()
    box = CropBox(top=20, left=10, full_height=64, full_width=48)
    crop = evaluate_frame(**frame, protocol=EvalProtocol())
    pasted = evaluate_frame(**frame, protocol=EvalProtocol(), crop_box=box)
    not_requested = evaluate_frame(**frame, protocol=EvalProtocol(paste_into_full_image=False),
                                   crop_box=box)
    assert pasted[PASTED_KEY] == 1.0 and crop[PASTED_KEY] == not_requested[PASTED_KEY] == 0.0
    gain = 10 * math.log10(64 * 48 / (32 * 32))
    assert pasted["psnr"] == pytest.approx(crop["psnr"] + gain, abs=1e-4)
    assert pasted["ssim"] > crop["ssim"] and not_requested["psnr"] == crop["psnr"]
    assert pasted["mask_iou"] == pytest.approx(crop["mask_iou"])


def test_geometry_scored_inside_the_mask() -> None:
    frame = _frame()
    depth = torch.full((32, 32, 1), 3.0)
    pred_depth = depth + 0.5
    pred_depth[0, 0] = 9.0  # outside the ground-truth mask: ignored
    normals = torch.zeros(32, 32, 3)
    normals[..., 2] = -1.0
    scores = evaluate_frame(**frame, protocol=EvalProtocol(), pred_depth=pred_depth,
                            target_depth=depth, pred_normal=normals, target_normal=normals)
    assert scores["depth_l1_mm"] == pytest.approx(0.0, abs=1e-9)
    assert scores["normal_deg"] == pytest.approx(0.0, abs=1e-6)


def test_lpips_in_evaluate_frame_uses_the_given_function() -> None:
    from persona.metrics.lpips_weights import weights_path

    if not weights_path("alex").is_file():
        pytest.skip("LPIPS weights not installed: run make install")
    from persona.metrics.lpips import load_lpips_distance

    frame = _frame()
    frame["pred"] = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(0))
    distance = load_lpips_distance("alex")
    scores = evaluate_frame(**frame, protocol=EvalProtocol(), lpips_fn=distance)
    same = evaluate_frame(frame["target"], frame["target"], frame["target_mask"],
                          frame["target_mask"], EvalProtocol(), lpips_fn=distance)
    assert scores["lpips"] > 0.05 and same["lpips"] < 1e-6


def test_composite_and_paste() -> None:
    image = torch.zeros(2, 2, 3)
    out = composite(image, torch.tensor([[1.0, 0.0], [0.5, 0.0]]), (1.0, 1.0, 1.0))
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, 1].tolist() == [1, 1, 1]
    assert out[1, 0].tolist() == [0.5, 0.5, 0.5]
    crop = torch.arange(12.0).reshape(2, 2, 3)
    canvas = paste_crop(crop, 4, 5, 1, 3, torch.tensor([1.0, 1.0, 1.0]))
    assert torch.equal(canvas[1:3, 3:5], crop) and canvas[0].eq(1).all()
    clipped = paste_crop(crop, 4, 4, -1, 3, 0.0)  # partly outside: only the visible part
    assert torch.equal(clipped[0, 3], crop[1, 0]) and clipped.sum() == crop[1, 0].sum()


def test_metrics_json_is_atomic_and_complete(tmp_path: Path) -> None:
    report = MetricsReport(EvalProtocol(name="authors"))
    report.add("test/0", {"psnr": 20.0, "depth_l1_mm": math.nan, PASTED_KEY: 0.0})
    report.add("test/1", {"psnr": 30.0, "depth_l1_mm": 4.0, PASTED_KEY: 0.0})
    path = report.write(tmp_path / "run" / "metrics.json", extra={"ckpt": "last.ckpt"})
    data = json.loads(path.read_text())
    assert data["mean"] == {"psnr": 25.0, "depth_l1_mm": 4.0}  # the flag is not a metric
    assert data["frames"][0] == {"frame": "test/0", "psnr": 20.0, "depth_l1_mm": None,
                                 PASTED_KEY: 0.0}
    # nothing was pasted: the protocol says so (it used to record the request, true)
    assert data["protocol"]["paste_into_full_image"] is False
    assert data["protocol_requested"] == {"paste_into_full_image": True}
    assert data["protocol"]["name"] == "authors" and data["protocol"]["background"] == [1, 1, 1]
    assert data["versions"]["torch"] == torch.__version__ and "gsplat" in data["versions"]
    assert data["num_frames"] == 2 and data["ckpt"] == "last.ckpt"
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_metrics_json_records_paste_only_when_every_frame_was_pasted() -> None:
    report = MetricsReport(EvalProtocol())
    report.add("test/0", {"psnr": 20.0, PASTED_KEY: 1.0})
    assert report.to_dict()["protocol"]["paste_into_full_image"] is True
    assert "protocol_requested" not in report.to_dict()
    report.add("test/1", {"psnr": 20.0})  # a frame without the flag counts as not pasted
    assert report.to_dict()["protocol"]["paste_into_full_image"] is False
    plain = MetricsReport(EvalProtocol(paste_into_full_image=False))
    plain.add("test/0", {"psnr": 20.0, PASTED_KEY: 0.0})
    assert "protocol_requested" not in plain.to_dict()


def test_psnr_helper_consistent_with_evaluate_frame() -> None:
    frame = _frame()
    protocol = EvalProtocol(mask_composite=False)
    assert evaluate_frame(**frame, protocol=protocol)["psnr"] == pytest.approx(
        psnr(frame["pred"], frame["target"]))
