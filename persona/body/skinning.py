"""Skinning weights off the template surface (METHOD.md section 2).

The volume: a G^3 x 55 grid over the big-pose template's bounding box grown by 30 % of its
extent on each side. Every voxel starts with the weights of its nearest template vertex (METHOD
leaves the start value of off-band voxels open; nearest-vertex keeps every voxel summing to 1).
Voxels within 2 cm of a template vertex keep those weights fixed; the other voxels of the 25
non-finger joints take 100 explicit diffusion steps (f += 0.1 * 6-neighbour Laplacian, replicate
padding); finger channels are not diffused. Then clamp >= 0 and normalise to sum 1.

The lookup: each Gaussian samples the volume trilinearly at 13 points (its centre, +-1 sigma and
+-2 sigma along x, y and z; weights 1, 0.5, 0.3; sigma detached), then clamp and L1-normalise.
Hands and face keep their template weights (`combine_with_template`). The lookup is
differentiable in the query points (METHOD.md section 12: the authors query at the current
canonical mean without detaching it, so `grid_sample` passes gradient into the mean offset);
`field_skinning_weights(..., differentiable=False)` restores a detached lookup.
`dominant_joint` is the argmax joint of looked-up weights (the 4-ring mask's joint).
The paper's variant, `knn_skinning_weights`, averages the weights of the 16 nearest vertices.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from persona.atomic import atomic_write, atomic_write_text
from persona.body.cache import resolve_cache_dir
from persona.body.types import FINGER_JOINTS, NUM_JOINTS

# 13-point Gaussian-extent lookup: offsets in units of sigma and their weights (METHOD.md 2).
LOOKUP_STEPS = (0.0, 1.0, -1.0, 2.0, -2.0)
LOOKUP_WEIGHTS = (1.0, 0.5, 0.5, 0.3, 0.3)
NORMALISE_EPSILON = 1e-8  # guards the L1 normalisation of all-zero rows
VOLUME_FORMAT_VERSION = 1  # part of the cache key


@dataclass(frozen=True)
class SkinningVolumeSettings:
    """METHOD.md section 2 numbers (defaults) for the diffused skinning-weight volume."""

    grid_size: int = 128  # voxels per axis
    bbox_padding: float = 0.3  # bbox grown by this fraction of its extent on each side
    surface_band: float = 0.02  # m: voxels this close to a template vertex stay fixed
    diffusion_steps: int = 100  # explicit diffusion steps for the non-finger joints
    diffusion_rate: float = 0.1  # f += rate * 6-neighbour Laplacian
    # Diffuse each channel only inside its nonzero support's box grown by this many diffusion
    # lengths sqrt(2 * rate * steps) (5: the values left out are < 1e-6); None: whole grid.
    crop_margin: float | None = 5.0


def voxel_centres(bbox_min: Tensor, bbox_max: Tensor, grid_size: int) -> Tensor:
    """Voxel centres [G, G, G, 3] indexed [z, y, x] (grid_sample's D, H, W order);
    corners of the bbox are voxel centres (align_corners=True)."""
    axes = [torch.linspace(float(bbox_min[i]), float(bbox_max[i]), grid_size) for i in range(3)]
    z, y, x = torch.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return torch.stack([x, y, z], dim=-1)


def padded_bbox(vertices: Tensor, padding: float) -> tuple[Tensor, Tensor]:
    low, high = vertices.min(dim=0).values, vertices.max(dim=0).values
    extent = high - low
    return low - padding * extent, high + padding * extent


def diffuse(channels: Tensor, fixed: Tensor, steps: int, rate: float) -> Tensor:
    """Explicit diffusion of channels [C, D, H, W] with replicate padding; voxels where
    fixed [D, H, W] is True keep their start values. Returns a new tensor."""
    start = channels
    values = channels.clone()
    laplacian = torch.empty_like(values)
    for _ in range(steps):
        torch.mul(values, -6.0, out=laplacian)
        for dim in (1, 2, 3):
            size = values.shape[dim]
            # neighbour before (replicate: the first voxel is its own neighbour)
            laplacian.narrow(dim, 1, size - 1).add_(values.narrow(dim, 0, size - 1))
            laplacian.narrow(dim, 0, 1).add_(values.narrow(dim, 0, 1))
            # neighbour after
            laplacian.narrow(dim, 0, size - 1).add_(values.narrow(dim, 1, size - 1))
            laplacian.narrow(dim, size - 1, 1).add_(values.narrow(dim, size - 1, 1))
        values.add_(laplacian, alpha=rate)
        values = torch.where(fixed, start, values)
    return values


def _diffusion_box(channel: Tensor, settings: SkinningVolumeSettings) -> tuple[slice, ...]:
    """Slices of the region where diffusion can change a channel [D, H, W] (whole grid when
    crop_margin is None)."""
    if settings.crop_margin is None:
        return (slice(None),) * 3
    margin = math.ceil(settings.crop_margin * math.sqrt(
        2.0 * settings.diffusion_rate * settings.diffusion_steps)) + 1
    nonzero = channel > 0
    box = []
    for dim in range(3):
        other = tuple(d for d in range(3) if d != dim)
        present = torch.nonzero(nonzero.any(dim=other[1]).any(dim=other[0]))[:, 0]
        if len(present) == 0:
            return (slice(0, 0),) * 3
        low = max(int(present.min()) - margin, 0)
        high = min(int(present.max()) + margin + 1, channel.shape[dim])
        box.append(slice(low, high))
    return tuple(box)


def build_skinning_volume(vertices: Tensor, weights: Tensor,
                          settings: SkinningVolumeSettings = SkinningVolumeSettings(),
                          ) -> tuple[Tensor, Tensor, Tensor]:
    """vertices [V,3] (big-pose template), weights [V,55] -> (volume [55,G,G,G] indexed
    [joint, z, y, x], bbox_min [3], bbox_max [3])."""
    from scipy.spatial import cKDTree

    vertices = vertices.detach().double().cpu()
    weights = weights.detach().float().cpu()
    grid = settings.grid_size
    bbox_min, bbox_max = padded_bbox(vertices, settings.bbox_padding)
    centres = voxel_centres(bbox_min, bbox_max, grid).reshape(-1, 3).numpy()  # [G^3, 3]
    distance, nearest = cKDTree(vertices.numpy()).query(centres, k=1, workers=-1)
    fixed = torch.from_numpy(distance < settings.surface_band).reshape(grid, grid, grid)
    volume = weights[torch.from_numpy(nearest)].T.reshape(NUM_JOINTS, grid, grid, grid)
    diffused = [j for j in range(NUM_JOINTS) if j not in FINGER_JOINTS]
    if settings.diffusion_steps > 0:
        for joint in diffused:
            box = _diffusion_box(volume[joint], settings)
            region = volume[joint][box]
            if min(region.shape) < 2:
                continue  # no weight for this joint anywhere: nothing to diffuse
            volume[joint][box] = diffuse(region[None].contiguous(), fixed[box],
                                         settings.diffusion_steps, settings.diffusion_rate)[0]
    volume.clamp_(min=0.0)
    volume /= volume.sum(dim=0, keepdim=True).clamp(min=NORMALISE_EPSILON)
    return volume, bbox_min.float(), bbox_max.float()


class SkinningField(nn.Module):
    """The skinning-weight volume and its 13-point lookup. No file I/O: see
    `cached_skinning_field` for the cached construction."""

    def __init__(self, volume: Tensor, bbox_min: Tensor, bbox_max: Tensor) -> None:
        """volume [55, G, G, G] indexed [joint, z, y, x]; bbox_min/bbox_max [3] (voxel-centre
        corners)."""
        super().__init__()
        # float32 at least (a float16 cache is widened; float64 is kept, e.g. for gradient checks)
        dtype = torch.promote_types(volume.dtype, torch.float32)
        # [1, 55, G, G, G], channels-last in memory: each trilinear corner then reads its 55
        # weights contiguously (3.7x faster grid_sample on CPU than channel-major).
        volume = volume.to(dtype)[None].contiguous(memory_format=torch.channels_last_3d)
        self.register_buffer("volume", volume)
        self.register_buffer("bbox_min", bbox_min.to(dtype))
        self.register_buffer("bbox_max", bbox_max.to(dtype))
        # grid_sample padding outside the volume: "zeros" (the authors: zero weights there) or
        # "border" (ours before: the nearest border voxel's weights); model.skinning.padding_mode
        self.padding_mode = "zeros"

    def sample(self, points: Tensor) -> Tensor:
        """Trilinear samples at points [N, 3] -> [N, 55] (outside the bbox: zeros or the border,
        see padding_mode); differentiable in points (piecewise linear: the gradient jumps at
        voxel faces)."""
        points = points.to(self.volume.dtype)
        normalised = 2.0 * (points - self.bbox_min) / (self.bbox_max - self.bbox_min) - 1.0
        grid = normalised.reshape(1, 1, 1, -1, 3)
        sampled = F.grid_sample(self.volume, grid, mode="bilinear", padding_mode=self.padding_mode,
                                align_corners=True)  # [1, 55, 1, 1, N]
        return sampled.reshape(self.volume.shape[1], -1).T

    def query(self, points: Tensor, sigma: Tensor | None = None) -> Tensor:
        """13-point lookup. points [N, 3], sigma [N] (detached; None or 0 = centre only).
        Returns [N, 55], >= 0, rows summing to 1; differentiable in points."""
        if sigma is None:
            blended = self.sample(points)
        else:
            sigma = sigma.detach().reshape(-1, 1)  # [N, 1]
            offsets = [points]
            weights = [LOOKUP_WEIGHTS[0]]
            eye = torch.eye(3, dtype=points.dtype, device=points.device)
            for step, weight in zip(LOOKUP_STEPS[1:], LOOKUP_WEIGHTS[1:], strict=True):
                for axis in range(3):
                    offsets.append(points + step * sigma * eye[axis])
                    weights.append(weight)
            samples = self.sample(torch.cat(offsets))  # [13 N, 55]
            samples = samples.reshape(len(offsets), points.shape[0], -1)  # [13, N, 55]
            factors = torch.tensor(weights, dtype=samples.dtype, device=samples.device)
            blended = (samples * factors[:, None, None]).sum(dim=0)  # [N, 55]
        blended = blended.clamp(min=0.0)
        return blended / blended.sum(dim=-1, keepdim=True).clamp(min=NORMALISE_EPSILON)


def field_skinning_weights(field: SkinningField, points: Tensor, sigma: Tensor | None,
                           template_weights: Tensor, keep: Tensor,
                           differentiable: bool = True) -> Tensor:
    """METHOD.md section 2 weights for Gaussians: the 13-point lookup for points [N,3] with
    sigma [N] (always detached), except rows of `keep` [N] (hands, face) which take
    template_weights [N,55]. Only the rows not kept are looked up.

    differentiable: True (the authors, METHOD.md section 12): gradient flows from the weights
    into points; False: the points are detached (our earlier lookup)."""
    if not differentiable:
        points = points.detach()
    lookup = torch.nonzero(~keep)[:, 0]  # [M] rows looked up in the field
    if lookup.numel() == 0:
        return template_weights
    queried = field.query(points[lookup], None if sigma is None else sigma[lookup])  # [M, 55]
    return template_weights.index_put((lookup,), queried.to(template_weights.dtype))


def dominant_joint(weights: Tensor) -> Tensor:
    """The joint with the largest weight of each row: weights [N, 55] -> [N] long (the 4-ring
    mask's joint; METHOD.md section 12: argmax of the current weights, every forward)."""
    return weights.detach().argmax(dim=-1)


def combine_with_template(queried: Tensor, template_weights: Tensor, keep: Tensor) -> Tensor:
    """Rows of `keep` [N] (hands and face) take template_weights [N,55], the others the
    queried weights [N,55]."""
    return torch.where(keep[:, None], template_weights, queried)


def knn_skinning_weights(points: Tensor, template_vertices: Tensor, template_weights: Tensor,
                         k: int = 16, chunk: int = 8192) -> Tensor:
    """The paper's variant: mean weights of the k nearest template vertices. points [N, 3],
    template_vertices [V, 3], template_weights [V, 55] -> [N, 55]."""
    rows = []
    for start in range(0, points.shape[0], chunk):
        distances = torch.cdist(points[start:start + chunk].detach(), template_vertices)
        nearest = distances.topk(k, dim=1, largest=False).indices  # [n, k]
        rows.append(template_weights[nearest].mean(dim=1))
    return torch.cat(rows)


def volume_key(vertices: Tensor, weights: Tensor, settings: SkinningVolumeSettings) -> str:
    """Cache key: the template vertices and weights (their bytes) and the settings."""
    digest = hashlib.sha256()
    digest.update(vertices.detach().float().cpu().numpy().tobytes())
    digest.update(weights.detach().float().cpu().numpy().tobytes())
    digest.update(json.dumps({"format": VOLUME_FORMAT_VERSION, **asdict(settings)},
                             sort_keys=True).encode())
    return digest.hexdigest()[:16]


def cached_skinning_field(vertices: Tensor, weights: Tensor,
                          settings: SkinningVolumeSettings = SkinningVolumeSettings(),
                          cache_dir: str | Path | None = None,
                          timings: dict[str, float] | None = None) -> SkinningField:
    """The volume of a template, read from <cache>/skinning/<key>.npy (float16) or built and
    written there atomically. `timings` (optional) receives build/load seconds."""
    folder = resolve_cache_dir(cache_dir) / "skinning"
    key = volume_key(vertices, weights, settings)
    volume_path, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    started = time.perf_counter()
    if volume_path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            volume = torch.from_numpy(np.load(volume_path)).float()
            if timings is not None:
                timings["skinning_volume_load_seconds"] = time.perf_counter() - started
            return SkinningField(volume, torch.tensor(meta["bbox_min"]),
                                 torch.tensor(meta["bbox_max"]))
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache entry: rebuild it below
    volume, bbox_min, bbox_max = build_skinning_volume(vertices, weights, settings)
    if timings is not None:
        timings["skinning_volume_build_seconds"] = time.perf_counter() - started
    half = volume.numpy().astype(np.float16)
    atomic_write(volume_path, lambda p: np.save(p, half))
    atomic_write_text(meta_path, json.dumps({"bbox_min": bbox_min.tolist(),
                                             "bbox_max": bbox_max.tolist(),
                                             "settings": asdict(settings)}))
    # The field always holds the cached (float16-rounded) values, so a run that built the
    # volume and one that loaded it (e.g. a resumed fit) compute identical weights.
    return SkinningField(torch.from_numpy(half).float(), torch.tensor(bbox_min.tolist()),
                         torch.tensor(bbox_max.tolist()))
