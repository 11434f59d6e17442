"""The loss weight table pinned to the authors' code (METHOD.md sections 5 and 12) for both
splits."""

import dataclasses

import pytest

from persona.losses.table import LossWeights, pixel_seam_weight, term_weights, without_missing_maps

# METHOD.md section 5: (input image, generated frame) weight of every term.
EXPECTED = {
    "image_base": (1.0, 1.0),
    "image_refined": (0.1, 0.1),
    "albedo_base": (1.0, 0.0),
    "mask_base": (1.0, 1.0),
    "mask_refined": (1.0, 1.0),
    "coarse_base": (0.0, 0.0),  # ours only (losses.coarse; the authors have no blurred terms)
    "coarse_refined": (0.0, 0.0),
    "depth_base": (0.1 * 0.01, 0.01),
    "depth_refined": (0.1 * 0.01, 0.01),
    "normal_base": (0.1, 1.0),
    "normal_refined": (0.1, 1.0),
    "seg_base": (0.1, 1.0),
    "seg_refined": (0.1, 1.0),
    "rgb_aux_refined": (0.0, 1.0),
    "seam_distill": (1.0, 0.0),
    "seam_distill_refined": (1.0, 0.0),  # METHOD.md section 12: refined render, own seams
    "face_geo": (1.0, 0.0),  # face Gaussians in initial colours vs the image
    "face_patch_base": (0.1, 0.0),  # authors' patch terms, input image only, x0.1 each
    "face_patch_refined": (0.0, 0.0),  # ours only (face_patch_whole_avatar 1)
    "face_patch_boundary": (0.1, 0.0),
    "face_patch_mask": (0.1, 0.0),
    "face_patch_geo": (0.1, 0.0),  # face_patch 0.1 x face_geo 1
    "hand_mask": (0.0, 50.0),
    "eye_mask": (1.0, 1.0),
    "lap_mean": (0.0, 0.0),  # the authors have no Laplacian on canonical refined means
    "lap_mean_base": (1e6, 1e6),
    "lap_mean_posed": (1e5, 1e5),
    "lap_scale": (1e6, 1e6),
    "lap_scale_original": (1e6, 1e6),
    "lap_rgb": (0.1, 0.1),
    "hand_rgb_tv": (100.0, 100.0),
    "hand_rgb_aux": (1.0, 1.0),
    "mouth_rgb": (1.0, 1.0),
}


@pytest.mark.parametrize("is_input", [True, False])
def test_default_weights_per_split(is_input: bool) -> None:
    weights = term_weights(LossWeights(), is_input)
    assert set(weights) == set(EXPECTED)
    for name, (input_weight, generated_weight) in EXPECTED.items():
        expected = input_weight if is_input else generated_weight
        assert weights[name] == pytest.approx(expected, rel=1e-12), name


def test_image_parts_and_seam_pixels() -> None:
    weights = LossWeights()
    assert (weights.l1, weights.ssim, weights.lpips) == (0.8, 0.2, 1.0)
    assert pixel_seam_weight(weights, True) == 0.1
    assert pixel_seam_weight(weights, False) == 1.0
    # Refined image on seams of the input image: 0.1 x 0.1 = 0.01 (METHOD.md's table).
    refined_on_seams = term_weights(weights, True)["image_refined"] * pixel_seam_weight(
        weights, True)
    assert refined_on_seams == pytest.approx(0.01)


def test_overrides_flow_through_and_bad_values_rejected() -> None:
    weights = dataclasses.replace(LossWeights(), image_refined=1.0, geometry_generated=2.0)
    table = term_weights(weights, False)
    assert table["image_refined"] == 1.0 and table["normal_refined"] == 2.0
    assert table["depth_base"] == pytest.approx(0.02)
    with pytest.raises(ValueError, match="LossWeights.depth"):
        LossWeights(depth=-1.0)


def test_missing_maps_switch_off_only_their_factors() -> None:
    weights, off = without_missing_maps(LossWeights(), {"seg", "depth", "generated"})
    assert off == ["depth", "seg"]  # table order; "generated" is not a loss factor
    assert (weights.depth, weights.seg) == (0.0, 0.0)
    changed = {f.name for f in dataclasses.fields(LossWeights)
               if getattr(weights, f.name) != getattr(LossWeights(), f.name)}
    assert changed == {"depth", "seg"}
    same, none = without_missing_maps(LossWeights(normal=0.0), {"normal"})
    assert none == [] and same == LossWeights(normal=0.0)  # already off: nothing to report
    assert term_weights(weights, False)["seg_refined"] == 0.0
