"""Every training loss term as a pure function of (renders, batch, weights, ...).

Each returns {term name: (value, weight)} with only the terms whose weight is > 0 (a zero
weight computes nothing). Renders are one render pass's dict ([H, W, C] per channel group plus
"alpha" and "depth"); batch is a collated training frame (batch size 1); weights come from
`persona.losses.table.term_weights`. No LightningModule: the system only wires these.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from persona.avatar.posing import AvatarState, state_gaussians
from persona.avatar.template import AvatarTemplate
from persona.data.datamodule import host_flag
from persona.losses import geometry as geo_losses
from persona.losses import regularizers as reg
from persona.losses.colour import hand_image_tv_loss
from persona.losses.colour import hand_rgb_aux_loss as colour_hand_rgb_aux
from persona.losses.colour import mouth_rgb_loss as colour_mouth_rgb
from persona.losses.face_patch import face_geo_loss
from persona.losses.face_terms import patch_view
from persona.losses.image import image_loss_map, weighted_mean
from persona.losses.seams import detect_seams, seam_distill_loss
from persona.losses.table import LossWeights, pixel_seam_weight
from persona.render.types import Camera, ChannelGroup, Renderer, RenderSettings

Terms = dict[str, tuple[Tensor, float]]  # term name -> (value, weight)
# Order of the "regions" render channel group (template region names); the last is the
# authors' is_face (face_expr | eyes).
REGION_CHANNELS = ("hands", "eyes", "face_gaussians")
FACE_CHANNEL = REGION_CHANNELS.index("face_gaussians")
SILHOUETTE_LABELS = {1: "hands", 2: "eyes"}  # face label -> body region (z-buffered silhouettes)
SILHOUETTE_LABEL_OF = {"hand_mask": 1, "eye_mask": 2}  # loss term -> its face label
SILHOUETTE_CHANNEL_OF = {"hand_mask": "hands", "eye_mask": "eyes"}  # loss term -> region channel
NORMAL_VALID_ALPHA = 0.5  # rendered alpha above which a pixel's normal is compared
NORMAL_VALID_NORM = 0.5  # target normals shorter than this are missing (zero) pixels
SEG_FOREGROUND_MASK = 0.5  # target mask above which a pixel's segmentation is compared
FACE_REGION_ALPHA = 0.5  # rendered face-region alpha above which a pixel is face (no seams)

LossMapFn = Callable[[Tensor, Tensor], Tensor]  # render, target [H, W, 3] -> [1, 1, H, W]


def hwc_to_bchw(image: Tensor) -> Tensor:
    """[H, W, C] -> [1, C, H, W]."""
    return image.permute(2, 0, 1).unsqueeze(0)


def image_loss_fn(loss_weights: LossWeights, lpips_fn: Callable | None) -> LossMapFn:
    """The per-pixel image loss (L1 + SSIM + LPIPS at the table's weights) of [H, W, 3]
    images -> [1, 1, H, W]."""
    def loss_map(render: Tensor, target: Tensor) -> Tensor:
        return image_loss_map(hwc_to_bchw(render), hwc_to_bchw(target),
                              l1_weight=loss_weights.l1, ssim_weight=loss_weights.ssim,
                              lpips_weight=loss_weights.lpips, lpips_fn=lpips_fn,
                              lpips_spatial=bool(loss_weights.lpips_spatial))
    return loss_map


def image_terms(render: dict, batch: dict, variant: str, weights: dict,
                seam_map: Tensor | None, loss_map: LossMapFn) -> Terms:
    """Image, albedo and rgb_aux terms of one variant; renders composited over the target
    (METHOD.md section 4). seam_map [1, 1, H, W] weights the image and albedo pixels."""
    terms = {}
    image, alpha = batch["image"][0], render["alpha"]  # [H, W, 3], [H, W, 1]
    w = weights[f"image_{variant}"]
    if w > 0:
        pixels = loss_map(render["rgb"] + image * (1 - alpha), image)
        terms[f"image_{variant}"] = (weighted_mean(pixels, seam_map), w)
    w = weights.get(f"albedo_{variant}", 0.0)
    if w > 0 and host_flag(batch, "has_albedo"):
        albedo = batch["albedo"][0]
        pixels = loss_map(render["rgb"] + albedo * (1 - alpha), albedo)
        terms[f"albedo_{variant}"] = (weighted_mean(pixels, seam_map), w)
    w = weights.get(f"rgb_aux_{variant}", 0.0)
    if w > 0 and "rgb_aux" in render:
        pixels = loss_map(render["rgb_aux"] + image * (1 - alpha.detach()), image)
        terms[f"rgb_aux_{variant}"] = (weighted_mean(pixels, None), w)
    return terms


def normal_validity(alpha: Tensor, target_normal: Tensor) -> Tensor:
    """[H, W] bool: covered by the render (alpha [H, W, 1]) and a target normal [H, W, 3]."""
    return (alpha[..., 0] > NORMAL_VALID_ALPHA) & (target_normal.norm(dim=-1) > NORMAL_VALID_NORM)


def coarse_term(render: dict, batch: dict, coarse: tuple[float, int]) -> Tensor:
    """The blurred comparison of one render (its rgb composited over the image, and its alpha)
    with the image and mask; coarse = (sigma px, levels) (geometry.coarse_loss)."""
    image, alpha = batch["image"][0], render["alpha"]  # [H, W, 3], [H, W, 1]
    rendered = torch.cat([render["rgb"] + image * (1 - alpha), alpha], dim=-1)  # [H, W, 4]
    target = torch.cat([image, batch["mask"][0].to(image.dtype)], dim=-1)  # [H, W, 4]
    return geo_losses.coarse_loss(hwc_to_bchw(rendered), hwc_to_bchw(target), *coarse)


def geometry_terms(render: dict, batch: dict, variant: str, weights: dict,
                   mean_over_valid: bool = False, coarse: tuple[float, int] = (2.0, 3)
                   ) -> Terms:
    """Mask, coarse (blurred image and mask), depth, normal and segmentation terms of one
    variant. Normal and seg maps are averaged over all pixels (authors) or, with
    mean_over_valid, over valid pixels (ours)."""
    terms = {}
    w = weights[f"mask_{variant}"]
    if w > 0:
        terms[f"mask_{variant}"] = (geo_losses.mask_loss(render["alpha"], batch["mask"][0]), w)
    w = weights.get(f"coarse_{variant}", 0.0)
    if w > 0:
        terms[f"coarse_{variant}"] = (coarse_term(render, batch, coarse), w)
    w = weights[f"depth_{variant}"]
    if w > 0:
        terms[f"depth_{variant}"] = (geo_losses.silog_depth_loss(
            render["depth"][..., 0], batch["depth"][0][..., 0]), w)
    w = weights[f"normal_{variant}"]
    if w > 0:
        normal = F.normalize(render["normal"], dim=-1)
        valid = normal_validity(render["alpha"], batch["normal"][0])
        terms[f"normal_{variant}"] = (
            geo_losses.normal_loss(normal, batch["normal"][0], valid, mean_over_valid), w)
    w = weights[f"seg_{variant}"]
    if w > 0:
        foreground = batch["mask"][0][..., 0] > SEG_FOREGROUND_MASK
        terms[f"seg_{variant}"] = (
            geo_losses.seg_loss(render["seg"], batch["seg"][0], foreground, mean_over_valid), w)
    return terms


def seams_and_pixel_weights(render: dict, loss_weights: LossWeights, is_input: bool,
                            dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Seams [H, W] bool of one variant's render (its "canonical" positional colours, outside
    the face region) and the pixel weights [1, 1, H, W] of that variant's image terms (the
    table's seam weight on seams, 1 elsewhere)."""
    face = render["regions"][..., FACE_CHANNEL] > FACE_REGION_ALPHA
    seams = detect_seams(render["canonical"], render["alpha"], face)
    seam_weight = pixel_seam_weight(loss_weights, is_input)
    return seams, torch.where(seams, seam_weight, 1.0).to(dtype)[None, None]


def seam_distill_terms(render: dict, image: Tensor, seams: Tensor, name: str, weight: float,
                       loss_map: LossMapFn) -> Terms:
    """The authors' seam distillation of one variant: the full image loss of its rgb render
    (geometry detached) against the detached rgb_aux render, both composited over the image
    with the detached alpha, inside that variant's seams [H, W]."""
    if weight <= 0:
        return {}
    background = image * (1 - render["alpha"].detach())  # [H, W, 3]
    value = seam_distill_loss(render["rgb_geo_detached"] + background,
                              render["rgb_aux_all_detached"] + background, seams, loss_map)
    return {name: (value, weight)}


def face_geo_terms(render: dict, image: Tensor, weight: float) -> Terms:
    """face_geo (METHOD.md section 12): the face Gaussians rendered in their frozen initial
    colours ("face_init", other Gaussians black) composited with the face alpha over the image,
    L1 against it; only geometry gets gradient."""
    if weight <= 0 or "face_init" not in render:
        return {}
    face_alpha = render["regions"][..., FACE_CHANNEL : FACE_CHANNEL + 1]  # [H, W, 1]
    return {"face_geo": (face_geo_loss(render["face_init"], face_alpha, image), weight)}


def hand_colour_terms(hand_renders: list[dict], weight: float) -> Terms:
    """Squared TV of each hand's own render (geometry detached) inside its alpha > 0.9."""
    if weight <= 0 or not hand_renders:
        return {}
    images = torch.stack([r["rgb"] for r in hand_renders])  # [K, H, W, 3]
    alphas = torch.stack([r["alpha"] for r in hand_renders])  # [K, H, W, 1]
    return {"hand_rgb_tv": (hand_image_tv_loss(images, alphas), weight)}


def silhouette_weights(weights: dict) -> dict[str, float]:
    """The hand/eye silhouette terms with a positive weight."""
    return {k: weights[k] for k in SILHOUETTE_LABEL_OF if weights[k] > 0}


def silhouette_targets(vertices: Tensor, faces: Tensor, face_labels: Tensor,
                       region_faces: dict[str, Tensor], camera: Camera, terms: list[str],
                       occlusion: bool) -> dict[str, Tensor]:
    """Mesh silhouettes [H, W] (float 0/1) of posed body vertices [V, 3] per silhouette term:
    z-buffered labels of the whole mesh (face_labels [F]) when `occlusion`, else the term's
    region faces alone."""
    from persona.render.silhouette import rasterize_labels, rasterize_silhouette

    if occlusion:
        labels = rasterize_labels(vertices, faces, face_labels, camera)  # [H, W]
        return {k: (labels == SILHOUETTE_LABEL_OF[k]).float() for k in terms}
    return {k: rasterize_silhouette(vertices, region_faces[k], camera) for k in terms}


def silhouette_terms(render: dict, targets: dict[str, Tensor], weights: dict[str, float]
                     ) -> Terms:
    """Gaussian hand/eye region renders vs their mesh silhouette targets [H, W] (L1)."""
    terms = {}
    for key, w in weights.items():
        pred = render["regions"][..., REGION_CHANNELS.index(SILHOUETTE_CHANNEL_OF[key])]
        terms[key] = ((pred - targets[key].to(pred.dtype)).abs().mean(), w)
    return terms


def face_patch_terms(state: AvatarState, batch: dict, camera: Camera, weights: dict,
                     loss_weights: LossWeights, face_mask: Tensor, renderer: Renderer,
                     loss_map: LossMapFn) -> Terms:
    """Image loss of the face patch of the input image at native resolution, rendered with
    the crop's own camera (persona/losses/face_patch.py); composited over the target."""
    patch_camera, target = patch_view(state.means["base"][face_mask], batch, camera,
                                      loss_weights.face_patch_margin,
                                      loss_weights.face_patch_size)  # target [S, S, 3]
    terms = {}
    for variant in ("base", "refined"):
        w = weights[f"face_patch_{variant}"]
        if w <= 0:
            continue
        rendered = renderer.render(state_gaussians(state, variant), patch_camera,
                                   {"rgb": ChannelGroup(state.rgb[variant])},
                                   RenderSettings(depth=False))
        pixels = loss_map(rendered["rgb"] + target * (1 - rendered["alpha"]), target)
        terms[f"face_patch_{variant}"] = (weighted_mean(pixels, None), w)
    return terms


def regulariser_terms(state: AvatarState, template: AvatarTemplate, log_scale: Tensor,
                      edges: Tensor, weights: dict, loss_weights: LossWeights,
                      template_share: float = 1.0) -> Terms:
    """Laplacians of means / scales / colours and the hand and mouth colour terms.
    log_scale [N, 1] (the avatar's parameter), edges [E, 2] of the template mesh."""
    t, lw = template, loss_weights
    masks = t.region_masks
    rgb = state.rgb["base"]
    scale_values = log_scale if lw.lap_scale_on_log else log_scale.exp()
    relative = bool(lw.lap_mean_relative)
    squared = not lw.colour_reg_abs
    candidates = {
        "lap_mean": lambda: reg.mean_laplacian_loss(
            state.canonical_refined, t.canonical_vertices, t.laplacian, masks,
            lw.lap_face_eye_factor, lw.lap_hand_boundary_factor, relative, template_share,
            t.template_laplacian_targets),
        "lap_mean_base": lambda: reg.mean_laplacian_loss(
            state.canonical_base, t.canonical_vertices, t.laplacian, masks,
            lw.lap_face_eye_factor, lw.lap_hand_boundary_factor, relative, template_share,
            t.template_laplacian_targets),
        "lap_mean_posed": lambda: reg.posed_laplacian_loss(
            state.means["refined"], t.laplacian, masks,
            reference=state.means["base"].detach() if relative or template_share < 1 else None,
            reference_scale=1.0 if relative else 1.0 - template_share),
        "lap_scale": lambda: reg.laplacian_energy(scale_values, t.laplacian),
        "lap_scale_original": lambda: reg.laplacian_energy(
            scale_values[: t.num_original_vertices], t.original_laplacian),
        "lap_rgb": lambda: reg.laplacian_energy(rgb, t.laplacian),
        "hand_rgb_aux": lambda: colour_hand_rgb_aux(rgb, state.rgb_aux, masks["hands"], squared),
        "mouth_rgb": lambda: colour_mouth_rgb(rgb, masks["mouth_interior"], masks["mouth_ring"],
                                              squared),
    }
    if lw.hand_rgb_tv_on_mesh:  # ours before: |.| TV of Gaussian colours over mesh edges
        candidates["hand_rgb_tv"] = lambda: reg.hand_rgb_tv(rgb, edges, masks["hands"])
    return {name: (compute(), weights[name]) for name, compute in candidates.items()
            if weights.get(name, 0.0) > 0}


def total_loss(terms: Terms) -> Tensor:
    """sum of value x weight over the terms."""
    return sum(value * weight for value, weight in terms.values())


def nonfinite_terms(terms: Terms) -> list[str]:
    """Names of the terms whose value is not finite."""
    return [name for name, (value, _) in terms.items() if not torch.isfinite(value)]
