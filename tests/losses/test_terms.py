"""Loss terms as pure functions of (renders, batch, weights): no LightningModule needed."""

from __future__ import annotations

import pytest
import torch

from persona.losses import terms as T
from persona.losses.table import LossWeights
from persona.render import TorchRenderer, make_renderer

H, W = 6, 5


def _render(alpha: float = 1.0) -> dict:
    return {"rgb": torch.full((H, W, 3), 0.5), "alpha": torch.full((H, W, 1), alpha),
            "depth": torch.rand(H, W, 1) + 1.0, "normal": torch.tensor([0.0, 0, -1]).expand(
                H, W, 3).clone(), "seg": torch.rand(H, W, 3), "regions": torch.zeros(H, W, 3)}


def _batch() -> dict:
    return {"image": torch.full((1, H, W, 3), 0.5), "mask": torch.ones(1, H, W, 1),
            "depth": torch.rand(1, H, W, 1) + 1.0, "normal": torch.tensor([0.0, 0, -1]).expand(
                1, H, W, 3).clone(), "seg": torch.rand(1, H, W, 3),
            "has_albedo": torch.tensor([False])}


def _l1(render: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (render - target).abs().mean(-1)[None, None]


def test_zero_weights_compute_nothing_and_positive_ones_carry_their_weight():
    weights = {"image_base": 0.0, "mask_base": 2.0, "depth_base": 0.0, "normal_base": 0.0,
               "seg_base": 0.0}
    assert T.image_terms(_render(), _batch(), "base", weights, None, _l1) == {}
    terms = T.geometry_terms(_render(), _batch(), "base", weights)
    assert set(terms) == {"mask_base"} and terms["mask_base"][1] == 2.0
    assert float(terms["mask_base"][0]) == pytest.approx(0.0)


def test_coarse_term_compares_the_composite_and_alpha_with_image_and_mask():
    weights = {"mask_refined": 0.0, "coarse_refined": 3.0, "depth_refined": 0.0,
               "normal_refined": 0.0, "seg_refined": 0.0}
    same = T.geometry_terms(_render(), _batch(), "refined", weights, coarse=(1.0, 2))
    assert set(same) == {"coarse_refined"} and same["coarse_refined"][1] == 3.0
    assert float(same["coarse_refined"][0]) == pytest.approx(0.0)  # render == image, alpha == mask
    nothing = _render(alpha=0.0)
    nothing["rgb"] = torch.zeros(H, W, 3)  # premultiplied: nothing rendered
    empty = T.geometry_terms(nothing, _batch(), "refined", weights, coarse=(1.0, 2))
    # alpha 0 against mask 1 in one of the four channels; rgb composites to the image
    assert float(empty["coarse_refined"][0]) == pytest.approx(0.25)


def test_image_term_composites_the_render_over_the_target():
    render = _render(alpha=0.0)  # nothing rendered: the composite is the target itself
    render["rgb"] = torch.zeros(H, W, 3)
    terms = T.image_terms(render, _batch(), "refined", {"image_refined": 1.0}, None, _l1)
    assert float(terms["image_refined"][0]) == 0.0


def test_normal_validity_uses_its_own_thresholds():
    alpha = torch.full((H, W, 1), T.NORMAL_VALID_ALPHA + 0.01)
    normal = torch.zeros(H, W, 3)
    normal[0, 0, 2] = 1.0
    valid = T.normal_validity(alpha, normal)
    assert valid.sum() == 1 and valid[0, 0]  # zero target normals are missing pixels


def test_silhouette_terms_score_region_renders_against_targets():
    render = _render()
    render["regions"][..., T.REGION_CHANNELS.index("hands")] = 1.0
    targets = {"hand_mask": torch.ones(H, W), "eye_mask": torch.ones(H, W)}
    terms = T.silhouette_terms(render, targets, {"hand_mask": 50.0, "eye_mask": 1.0})
    assert float(terms["hand_mask"][0]) == 0.0 and float(terms["eye_mask"][0]) == 1.0
    assert T.silhouette_weights({"hand_mask": 0.0, "eye_mask": 1.0}) == {"eye_mask": 1.0}


def test_seam_distillation_only_inside_seams_and_nonfinite_names():
    """The authors' seam distillation: the full image loss inside the seams only, under the
    variant's own term name; the rgb_aux render is a detached target."""
    aux = torch.zeros(H, W, 3, requires_grad=True)
    render = {"rgb_geo_detached": torch.ones(H, W, 3), "rgb_aux_all_detached": aux,
              "alpha": torch.ones(H, W, 1)}
    image = torch.zeros(H, W, 3)
    loss_map = T.image_loss_fn(LossWeights(lpips=0.0), None)
    seams = torch.zeros(H, W, dtype=torch.bool)
    args = (render, image, seams, "seam_distill_refined", 1.0, loss_map)
    assert float(T.seam_distill_terms(*args)["seam_distill_refined"][0]) == 0.0
    seams[0, 0] = True
    value = T.seam_distill_terms(*args)["seam_distill_refined"][0]
    assert float(value) > 0.0
    assert T.seam_distill_terms(render, image, seams, "seam_distill", 0.0, loss_map) == {}
    assert not value.requires_grad  # nothing but the detached target and a constant render
    terms = {"a": (torch.tensor(1.0), 1.0), "b": (torch.tensor(float("nan")), 1.0)}
    assert T.nonfinite_terms(terms) == ["b"]
    assert torch.isnan(T.total_loss(terms))


def test_make_renderer_accepts_a_renderer_object_as_well_as_a_name():
    renderer = TorchRenderer()
    assert make_renderer(renderer) is renderer
    assert isinstance(make_renderer("torch"), TorchRenderer)
    with pytest.raises(TypeError, match="render"):
        make_renderer(object())
