"""Offline albedo of the input image: Lambertian SH shading from the surface normals.

The authors run Careaga and Aksoy's intrinsic decomposition (compphoto/Intrinsic,
PREPROCESSING.md section 5), whose constructors download weights through ``torch.hub``, so it
cannot run offline. This stage is a light, documented CPU replacement (docs/prep/albedo.md):

1. decode the sRGB image to linear RGB (IEC 61966-2-1 transfer function);
2. model the shading as Lambertian irradiance of distant light, second-order spherical
   harmonics of the surface normal (9 coefficients, Ramamoorthi and Hanrahan 2001);
3. fit the 9 coefficients to the linear luminance on the person mask, with one unknown albedo
   scale per chromaticity group (k-means on rgb / (r + g + b), which grey shading leaves
   unchanged), by iteratively reweighted least squares (Tukey biweight on the log ratio
   image / shading), so that pixels that break the model stop pulling the fit;
4. albedo = linear image / max(shading, floor), the shading scaled so that its median on the
   mask equals ``shading_median`` (the albedo keeps the image's exposure), re-encoded to sRGB,
   clipped to [0, 1]; outside the mask the image is copied (or white).

Normals come from ``captured/normals/0.npy`` (OpenCV camera frame, unit, 0 = invalid), written
by the Sapiens geometry stage (configs/prep/geometry.yaml). Without it (a CPU chain,
configs/prep/albedo_light.yaml: ``normals: body``), they are the normals of the fitted body mesh
seen by the fitted camera (``body_normal_map``): the body's shape without clothing folds, hair
or face detail, and 0 (filled by ``invalid_fill``) on mask pixels the body does not cover. Which
normals were used is written beside the albedo (``0_albedo.json``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from data_prep.stage import PrepStage
from persona.data.subject import ALBEDO_RELPATH, CAPTURED_SPLIT, FramePaths, float_to_uint8

# --- sRGB transfer function (IEC 61966-2-1) -----------------------------------------------------
SRGB_DECODE_KNEE = 0.04045  # IEC 61966-2-1: encoded value below which the curve is linear
SRGB_ENCODE_KNEE = 0.0031308  # IEC 61966-2-1: linear value below which the curve is linear
SRGB_LINEAR_SLOPE = 12.92  # IEC 61966-2-1: slope of the linear segment
SRGB_OFFSET = 0.055  # IEC 61966-2-1: offset of the power segment
SRGB_GAMMA = 2.4  # IEC 61966-2-1: exponent of the power segment
# Rec. 709 / sRGB luminance weights of linear R, G, B (ITU-R BT.709)
LUMINANCE_WEIGHTS = (0.2126, 0.7152, 0.0722)

# --- real spherical harmonics up to order 2 (Ramamoorthi and Hanrahan 2001, eq. 3) -------------
SH_C0 = 0.5 * math.sqrt(1.0 / math.pi)  # Y00 = 0.282095
SH_C1 = math.sqrt(3.0 / (4.0 * math.pi))  # Y1m = 0.488603 (y, z, x)
SH_C2 = 0.5 * math.sqrt(15.0 / math.pi)  # Y2-2, Y2-1, Y21 = 1.092548 (xy, yz, xz)
SH_C20 = 0.25 * math.sqrt(5.0 / math.pi)  # Y20 = 0.315392 (3 z^2 - 1)
SH_C22 = 0.25 * math.sqrt(15.0 / math.pi)  # Y22 = 0.546274 (x^2 - y^2)
NUM_SH = 9  # orders 0, 1, 2
SH_ORDER_OF = (0, 1, 1, 1, 2, 2, 2, 2, 2)  # order l of each basis function
# Lambertian (clamped cosine) kernel per order: A0 = pi, A1 = 2 pi / 3, A2 = pi / 4 (R&H eq. 8)
LAMBERT_KERNEL = (math.pi, 2.0 * math.pi / 3.0, math.pi / 4.0)

# --- robust fit ---------------------------------------------------------------------------------
TUKEY_C = 4.685  # Tukey biweight tuning constant (95 % efficiency under Gaussian noise)
MAD_TO_SIGMA = 1.4826  # median absolute deviation -> standard deviation (Gaussian)
DEFAULT_MIN_SCALE = 0.03  # floor of the robust log-ratio scale (~3 % relative shading error)
DEFAULT_ITERATIONS = 20  # IRLS iterations (converges in < 10 on our cases)
DEFAULT_SHADING_FLOOR = 0.05  # shading clamped below (after normalisation) before dividing
DEFAULT_SHADING_MEDIAN = 1.0  # the normalised shading has this median on the mask
SATURATED = 254.5 / 255.0  # an encoded channel at or above this is clipped: left out of the fit
RATIO_EPS = 1e-6  # guards log(image / shading) against zeros
KMEANS_ITERATIONS = 10  # Lloyd iterations of the chromaticity grouping
KMEANS_SAMPLE = 20000  # Lloyd iterations run on about this many pixels (then all are assigned)
CHROMA_MIN_SEPARATION = 0.02  # chromaticity groups closer than this at seeding are not made
DEFAULT_GROUPS = 6  # chromaticity groups (distinct garment / skin colours); 1 = one albedo
SOLVE_RIDGE = 1e-9  # relative ridge on the normal equations (rank-deficient normal sets)

BACKGROUND_MODES = ("image", "white")
NORMAL_SOURCES = ("file", "body", "auto")  # Sapiens normals file | fitted body | file if present
ALBEDO_RECORD = "captured/image_intrinsics/0_albedo.json"  # how the albedo was made (ours)
FIT_STAGE = "the fit stage (persona prep --config configs/prep/fit.yaml)"
# Body normals seen at a grazing angle (|cos| to the viewing ray below this) are dropped: the
# body's outline lies inside the clothed silhouette, and dividing by the near-zero shading
# there gave bright seams along the outline on the real photo.
BODY_MIN_FACING = 0.35
INVALID_FILL_MODES = ("median", "nearest")
NORMALS_STAGE = "the Sapiens geometry stage (persona prep --config configs/prep/geometry.yaml)"
MASK_STAGE = "the SAM stage (persona prep --config configs/prep/segment.yaml)"
INPUT_INDEX = 0  # the input image is frame 0 of captured (docs/SUBJECT_FORMAT.md)


# ----------------------------------------------------------------------------------------------
# Colour
# ----------------------------------------------------------------------------------------------
def srgb_to_linear(encoded: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear values (any shape)."""
    x = np.clip(np.asarray(encoded, dtype=np.float64), 0.0, 1.0)
    return np.where(x <= SRGB_DECODE_KNEE, x / SRGB_LINEAR_SLOPE,
                    ((x + SRGB_OFFSET) / (1.0 + SRGB_OFFSET)) ** SRGB_GAMMA)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """Linear values (>= 0; negatives clamp to 0) -> sRGB-encoded values (any shape)."""
    x = np.maximum(np.asarray(linear, dtype=np.float64), 0.0)
    return np.where(x <= SRGB_ENCODE_KNEE, x * SRGB_LINEAR_SLOPE,
                    (1.0 + SRGB_OFFSET) * x ** (1.0 / SRGB_GAMMA) - SRGB_OFFSET)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Linear RGB [..., 3] -> Rec. 709 luminance [...]."""
    return np.asarray(rgb, dtype=np.float64) @ np.asarray(LUMINANCE_WEIGHTS)


# ----------------------------------------------------------------------------------------------
# Spherical harmonics
# ----------------------------------------------------------------------------------------------
def sh9_basis(normals: np.ndarray) -> np.ndarray:
    """Unit normals [..., 3] (x, y, z) -> the 9 real SH basis values [..., 9].

    Order: Y00, Y1-1 (y), Y10 (z), Y11 (x), Y2-2 (xy), Y2-1 (yz), Y20 (3z^2 - 1), Y21 (xz),
    Y22 (x^2 - y^2); orthonormal on the unit sphere.
    """
    n = np.asarray(normals, dtype=np.float64)
    x, y, z = n[..., 0], n[..., 1], n[..., 2]
    return np.stack([
        np.full_like(x, SH_C0),
        SH_C1 * y, SH_C1 * z, SH_C1 * x,
        SH_C2 * x * y, SH_C2 * y * z, SH_C20 * (3.0 * z * z - 1.0), SH_C2 * x * z,
        SH_C22 * (x * x - y * y),
    ], axis=-1)


def lambert_kernel() -> np.ndarray:
    """[9] the clamped-cosine kernel A_l of each basis function (pi, 2 pi / 3, pi / 4)."""
    return np.array([LAMBERT_KERNEL[order] for order in SH_ORDER_OF])


def clamped_cosine_sh9(direction: np.ndarray) -> np.ndarray:
    """Irradiance SH coefficients [9] of a unit distant light from ``direction`` [3]:
    max(0, n . l) ~= sh9_basis(n) @ coefficients (order-2 truncation, R&H eq. 8)."""
    d = np.asarray(direction, dtype=np.float64)
    d = d / np.linalg.norm(d)
    return lambert_kernel() * sh9_basis(d)


def sh_shading(normals: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """Normals [..., 3] and coefficients [9] (grey) or [9, C] -> shading [...] or [..., C]."""
    return sh9_basis(normals) @ np.asarray(coefficients, dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# Robust fit
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FitSettings:
    """Settings of the robust SH fit (docs/prep/albedo.md)."""

    iterations: int = DEFAULT_ITERATIONS
    tukey_c: float = TUKEY_C  # biweight cut-off, in robust scales of the log ratio
    min_scale: float = DEFAULT_MIN_SCALE  # lower bound of the robust scale (log units)


def _weighted_lstsq(design: np.ndarray, target: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """argmin_x sum w (design x - target)^2 via the normal equations. design [N, P]."""
    dw = design * weights[:, None]
    gram = dw.T @ design  # [P, P]
    size = gram.shape[0]
    ridge = SOLVE_RIDGE * max(float(np.trace(gram)), 1e-30) / size
    return np.linalg.solve(gram + ridge * np.eye(size), dw.T @ target)


def tukey_weights(residual: np.ndarray, cutoff: float) -> np.ndarray:
    """Tukey biweight (1 - (r / c)^2)^2 for |r| < c, else 0."""
    u = residual / cutoff
    return np.where(np.abs(u) < 1.0, (1.0 - u * u) ** 2, 0.0)


def _nearest_centre(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """[N, 3] points, [K, 3] centres -> [N] index of the nearest centre."""
    return np.argmin(((points[:, None, :] - centres[None]) ** 2).sum(axis=-1), axis=1)


def chromaticity_groups(rgb: np.ndarray, count: int, iterations: int = KMEANS_ITERATIONS
                        ) -> np.ndarray:
    """Linear RGB [N, 3] -> int group labels [N] by k-means on the chromaticity
    rgb / (r + g + b), which grey (white-light) shading leaves unchanged. Deterministic:
    farthest-point initialisation from the mean; empty groups are dropped."""
    rgb = np.asarray(rgb, dtype=np.float64)
    if count <= 1 or rgb.shape[0] == 0:
        return np.zeros(rgb.shape[0], dtype=np.int64)
    chroma = rgb / np.maximum(rgb.sum(axis=-1, keepdims=True), RATIO_EPS)  # [N, 3]
    centres = [chroma.mean(axis=0)]
    distance = ((chroma - centres[0]) ** 2).sum(axis=-1)
    for _ in range(count - 1):
        far = int(np.argmax(distance))
        if distance[far] <= CHROMA_MIN_SEPARATION ** 2:
            break
        centres.append(chroma[far])
        distance = np.minimum(distance, ((chroma - chroma[far]) ** 2).sum(axis=-1))
    centre_array = np.stack(centres)  # [K, 3]
    sample = chroma[::max(1, chroma.shape[0] // KMEANS_SAMPLE)]  # Lloyd on a strided subset
    for _ in range(iterations):
        labels = _nearest_centre(sample, centre_array)
        for k in range(len(centre_array)):
            members = labels == k
            if members.any():
                centre_array[k] = sample[members].mean(axis=0)
    labels = _nearest_centre(chroma, centre_array)
    _, labels = np.unique(labels, return_inverse=True)  # drop empty groups
    return labels.reshape(-1)


def _group_design(basis: np.ndarray, values: np.ndarray, groups: np.ndarray, reference: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear system of ``basis @ c = u[g] * values`` with u[reference] = 1:
    unknowns [c (9), u of the other groups]. -> (A [N, 9 + G - 1], b [N], other group ids)."""
    others = np.array([g for g in range(int(groups.max()) + 1) if g != reference], dtype=int)
    onehot = (groups[:, None] == others[None, :]).astype(np.float64)  # [N, G - 1]
    design = np.concatenate([basis, -values[:, None] * onehot], axis=1)
    target = values * (groups == reference)
    return design, target, others


def fit_sh_shading(normals: np.ndarray, values: np.ndarray, groups: np.ndarray | None = None,
                   settings: FitSettings | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit ``u[g] * values ~= sh9_basis(normals) @ c``: SH shading c [9] and one inverse
    relative albedo u[g] per group (u = 1 for the largest group, whose albedo is absorbed in c).

    normals [N, 3] unit, values [N] linear intensities (> 0), groups [N] int labels (None: one
    group). Ordinary least squares first, then iteratively reweighted with the Tukey biweight of
    the log ratio ``log(u values / shading)`` about its weighted median (scale
    max(1.4826 MAD, min_scale)), so pixels that break the model stop pulling the fit.
    Returns (coefficients [9], group albedo relative to the reference group [G], weights [N]).
    """
    settings = settings or FitSettings()
    basis = sh9_basis(normals)  # [N, 9]
    values = np.asarray(values, dtype=np.float64)  # [N]
    groups = (np.zeros(values.shape[0], dtype=np.int64) if groups is None
              else np.asarray(groups, dtype=np.int64))
    if basis.shape[0] < NUM_SH:
        raise ValueError(f"the SH fit needs at least {NUM_SH} pixels with valid normals, "
                         f"got {basis.shape[0]}")
    reference = int(np.argmax(np.bincount(groups)))
    design, target, others = _group_design(basis, values, groups, reference)
    inverse = np.ones(int(groups.max()) + 1)  # u per group

    def solve(weights: np.ndarray) -> np.ndarray:
        theta = _weighted_lstsq(design, target, weights)
        inverse[others] = theta[NUM_SH:]
        return theta[:NUM_SH]

    weights = np.ones_like(values)
    coefficients = solve(weights)
    for _ in range(settings.iterations):
        shading = basis @ coefficients
        scaled = values * inverse[groups]
        usable = (shading > RATIO_EPS) & (scaled > RATIO_EPS)
        log_ratio = np.log(np.maximum(scaled, RATIO_EPS) / np.maximum(shading, RATIO_EPS))
        active = usable & (weights > 0)
        if not active.any():
            break
        centre = float(np.median(log_ratio[active]))
        deviation = np.abs(log_ratio - centre)
        scale = max(MAD_TO_SIGMA * float(np.median(deviation[active])), settings.min_scale)
        new_weights = np.where(usable, tukey_weights(deviation, settings.tukey_c * scale), 0.0)
        if new_weights.sum() < design.shape[1]:
            break
        converged = np.allclose(new_weights, weights, atol=1e-6)
        weights = new_weights
        coefficients = solve(weights)
        if converged:
            break
    relative_albedo = 1.0 / np.where(np.abs(inverse) > RATIO_EPS, inverse, np.nan)
    return coefficients, relative_albedo, weights


# ----------------------------------------------------------------------------------------------
# Albedo
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AlbedoSettings:
    """Every setting of the albedo estimate (configs/prep/albedo.yaml, docs/prep/albedo.md)."""

    srgb: bool = True  # the image is sRGB-encoded: fit and divide in linear RGB
    coloured: bool = False  # one SH fit per channel (coloured light) instead of on luminance
    groups: int = DEFAULT_GROUPS  # chromaticity groups with their own albedo scale in the fit
    shading_floor: float = DEFAULT_SHADING_FLOOR  # normalised shading clamped below at this
    shading_median: float = DEFAULT_SHADING_MEDIAN  # median normalised shading on the mask
    invalid_fill: str = "median"  # shading where the normal is 0: median | nearest
    background: str = "image"  # outside the mask: image (copied) | white
    fit: FitSettings = FitSettings()

    def __post_init__(self) -> None:
        if self.invalid_fill not in INVALID_FILL_MODES:
            raise ValueError(f"invalid_fill must be one of {INVALID_FILL_MODES}, "
                             f"got {self.invalid_fill!r}")
        if self.background not in BACKGROUND_MODES:
            raise ValueError(f"background must be one of {BACKGROUND_MODES}, "
                             f"got {self.background!r}")
        if self.groups < 1:
            raise ValueError(f"groups must be >= 1, got {self.groups}")
        if not self.shading_floor > 0 or not self.shading_median > 0:
            raise ValueError("shading_floor and shading_median must be > 0")


@dataclass
class AlbedoResult:
    albedo: np.ndarray  # [H, W, 3] float in [0, 1], encoded like the input (sRGB by default)
    albedo_linear: np.ndarray  # [H, W, 3] linear albedo before clipping (0 off the mask)
    shading: np.ndarray  # [H, W, C] normalised shading (C = 1 grey, 3 coloured; 0 off the mask)
    coefficients: np.ndarray  # [9, C] fitted SH coefficients before normalisation
    weights: np.ndarray  # [H, W, C] final IRLS weights (0 off the fit set)
    normalisation: float | np.ndarray  # the fitted shading was divided by this (scalar or [C])


def valid_normals(normals: np.ndarray) -> np.ndarray:
    """[H, W, 3] -> bool [H, W]: finite and non-zero (0 = invalid, docs/SUBJECT_FORMAT.md)."""
    n = np.asarray(normals)
    return np.isfinite(n).all(axis=-1) & (np.abs(n).sum(axis=-1) > 0)


def _fill_invalid(shading: np.ndarray, region: np.ndarray, valid: np.ndarray,
                  mode: str) -> np.ndarray:
    """Shading [H, W, C] on ``region & ~valid`` from the valid region pixels (median or the
    nearest valid pixel)."""
    holes = region & ~valid
    if not holes.any():
        return shading
    filled = shading.copy()
    source = region & valid
    if mode == "median":
        filled[holes] = np.median(shading[source], axis=0)
    else:
        _, (rows, cols) = ndimage.distance_transform_edt(~source, return_indices=True)
        filled[holes] = shading[rows[holes], cols[holes]]
    return filled


def estimate_albedo(image: np.ndarray, mask: np.ndarray, normals: np.ndarray,
                    settings: AlbedoSettings | None = None) -> AlbedoResult:
    """Image [H, W, 3] in [0, 1] (uint8 accepted), mask bool [H, W], normals [H, W, 3] (unit
    camera frame, 0 = invalid) -> :class:`AlbedoResult`."""
    settings = settings or AlbedoSettings()
    image = np.asarray(image)
    if image.dtype == np.uint8:
        image = image.astype(np.float64) / 255.0
    image = np.asarray(image, dtype=np.float64)  # [H, W, 3]
    mask = np.asarray(mask, dtype=bool)  # [H, W]
    normals = np.asarray(normals, dtype=np.float64)  # [H, W, 3]
    if image.shape[:2] != mask.shape or normals.shape != image.shape:
        raise ValueError(f"image {list(image.shape)}, mask {list(mask.shape)} and normals "
                         f"{list(normals.shape)} must share [H, W] (image and normals [H, W, 3])")
    linear = srgb_to_linear(image) if settings.srgb else np.clip(image, 0.0, None)
    valid = valid_normals(normals) & mask
    unit = np.where(valid[..., None], normals, 0.0)
    unit = unit / np.maximum(np.linalg.norm(unit, axis=-1, keepdims=True), RATIO_EPS)
    fit_set = valid & (image < SATURATED).all(axis=-1)
    targets = linear if settings.coloured else luminance(linear)[..., None]  # [H,W,C]
    fit_set = fit_set & (targets > 0).all(axis=-1)
    if fit_set.sum() < NUM_SH:
        raise ValueError(f"only {int(fit_set.sum())} masked pixels with a valid normal and an "
                         f"unclipped, non-black colour; the SH fit needs at least {NUM_SH}")
    channels = targets.shape[-1]
    groups = chromaticity_groups(linear[fit_set], settings.groups)  # [N]
    coefficients = np.zeros((NUM_SH, channels))
    weights = np.zeros(mask.shape + (channels,))
    for c in range(channels):
        coefficients[:, c], _, w = fit_sh_shading(unit[fit_set], targets[fit_set, c], groups,
                                                  settings.fit)
        weights[fit_set, c] = w
    raw = sh9_basis(unit) @ coefficients  # [H, W, C]
    raw = _fill_invalid(np.where(valid[..., None], raw, 0.0), mask, valid,
                        settings.invalid_fill)
    normalisation = np.median(raw[mask], axis=0) / settings.shading_median  # [C]
    if np.any(normalisation <= 0):
        raise ValueError("the fitted shading has a non-positive median on the mask; the normals "
                         "or the image do not fit a Lambertian model")
    shading = np.where(mask[..., None], raw / normalisation, 0.0)  # [H, W, C]
    albedo_linear = np.where(mask[..., None],
                             linear / np.maximum(shading, settings.shading_floor), 0.0)
    encoded = linear_to_srgb(albedo_linear) if settings.srgb else albedo_linear
    outside = image if settings.background == "image" else np.ones_like(image)
    albedo = np.clip(np.where(mask[..., None], encoded, outside), 0.0, 1.0)
    norm_out: float | np.ndarray = (float(normalisation[0]) if channels == 1
                                    else normalisation)
    return AlbedoResult(albedo, albedo_linear, shading, coefficients, weights, norm_out)


# ----------------------------------------------------------------------------------------------
# Normals of the fitted body (no normal estimator)
# ----------------------------------------------------------------------------------------------
def body_normal_map(vertices: Any, faces: Any, camera: Any) -> np.ndarray:
    """Posed mesh (world vertices [V, 3], faces [F, 3]) seen by ``camera`` -> float32 [H, W, 3]
    unit normals in the camera frame (OpenCV axes) of the nearest surface at each pixel centre,
    0 where the mesh does not cover the pixel. A z-buffer on perspective-correct depth
    (persona.render.silhouette's pixel enumeration); vertex normals (area-weighted face normals)
    interpolated with the screen-space barycentrics, then normalised."""
    import torch

    from persona.ops.mesh import vertex_normals
    from persona.render.silhouette import DEFAULT_MAX_PAIRS, covered_pairs, project_vertices

    vertices = vertices.detach().to(torch.float64)
    faces = faces.to(dtype=torch.int64, device=vertices.device)
    height, width = camera.height, camera.width
    normals_cam = vertex_normals(vertices, faces) @ camera.R.to(vertices).T  # [V, 3]
    uv, z = project_vertices(vertices, camera)
    inverse_z = 1.0 / z.clamp(min=camera.near)  # [V]
    depth = torch.full((height * width,), float("inf"), dtype=torch.float64)
    out = torch.zeros(height * width, 3, dtype=torch.float64)
    for pixels, tri, bary in covered_pairs(uv, z, faces, camera, DEFAULT_MAX_PAIRS):
        pair_depth = 1.0 / (bary * inverse_z[faces[tri]]).sum(-1)  # [M]
        chunk = torch.full_like(depth, float("inf")).scatter_reduce(
            0, pixels, pair_depth, reduce="amin")
        winner = pair_depth == chunk[pixels]  # [M]
        nearer = (chunk < depth)[pixels] & winner
        interpolated = (bary[nearer, :, None] * normals_cam[faces[tri[nearer]]]).sum(1)  # [m, 3]
        out[pixels[nearer]] = interpolated
        depth = torch.minimum(depth, chunk)
    length = out.norm(dim=-1, keepdim=True)
    out = torch.where(length > RATIO_EPS, out / length.clamp(min=RATIO_EPS), 0.0)
    return out.reshape(height, width, 3).to(torch.float32).numpy()


def drop_grazing(normals: np.ndarray, K: np.ndarray, min_facing: float = BODY_MIN_FACING
                 ) -> np.ndarray:
    """Normals [H, W, 3] (camera frame) with those whose |cos| to the pixel's viewing ray is
    below ``min_facing`` set to 0 (invalid). K [3, 3] the camera intrinsics."""
    height, width = normals.shape[:2]
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    rays = np.stack([(cols - K[0, 2]) / K[0, 0], (rows - K[1, 2]) / K[1, 1],
                     np.ones_like(cols)], axis=-1)  # [H, W, 3]
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    facing = np.abs((normals * rays).sum(-1))  # [H, W]
    return np.where((facing >= min_facing)[..., None], normals, 0.0).astype(np.float32)


def fitted_body_normals(root: str | Path, width: int, height: int) -> np.ndarray:
    """float32 [H, W, 3] normals of the subject's fitted body (``captured`` frame 0: its
    camera, SMPL-X parameters and shape); errors name the missing file and its stage."""
    from data_prep.stage import load_subject_body
    from persona.data.subject import camera_from_json, pose_from_json

    root = Path(root)
    paths = FramePaths(CAPTURED_SPLIT, INPUT_INDEX)
    for rel in (paths.camera, paths.smplx):
        if not (root / rel).is_file():
            raise FileNotFoundError(f"{root / rel} is missing: the albedo's body normals need "
                                    f"the fitted body, written by {FIT_STAGE}")
    body, identity, body_config = load_subject_body(root)
    camera = camera_from_json(json.loads((root / paths.camera).read_text()), width, height)
    pose = pose_from_json(json.loads((root / paths.smplx).read_text()),
                          int(body_config.get("num_expression", body.num_expression)))
    with torch_no_grad():
        vertices = body(identity, pose)[0]  # [V, 3] world
    return drop_grazing(body_normal_map(vertices, body.faces, camera),
                        camera.K.detach().cpu().double().numpy())


def torch_no_grad() -> Any:
    import torch

    return torch.no_grad()


# ----------------------------------------------------------------------------------------------
# Stage
# ----------------------------------------------------------------------------------------------
class ShadingAlbedoStage(PrepStage):
    """Writes ``captured/image_intrinsics/0_albedo.png`` from the input image, its SAM mask and
    its Sapiens normals (``captured/normals/0.npy``). Other frames produce nothing."""

    output_templates = (ALBEDO_RELPATH,)

    def __init__(self, srgb: bool = True, coloured: bool = False, groups: int = DEFAULT_GROUPS,
                 shading_floor: float = DEFAULT_SHADING_FLOOR,
                 shading_median: float = DEFAULT_SHADING_MEDIAN,
                 invalid_fill: str = "median", background: str = "image",
                 iterations: int = DEFAULT_ITERATIONS, tukey_c: float = TUKEY_C,
                 min_scale: float = DEFAULT_MIN_SCALE, subject_dir: str | None = None,
                 normals: str = "file"):
        """normals: ``file`` (captured/normals/0.npy, the Sapiens geometry stage), ``body``
        (the fitted body's, `fitted_body_normals`) or ``auto`` (the file when it exists)."""
        super().__init__()
        if normals not in NORMAL_SOURCES:
            raise ValueError(f"model.init_args.normals must be one of {NORMAL_SOURCES}, got "
                             f"{normals!r}")
        self.normals_source = normals
        try:
            self.settings = AlbedoSettings(srgb, coloured, groups, shading_floor, shading_median,
                                           invalid_fill, background,
                                           FitSettings(iterations, tukey_c, min_scale))
        except ValueError as error:
            raise ValueError(f"model.init_args: {error}") from error
        self.subject_dir = subject_dir  # None: the data module's subject folder

    def _root(self) -> Path:
        if self.subject_dir is not None:
            return Path(self.subject_dir)
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "subject_dir"):
            raise ValueError("ShadingAlbedoStage needs subject_dir, or a data module with one")
        return Path(datamodule.subject_dir)

    def process(self, item: dict[str, Any]) -> dict[str, Any]:
        if item["split"] != CAPTURED_SPLIT or int(item["index"]) != INPUT_INDEX:
            return {}
        paths = FramePaths(CAPTURED_SPLIT, INPUT_INDEX)
        if "mask" not in item:
            raise FileNotFoundError(f"{paths.mask} is missing: the albedo needs the person mask, "
                                    f"written by {MASK_STAGE}")
        image = np.asarray(item["image"].detach().cpu().numpy()
                           if hasattr(item["image"], "detach") else item["image"])
        normals = item.get("normals")
        source = "given"
        if normals is None:
            path = self._root() / paths.normal
            use_body = self.normals_source == "body" or (self.normals_source == "auto"
                                                         and not path.is_file())
            if use_body:
                normals = fitted_body_normals(self._root(), image.shape[1], image.shape[0])
                source = "fitted body"
            elif not path.is_file():
                raise FileNotFoundError(f"{path} is missing: the albedo needs the surface normals "
                                        f"{paths.normal}, written by {NORMALS_STAGE} (or set "
                                        "model.init_args.normals: body)")
            else:
                normals, source = np.load(path), paths.normal
        mask = np.asarray(item["mask"].detach().cpu().numpy()
                          if hasattr(item["mask"], "detach") else item["mask"], dtype=bool)
        normals = np.asarray(normals, dtype=np.float64)
        if normals.shape != image.shape:
            raise ValueError(f"{paths.normal}: shape {list(normals.shape)} does not match the "
                             f"image {list(image.shape)}")
        result = estimate_albedo(image, mask, normals, self.settings)
        covered = valid_normals(normals) & mask
        record = {"method": "second-order SH shading divided out (docs/prep/albedo.md)",
                  "normals": source,
                  "mask_pixels_with_normals": round(float(covered.sum() / max(mask.sum(), 1)), 4),
                  "invalid_fill": self.settings.invalid_fill}
        return {ALBEDO_RELPATH: float_to_uint8(result.albedo), ALBEDO_RECORD: record}
