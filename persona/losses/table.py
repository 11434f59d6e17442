"""The loss weight table (METHOD.md sections 5 and 6) and the weight of every named term for a
sample of either split (the input image or a generated frame).

Term names (the system logs each as ``train/loss/<name>``; a term of weight 0 is skipped):
- image_base / image_refined: image loss map of the base / refined render (input image: times
  the seam weight map, seam_weight on seams).
- albedo_base: the image loss map of the base render against the albedo image (input only).
- mask_base / mask_refined: |alpha - mask|.
- coarse_base / coarse_refined: blurred rgb and alpha vs the blurred image and mask (ours).
- depth_* / normal_* / seg_*: geometry terms of base and refined renders (x geometry w).
- rgb_aux_refined: image loss of the rgb_aux render, geometry detached (generated only).
- seam_distill / seam_distill_refined: image loss of rgb x seams vs rgb_aux render (detached)
  x seams, geometry detached, each variant with its own seams (input only).
- hand_mask (generated only) / eye_mask: Gaussian masks vs SMPL-X mesh silhouettes.
- face_geo: the face Gaussians rendered in their frozen initial colours vs the image (input).
- face_patch_base / _boundary / _mask / _geo: the authors' face-patch terms (input only);
  face_patch_refined only with face_patch_whole_avatar (ours before).
- lap_mean_base / lap_mean_posed: Laplacians on canonical base means and posed refined means
  (the authors' set); lap_mean: canonical refined means (0 = authors: none);
  lap_scale / lap_scale_original: scales in metres on the subdivided and the original
  topology; lap_rgb: colours. All scaled by the level rule (regularizers.level_scaled_weights).
- hand_rgb_tv, hand_rgb_aux, mouth_rgb: the colour regularisers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class LossWeights:
    """Every loss weight; defaults are the authors' code (METHOD.md sections 5 and 6)."""

    # Image loss map parts.
    l1: float = 0.8  # L1 part of the image loss map
    ssim: float = 0.2  # (1 - SSIM) part of the image loss map
    lpips: float = 1.0  # LPIPS-VGG part (turn down on CPU: it dominates the step time)
    seam_weight: float = 0.1  # multiplier of seam pixels in input-image losses
    # 0: the image's scalar LPIPS distance added to every pixel of the map (authors' ImgLoss);
    # 1: LPIPS's spatial map, so seam weights down-weight it locally (ours before).
    lpips_spatial: int = 0
    # Image terms.
    image_base: float = 1.0  # base render vs image, both splits
    image_refined: float = 0.1  # refined render vs image, both splits (geometry-weighted)
    albedo_base: float = 1.0  # base render vs albedo, input image only
    rgb_aux_refined: float = 1.0  # rgb_aux render vs image, generated frames only
    seam_distill: float = 1.0  # base rgb vs rgb_aux inside seams (full image loss), input only
    seam_distill_refined: float = 1.0  # the same on the refined render with its own seams
    face_geo: float = 1.0  # face Gaussians in frozen initial colours vs the image (L1), input only
    # Face patch of the input image (the authors' chain super-resolves it; here native
    # resolution): the image loss of a face crop rendered at face_patch_size, times this x the
    # variant's image weight; input image only. 0 = off (persona/losses/face_patch.py).
    face_patch: float = 0.1
    face_patch_size: int = 256  # px, side of the square face patch (METHOD.md section 5)
    face_patch_margin: float = 1.2  # the face's projected box is enlarged by this
    # 0: the authors' patch terms (base render of the face Gaussians, face-boundary weighted,
    # plus patch boundary distillation, face mask and face geo, each x face_patch); 1: ours
    # before, the whole avatar's base and refined renders (x face_patch x image weight).
    face_patch_whole_avatar: int = 0
    # Coarse terms (ours; authors: none): |blur(render) - blur(image)| on the rgb composited over
    # the image and the alpha against the mask, at `coarse_levels` Gaussian blurs of std
    # coarse_sigma x 1, 2, 4 ... px (training resolution), both variants and splits. Their
    # gradient reaches a Gaussian several pixels from where the image wants it (a swung skirt;
    # docs/ABLATIONS.md, "Coarse terms").
    coarse: float = 0.0  # weight of coarse_base and coarse_refined (0 = off, the authors)
    coarse_sigma: float = 2.0  # px: std of the finest blur
    coarse_levels: int = 3  # blurs of std coarse_sigma x 2^k, k < levels (averaged)
    # Geometry terms: mask always 1; depth/normal/seg scaled by the split's geometry weight.
    mask: float = 1.0  # |alpha - mask|, base and refined, both splits
    geometry_input: float = 0.1  # geometry weight w on the input image
    geometry_generated: float = 1.0  # geometry weight w on generated frames
    depth: float = 0.01  # SILog depth factor inside w * (depth + normal + seg)
    normal: float = 1.0  # normal factor inside w * (...)
    seg: float = 1.0  # part-seg palette factor inside w * (...)
    # 0: normal and seg maps (zero where invalid) averaged over ALL pixels (authors' NormalLoss,
    # SegLoss); 1: over valid pixels only (ours before; 3.1x stronger at 32 % foreground).
    geometry_mean_over_valid: int = 0
    # Silhouettes of the SMPL-X mesh.
    hand_mask: float = 50.0  # Gaussian hand mask vs SMPL-X hand silhouette, generated only
    eye_mask: float = 1.0  # Gaussian eye mask vs SMPL-X eye silhouette, both splits
    # 1: the silhouettes are z-buffered against the whole body mesh (a hand behind the torso is
    # not in the hand mask, as the Gaussian mask it is compared with); 0: the region's faces alone.
    mask_occlusion: int = 1
    # Regularisers (per-vertex factors in persona.losses.regularizers; METHOD.md section 12).
    lap_mean: float = 1e5  # base weight of the mean Laplacians (x per-vertex region factors)
    lap_mean_base_factor: float = 10.0  # the base canonical-mean Laplacian is this x lap_mean
    # Laplacian of the canonical REFINED means: the authors have none (0); ours was 1e5.
    lap_mean_canonical_refined: float = 0.0
    # 0 (authors): (L x)^2 off hands/eyes/face_expr, (L x - L template)^2 on them; 1 (ours):
    # template-relative on every vertex (smooths offsets), posed term relative to posed base.
    lap_mean_relative: int = 0
    lap_mean_posed: float = 1e5  # Laplacian of posed refined means (hands/eyes/face_expr out)
    lap_scale: float = 1e6  # Laplacian of scales (see lap_scale_on_log), subdivided topology
    lap_scale_original: float = 1e6  # the same on the original topology
    # The scale Laplacian acts on activated scales (metres) by default. On log-scales, as
    # METHOD.md reads, 1e6 x (L log s)^2 was ~7.6e4 at the k-NN initialisation of the demo
    # subject, over 1e6 x its image loss (0.03), and dominated the step
    # (docs/MODEL_AND_LOSSES.md); 1 restores the log-space reading.
    lap_scale_on_log: int = 0  # 1: Laplacian of log-scales; 0: of scales in metres
    lap_rgb: float = 0.1  # Laplacian of colours
    lap_face_eye_factor: float = 50.0  # mean-Laplacian factor on eyes and the expression face
    lap_hand_boundary_factor: float = 10.0  # factor on hands and expr_boundary (wins over 50)
    # Level rule: every Laplacian weight x (lap_reference_edge / median edge)^lap_level_exponent,
    # so the authors' numbers (tuned at ~2 mm edges) mean the same at any subdivision level.
    # 3: measured on midpoint-subdivided bodies (docs/MODEL_AND_LOSSES.md); 4: smooth-surface
    # theory ((L x)^2 ~ h^4); 0: off (the raw numbers at every level).
    lap_level_exponent: float = 3.0
    lap_reference_edge: float = 0.002  # m, median edge of the authors' twice-subdivided SMPL-X
    # 1: the level rule acts on the template's share of the absolute mean Laplacians (r = L x -
    # (1 - sqrt(factor)) L template; offsets keep the authors' weights); 0: it scales the mean
    # Laplacian weights (which also lets offset noise grow: docs/MODEL_AND_LOSSES.md item 5).
    lap_level_on_reference: int = 1
    hand_rgb_tv: float = 100.0  # squared TV of the rendered hand images inside alpha > 0.9
    hand_rgb_tv_on_mesh: int = 0  # 1: |.| TV of hand Gaussian colours over mesh edges (ours)
    hand_rgb_aux: float = 1.0  # hand rgb toward rgb_aux (detached), squared
    mouth_rgb: float = 1.0  # mouth-interior colour toward the mean of its ring, squared
    colour_reg_abs: int = 0  # 1: |.| instead of (.)^2 in hand_rgb_aux and mouth_rgb (ours)

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"LossWeights.{name}: expected a number >= 0, got {value!r}")
        if self.coarse_sigma <= 0 or self.coarse_levels < 1 or self.coarse_levels != int(
                self.coarse_levels):
            raise ValueError(f"LossWeights.coarse_sigma must be > 0 px and coarse_levels a "
                             f"whole number >= 1, got {self.coarse_sigma!r} and "
                             f"{self.coarse_levels!r}")


def without_missing_maps(weights: LossWeights, missing: Iterable[str]
                         ) -> tuple[LossWeights, list[str]]:
    """(weights with the depth / normal / seg factors of the maps a subject declares missing set
    to 0, the factors switched off). A term with an all-zero target would not be neutral: the
    seg loss would pull rendered part colours, and through alpha the geometry, to black."""
    off = [name for name in GEOMETRY_TERMS if name in set(missing) and getattr(weights, name) > 0]
    return (dataclasses.replace(weights, **dict.fromkeys(off, 0.0)) if off else weights), off


IMAGE_PARTS = ("l1", "ssim", "lpips")
GEOMETRY_TERMS = ("depth", "normal", "seg")
VARIANTS = ("base", "refined")


def term_weights(weights: LossWeights, is_input: bool) -> dict[str, float]:
    """The weight of every named term for one sample: the input image (is_input) or a generated
    frame (METHOD.md section 5's table). Terms that do not apply to the split weigh 0."""
    geometry = weights.geometry_input if is_input else weights.geometry_generated
    table: dict[str, float] = {
        "image_base": weights.image_base,
        "image_refined": weights.image_refined,
        "albedo_base": weights.albedo_base if is_input else 0.0,
        "rgb_aux_refined": 0.0 if is_input else weights.rgb_aux_refined,
        "seam_distill": weights.seam_distill if is_input else 0.0,
        "seam_distill_refined": weights.seam_distill_refined if is_input else 0.0,
        "face_geo": weights.face_geo if is_input else 0.0,
        "hand_mask": 0.0 if is_input else weights.hand_mask,
        "eye_mask": weights.eye_mask,
        "lap_mean": weights.lap_mean_canonical_refined,
        "lap_mean_base": weights.lap_mean * weights.lap_mean_base_factor,
        "lap_mean_posed": weights.lap_mean_posed,
        "lap_scale": weights.lap_scale,
        "lap_scale_original": weights.lap_scale_original,
        "lap_rgb": weights.lap_rgb,
        "hand_rgb_tv": weights.hand_rgb_tv,
        "hand_rgb_aux": weights.hand_rgb_aux,
        "mouth_rgb": weights.mouth_rgb,
    }
    table.update(face_patch_weights(weights, is_input))
    for variant in VARIANTS:
        table[f"mask_{variant}"] = weights.mask
        table[f"coarse_{variant}"] = weights.coarse
        for term in GEOMETRY_TERMS:
            table[f"{term}_{variant}"] = geometry * getattr(weights, term)
    return {name: float(value) for name, value in table.items()}


FACE_PATCH_TERMS = ("face_patch_base", "face_patch_refined", "face_patch_boundary",
                    "face_patch_mask", "face_patch_geo")


def face_patch_weights(weights: LossWeights, is_input: bool) -> dict[str, float]:
    """Weights of the face-patch terms (input image only). Authors (face_patch_whole_avatar 0):
    the face Gaussians' base render, the patch boundary distillation and the face mask at
    face_patch each, face geo at face_patch x face_geo; ours (1): the whole avatar's base and
    refined renders at face_patch x the variant's image weight."""
    table = dict.fromkeys(FACE_PATCH_TERMS, 0.0)
    if not is_input:
        return table
    if weights.face_patch_whole_avatar:
        table["face_patch_base"] = weights.face_patch * weights.image_base
        table["face_patch_refined"] = weights.face_patch * weights.image_refined
    else:
        table["face_patch_base"] = weights.face_patch
        table["face_patch_boundary"] = weights.face_patch
        table["face_patch_mask"] = weights.face_patch
        table["face_patch_geo"] = weights.face_patch * weights.face_geo
    return table


def pixel_seam_weight(weights: LossWeights, is_input: bool) -> float:
    """Weight of seam pixels in the image/albedo loss maps of this split (1 = no down-weight)."""
    return weights.seam_weight if is_input else 1.0
