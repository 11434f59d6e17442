"""The ankle-only pose fix of generated frames (METHOD.md section 8, PREPROCESSING.md section 6
step 4 ``fix_foot_pose``).

A generated split stores the *driving* SMPL-X parameters (the authors do no per-frame fitting),
but the generated video need not put the feet exactly where the driving pose does. After the
keypoint stage, the two ankle joints (SMPL-X joints 7 left_ankle and 8 right_ankle) of every
listed frame are optimised, all frames jointly with Adam, to the frame's COCO-WholeBody toe and
heel keypoints (ids 17-22) whose score is above ``min_score``:

    E = sum_{t, foot} [ sum_k w_k rho(|pi(X_k) - x_k|^2 s^2) / sum_k w_k
                        + prior_weight |theta_{t, foot} - theta0_{t, foot}|^2 ]

- X_k the body's toe / heel landmarks, pi the frame's camera, x_k the keypoints, s rescales
  pixels to a 1024-pixel image height, rho the Geman-McClure function (as the fit stage);
- w_k the score where score > ``min_score`` (the authors' "score > 0.3"), else 0: a keypoint
  with weight 0 has no influence at all;
- theta0 the driving ankle pose; a (frame, foot) with no confident keypoint is not optimised
  and keeps its driving ankle exactly.

Then a Savitzky-Golay filter (window 9, order 2; scipy) runs over time on each axis-angle
component of the ankle sequences; where a foot was not optimised the driving value is put back.
Only the six ankle numbers of ``body_pose`` change in the written parameter files.
docs/prep/footfix.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy.signal import savgol_filter
from torch import Tensor
from torch.utils.data import Dataset

from data_prep.fitting import (
    CAM_OUTPUT,
    MIN_DEPTH,
    REFERENCE_HEIGHT,
    SMPLX_OUTPUT,
    geman_mcclure,
)
from data_prep.keypoints import (
    COCO_FROM_SMPLX,
    FIRST_VERTEX_JOINT,
    NUM_VERTEX_JOINTS,
    LandmarkTable,
    landmark_table,
)
from data_prep.stage import (
    PrepData,
    PrepStage,
    keypoints_relpath,
    load_subject_body,
    read_keypoints,
    split_frame_indices,
)
from persona.body.lbs import make_transform, rigid_chain
from persona.body.model import BodyModel
from persona.body.types import SMPLX_JOINT_NAMES, Identity, PoseParams
from persona.data.subject import (
    SMPLX_POSE_KEYS,
    FramePaths,
    camera_from_json,
    canonical_smplx_keys,
    is_generated,
    list_splits,
    pose_from_json,
    write_json,
)
from persona.ops.rotations import axis_angle_to_matrix
from persona.render.projection import pinhole
from persona.render.types import Camera

LEFT_ANKLE = SMPLX_JOINT_NAMES.index("left_ankle")  # SMPL-X joint 7
RIGHT_ANKLE = SMPLX_JOINT_NAMES.index("right_ankle")  # SMPL-X joint 8
ANKLE_JOINTS = (LEFT_ANKLE, RIGHT_ANKLE)  # the only joints this fix changes
LEFT_FOOT_KEYPOINTS = (17, 18, 19)  # COCO-WholeBody left big toe, small toe, heel (PREP 4.2)
RIGHT_FOOT_KEYPOINTS = (20, 21, 22)  # COCO-WholeBody right big toe, small toe, heel
FOOT_KEYPOINTS = (LEFT_FOOT_KEYPOINTS, RIGHT_FOOT_KEYPOINTS)  # foot f <-> ANKLE_JOINTS[f]
NUM_FEET = 2
BODY_POSE_KEY = "body_pose"  # JSON key of SMPL-X joints 1..21 (persona.data.subject)
BODY_POSE_START = SMPLX_POSE_KEYS[BODY_POSE_KEY][0]  # full_pose index of body_pose[0:3] (= 1)
MARKER_TEMPLATE = "{split}/smplx_optimized/footfix.json"  # written last: the split is done
# the marker is written twice: first, before any params file is rewritten, with the driving
# ankles and MARKER_STATE_KEY = MARKER_IN_PROGRESS (a killed run restarts from those, not from
# a half-written fix); last, complete, with MARKER_DONE_KEY: only that one marks the split done
MARKER_STATE_KEY = "state"
MARKER_IN_PROGRESS = "in progress"
MARKER_DONE_KEY = "diagnostics"
KEYPOINTS_CONFIG = "configs/prep/keypoints.yaml"  # the stage that writes {split}/keypoints
GENERATE_CONFIG = "configs/prep/generate.yaml"  # the stage that writes params and cameras


@dataclass
class FootFixSettings:
    """Settings of :func:`fix_ankles` (config ``model.init_args.settings``)."""

    iterations: int = 500  # Adam steps over all frames jointly (METHOD.md section 8: 500)
    learning_rate: float = 1e-2  # Adam lr (ours: the fit stage's; the authors' is not known)
    min_score: float = 0.3  # keypoints scored <= this are ignored (PREPROCESSING.md 4: > 0.3)
    robust_sigma: float = 100.0  # px at 1024 height: Geman-McClure scale (as the fit stage)
    prior_weight: float = 10.0  # px^2 / rad^2: L2 pull toward the driving ankle (ours)
    savgol_window: int = 9  # frames: Savitzky-Golay window (METHOD.md section 8: 9)
    savgol_order: int = 2  # Savitzky-Golay polynomial order (METHOD.md section 8: 2)
    smooth: bool = True  # apply the Savitzky-Golay filter after the optimisation

    def check(self) -> None:
        """ValueError naming the setting when a value cannot work."""
        where = "model.init_args.settings"
        if self.iterations < 0:
            raise ValueError(f"{where}.iterations must be >= 0, got {self.iterations}")
        if self.learning_rate <= 0 or self.robust_sigma <= 0 or self.prior_weight < 0:
            raise ValueError(f"{where}: learning_rate and robust_sigma must be > 0 and "
                             "prior_weight >= 0")
        if self.savgol_order < 0 or self.savgol_window % 2 != 1 \
                or self.savgol_window <= self.savgol_order:
            raise ValueError(f"{where}.savgol_window must be odd and > savgol_order "
                             f"(got {self.savgol_window}, {self.savgol_order})")


@dataclass
class FootFixDiagnostics:
    """What a fix did (written to the split's footfix.json marker)."""

    num_frames: int = 0  # frames in the sequence
    optimised: list[list[bool]] = field(default_factory=list)  # [T][2] foot had keypoints
    error_before_px: float = float("nan")  # mean foot keypoint error, driving ankles
    error_optimised_px: float = float("nan")  # after the optimisation, before smoothing
    error_after_px: float = float("nan")  # after smoothing (the written poses)
    frame_errors_before_px: list[float] = field(default_factory=list)  # [T] (nan: none used)
    frame_errors_after_px: list[float] = field(default_factory=list)  # [T]
    final_loss: float = float("nan")  # objective after the last Adam step
    savgol_window: int = 0  # window actually used (0: no smoothing)
    seconds: float = 0.0  # wall time

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (nan -> None)."""
        def clean(value: Any) -> Any:
            if isinstance(value, float):
                return None if not np.isfinite(value) else value
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value
        return {key: clean(value) for key, value in asdict(self).items()}


# ----------------------------------------------------------------------------------------------
# Pieces
# ----------------------------------------------------------------------------------------------
def foot_landmark_ids() -> list[int]:
    """The SMPL-X landmarks (0-143) of COCO-WholeBody keypoints 17-22, in that order."""
    return [COCO_FROM_SMPLX[k] for foot in FOOT_KEYPOINTS for k in foot]


def foot_weights(keypoints: np.ndarray, min_score: float) -> np.ndarray:
    """keypoints [T, 133, 3] -> weights [T, 6] of keypoints 17-22: the score where it is
    > min_score and the keypoint is finite, else 0."""
    feet = keypoints[:, [k for foot in FOOT_KEYPOINTS for k in foot]]  # [T, 6, 3]
    ok = (feet[..., 2] > min_score) & np.isfinite(feet).all(-1)
    return np.where(ok, np.nan_to_num(feet[..., 2]), 0.0)


def savgol_window(num_frames: int, window: int, order: int) -> int:
    """The window used for a sequence of num_frames: `window` when it fits, else the largest
    odd number <= num_frames, and 0 (no smoothing) when that is not > order."""
    if num_frames >= window:
        return window
    shrunk = num_frames if num_frames % 2 == 1 else num_frames - 1
    return shrunk if shrunk > order else 0


def smooth_sequence(values: np.ndarray, window: int, order: int) -> tuple[np.ndarray, int]:
    """Savitzky-Golay over axis 0 of values [T, ...] (scipy, mode 'interp'), the window shrunk
    by :func:`savgol_window`. Returns (smoothed [T, ...], window used; 0 = unchanged copy)."""
    used = savgol_window(values.shape[0], window, order)
    if used == 0:
        return values.copy(), 0
    return savgol_filter(values, used, order, axis=0), used


def _camera_arrays(cameras: Sequence[Camera], device: torch.device
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """K [T, 3, 3], R [T, 3, 3], t [T, 3] and the pixel scale s [T] (to 1024-px height)."""
    K = torch.stack([c.K.float() for c in cameras]).to(device)
    R = torch.stack([c.R.float() for c in cameras]).to(device)
    t = torch.stack([c.t.float().reshape(3) for c in cameras]).to(device)
    scale = torch.tensor([REFERENCE_HEIGHT / c.height for c in cameras], device=device)
    return K, R, t, scale


def project_per_frame(points: Tensor, K: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """World points [T, N, 3] with per-frame cameras K, R [T, 3, 3], t [T, 3] -> pixels
    [T, N, 2] (centres at integer + 0.5), as `data_prep.fitting.project_points`."""
    return pinhole(points, K, R, t, MIN_DEPTH)[0]


class FootLandmarks:
    """The toe and heel landmarks of posed frames as a function of the two ankle rotations only:
    everything that does not depend on them (shape, rest joints, the transforms of every joint
    outside the ankles' subtrees, the expression offsets) is computed once. Gives the same
    points as ``posed_landmarks`` (same LBS, no pose correctives) at a fraction of the cost."""

    def __init__(self, body: BodyModel, identity: Identity, poses: PoseParams,
                 table: LandmarkTable, ids: Sequence[int]):
        if min(ids) < FIRST_VERTEX_JOINT or max(ids) >= FIRST_VERTEX_JOINT + NUM_VERTEX_JOINTS:
            raise ValueError(f"landmarks {list(ids)}: only vertex landmarks (55-75) are supported")
        body.check_pose(poses)
        frames = poses.batch_size
        parents = body.parents.tolist()
        subtree: list[int] = []
        for joint in range(len(parents)):  # parents come before children
            if joint in ANKLE_JOINTS or parents[joint] in subtree:
                subtree.append(joint)
        self.subtree = subtree  # the ankles and their descendants (the feet)
        self.fixed = [j for j in range(len(parents)) if j not in subtree]
        self.parents = parents
        self.pose_mean = body.pose_mean[list(ANKLE_JOINTS)]  # [2, 3]
        with torch.no_grad():
            shaped = body.shaped_vertices(identity)  # [V, 3]
            self.rest = body.rest_joints(identity)  # [55, 3]
            rotations = axis_angle_to_matrix(poses.full_pose + body.pose_mean)  # [T, 55, 3, 3]
            _, relative = rigid_chain(rotations, self.rest.expand(frames, -1, -1), body.parents)
            # world transforms [T, 55, 4, 4] (relative = world with t - R rest)
            world = relative.clone()
            world[..., :3, 3] = relative[..., :3, 3] + (
                relative[..., :3, :3] @ self.rest[:, :, None])[..., 0]
            self.world = world
            self.rotations = rotations
            rows = [i - FIRST_VERTEX_JOINT for i in ids]
            vertex_ids = table.vertex_joints.to(shaped.device)[rows]  # [L, 3]
            self.bary = table.vertex_bary.to(shaped)[rows]  # [L, 3]
            flat = vertex_ids.reshape(-1)  # [3L]
            points = shaped[flat].expand(frames, -1, -1)  # [T, 3L, 3]
            num_expression = poses.expression.shape[1]
            if num_expression > 0:  # expression in the zero pose (as posed_landmarks)
                directions = body.exprdirs[flat][..., :num_expression]  # [3L, 3, E]
                points = points + torch.einsum("te,nce->tnc", poses.expression, directions)
            self.points = points  # [T, 3L, 3]
            weights = body.lbs_weights[flat]  # [3L, 55]
            self.subtree_weights = weights[:, subtree]  # [3L, S]
            fixed_relative = relative[:, self.fixed].reshape(frames, len(self.fixed), 16)
            self.fixed_blend = weights[:, self.fixed] @ fixed_relative  # [T, 3L, 16]
            self.transl = poses.transl  # [T, 3]

    def __call__(self, ankles: Tensor) -> Tensor:
        """ankles [T, 2, 3] axis-angle (joints 7, 8) -> landmarks [T, L, 3] (world)."""
        ankle_rotations = axis_angle_to_matrix(ankles + self.pose_mean)  # [T, 2, 3, 3]
        world: dict[int, Tensor] = {}
        for joint in self.subtree:
            parent = self.parents[joint]
            rotation = (ankle_rotations[:, ANKLE_JOINTS.index(joint)] if joint in ANKLE_JOINTS
                        else self.rotations[:, joint])
            offset = (self.rest[joint] - self.rest[parent]).expand(rotation.shape[0], 3)
            local = make_transform(rotation, offset)  # [T, 4, 4]
            parent_world = world[parent] if parent in world else self.world[:, parent]
            world[joint] = parent_world @ local
        stacked = torch.stack([world[j] for j in self.subtree], dim=1)  # [T, S, 4, 4]
        rest = self.rest[self.subtree]  # [S, 3]
        translation = stacked[..., :3, 3] - (stacked[..., :3, :3] @ rest[:, :, None])[..., 0]
        relative = torch.cat([torch.cat([stacked[..., :3, :3], translation[..., None]], -1),
                              stacked[..., 3:, :]], dim=-2)  # [T, S, 4, 4]
        frames = relative.shape[0]
        blended = self.fixed_blend + self.subtree_weights @ relative.reshape(frames, -1, 16)
        blended = blended.reshape(frames, -1, 4, 4)  # [T, 3L, 4, 4]
        skinned = (blended[..., :3, :3] @ self.points[..., None])[..., 0] + blended[..., :3, 3]
        skinned = skinned.reshape(frames, -1, 3, 3)  # [T, L, 3 vertices, 3]
        return (self.bary[..., None] * skinned).sum(2) + self.transl[:, None]  # [T, L, 3]


def _errors(pixels: Tensor, targets: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-keypoint pixel errors [T, 6] (nan where weight 0)."""
    error = np.linalg.norm(pixels.detach().cpu().double().numpy() - targets, axis=-1)
    return np.where(weights > 0, error, np.nan)


def _mean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def _frame_means(values: np.ndarray) -> list[float]:
    return [_mean(row) for row in values]


# ----------------------------------------------------------------------------------------------
# The fix
# ----------------------------------------------------------------------------------------------
def fix_ankles(body: BodyModel, identity: Identity, poses: PoseParams,
               camera: Camera | Sequence[Camera], keypoints: np.ndarray | Tensor,
               settings: FootFixSettings | None = None, table: LandmarkTable | None = None,
               ) -> tuple[PoseParams, FootFixDiagnostics]:
    """Optimise the two ankle joints of poses [T] (consecutive frames) to the toe and heel
    keypoints [T, 133, 3] (x, y, score; pixels, centres at integer + 0.5) seen by `camera`
    (one for all frames, or one per frame), then smooth them over time (module docstring).

    Returns (PoseParams [T]: the input with only joints 7 and 8 changed, diagnostics)."""
    settings = FootFixSettings() if settings is None else settings
    settings.check()
    start = time.perf_counter()
    frames = poses.batch_size
    kp = np.asarray(keypoints.detach().cpu() if isinstance(keypoints, Tensor) else keypoints,
                    dtype=np.float64)
    if kp.shape != (frames, 133, 3):
        raise ValueError(f"keypoints: expected [{frames}, 133, 3], got {list(kp.shape)}")
    cameras = [camera] * frames if isinstance(camera, Camera) else list(camera)
    if len(cameras) != frames:
        raise ValueError(f"{len(cameras)} cameras for {frames} frames")
    device = body.v_template.device
    table = landmark_table(body) if table is None else table
    ids = foot_landmark_ids()
    defined = table.valid[ids].cpu().numpy()  # [6]: the body has these landmarks
    weights_np = foot_weights(kp, settings.min_score) * defined  # [T, 6]
    foot_index = np.repeat(np.arange(NUM_FEET), len(LEFT_FOOT_KEYPOINTS))  # [6] keypoint -> foot
    optimised = np.stack([(weights_np[:, foot_index == f] > 0).any(1)
                          for f in range(NUM_FEET)], axis=1)  # [T, 2]
    feet_kp = kp[:, [k for foot in FOOT_KEYPOINTS for k in foot], :2]  # [T, 6, 2]
    targets_np = np.where(weights_np[..., None] > 0, feet_kp, 0.0)  # [T, 6, 2]
    diagnostics = FootFixDiagnostics(num_frames=frames, optimised=optimised.tolist())

    # Lightning's predict runs under inference mode: every tensor of the graph is made here
    with torch.inference_mode(False), torch.enable_grad():
        poses = PoseParams(poses.full_pose.detach().to(device).clone(),
                           poses.expression.detach().to(device).clone(),
                           poses.transl.detach().to(device).clone())
        identity = Identity(*(None if v is None else v.detach().to(device).clone()
                              for v in (identity.betas, identity.face_offset,
                                        identity.joint_offset)))
        driving = poses.full_pose[:, list(ANKLE_JOINTS)].clone()  # [T, 2, 3]
        cams = _camera_arrays(cameras, device)
        weights = torch.tensor(weights_np, dtype=torch.float32, device=device)  # [T, 6]
        targets = torch.tensor(targets_np, dtype=torch.float32, device=device)  # [T, 6, 2]
        one_hot = torch.tensor(foot_index[:, None] == np.arange(NUM_FEET)[None],
                               dtype=torch.float32, device=device)  # [6, 2]
        foot_weight_sum = weights @ one_hot  # [T, 2]
        active = torch.tensor(optimised, device=device)  # [T, 2]
        scale2 = cams[3][:, None] ** 2  # [T, 1]
        feet = FootLandmarks(body, identity, poses, table, ids)

        def objective(ankles: Tensor) -> tuple[Tensor, Tensor]:
            pixels = project_per_frame(feet(ankles), *cams[:3])  # [T, 6, 2]
            squared = ((pixels - targets) ** 2).sum(-1) * scale2  # [T, 6]
            robust = weights * geman_mcclure(squared, settings.robust_sigma)  # [T, 6]
            data = (robust @ one_hot) / foot_weight_sum.clamp(min=1e-8)  # [T, 2]
            prior = settings.prior_weight * ((ankles - driving) ** 2).sum(-1)  # [T, 2]
            return torch.where(active, data + prior, torch.zeros_like(data)).sum(), pixels

        variable = driving.clone().requires_grad_(True)
        with torch.no_grad():
            _, before = objective(variable)
        if optimised.any():
            optimizer = torch.optim.Adam([variable], lr=settings.learning_rate)
            for _ in range(settings.iterations):
                optimizer.zero_grad(set_to_none=True)
                loss, _ = objective(variable)
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            # a foot without confident keypoints keeps its driving ankle exactly
            fitted = torch.where(active[..., None], variable, driving)  # [T, 2, 3]
            loss, after_opt = objective(fitted)
    diagnostics.final_loss = float(loss)

    fitted_np = fitted.detach().cpu().double().numpy()  # [T, 2, 3]
    window = 0
    if settings.smooth:
        smoothed, window = smooth_sequence(fitted_np, settings.savgol_window,
                                           settings.savgol_order)
        fitted_np = np.where(optimised[..., None], smoothed, fitted_np)
    final = torch.tensor(fitted_np, dtype=torch.float32, device=device)
    final = torch.where(active[..., None], final, driving)  # bit-exact driving where not fixed
    with torch.no_grad():
        after = project_per_frame(feet(final), *cams[:3])
    errors_before = _errors(before, feet_kp, weights_np)  # [T, 6]
    errors_after = _errors(after, feet_kp, weights_np)
    diagnostics.error_before_px = _mean(errors_before)
    diagnostics.error_optimised_px = _mean(_errors(after_opt, feet_kp, weights_np))
    diagnostics.error_after_px = _mean(errors_after)
    diagnostics.frame_errors_before_px = _frame_means(errors_before)
    diagnostics.frame_errors_after_px = _frame_means(errors_after)
    diagnostics.savgol_window = window
    full_pose = poses.full_pose.clone()
    full_pose[:, list(ANKLE_JOINTS)] = final
    diagnostics.seconds = time.perf_counter() - start
    return PoseParams(full_pose, poses.expression.clone(), poses.transl.clone()), diagnostics


# ----------------------------------------------------------------------------------------------
# Parameter files
# ----------------------------------------------------------------------------------------------
def with_fixed_ankles(data: dict[str, Any], ankles: np.ndarray) -> dict[str, Any]:
    """A SMPL-X parameter JSON object with its ankle entries replaced by ankles [2, 3] (left,
    right); every other key and value is kept as it was (body_pose[18:21] is joint 7,
    body_pose[21:24] joint 8)."""
    if BODY_POSE_KEY not in data:
        raise ValueError(f"SMPL-X parameters without {BODY_POSE_KEY!r}")
    body_pose = list(data[BODY_POSE_KEY])
    for joint, value in zip(ANKLE_JOINTS, ankles, strict=True):
        offset = 3 * (joint - BODY_POSE_START)
        body_pose[offset:offset + 3] = [float(v) for v in value]
    out = dict(data)
    out[BODY_POSE_KEY] = body_pose
    return out


def _read_json(path: Path, missing: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {missing}")
    with open(path) as handle:
        return json.load(handle)


def read_split_sequence(root: Path, split: str, num_expression: int | None = None
                        ) -> dict[str, Any]:
    """The listed frames of a generated split, in index order: {"indices", "params" (raw JSON
    dicts), "poses" PoseParams [T], "cameras" list[Camera], "keypoints" [T, 133, 3]}."""
    indices = sorted(split_frame_indices(root, split))
    if not indices:
        raise ValueError(f"{root / split}: no frames listed (frame_idx_list.txt; run "
                         f"{GENERATE_CONFIG} first)")
    params, poses, cameras, keypoints = [], [], [], []
    for index in indices:
        paths = FramePaths(split, index)
        data = _read_json(root / SMPLX_OUTPUT.format(split=split, index=index),
                          f"the generation stage writes it ({GENERATE_CONFIG})")
        params.append(data)
        poses.append(pose_from_json(canonical_smplx_keys(data), num_expression))
        camera_json = _read_json(root / CAM_OUTPUT.format(split=split, index=index),
                                 f"the generation stage writes it ({GENERATE_CONFIG})")
        if not (root / paths.image).is_file():
            raise FileNotFoundError(f"{root / paths.image} is missing: the generation stage "
                                    f"writes it ({GENERATE_CONFIG})")
        with Image.open(root / paths.image) as image:
            width, height = image.size
        cameras.append(camera_from_json(camera_json, width, height))
        keypoints_path = root / keypoints_relpath(split, index)
        if not keypoints_path.is_file():
            raise FileNotFoundError(f"{keypoints_path} is missing: run the keypoint stage on "
                                    f"{split} first ({KEYPOINTS_CONFIG})")
        keypoints.append(read_keypoints(keypoints_path))
    expressions = [p.expression for p in poses]
    if len({e.shape[1] for e in expressions}) != 1:
        raise ValueError(f"{root / split}: frames have different expression sizes")
    stacked = PoseParams(torch.cat([p.full_pose for p in poses]), torch.cat(expressions),
                         torch.cat([p.transl for p in poses]))
    return {"indices": indices, "params": params, "poses": stacked, "cameras": cameras,
            "keypoints": np.stack(keypoints)}


def marker_is_complete(marker: Path) -> bool:
    """The split's fix finished: its marker exists and is the final one (a run killed while
    writing the params leaves the in-progress marker, without MARKER_DONE_KEY)."""
    if not marker.is_file():
        return False
    try:
        data = json.loads(marker.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{marker}: not valid JSON ({error}); delete it and run the foot fix "
                         "again") from error
    return isinstance(data, dict) and MARKER_DONE_KEY in data


def restore_driving_ankles(marker: Path, sequence: dict[str, Any]) -> None:
    """A split fixed before (rerun with overwrite), or whose fix was interrupted while
    writing the params (in-progress marker): put the driving ankles its marker kept back into
    sequence["poses"], so that a rerun starts from, and is pulled toward, the driving pose
    rather than the previous (or a half-written) fix. No marker: nothing to do."""
    if not marker.is_file():
        return
    with open(marker) as handle:
        data = json.load(handle)
    frames, driving = data.get("frames"), data.get("driving_ankles")
    if frames is None or driving is None:
        raise ValueError(f"{marker}: no 'frames' / 'driving_ankles'; delete it and regenerate "
                         f"the split ({GENERATE_CONFIG}) to get the driving poses back")
    stored = dict(zip((int(i) for i in frames), driving, strict=True))
    missing = [i for i in sequence["indices"] if i not in stored]
    if missing:
        raise ValueError(f"{marker}: frames {missing} were not part of the previous fix; "
                         f"regenerate the split ({GENERATE_CONFIG}) to get their driving poses")
    ankles = torch.tensor([stored[i] for i in sequence["indices"]], dtype=torch.float32)
    sequence["poses"].full_pose[:, list(ANKLE_JOINTS)] = ankles  # [T, 2, 3]


# ----------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------
class GeneratedSplits(Dataset):
    """One item per generated split: ``{"split": "generated_<k>", "index": k}``. A split whose
    marker ``{split}/smplx_optimized/footfix.json`` is complete is skipped unless
    ``overwrite`` (an in-progress marker, left by a killed run, is not done)."""

    def __init__(self, subject_dir: str | Path, splits: Sequence[str] | None = None,
                 overwrite: bool = False):
        self.root = Path(subject_dir)
        if not self.root.is_dir():
            raise FileNotFoundError(f"subject folder {self.root} does not exist "
                                    "(setting data.subject_dir)")
        if splits is None:
            chosen = [s for s in list_splits(self.root) if is_generated(s)]
        else:
            chosen = list(splits)
            for split in chosen:
                if not is_generated(split):
                    raise ValueError(f"data.splits: the foot fix is for generated_<k> splits, "
                                     f"got {split!r}")
                if not (self.root / split).is_dir():
                    raise FileNotFoundError(f"{self.root}: split {split!r} does not exist "
                                            "(setting data.splits)")
        done = [s for s in chosen
                if marker_is_complete(self.root / MARKER_TEMPLATE.format(split=s))]
        self.items = [s for s in chosen if overwrite or s not in done]
        self.num_skipped = len(chosen) - len(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        split = self.items[i]
        return {"split": split, "index": int(split.rsplit("_", 1)[1])}


class FootFixStage(PrepStage):
    """Ankle-only pose fix of the generated splits (module docstring): rewrites
    ``{split}/smplx_optimized/smplx_params/{i}.json`` of the listed frames (ankles only) and
    writes ``{split}/smplx_optimized/footfix.json`` (settings + diagnostics) last."""

    output_templates = (MARKER_TEMPLATE,)

    def __init__(self, settings: FootFixSettings | None = None):
        """settings: the optimisation and smoothing settings (configs/prep/footfix.yaml)."""
        super().__init__()
        self.settings = FootFixSettings() if settings is None else settings
        self.settings.check()
        self.subject: Path | None = None
        self.diagnostics: dict[str, FootFixDiagnostics] = {}

    def make_dataset(self, data: PrepData) -> Dataset:
        return GeneratedSplits(data.subject_dir, data.splits, data.overwrite)

    def setup(self, stage: str) -> None:
        self.subject = Path(self.trainer.datamodule.subject_dir)
        self.body, self.identity, self.body_config = load_subject_body(self.subject)
        self.table = landmark_table(self.body)

    def process(self, item: dict[str, Any]) -> dict[str, Any]:
        assert self.subject is not None, "setup() reads the subject"
        split = item["split"]
        sequence = read_split_sequence(self.subject, split,
                                       self.body_config.get("num_expression"))
        marker = self.subject / MARKER_TEMPLATE.format(split=split)
        restore_driving_ankles(marker, sequence)
        driving = sequence["poses"].full_pose[:, list(ANKLE_JOINTS)].double().tolist()
        # before the SubjectWriter rewrites any params file: the driving ankles, kept for a rerun
        write_json(marker, {"frames": sequence["indices"], "driving_ankles": driving,
                            MARKER_STATE_KEY: MARKER_IN_PROGRESS})
        device = self.body.v_template.device
        fixed, diagnostics = fix_ankles(self.body, self.identity.to(device), sequence["poses"],
                                        sequence["cameras"], sequence["keypoints"],
                                        self.settings, self.table)
        self.diagnostics[split] = diagnostics
        ankles = fixed.full_pose[:, list(ANKLE_JOINTS)].detach().cpu().double().numpy()
        files: dict[str, Any] = {}
        for b, (index, data) in enumerate(zip(sequence["indices"], sequence["params"],
                                              strict=True)):
            files[SMPLX_OUTPUT.format(split=split, index=index)] = with_fixed_ankles(
                data, ankles[b])
        files[MARKER_TEMPLATE.format(split=split)] = {  # last: marks the split as done
            "frames": sequence["indices"], "driving_ankles": driving,
            "settings": asdict(self.settings), MARKER_DONE_KEY: diagnostics.to_json()}
        return files
