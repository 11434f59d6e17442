"""Deformation metrics against the ground truth of a synthetic subject (`persona synth`).

A synthetic subject's meta.json records every synth setting, so its true avatar and the true
pose-driven garment offsets (`persona.data.synth.garment_offsets`, canonical space, metres) are
rebuilt exactly. The garment Gaussians and their parts are `persona.data.synth.garment_regions`
(the only definition used here; part names are whatever it returns).

Offset metrics, per region, over the garment Gaussians x poses (|.| the Euclidean norm, in mm):
  D the deformer's pose-dependent canonical offset (refined minus base canonical mean), S the
  learned static offset (avatar.mean_offset), Y the true offset, M the mean of Y over the true
  training poses (per Gaussian);
  total_error_mm = mean |S + D - Y|      beside  zero_offset_error_mm = mean |Y|  and
                                                 static_only_error_mm = mean |S - Y|
  deformer_error_mm = mean |D - (Y - M)|  beside  deformer_zero_error_mm = mean |Y - M|
  deformer_correlation = Pearson(D, Y - M) over every component (NaN when one side is constant);
  pose_part_correlation = Pearson(D - E, Y - M), E the mean of D over the training poses
    evaluated (all of them in `persona test`; the curve's few during fit): the deformer's own
    pose dependence against the truth's. A deformer that carries part of the mean offset (early
    in a fit it carries much of it) reads negative on deformer_correlation in poses where Y - M
    has a mean of its own; this one does not see the carried mean.
World-space metrics, per region (the posed surface, whatever canonical offsets produced it):
  world_error_mm = mean |refined - P|  beside  world_static_only_error_mm = mean |base - P|  and
                                               world_zero_offset_error_mm = mean |B - P|
  with P the true posed garment, B the true posed body without the garment (both skinned with the
  truth's template weights), and refined / base the avatar's posed means with / without the
  deformer (its own skinning). Unlike the canonical metrics these do not assume the avatar skins
  like the truth: a different skinning volume or the refined re-lookup moves where a canonical
  offset lands (experiments/skinning_consistency.py, docs/ABLATIONS.md).
Sections "<region>" on the test poses (the distinct poses of the test split) and
"train_<region>" on the true poses the generated frames were rendered in (before pose noise).

Image metrics of one test frame, over the garment region: the true render's garment mask
(`FramePaths.garment_mask`, <split>/garment_masks/<index>.png, uint8 0/255) resized by nearest to
the scored resolution and dilated by GARMENT_REGION_DILATION_PX (a disc):
  garment_psnr: PSNR (dB, data range 1) over the region's pixels and channels of the prediction
    and target as the protocol scores them (composited with the frame's mask);
  garment_mask_iou: IoU in percent (like mask_iou) of rendered alpha > 0.5 and garment mask > 0.5,
    both restricted to the region.

Pure functions of tensors come first; then matching, the ground truth (reads meta.json, loads
the body) and the model's side (the one place that reaches into the system).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from persona.metrics.geometry import MASK_THRESHOLD, mask_iou

MM_PER_M = 1000.0
SYNTH_GENERATOR = "persona.data.synth"  # meta.json "generator" of a synthetic subject
META_NAME = "meta.json"
GARMENT_KEY = "garment"  # garment_regions' entry holding every garment Gaussian
TRAIN_PREFIX = "train_"  # sections on the true training poses
MATCH_TOLERANCE_M = 1e-5  # canonical positions this close: same template, match by index
NN_BLOCK_ELEMENTS = 1 << 24  # distances per nearest-neighbour block (64 MiB of float32)
GARMENT_REGION_DILATION_PX = 3  # the garment region: its true mask dilated by this (scored px)
MIN_MSE = 1e-10  # garment_psnr of identical pixels is capped at 100 dB (not infinite)
WORLD_KEYS = ("world_error_mm", "world_static_only_error_mm", "world_zero_offset_error_mm")
OFFSET_KEYS = ("total_error_mm", "zero_offset_error_mm", "static_only_error_mm",
               "deformer_error_mm", "deformer_zero_error_mm", "deformer_correlation",
               "pose_part_correlation", *WORLD_KEYS)
IMAGE_KEYS = ("garment_psnr", "garment_mask_iou")


# ---------------------------------------------------------------------------- offset metrics
def mean_mm(vectors: Tensor) -> float:
    """Mean Euclidean norm of vectors [..., 3] (metres), in mm (NaN when empty)."""
    if vectors.numel() == 0:
        return math.nan
    return float(vectors.norm(dim=-1).mean()) * MM_PER_M


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation over all components of two same-shape tensors (NaN when one side is
    constant or empty)."""
    if a.shape != b.shape:
        raise ValueError(f"pearson: shapes differ, {list(a.shape)} vs {list(b.shape)}")
    if a.numel() < 2:
        return math.nan
    pair = torch.stack([a.flatten().double(), b.flatten().double()])  # [2, K]
    return float(torch.corrcoef(pair)[0, 1])


def offset_errors(deformer: Tensor, static: Tensor, truth: Tensor, truth_train_mean: Tensor,
                  deformer_train_mean: Tensor | None = None) -> dict[str, float]:
    """The offset metrics (module docstring) of one region in one set of poses.

    deformer [T, G, 3] (D), static [G, 3] (S), truth [T, G, 3] (Y), truth_train_mean [G, 3]
    (M), deformer_train_mean [G, 3] (E; None: pose_part_correlation is NaN), all canonical
    metres. Returns gaussians (G) and the offset keys of OFFSET_KEYS."""
    means = {"static": static, "truth_train_mean": truth_train_mean}
    if deformer_train_mean is not None:
        means["deformer_train_mean"] = deformer_train_mean
    if deformer.shape != truth.shape or any(m.shape != truth.shape[1:] for m in means.values()):
        given = ", ".join(f"{name} {list(m.shape)}" for name, m in means.items())
        raise ValueError(f"offset_errors: deformer {list(deformer.shape)} and truth "
                         f"{list(truth.shape)} must be [T, G, 3], and {given} [G, 3]")
    pose_part = truth - truth_train_mean  # [T, G, 3] Y - M
    own_pose_part = (math.nan if deformer_train_mean is None
                     else pearson(deformer - deformer_train_mean, pose_part))  # D - E vs Y - M
    return {
        "gaussians": int(truth.shape[1]),
        "total_error_mm": mean_mm(static + deformer - truth),
        "zero_offset_error_mm": mean_mm(truth),
        "static_only_error_mm": mean_mm(static - truth),
        "deformer_error_mm": mean_mm(deformer - pose_part),
        "deformer_zero_error_mm": mean_mm(pose_part),
        "deformer_correlation": pearson(deformer, pose_part),
        "pose_part_correlation": own_pose_part,
    }


def world_errors(refined: Tensor, base: Tensor, true_posed: Tensor, true_bare: Tensor
                 ) -> dict[str, float]:
    """The world-space metrics (module docstring) of one region in one set of poses: refined,
    base (the avatar's posed means with / without the deformer), true_posed (P) and true_bare
    (B), all [T, G, 3] world metres."""
    shapes = {t.shape for t in (refined, base, true_posed, true_bare)}
    if len(shapes) != 1 or len(true_posed.shape) != 3:
        got = [list(t.shape) for t in (refined, base, true_posed, true_bare)]
        raise ValueError(f"world_errors: refined, base, true_posed and true_bare must share one "
                         f"[T, G, 3] shape, got {got}")
    return {"world_error_mm": mean_mm(refined - true_posed),
            "world_static_only_error_mm": mean_mm(base - true_posed),
            "world_zero_offset_error_mm": mean_mm(true_bare - true_posed)}


def region_errors(deformer: Tensor, static: Tensor, truth: Tensor, truth_train_mean: Tensor,
                  regions: dict[str, Tensor], prefix: str = "",
                  deformer_train_mean: Tensor | None = None) -> dict[str, dict[str, float]]:
    """offset_errors of each region ([G] bool over the same Gaussians), keyed prefix + name."""
    return {f"{prefix}{name}": offset_errors(
                deformer[:, mask], static[mask], truth[:, mask], truth_train_mean[mask],
                None if deformer_train_mean is None else deformer_train_mean[mask])
            for name, mask in regions.items()}


# ---------------------------------------------------------------------------- image metrics
def dilate(mask: Tensor, radius_px: int) -> Tensor:
    """[H, W] bool dilated by a disc of radius_px pixels (Euclidean) -> [H, W] bool."""
    if radius_px < 0:
        raise ValueError(f"dilate: radius_px must be >= 0, got {radius_px}")
    if radius_px == 0:
        return mask.bool()
    offsets = torch.arange(-radius_px, radius_px + 1, dtype=torch.float32)
    disc = (offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius_px ** 2  # [k, k]
    hits = F.conv2d(mask.float()[None, None], disc.float()[None, None], padding=radius_px)
    return hits[0, 0] > 0.5


def resize_nearest(mask: Tensor, height: int, width: int) -> Tensor:
    """[h, w] float -> [height, width] by nearest neighbour (the data loader's "nearest")."""
    if tuple(mask.shape) == (height, width):
        return mask
    return F.interpolate(mask.float()[None, None], size=(height, width),
                         mode="nearest-exact")[0, 0]


def garment_region(garment_mask: Tensor, height: int, width: int,
                   dilation_px: int = GARMENT_REGION_DILATION_PX) -> Tensor:
    """The scored garment region [height, width] bool: garment_mask [h, w] in [0, 1] (the true
    render's, any resolution) resized by nearest, above MASK_THRESHOLD, dilated."""
    return dilate(resize_nearest(garment_mask, height, width) > MASK_THRESHOLD, dilation_px)


def _plane(mask: Tensor) -> Tensor:
    """[H, W] or [H, W, 1] -> [H, W] float."""
    return (mask[..., 0] if mask.ndim == 3 else mask).float()


def masked_psnr(pred: Tensor, target: Tensor, region: Tensor) -> float:
    """PSNR (dB, data range 1) over the region's pixels and channels: pred, target [H, W, 3],
    region [H, W] bool. NaN for an empty region; capped by MIN_MSE."""
    if pred.shape != target.shape or tuple(region.shape) != tuple(pred.shape[:2]):
        raise ValueError(f"masked_psnr: pred {list(pred.shape)}, target "
                         f"{list(target.shape)} and region {list(region.shape)} differ")
    if not bool(region.any()):
        return math.nan
    error = (pred.double() - target.double())[region]  # [P, 3]
    mse = max(float((error ** 2).mean()), MIN_MSE)
    return -10.0 * math.log10(mse)


def region_mask_iou(pred_alpha: Tensor, target_mask: Tensor, region: Tensor) -> float:
    """IoU in percent of (pred_alpha > 0.5) and (target_mask > 0.5), both within region [H, W]
    bool; pred_alpha, target_mask [H, W] or [H, W, 1]. NaN for an empty region, 100 when both
    are empty within it."""
    if not bool(region.any()):
        return math.nan
    inside = region.float()
    return mask_iou(_plane(pred_alpha) * inside, _plane(target_mask) * inside)


def garment_image_metrics(pred: Tensor, target: Tensor, pred_alpha: Tensor,
                          garment_mask: Tensor,
                          dilation_px: int = GARMENT_REGION_DILATION_PX) -> dict[str, float]:
    """garment_psnr and garment_mask_iou of one frame. pred, target [H, W, 3] as the protocol
    scores them (composited); pred_alpha [H, W(, 1)]; garment_mask [h, w] in [0, 1] at any
    resolution (resized by nearest to [H, W])."""
    height, width = pred.shape[:2]
    region = garment_region(garment_mask, height, width, dilation_px)  # [H, W]
    target_garment = resize_nearest(garment_mask, height, width)  # [H, W]
    return {"garment_psnr": masked_psnr(pred, target, region),
            "garment_mask_iou": region_mask_iou(pred_alpha, target_garment, region)}


def garment_mask_path(subject: str | Path, split: str, index: int) -> Path:
    """Where the synth writes the garment mask of a frame (FramePaths.garment_mask)."""
    from persona.data.subject import FramePaths

    return Path(subject) / FramePaths(split, index).garment_mask


def has_garment_masks(subject: str | Path, split: str) -> bool:
    """The split has a garment-mask folder (synthetic subjects from the skirt synth on)."""
    return garment_mask_path(subject, split, 0).parent.is_dir()


def read_garment_mask(path: Path) -> Tensor:
    """A garment mask PNG (uint8 0/255) -> [H, W] float in [0, 1]."""
    from persona.data.subject import read_mask

    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing garment mask (the subject has "
                                f"{path.parent.name}/ but not this frame's file)")
    return torch.from_numpy(np.ascontiguousarray(read_mask(path)))


# ---------------------------------------------------------------------------- matching
def match_gaussians(avatar: Tensor, truth: Tensor) -> tuple[Tensor, str]:
    """For each true Gaussian truth [M, 3], the index ([M] long) of its avatar Gaussian among
    avatar [N, 3], and the method: "vertex_index" when both are the same template (same count,
    within MATCH_TOLERANCE_M), else "nearest_neighbour" in canonical space."""
    if avatar.shape == truth.shape and float((avatar - truth).abs().max()) <= MATCH_TOLERANCE_M:
        return torch.arange(truth.shape[0]), "vertex_index"
    block = max(1, NN_BLOCK_ELEMENTS // max(1, avatar.shape[0]))
    nearest = [torch.cdist(truth[start:start + block], avatar).argmin(dim=1)  # [b]
               for start in range(0, truth.shape[0], block)]
    return torch.cat(nearest), "nearest_neighbour"


def match_subset(avatar: Tensor, truth: Tensor, subset: Tensor) -> tuple[Tensor, str]:
    """match_gaussians of the true Gaussians in subset ([M] bool over truth [M, 3]) -> ([S]
    avatar indices, method); same-template avatars still match by index."""
    if avatar.shape == truth.shape and float((avatar - truth).abs().max()) <= MATCH_TOLERANCE_M:
        return torch.nonzero(subset)[:, 0], "vertex_index"
    return match_gaussians(avatar, truth[subset])


# ---------------------------------------------------------------------------- the ground truth
class StaleSubjectError(ValueError):
    """A synthetic subject built by another version of persona.data.synth: its meta.json holds
    settings this synth does not know, so the ground truth it rebuilds would not be the one
    the subject was rendered with."""


def dataclass_from(cls: type, values: dict) -> Any:
    """A (nested) dataclass from its asdict() form; lists become tuples, unknown keys dropped
    (see unknown_settings)."""
    kwargs = {}
    for item in fields(cls):
        if item.name not in values:
            continue
        value = values[item.name]
        default = getattr(cls(), item.name)
        if hasattr(default, "__dataclass_fields__"):
            value = dataclass_from(type(default), value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[item.name] = value
    return cls(**kwargs)


def unknown_settings(cls: type, values: dict, prefix: str = "") -> list[str]:
    """Dotted names of the keys of an asdict() form that the (nested) dataclass lacks."""
    known = {item.name for item in fields(cls)}
    unknown = []
    for key, value in values.items():
        if key not in known:
            unknown.append(f"{prefix}{key}")
            continue
        default = getattr(cls(), key)
        if hasattr(default, "__dataclass_fields__") and isinstance(value, dict):
            unknown += unknown_settings(type(default), value, f"{prefix}{key}.")
    return unknown


def read_synth_meta(subject: str | Path) -> dict | None:
    """The subject's meta.json when it was written by the synth, else None (no file, or another
    generator)."""
    path = Path(subject) / META_NAME
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(meta, dict) or meta.get("generator") != SYNTH_GENERATOR:
        return None
    if not isinstance(meta.get("config"), dict):
        raise ValueError(f"{path}: field 'config' (the synth settings) is missing")
    return meta


def synth_config(subject: str | Path) -> Any:
    """The SynthConfig a synthetic subject was built with; ValueError for other subjects,
    StaleSubjectError when meta.json holds settings this synth does not know."""
    from persona.data.synth import SynthConfig

    meta = read_synth_meta(subject)
    path = Path(subject) / META_NAME
    if meta is None:
        raise ValueError(f"{path}: not a synthetic subject (no meta.json with generator "
                         f"{SYNTH_GENERATOR!r})")
    unknown = unknown_settings(SynthConfig, meta["config"])
    if unknown:
        raise StaleSubjectError(
            f"{path}: built by another version of persona.data.synth (config settings "
            f"{', '.join(unknown)} are unknown to it); its ground truth cannot be rebuilt: "
            f"synthesize the subject again")
    return dataclass_from(SynthConfig, meta["config"])


def stack_poses(poses: list) -> Any:
    """PoseParams of batch 1 each -> one PoseParams of batch len(poses)."""
    from persona.body.types import PoseParams

    return PoseParams(torch.cat([p.full_pose for p in poses]),
                      torch.cat([p.expression for p in poses]),
                      torch.cat([p.transl for p in poses]))


def distinct_poses(poses: list) -> list:
    """The poses (batch 1 each) without repeats of an earlier full_pose, in order."""
    distinct: list = []
    for pose in poses:
        if not any(torch.equal(pose.full_pose, p.full_pose) for p in distinct):
            distinct.append(pose)
    return distinct


def true_training_poses(body: Any, identity: Any, config: Any) -> tuple[Any, list[int]]:
    """(the poses [K] the generated frames were rendered in, before the written pose noise; the
    number of frames of each motion, in order)."""
    from persona.data import motions as motion_lib
    from persona.data import synth

    poses, lengths = [], []
    for name in config.motions:
        motion = motion_lib.resolve_motion(name)
        posed = synth.camera_frame_poses(body, identity, motion.poses, motion.transl,
                                         body.num_expression)
        indices = synth.subsample(motion.num_frames, config.frames)
        poses += [synth.select(posed, i) for i in indices]
        lengths.append(len(indices))
    return stack_poses(poses), lengths


def spread(count: int, wanted: int | None) -> list[int]:
    """`wanted` evenly spread indices of range(count) (all when None or >= count)."""
    if wanted is None or wanted >= count:
        return list(range(count))
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, max(1, wanted))})


@dataclass
class DeformationTruth:
    """The true garment of a synthetic subject, restricted to its garment Gaussians (M)."""

    canonical: Tensor  # [N, 3] every true Gaussian's canonical position (for matching)
    garment: Tensor  # [N] bool: the garment Gaussians (garment_regions' GARMENT_KEY)
    regions: dict[str, Tensor]  # name -> [M] bool over the garment Gaussians (garment: all)
    train_mean: Tensor  # [M, 3] mean true offset over ALL true training poses
    poses: dict[str, list]  # "test" / "train" -> poses (PoseParams of batch 1) evaluated
    offsets: dict[str, Tensor]  # "test" / "train" -> [T, M, 3] true offsets in those poses
    train_lengths: list[int]  # frames of each training motion (all poses, in order)
    train_indices: list[int]  # which of the training poses `poses["train"]` holds
    posed: dict[str, Tensor]  # "test" / "train" -> [T, M, 3] true posed garment (world)
    bare: dict[str, Tensor]  # "test" / "train" -> [T, M, 3] true posed body without it


def build_truth(subject: str | Path, test_poses: list, max_poses: int | None = None
                ) -> DeformationTruth | None:
    """The ground truth of a synthetic subject, or None for any other subject (StaleSubjectError
    for a synthetic subject of another synth version). test_poses: the test split's poses
    (batch 1 each; repeats are dropped); max_poses: evaluate at most this many evenly spread
    poses of each set (None: all; the training mean always uses all)."""
    from persona.data import synth

    if read_synth_meta(subject) is None:
        return None
    config = synth_config(subject)
    body = synth.load_synth_body(config)
    identity = synth.subject_identity(body, config.seed)
    with torch.no_grad():
        avatar = synth.build_avatar(body, identity, config)
        regions = synth.garment_regions(avatar)
        if GARMENT_KEY not in regions:
            raise ValueError(f"persona.data.synth.garment_regions returned {sorted(regions)}; "
                             f"expected a {GARMENT_KEY!r} entry")
        garment = regions[GARMENT_KEY].bool()  # [N]
        train_all, lengths = true_training_poses(body, identity, config)
        train_truth = synth.garment_offsets(body, avatar, train_all, config.garment)  # [K,N,3]
        train_truth = train_truth[:, garment]  # [K, M, 3]
        test = distinct_poses(test_poses)
        test = [test[i] for i in spread(len(test), max_poses)]
        train_indices = spread(train_all.full_pose.shape[0], max_poses)
        test_truth = (synth.garment_offsets(body, avatar, stack_poses(test), config.garment
                                            )[:, garment] if test
                      else train_truth.new_zeros(0, int(garment.sum()), 3))  # [T, M, 3]
        train = [synth.select(train_all, i) for i in train_indices]
        posed, bare = {}, {}
        for name, poses in (("test", test), ("train", train)):
            posed[name], bare[name] = _true_world(body, avatar, poses, config.garment, garment)
    return DeformationTruth(
        canonical=avatar.canonical.detach().float(), garment=garment,
        regions={name: mask.bool()[garment] for name, mask in regions.items()},
        train_mean=train_truth.mean(0),
        poses={"test": test, "train": train},
        offsets={"test": test_truth, "train": train_truth[train_indices]},
        train_lengths=lengths, train_indices=train_indices, posed=posed, bare=bare)


def _true_world(body: Any, avatar: Any, poses: list, garment_settings: Any, garment: Tensor
                ) -> tuple[Tensor, Tensor]:
    """(true posed garment P, true posed body without it B), each [T, M, 3] world metres, of
    the garment Gaussians in `poses` (batch 1 each)."""
    from persona.body.lbs import skin_points
    from persona.data import synth

    count = int(garment.sum())
    if not poses:
        return torch.zeros(0, count, 3), torch.zeros(0, count, 3)
    stacked = stack_poses(poses)
    posed = synth.posed_means(body, avatar, stacked, garment_settings)[:, garment]
    transforms = body.transforms_from_canonical(avatar.identity, stacked)  # [T, 55, 4, 4]
    bare = skin_points(avatar.canonical, avatar.weights, transforms)[:, garment]
    return posed.float(), bare.float()


# ---------------------------------------------------------------------------- the model's side
def _to(pose: Any, device: torch.device) -> Any:
    from persona.body.types import PoseParams

    return PoseParams(pose.full_pose.to(device), pose.expression.to(device),
                      pose.transl.to(device))


def static_offset(system: Any) -> Tensor:
    """The learned pose-independent canonical mean offset [N, 3]."""
    return system.avatar.mean_offset


def avatar_canonical(system: Any) -> Tensor:
    """The avatar template's canonical Gaussian positions [N, 3] (before any offset)."""
    return system.template.canonical_vertices


def model_posed(system: Any, poses: list, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(the deformer's canonical offsets: refined minus base canonical means, the refined and
    the base posed means) of the matched Gaussians (index [M]) in each pose, each [T, M, 3] on
    the CPU (no gradient). The one place that poses the system (adapt it here)."""
    from persona.avatar.posing import body_pose_6d

    empty = torch.zeros(0, index.shape[0], 3)
    if not poses:
        return empty, empty, empty
    offsets, refined, base = [], [], []
    with torch.no_grad():
        for pose in poses:
            pose = _to(pose, static_offset(system).device)
            state = system.posed_state(pose, body_pose_6d(pose))
            offsets.append((state.canonical_refined - state.canonical_base).cpu()[index])
            refined.append(state.means["refined"].cpu()[index])
            base.append(state.means["base"].cpu()[index])
    return torch.stack(offsets), torch.stack(refined).float(), torch.stack(base).float()


def model_offsets(system: Any, poses: list, index: Tensor) -> Tensor:
    """The deformer's offsets of the matched Gaussians (index [M]) in each pose -> [T, M, 3]
    on the CPU (no gradient)."""
    return model_posed(system, poses, index)[0]


def match_system(system: Any, truth: DeformationTruth) -> tuple[Tensor, str]:
    """Avatar indices [M] of the true garment Gaussians and the matching method."""
    with torch.no_grad():
        return match_subset(avatar_canonical(system).detach().float().cpu(), truth.canonical,
                            truth.garment)


def deformation_report(system: Any, truth: DeformationTruth,
                       matched: tuple[Tensor, str] | None = None) -> dict[str, Any]:
    """{"matching", "test_poses", "training_poses", "<region>": offset_errors on the test poses,
    "train_<region>": on the training poses}. matched: match_system's result (computed when
    None)."""
    index, method = matched if matched is not None else match_system(system, truth)
    with torch.no_grad():
        static = static_offset(system).detach().float().cpu()[index]  # [M, 3]
        report: dict[str, Any] = {"matching": method, "test_poses": len(truth.poses["test"]),
                                  "training_poses": len(truth.poses["train"])}
        posed = {name: model_posed(system, truth.poses[name], index)
                 for name in ("test", "train")}  # (deformer, refined, base) [T, M, 3] each
        own_mean = posed["train"][0].mean(0)  # [M, 3] E: the deformer's training-pose mean
        for pose_set, prefix in (("test", ""), ("train", TRAIN_PREFIX)):
            deformer, refined, base = posed[pose_set]
            sections = region_errors(deformer, static, truth.offsets[pose_set],
                                     truth.train_mean, truth.regions, prefix, own_mean)
            for name, mask in truth.regions.items():
                sections[f"{prefix}{name}"].update(world_errors(
                    refined[:, mask], base[:, mask], truth.posed[pose_set][:, mask],
                    truth.bare[pose_set][:, mask]))
            report.update(sections)
    return report


def report_scalars(report: dict[str, Any], prefix: str,
                   keys: tuple[str, ...] = OFFSET_KEYS) -> dict[str, float]:
    """Flat finite scalars for the loggers: the garment section's as "<prefix>/<key>", every
    other section's as "<prefix>/<section>/<key>"."""
    scalars = {}
    for section, values in report.items():
        if not isinstance(values, dict):
            continue
        head = prefix if section == GARMENT_KEY else f"{prefix}/{section}"
        for key in keys:
            value = values.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                scalars[f"{head}/{key}"] = float(value)
    return scalars


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A small table of a metrics.json deformation section: the garment regions' canonical
    errors (mm) next to their zero baselines, the world-space errors (world: the avatar; w-zero:
    no garment offset; w-static: without the deformer), and the deformer's correlation (corr:
    its whole output; pose-c: its own pose part) with the truth's pose part."""
    lines = [f"{'section':<22}{'total':>8}{'zero':>8}{'static':>8}{'deformer':>10}"
             f"{'zero':>8}{'world':>8}{'w-zero':>8}{'w-static':>9}{'corr':>7}{'pose-c':>8}"]

    def number(value: Any, width: int, digits: int) -> str:
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"{'-':>{width}}"
        return f"{value:>{width}.{digits}f}"

    for section, values in report.items():
        if not isinstance(values, dict) or "total_error_mm" not in values:
            continue
        lines.append(f"{section:<22}{number(values['total_error_mm'], 8, 2)}"
                     f"{number(values['zero_offset_error_mm'], 8, 2)}"
                     f"{number(values['static_only_error_mm'], 8, 2)}"
                     f"{number(values['deformer_error_mm'], 10, 2)}"
                     f"{number(values['deformer_zero_error_mm'], 8, 2)}"
                     f"{number(values.get('world_error_mm'), 8, 2)}"
                     f"{number(values.get('world_zero_offset_error_mm'), 8, 2)}"
                     f"{number(values.get('world_static_only_error_mm'), 9, 2)}"
                     f"{number(values['deformer_correlation'], 7, 3)}"
                     f"{number(values.get('pose_part_correlation'), 8, 3)}")
    return lines
