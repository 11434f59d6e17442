"""The body fit of `persona track`: one batched optimisation over every frame of a video.

Unknowns: per frame t a root rotation R_t (a correction exp(d_t) of an initial R0_t), the 21 body
joints' axis-angle theta_t and a translation x_t; one shape (betas) for the whole clip. The
body's COCO body + feet keypoints X_t [23, 3] (data_prep/keypoints.py: SMPL-X landmarks mapped
onto COCO-WholeBody) are posed with the root rotating about the rest pelvis J0, as SMPL-X does:
X_t = R_t (L_t - J0) + J0 + x_t, L_t the landmarks with the root at rest.

    E = w_2d  sum_tk c_tk rho(|pi(X_tk) - u_tk| s) / sum c           (2D, Geman-McClure, px)
      + w_3d  sum_tk c_tk |(X_tk - X_t,hip) - a_t (W_tk - W_t,hip)|^2 / sum c   (3D landmarks)
      + w_acc mean |X_t+1 - 2 X_t + X_t-1|^2 + w_vel mean |X_t+1 - X_t|^2     (smoothness, m)
      + w_pose_vel mean |theta_t+1 - theta_t|^2
      + w_limit mean relu(lo - theta, theta - hi)^2 + w_pose mean |theta|^2 + w_betas |beta|^2

u the BlazePose 2D keypoints with confidences c (0 below `min_score` and on frames without a
person), s rescales pixels to a 1024-pixel-high image (data_prep/fitting.py's convention), W the
BlazePose world landmarks (metres, camera axes, origin between the hips) and a_t their
least-squares scale onto the body's (BlazePose's metric scale is its own guess). Frames without
landmarks have no data term; once the fit is done their pose is interpolated from the nearest
fitted frames (`fill_missing_frames`: root slerped, body pose and translation linear, held
before the first and after the last).

Initialisation: R0_t turns the body's rest torso frame (hips left-right, hips -> shoulders) onto
the world landmarks' torso frame, so side and back views start right; x0_t by similar triangles
(data_prep/fitting.py `initial_translation`). Stages: (1) root + translation on the torso, (2)
everything with a strong 3D weight (it picks each limb's depth, which the 2D term cannot), (3)
everything with a weaker one (the 2D term refines). The camera is a pinhole with R = I, t = 0
(OpenCV axes), the principal point at the image centre and the focal of `fitting_camera` (the
virtual camera's 2000 px at 1024 px height, scaled by height) unless given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial.transform import Rotation, Slerp
from torch import Tensor

from data_prep import light_pose as lp
from data_prep.fitting import (
    REFERENCE_HEIGHT,
    fitting_camera,
    geman_mcclure,
    initial_translation,
)
from data_prep.keypoints import (
    COCO_FROM_SMPLX,
    COCO_LEFT_HIP,
    COCO_LEFT_SHOULDER,
    COCO_RIGHT_HIP,
    COCO_RIGHT_SHOULDER,
    LandmarkTable,
    landmark_table,
    smplx_to_coco133,
)
from persona.body.lbs import KinematicChain, rigid_chain, skin_points
from persona.body.model import BodyModel
from persona.body.types import NUM_BODY_JOINTS, NUM_JOINTS, SMPLX_JOINT_NAMES
from persona.data.motions import UPRIGHT_IN_CAMERA
from persona.ops.rotations import axis_angle_to_matrix
from persona.render.projection import pinhole
from persona.render.types import Camera

NUM_FIT_KEYPOINTS = 23  # COCO-WholeBody body (0-16) + feet (17-22)
NUM_EVAL_JOINTS = 22  # SMPL-X pelvis + 21 body joints: the joints MPJPE is measured on
MIN_DEPTH = 1e-3  # m: camera z clamped to this in the projection
TORSO = (COCO_LEFT_SHOULDER, COCO_RIGHT_SHOULDER, COCO_LEFT_HIP, COCO_RIGHT_HIP)
STAGE_ONE_KEYPOINTS = (0, 1, 2, 3, 4) + TORSO  # head + torso: root and translation only
# COCO keypoint pairs whose directions the 3D term compares: arms, legs, feet, torso, head
BONES = ((5, 7), (7, 9), (6, 8), (8, 10), (11, 13), (13, 15), (12, 14), (14, 16), (15, 17),
         (19, 17), (16, 20), (22, 20), (6, 5), (12, 11), (11, 5), (12, 6), (2, 1), (4, 3))
WORLD_TERMS = ("centred", "bones")  # the two forms of the 3D term (TrackFitSettings.world_term)
NUM_STAGES = 3  # root + translation; everything, strong 3D; everything, weaker 3D
MIN_DIRECTION_NORM = 1e-6  # a torso axis shorter than this (m) gives no orientation
# COCO body keypoint -> BlazePose landmark (the project's documented mapping, COCO < 23 only)
BLAZE_OF_COCO = {c: b for c, b in lp.COCO_FROM_BLAZEPOSE.items() if c < NUM_FIT_KEYPOINTS}

_J = {name: i for i, name in enumerate(SMPLX_JOINT_NAMES)}
# Coarse joint limits: (joint, axis-angle component 0/1/2 = x/y/z about the parent's axes,
# low, high) in radians, for the SMPL-X axes of a body in its rest pose (y up, facing +z):
# knees bend about +x only, elbows about -y (left) / +y (right), hips flex about -x, the spine,
# neck, ankles and feet move a little. Everything else: GENERIC_LIMIT.
GENERIC_LIMIT = 2.8  # rad: any body joint's axis-angle component beyond this is penalised
JOINT_LIMITS: tuple[tuple[str, int, float, float], ...] = (
    ("left_knee", 0, -0.1, 2.6), ("right_knee", 0, -0.1, 2.6),
    ("left_knee", 1, -0.3, 0.3), ("right_knee", 1, -0.3, 0.3),
    ("left_knee", 2, -0.3, 0.3), ("right_knee", 2, -0.3, 0.3),
    ("left_elbow", 1, -2.8, 0.2), ("right_elbow", 1, -0.2, 2.8),
    ("left_hip", 0, -2.6, 1.0), ("right_hip", 0, -2.6, 1.0),
    ("left_hip", 2, -1.2, 1.2), ("right_hip", 2, -1.2, 1.2),
    *((spine, axis, -0.8, 0.8) for spine in ("spine1", "spine2", "spine3", "neck", "head")
      for axis in range(3)),
    *((part, axis, -0.9, 0.9) for part in ("left_ankle", "right_ankle", "left_foot",
                                          "right_foot", "left_collar", "right_collar")
      for axis in range(3)),
)


@dataclass
class TrackFitSettings:
    """Weights and schedule of the track fit (units in the module docstring)."""

    iterations: tuple[int, int, int] = (100, 300, 300)  # Adam steps: root; all; all, refined
    learning_rates: tuple[float, float, float] = (0.03, 0.02, 0.01)
    weights_3d: tuple[float, float, float] = (2.0e4, 5.0e4, 5.0e3)  # per m^2, 3D term per stage:
    #   strong in stage 2 (it picks each limb's depth, which 2D cannot), weaker in stage 3
    #   (2D refines); a 5 cm error costs 125 (stage 2) or 12.5 (stage 3) px^2
    min_score: float = 0.3  # keypoint confidences below this get weight 0 (data_prep's 0.3)
    robust_sigma: float = 100.0  # px at 1024 height: Geman-McClure scale (data_prep's)
    weight_2d: float = 1.0  # per px^2 (at 1024 height)
    weight_acc: float = 2.0e5  # per m^2 of keypoint acceleration (m / frame^2)
    weight_vel: float = 2.0e3  # per m^2 of keypoint velocity (m / frame)
    weight_pose_vel: float = 50.0  # per rad^2 of joint-angle change between frames
    weight_limit: float = 1.0e3  # per rad^2 outside the joint limits
    weight_pose: float = 1.0  # per rad^2 of body pose (a weak pull to rest)
    weight_betas: float = 5.0  # per unit^2 of shape
    fit_betas: bool = True  # one shared shape for the clip
    focal: float | None = None  # px; None: fitting_camera's (virtual camera scaled by height)
    world_term: str = "centred"  # 3D term: "centred" (positions) | "bones" (limb directions;
    #   docs/REAL_DATA.md compares them)


@dataclass
class TrackFit:
    """The fitted clip, camera frame (OpenCV axes, camera at the origin)."""

    full_pose: np.ndarray  # [T, 55, 3] axis-angle, root in camera axes, fingers/face zero
    transl: np.ndarray  # [T, 3] metres
    betas: np.ndarray  # [num_betas]
    joints: np.ndarray  # [T, 22, 3] pelvis + body joints, metres
    keypoints: np.ndarray  # [T, 23, 3] COCO body + feet of the body, metres
    pixels: np.ndarray  # [T, 23, 2] their projections
    errors_px: np.ndarray  # [T, 23] reprojection error where weighted, nan elsewhere
    rest_pelvis: np.ndarray  # [3] J0 of the fitted shape
    camera: Camera
    losses: list[float]  # final objective of each stage


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def coco_from_blazepose(values: np.ndarray) -> np.ndarray:
    """BlazePose landmarks [..., 33, C] -> COCO body + feet [..., 23, C] (zeros where COCO has
    no BlazePose landmark: 18 and 21, the small toes)."""
    out = np.zeros(values.shape[:-2] + (NUM_FIT_KEYPOINTS, values.shape[-1]))
    for coco, blaze in BLAZE_OF_COCO.items():
        out[..., coco, :] = values[..., blaze, :]
    return out


def keypoint_weights(scores: np.ndarray, valid_frames: np.ndarray, body_valid: np.ndarray,
                     min_score: float) -> np.ndarray:
    """Confidences [T, K] -> weights [T, K]: the score where >= min_score, the frame has
    landmarks and the body has the keypoint; else 0."""
    ok = (scores >= min_score) & valid_frames[:, None] & body_valid[None, :]
    return np.where(ok, scores, 0.0)


def interpolate_missing(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-frame values [T, ...] -> the same with invalid frames linearly interpolated between
    the nearest valid ones (held constant before the first and after the last)."""
    if not valid.any():
        raise ValueError("interpolate_missing: no valid frame to interpolate from")
    frames = np.arange(len(values))
    flat = values.reshape(len(values), -1).astype(np.float64)
    out = np.stack([np.interp(frames, frames[valid], flat[valid, k])
                    for k in range(flat.shape[1])], axis=1)
    return out.reshape(values.shape)


def interpolate_rotations(rotations: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Rotation matrices [T, 3, 3] -> the same with invalid frames slerped between valid ones
    (held at the ends)."""
    frames = np.flatnonzero(valid)
    if frames.size == 1:
        return np.repeat(rotations[frames], len(rotations), axis=0)
    slerp = Slerp(frames, Rotation.from_matrix(rotations[frames]))
    times = np.clip(np.arange(len(rotations)), frames[0], frames[-1])
    return slerp(times).as_matrix()


def torso_frame(keypoints: np.ndarray) -> np.ndarray:
    """COCO keypoints [..., K>=13, 3] -> torso frames [..., 3, 3] whose columns are the body's
    left (right hip -> left hip), up (hips -> shoulders, orthogonalised) and forward axes."""
    left = keypoints[..., COCO_LEFT_HIP, :] - keypoints[..., COCO_RIGHT_HIP, :]
    left = left + keypoints[..., COCO_LEFT_SHOULDER, :] - keypoints[..., COCO_RIGHT_SHOULDER, :]
    up = (keypoints[..., COCO_LEFT_SHOULDER, :] + keypoints[..., COCO_RIGHT_SHOULDER, :]
          - keypoints[..., COCO_LEFT_HIP, :] - keypoints[..., COCO_RIGHT_HIP, :])
    left = left / np.maximum(np.linalg.norm(left, axis=-1, keepdims=True), MIN_DIRECTION_NORM)
    up = up - (up * left).sum(-1, keepdims=True) * left
    up = up / np.maximum(np.linalg.norm(up, axis=-1, keepdims=True), MIN_DIRECTION_NORM)
    forward = np.cross(left, up)
    return np.stack([left, up, forward], axis=-1)


def limit_bounds() -> tuple[Tensor, Tensor]:
    """(low, high) [21, 3] radians for the body joints 1-21."""
    low = torch.full((NUM_BODY_JOINTS, 3), -GENERIC_LIMIT)
    high = torch.full((NUM_BODY_JOINTS, 3), GENERIC_LIMIT)
    for name, axis, lo, hi in JOINT_LIMITS:
        low[_J[name] - 1, axis], high[_J[name] - 1, axis] = lo, hi
    return low, high


def limit_penalty(body_pose: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """Mean squared excess over the limits: body_pose [T, 21, 3], low/high [21, 3] -> []."""
    excess = torch.relu(low - body_pose) + torch.relu(body_pose - high)
    return (excess**2).sum((-1, -2)).mean()


def centred_position_loss(points: Tensor, world: Tensor, weights: Tensor) -> Tensor:
    """Mean squared distance (m^2) between the body's keypoints [T, K, 3] and the world
    landmarks [T, K, 3], both centred on their mid-hip, the world ones scaled by their
    least-squares factor per frame; weights [T, K]."""
    hips = [COCO_LEFT_HIP, COCO_RIGHT_HIP]
    model_c = points - points[:, hips].mean(1, keepdim=True)  # [T, K, 3]
    world_c = world - world[:, hips].mean(1, keepdim=True)
    ratio = ((weights[..., None] * model_c * world_c).sum((1, 2))
             / (weights[..., None] * world_c**2).sum((1, 2)).clamp(min=1e-8)).detach()  # [T]
    squared = ((model_c - ratio[:, None, None] * world_c) ** 2).sum(-1)  # [T, K]
    return (weights * squared).sum() / weights.sum().clamp(min=1e-8)


def bone_direction_loss(points: Tensor, world: Tensor, weights: Tensor, bones: Tensor
                        ) -> Tensor:
    """Mean squared difference of unit limb directions (the body's vs the world landmarks'),
    bones [B, 2] keypoint pairs, each weighted by its ends' smaller weight; [] (unitless, <= 4).
    Scale-free, and one bad landmark only spoils its own limbs."""
    model_d = points[:, bones[:, 1]] - points[:, bones[:, 0]]  # [T, B, 3]
    world_d = world[:, bones[:, 1]] - world[:, bones[:, 0]]
    model_u = model_d / model_d.norm(dim=-1, keepdim=True).clamp(min=MIN_DIRECTION_NORM)
    world_u = world_d / world_d.norm(dim=-1, keepdim=True).clamp(min=MIN_DIRECTION_NORM)
    bone_w = torch.minimum(weights[:, bones[:, 0]], weights[:, bones[:, 1]])  # [T, B]
    squared = ((model_u - world_u) ** 2).sum(-1)
    return (bone_w * squared).sum() / bone_w.sum().clamp(min=1e-8)


def second_difference(values: Tensor) -> Tensor:
    """[T, ...] -> [T - 2, ...]: x_t+1 - 2 x_t + x_t-1."""
    return values[2:] - 2 * values[1:-1] + values[:-2]


# ----------------------------------------------------------------------------------------------
# The model side
# ----------------------------------------------------------------------------------------------
class PosedClip:
    """Poses the body's fit keypoints and joints for every frame, cheaply: only the 22 body
    joints are chained (joints beyond them are at rest, so their skinning transforms equal their
    nearest body ancestor's) and only the landmark vertices are skinned, with the joint
    regressor folded into per-joint shape directions. The same numbers as
    `data_prep.keypoints.posed_landmarks` mapped by `smplx_to_coco133` (tests/track)."""

    def __init__(self, body: BodyModel, table: LandmarkTable):
        self.body, self.table = body, table
        _, valid = smplx_to_coco133(np.zeros((144, 3)), table.valid.cpu().numpy())
        self.keypoint_valid = np.asarray(valid[:NUM_FIT_KEYPOINTS])  # [23] bool
        parents = body.parents.cpu().tolist()
        count = NUM_EVAL_JOINTS
        self.parents = torch.tensor(parents[:count])
        self.chain = KinematicChain.from_parents(parents[:count], device=body.v_template.device)
        with torch.no_grad():
            regressor = body.J_regressor.double()  # [55, V]
            self.joint_template = (regressor @ body.v_template.double())[:count].float()  # [22,3]
            self.joint_dirs = torch.einsum("jv,vck->jck", regressor,
                                           body.shapedirs.double())[:count].float()  # [22,3,nb]
            sources = list(COCO_FROM_SMPLX[:NUM_FIT_KEYPOINTS])
            self.joint_slots = [k for k, s in enumerate(sources) if s < NUM_JOINTS]
            self.joint_ids = [sources[k] for k in self.joint_slots]
            self.vertex_slots = [k for k, s in enumerate(sources) if s >= NUM_JOINTS]
            rows = [sources[k] - NUM_JOINTS for k in self.vertex_slots]
            ids = table.vertex_joints[rows].reshape(-1)  # [3n]
            self.bary = table.vertex_bary[rows].float()  # [n, 3]
            self.vertex_template = body.v_template[ids].float()  # [3n, 3]
            self.vertex_dirs = body.shapedirs[ids].float()  # [3n, 3, nb]
            ancestor = list(range(len(parents)))  # each joint -> its nearest ancestor < 22
            for j in range(count, len(parents)):
                ancestor[j] = ancestor[parents[j]]
            fold = torch.zeros(len(parents), count)
            fold[torch.arange(len(parents)), torch.tensor(ancestor)] = 1.0
            self.vertex_weights = body.lbs_weights[ids].float() @ fold  # [3n, 22]
            self.pose_mean = body.pose_mean[:count].float()  # [22, 3]

    def __call__(self, root: Tensor, body_pose: Tensor, transl: Tensor, betas: Tensor
                 ) -> tuple[Tensor, Tensor, Tensor]:
        """root [T, 3, 3], body_pose [T, 21, 3], transl [T, 3], betas [nb] -> (COCO keypoints
        [T, 23, 3], joints [T, 22, 3], rest pelvis [3]) in the camera frame."""
        frames = body_pose.shape[0]
        rest = self.joint_template + self.joint_dirs @ betas  # [22, 3]
        local = torch.cat([body_pose.new_zeros(frames, 1, 3), body_pose], 1) + self.pose_mean
        joints, transforms = rigid_chain(axis_angle_to_matrix(local), rest.expand(frames, -1, -1),
                                         self.parents, self.chain)  # [T, 22, 3], [T, 22, 4, 4]
        vertices = self.vertex_template + self.vertex_dirs @ betas  # [3n, 3]
        skinned = skin_points(vertices, self.vertex_weights, transforms)  # [T, 3n, 3]
        vertex_points = (skinned.reshape(frames, -1, 3, 3) * self.bary[..., None]).sum(2)
        keypoints = joints.new_zeros(frames, NUM_FIT_KEYPOINTS, 3)
        keypoints[:, self.joint_slots] = joints[:, self.joint_ids]
        keypoints[:, self.vertex_slots] = vertex_points
        pelvis = rest[0]  # [3]
        points = torch.cat([keypoints, joints], 1)  # [T, 45, 3]
        posed = (points - pelvis) @ root.transpose(-1, -2) + pelvis + transl[:, None]
        return posed[:, :NUM_FIT_KEYPOINTS], posed[:, NUM_FIT_KEYPOINTS:], pelvis


def initial_root(clip: PosedClip, world: np.ndarray, weights: np.ndarray,
                 valid: np.ndarray) -> np.ndarray:
    """R0 [T, 3, 3]: the rest body's torso frame turned onto the world landmarks' torso frame
    (COCO world [T, 23, 3]); frames without a full torso are slerped from their neighbours."""
    with torch.no_grad():
        rest, _, _ = clip(torch.eye(3).expand(1, 3, 3), torch.zeros(1, NUM_BODY_JOINTS, 3),
                          torch.zeros(1, 3), torch.zeros(clip.body.num_betas))
    rest_frame = torso_frame(rest[0].double().numpy())  # [3, 3]
    seen = valid & (weights[:, list(TORSO)] > 0).all(1)
    if not seen.any():  # no frame shows the torso: face the camera, upright
        return np.repeat(UPRIGHT_IN_CAMERA[None], len(world), 0)
    frames = np.tile(np.eye(3), (len(world), 1, 1))  # [T, 3, 3]
    frames[seen] = Rotation.from_matrix(torso_frame(world[seen]) @ rest_frame.T).as_matrix()
    return interpolate_rotations(frames, seen)


def initial_transl(clip: PosedClip, root: np.ndarray, keypoints: np.ndarray,
                   weights: np.ndarray, valid: np.ndarray, camera: Camera) -> np.ndarray:
    """x0 [T, 3] by similar triangles on each frame with landmarks, interpolated elsewhere."""
    with torch.no_grad():
        posed, _, _ = clip(torch.from_numpy(root).float(),
                           torch.zeros(len(root), NUM_BODY_JOINTS, 3),
                           torch.zeros(len(root), 3), torch.zeros(clip.body.num_betas))
    posed = posed.double().numpy()  # [T, 23, 3]
    transl = np.zeros((len(root), 3))
    usable = valid & ((weights > 0).sum(1) >= 2)
    for t in np.flatnonzero(usable):
        transl[t] = initial_translation(posed[t], keypoints[t], weights[t], camera)
    if not usable.any():
        raise ValueError("track fit: no frame has two keypoints above the confidence threshold")
    return interpolate_missing(transl, usable)


def fill_missing_frames(root_init: Tensor, delta: Tensor, body_pose: Tensor, transl: Tensor,
                        valid: np.ndarray) -> None:
    """In place: frames without landmarks get their root slerped and their body pose and
    translation linearly interpolated from the nearest fitted frames (held at the ends)."""
    root = (root_init @ axis_angle_to_matrix(delta)).double().numpy()  # [T, 3, 3]
    root_init.copy_(torch.from_numpy(interpolate_rotations(root, valid)).float())
    delta.zero_()
    body_pose.copy_(torch.from_numpy(interpolate_missing(body_pose.double().numpy(), valid)))
    transl.copy_(torch.from_numpy(interpolate_missing(transl.double().numpy(), valid)))


# ----------------------------------------------------------------------------------------------
# The fit
# ----------------------------------------------------------------------------------------------
def fit_clip(body: BodyModel, keypoints: np.ndarray, world: np.ndarray, valid: np.ndarray,
             width: int, height: int, settings: TrackFitSettings | None = None,
             table: LandmarkTable | None = None, progress=None) -> TrackFit:
    """Fit the body to a clip's BlazePose landmarks.

    keypoints [T, 33, 3] x, y (px, centres at integer + 0.5), confidence; world [T, 33, 3]
    metres; valid [T] bool (frames with landmarks). progress: optional callable(steps_done)."""
    settings = TrackFitSettings() if settings is None else settings
    if settings.world_term not in WORLD_TERMS:
        raise ValueError(f"track fit: world_term {settings.world_term!r}; choose one of "
                         f"{', '.join(WORLD_TERMS)}")
    if not len(settings.iterations) == len(settings.learning_rates) == len(
            settings.weights_3d) == NUM_STAGES:
        raise ValueError(f"track fit: iterations, learning_rates and weights_3d need "
                         f"{NUM_STAGES} values each (one per stage)")
    valid = np.asarray(valid, dtype=bool)
    if not valid.any():
        raise ValueError("track fit: no frame with a person to fit")
    table = landmark_table(body) if table is None else table
    clip = PosedClip(body, table)
    camera = fitting_camera(width, height, settings.focal)
    kp = coco_from_blazepose(np.asarray(keypoints, np.float64))  # [T, 23, 3]
    wl = coco_from_blazepose(np.asarray(world, np.float64))  # [T, 23, 3]
    weights_np = keypoint_weights(kp[..., 2], valid, clip.keypoint_valid, settings.min_score)
    root0 = initial_root(clip, wl, weights_np, valid)  # [T, 3, 3]
    kp133 = np.zeros((len(kp), 133, 3))
    kp133[:, :NUM_FIT_KEYPOINTS] = kp
    w133 = np.zeros((len(kp), 133))
    w133[:, :NUM_FIT_KEYPOINTS] = weights_np
    transl0 = initial_transl(clip, root0, kp133, w133, valid, camera)

    frames = len(kp)
    with torch.inference_mode(False), torch.enable_grad():
        root_init = torch.from_numpy(root0).float()
        delta = torch.zeros(frames, 3, requires_grad=True)
        body_pose = torch.zeros(frames, NUM_BODY_JOINTS, 3, requires_grad=True)
        transl = torch.from_numpy(transl0).float().requires_grad_(True)
        betas = torch.zeros(body.num_betas, requires_grad=True)
        targets = torch.from_numpy(kp[..., :2]).float()  # [T, 23, 2]
        weights = torch.from_numpy(weights_np).float()  # [T, 23]
        world_t = torch.from_numpy(wl).float()  # [T, 23, 3]
        low, high = limit_bounds()
        scale = REFERENCE_HEIGHT / height
        K = camera.K.float()
        eye, zero = torch.eye(3), torch.zeros(3)
        bone_index = torch.tensor(BONES)  # [B, 2]
        stage_one = torch.zeros(NUM_FIT_KEYPOINTS)
        stage_one[list(STAGE_ONE_KEYPOINTS)] = 1.0

        def objective(mask: Tensor, weight_3d: float
                      ) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
            root = root_init @ axis_angle_to_matrix(delta)  # [T, 3, 3]
            points, joints, pelvis = clip(root, body_pose, transl, betas)
            pixels, _ = pinhole(points, K, eye, zero, MIN_DEPTH)  # [T, 23, 2]
            w = weights * mask  # [T, 23]
            norm = w.sum().clamp(min=1e-8)
            squared = ((pixels - targets) ** 2).sum(-1) * scale**2
            data_2d = (w * geman_mcclure(squared, settings.robust_sigma)).sum() / norm
            if settings.world_term == "bones":
                data_3d = bone_direction_loss(points, world_t, w, bone_index)
            else:
                data_3d = centred_position_loss(points, world_t, w)
            track = torch.cat([points, joints], 1)  # [T, 45, 3]
            smooth = points.new_zeros(())
            if frames > 2:
                smooth = smooth + settings.weight_acc * (second_difference(track) ** 2).sum(
                    -1).mean()
            if frames > 1:
                smooth = smooth + settings.weight_vel * ((track[1:] - track[:-1]) ** 2).sum(
                    -1).mean()
                smooth = smooth + settings.weight_pose_vel * (
                    (body_pose[1:] - body_pose[:-1]) ** 2).sum((-1, -2)).mean()
            prior = (settings.weight_limit * limit_penalty(body_pose, low, high)
                     + settings.weight_pose * (body_pose**2).sum((-1, -2)).mean()
                     + settings.weight_betas * (betas**2).sum())
            total = (settings.weight_2d * data_2d + weight_3d * data_3d + smooth
                     + prior)
            return total, (points, joints, pixels)

        everything = [delta, transl, body_pose] + ([betas] if settings.fit_betas else [])
        every_keypoint = torch.ones(NUM_FIT_KEYPOINTS)
        stages = (([delta, transl], stage_one), (everything, every_keypoint),
                  (everything, every_keypoint))
        losses = []
        done = 0
        for (params, mask), steps, lr, weight_3d in zip(
                stages, settings.iterations, settings.learning_rates, settings.weights_3d,
                strict=True):
            optimizer = torch.optim.Adam(params, lr=lr)
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                loss, _ = objective(mask, weight_3d)
                loss.backward()
                optimizer.step()
                done += 1
                if progress is not None:
                    progress(done)
            losses.append(float(loss.detach()))
        with torch.no_grad():
            if not valid.all():
                fill_missing_frames(root_init, delta, body_pose, transl, valid)
            _, (points, joints, pixels) = objective(every_keypoint, settings.weights_3d[-1])
            root = (root_init @ axis_angle_to_matrix(delta)).double().numpy()
            pelvis = clip.joint_template[0] + clip.joint_dirs[0] @ betas
            pelvis = pelvis.double().numpy()

    full_pose = np.zeros((frames, NUM_JOINTS, 3))
    full_pose[:, 0] = Rotation.from_matrix(root).as_rotvec()
    full_pose[:, 1:1 + NUM_BODY_JOINTS] = body_pose.detach().double().numpy()
    pixels_np = pixels.double().numpy()
    errors = np.linalg.norm(pixels_np - kp[..., :2], axis=-1)  # [T, 23]
    errors[weights_np <= 0] = np.nan
    return TrackFit(full_pose, transl.detach().double().numpy(), betas.detach().double().numpy(),
                    joints.double().numpy(), points.double().numpy(), pixels_np, errors, pelvis,
                    camera, losses)
