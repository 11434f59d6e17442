"""Fit the body (SMPL-X format) to COCO-WholeBody-133 2D keypoints of one photo.

Objective (per stage, minimised with Adam):

    E = sum_i w_i rho(|pi(X_i) - x_i| s) / sum_i w_i
        + body_pose_weight |theta_body|^2 + hand_pose_weight |theta_hands|^2
        + betas_weight |beta|^2

- x_i the keypoints (pixels, centres at integer + 0.5), X_i the body's landmarks mapped to
  COCO-133 (`data_prep.keypoints`), pi the camera projection;
- w_i the detector score when >= `min_score` and the landmark exists on the body, else 0
  (so a keypoint with weight 0 has no influence at all, not even on the initialisation);
- rho the Geman-McClure function rho(r) = r^2 sigma^2 / (r^2 + sigma^2) (SMPLify's robust
  reprojection term), residuals measured in pixels rescaled to a 1024-pixel image height (s).

Stages (METHOD.md section 8: 3 x 250 iterations, lr 1e-2 then 1e-3): (i) global orientation +
translation on the torso and head keypoints, (ii) + body pose + betas, (iii) + hand pose at the
lower learning rate. The initial translation comes from similar triangles on the torso; the
initial orientation faces the camera, or turns away when the left shoulder is on the image left.
docs/prep/fitting.md.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from data_prep.keypoints import (
    COCO_LEFT_HIP,
    COCO_LEFT_SHOULDER,
    COCO_RIGHT_HIP,
    COCO_RIGHT_SHOULDER,
    SMPLX_NUM_VERTICES,
    LandmarkTable,
    landmark_table,
    posed_landmarks,
    read_landmark_embedding,
    smplx_to_coco133,
)
from data_prep.stage import PrepStage, subject_body_spec
from persona.body.loader import BodySpec, load_body
from persona.body.model import BodyModel
from persona.body.smplx_format import resolve_model_file
from persona.body.types import (
    LEFT_HAND_JOINTS,
    NUM_BODY_JOINTS,
    RIGHT_HAND_JOINTS,
    Identity,
    PoseParams,
)
from persona.data.motions import UPRIGHT_IN_CAMERA, VIRTUAL_FOCAL, VIRTUAL_HEIGHT
from persona.data.subject import camera_to_json, pose_to_json, read_subject_config
from persona.render.projection import project_points as shared_project_points
from persona.render.types import Camera

REFERENCE_HEIGHT = 1024.0  # px: residuals are rescaled to this image height (METHOD.md 8 camera)
TORSO_KEYPOINTS = (COCO_LEFT_SHOULDER, COCO_RIGHT_SHOULDER, COCO_LEFT_HIP, COCO_RIGHT_HIP)
BODY_KEYPOINTS = tuple(range(23))  # COCO body + feet (PREPROCESSING.md 4.2)
MIN_DEPTH = 1e-3  # m: camera z is clamped to this before dividing (keeps the loss finite)
HAND_JOINTS = LEFT_HAND_JOINTS + RIGHT_HAND_JOINTS
BACK_VIEW_TURN = (0.0, math.pi, 0.0)  # body-frame rotation (about y) for a subject facing away

CAPTURED_SPLIT = "captured"
CAM_OUTPUT = "{split}/cam_params/{index}.json"
SMPLX_OUTPUT = "{split}/smplx_optimized/smplx_params/{index}.json"
SHAPE_OUTPUT = "smplx_optimized/shape_param.json"
REPORT_OUTPUT = "{split}/fit_report/{index}.json"  # reprojection errors of the fit (ours)
PERCENT = 100.0


@dataclass
class FitSettings:
    """Settings of `fit_smplx_to_keypoints` (config `model.init_args.settings`)."""

    iterations: tuple[int, int, int] = (250, 250, 250)  # per stage (METHOD.md 8: 3 x 250)
    learning_rates: tuple[float, float, float] = (1e-2, 1e-2, 1e-3)  # Adam lr (METHOD.md 8)
    min_score: float = 0.3  # keypoints scored below this get weight 0 (DWPose's 0.3, PREP 1.8)
    robust_sigma: float = 100.0  # px at 1024 height: Geman-McClure scale (SMPLify's rho = 100)
    body_pose_weight: float = 0.1  # L2 prior on the 21 body joints' axis-angle (px^2 / rad^2)
    hand_pose_weight: float = 0.1  # L2 prior on the 30 finger joints' axis-angle
    betas_weight: float = 0.1  # L2 prior on the shape coefficients (px^2 per unit^2)
    camera_stage_keypoints: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 11, 12)  # stage (i): torso
    focal: float | None = None  # px; None: the virtual camera's 2000 at 1024 height, scaled
    detect_back_view: bool = True  # start turned away when the shoulders say so


@dataclass
class FitDiagnostics:
    """What a fit did."""

    stage_losses: list[float] = field(default_factory=list)  # final objective of each stage
    mean_error_px: float = float("nan")  # mean reprojection error over weighted keypoints
    errors_px: np.ndarray | None = None  # [133] per keypoint (nan where weight 0)
    num_keypoints: int = 0  # keypoints with weight > 0
    back_view: bool = False  # initialised facing away from the camera
    initial_transl: list[float] = field(default_factory=list)  # [3] metres
    seconds: float = 0.0  # wall time of the fit


# ----------------------------------------------------------------------------------------------
# Camera and projection
# ----------------------------------------------------------------------------------------------
def fitting_camera(width: int, height: int, focal: float | None = None) -> Camera:
    """The camera a photo is fitted with: R = I, t = 0, principal point at the image centre,
    focal `focal` or the virtual camera's (METHOD.md 8: 2000 at 576 x 1024) scaled by height."""
    f = VIRTUAL_FOCAL * height / VIRTUAL_HEIGHT if focal is None else float(focal)
    if not f > 0:
        raise ValueError(f"model.init_args.settings.focal must be positive, got {f}")
    K = torch.tensor([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])
    return Camera(K=K, R=torch.eye(3), t=torch.zeros(3), width=width, height=height)


def project_points(points: Tensor, camera: Camera) -> Tensor:
    """World points [..., N, 3] -> pixels [..., N, 2] (u = fx x / z + cx, centres at int + 0.5).
    """
    return shared_project_points(points, camera, MIN_DEPTH)[0]


def geman_mcclure(squared: Tensor, sigma: float) -> Tensor:
    """rho(r) = r^2 sigma^2 / (r^2 + sigma^2) of squared residuals [...]."""
    return squared * sigma**2 / (squared + sigma**2)


# ----------------------------------------------------------------------------------------------
# Initialisation
# ----------------------------------------------------------------------------------------------
def keypoint_weights(keypoints: np.ndarray, valid: np.ndarray, min_score: float) -> np.ndarray:
    """Per-keypoint weights [133]: the score where score >= min_score and the landmark exists."""
    scores = keypoints[:, 2]
    ok = valid & (scores >= min_score) & np.isfinite(keypoints).all(axis=1)
    return np.where(ok, scores, 0.0)


def is_back_view(keypoints: np.ndarray, weights: np.ndarray) -> bool:
    """True when the subject's left shoulder (or hip) is on the image left of the right one
    (a subject facing the camera shows its left side on the image right)."""
    for left, right in ((COCO_LEFT_SHOULDER, COCO_RIGHT_SHOULDER), (COCO_LEFT_HIP, COCO_RIGHT_HIP)):
        if weights[left] > 0 and weights[right] > 0:
            return bool(keypoints[left, 0] < keypoints[right, 0])
    return False


def initial_orientation(camera: Camera, back_view: bool) -> np.ndarray:
    """Root axis-angle [3] that stands the body upright before the camera (facing it, or
    turned away): R_root = R_cam^T U (Ry(pi) when turned away), U the body->OpenCV flip."""
    from scipy.spatial.transform import Rotation

    rotation = camera.R.detach().cpu().double().numpy().T @ UPRIGHT_IN_CAMERA
    if back_view:
        rotation = rotation @ Rotation.from_rotvec(BACK_VIEW_TURN).as_matrix()
    return Rotation.from_matrix(rotation).as_rotvec()


def initial_translation(points: np.ndarray, keypoints: np.ndarray, weights: np.ndarray,
                        camera: Camera) -> np.ndarray:
    """Similar triangles: the translation [3] (world) that puts the body's keypoints `points`
    [133, 3] (posed at zero translation) at the depth where their spread matches the image.

    Uses the torso (shoulders, hips) when all four are weighted, else the weighted body
    keypoints, else all weighted keypoints: depth = f * rms3d / rms2d (rms about the centroid,
    3D in the camera's x-y plane), then the centroid is moved onto its pixel ray."""
    for group in (TORSO_KEYPOINTS, BODY_KEYPOINTS, tuple(range(len(weights)))):
        chosen = [i for i in group if weights[i] > 0]
        if len(chosen) >= 2 and (group != TORSO_KEYPOINTS or len(chosen) == len(group)):
            break
    else:
        raise ValueError("fit: fewer than two keypoints with a score >= "
                         "model.init_args.settings.min_score; nothing to fit")
    R = camera.R.detach().cpu().double().numpy()
    t = camera.t.detach().cpu().double().numpy()
    K = camera.K.detach().cpu().double().numpy()
    cam_points = points[chosen] @ R.T + t  # [n, 3]
    pixels = keypoints[chosen, :2].astype(np.float64)  # [n, 2]
    spread3d = np.sqrt(((cam_points[:, :2] - cam_points[:, :2].mean(0)) ** 2).sum(1).mean())
    spread2d = np.sqrt(((pixels - pixels.mean(0)) ** 2).sum(1).mean())
    focal = 0.5 * (K[0, 0] + K[1, 1])
    depth = focal * spread3d / max(spread2d, 1e-6)
    centre_px = pixels.mean(0)
    target = np.array([(centre_px[0] - K[0, 2]) * depth / K[0, 0],
                       (centre_px[1] - K[1, 2]) * depth / K[1, 1], depth])  # camera frame
    current = cam_points.mean(0)
    current[2] = cam_points[:, 2].mean()
    shift_cam = target - current  # [3]
    return R.T @ shift_cam


# ----------------------------------------------------------------------------------------------
# The fit
# ----------------------------------------------------------------------------------------------
def _assemble_pose(root: Tensor, body: Tensor, hands: Tensor, transl: Tensor,
                   num_expression: int) -> PoseParams:
    """Parameter tensors -> PoseParams [1] (jaw and eyes zero, expression zero)."""
    zeros3 = root.new_zeros(1, 3)
    full_pose = torch.cat([root[None], body.reshape(NUM_BODY_JOINTS, 3)]
                          + [zeros3] * (HAND_JOINTS[0] - 1 - NUM_BODY_JOINTS)
                          + [hands.reshape(len(HAND_JOINTS), 3)], dim=0)[None]  # [1, 55, 3]
    return PoseParams(full_pose, root.new_zeros(1, num_expression), transl[None])


def fit_smplx_to_keypoints(body: BodyModel, keypoints: np.ndarray | Tensor, camera: Camera,
                           settings: FitSettings | None = None,
                           table: LandmarkTable | None = None,
                           ) -> tuple[PoseParams, Tensor, FitDiagnostics]:
    """Fit pose, translation and betas to keypoints [133, 3] (x, y, score; pixels, centres at
    integer + 0.5) seen by `camera` (world = the camera's world frame).

    Returns (PoseParams [1] in SMPL-X joint order, betas [num_betas], diagnostics)."""
    settings = FitSettings() if settings is None else settings
    if len(settings.iterations) != 3 or len(settings.learning_rates) != 3:
        raise ValueError("model.init_args.settings: iterations and learning_rates need 3 values")
    start = time.perf_counter()
    device = body.v_template.device
    table = landmark_table(body) if table is None else table
    kp = np.asarray(keypoints.detach().cpu() if isinstance(keypoints, Tensor) else keypoints,
                    dtype=np.float64)
    if kp.shape != (133, 3):
        raise ValueError(f"keypoints: expected [133, 3], got {list(kp.shape)}")
    _, coco_valid = smplx_to_coco133(np.zeros((144, 3)), table.valid.cpu().numpy())
    weights_np = keypoint_weights(kp, coco_valid, settings.min_score)  # [133]
    diagnostics = FitDiagnostics(num_keypoints=int((weights_np > 0).sum()))
    targets_np = np.where(weights_np[:, None] > 0, kp[:, :2], 0.0)  # [133, 2]

    with torch.inference_mode(False), torch.enable_grad():
        identity_zero = Identity(torch.zeros(body.num_betas, device=device))
        back = settings.detect_back_view and is_back_view(kp, weights_np)
        root0 = torch.tensor(initial_orientation(camera, back), dtype=torch.float32,
                             device=device)
        hands0 = torch.zeros(len(HAND_JOINTS) * 3, device=device)
        body0 = torch.zeros(NUM_BODY_JOINTS * 3, device=device)
        rest_pose = _assemble_pose(root0, body0, hands0, torch.zeros(3, device=device),
                                   body.num_expression)
        with torch.no_grad():
            rest = posed_landmarks(body, identity_zero, rest_pose, table)[0]  # [144, 3]
            rest_coco, _ = smplx_to_coco133(rest, table.valid)
        transl0 = initial_translation(rest_coco.cpu().double().numpy(), kp, weights_np, camera)
        diagnostics.back_view = back
        diagnostics.initial_transl = [float(v) for v in transl0]

        root = root0.clone().requires_grad_(True)
        transl = torch.tensor(transl0, dtype=torch.float32, device=device).requires_grad_(True)
        body_pose = body0.clone().requires_grad_(True)
        hands = hands0.clone().requires_grad_(True)
        betas = torch.zeros(body.num_betas, device=device, requires_grad=True)
        weights = torch.tensor(weights_np, dtype=torch.float32, device=device)  # [133]
        targets = torch.tensor(targets_np, dtype=torch.float32, device=device)  # [133, 2]
        stage_one = torch.zeros_like(weights)
        stage_one[list(settings.camera_stage_keypoints)] = 1.0
        scale = REFERENCE_HEIGHT / camera.height
        cam = Camera(camera.K.to(device).clone(), camera.R.to(device).clone(),  # normal
                     camera.t.to(device).clone(), camera.width, camera.height)  # tensors

        def objective(keypoint_mask: Tensor) -> tuple[Tensor, Tensor]:
            pose = _assemble_pose(root, body_pose, hands, transl, body.num_expression)
            landmarks = posed_landmarks(body, Identity(betas), pose, table)  # [1, 144, 3]
            coco, _ = smplx_to_coco133(landmarks[0], table.valid)  # [133, 3]
            pixels = project_points(coco, cam)  # [133, 2]
            squared = ((pixels - targets) ** 2).sum(-1) * scale**2  # [133]
            w = weights * keypoint_mask
            data = (w * geman_mcclure(squared, settings.robust_sigma)).sum() / w.sum().clamp(
                min=1e-8)
            prior = (settings.body_pose_weight * (body_pose**2).sum()
                     + settings.hand_pose_weight * (hands**2).sum()
                     + settings.betas_weight * (betas**2).sum())
            return data + prior, pixels

        stage_params = ([root, transl], [root, transl, body_pose, betas],
                        [root, transl, body_pose, betas, hands])
        stage_masks = (stage_one if float((weights * stage_one).sum()) > 0
                       else torch.ones_like(weights), torch.ones_like(weights),
                       torch.ones_like(weights))
        for params, mask, iterations, lr in zip(stage_params, stage_masks, settings.iterations,
                                                settings.learning_rates, strict=True):
            optimizer = torch.optim.Adam(params, lr=lr)
            for _ in range(iterations):
                optimizer.zero_grad(set_to_none=True)
                loss, _ = objective(mask)
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                loss, _ = objective(mask)
            diagnostics.stage_losses.append(float(loss))

        with torch.no_grad():
            pose = _assemble_pose(root, body_pose, hands, transl, body.num_expression)
            _, pixels = objective(torch.ones_like(weights))
    errors = (pixels.detach().cpu().double().numpy() - kp[:, :2])
    errors = np.linalg.norm(errors, axis=1)
    errors[weights_np <= 0] = np.nan
    diagnostics.errors_px = errors
    if diagnostics.num_keypoints:
        diagnostics.mean_error_px = float(np.nanmean(errors))
    diagnostics.seconds = time.perf_counter() - start
    pose = PoseParams(pose.full_pose.detach().clone(), pose.expression.detach().clone(),
                      pose.transl.detach().clone())
    return pose, betas.detach().clone(), diagnostics


# ----------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------
def fit_outputs(split: str, index: int, pose: PoseParams, betas: Tensor, camera: Camera,
                ) -> dict[str, Any]:
    """The subject files of one fitted frame: {relative path: JSON object}."""
    return {
        CAM_OUTPUT.format(split=split, index=index): camera_to_json(camera),
        SMPLX_OUTPUT.format(split=split, index=index): pose_to_json(pose),
        SHAPE_OUTPUT: {"betas": betas.detach().cpu().double().tolist()},
    }


def person_height_px(keypoints: np.ndarray, weights: np.ndarray,
                     mask: np.ndarray | None = None) -> tuple[float, str]:
    """The person's height in pixels and where it comes from: the rows the mask [H, W] (bool)
    covers (top of the head to the soles) when there is one, else the vertical spread of the
    weighted keypoints [133, 3] (nose to heels: shorter, so the percentages are stricter)."""
    if mask is not None and mask.any():
        rows = np.flatnonzero(mask.any(axis=1))
        return float(rows[-1] - rows[0] + 1), "mask"
    used = keypoints[weights > 0, 1]
    return (float(used.max() - used.min()) if used.size else float("nan")), "keypoints"


def reprojection_report(diagnostics: FitDiagnostics, keypoints: np.ndarray, min_score: float,
                        mask: np.ndarray | None = None) -> dict[str, Any]:
    """The fit's reprojection errors as a JSON object: median / mean / max over the keypoints
    the fit used (score >= min_score, landmark on the body), in pixels and in % of the
    person's height (`person_height_px`), with each keypoint's error."""
    errors = diagnostics.errors_px if diagnostics.errors_px is not None else np.full(133, np.nan)
    used = np.isfinite(errors)
    height, source = person_height_px(keypoints, used.astype(np.float64), mask)
    median = float(np.median(errors[used])) if used.any() else float("nan")
    return {
        "keypoints_used": int(used.sum()), "min_score": float(min_score),
        "median_error_px": median,
        "mean_error_px": float(errors[used].mean()) if used.any() else float("nan"),
        "max_error_px": float(errors[used].max()) if used.any() else float("nan"),
        "person_height_px": height, "height_from": source,
        "median_error_percent_of_height": PERCENT * median / height if height > 0 else None,
        "back_view": bool(diagnostics.back_view), "seconds": round(diagnostics.seconds, 3),
        "errors_px": {str(i): round(float(errors[i]), 3) for i in np.flatnonzero(used)},
    }


class FitStage(PrepStage):
    """Fits the body to `{split}/keypoints/{i}.json` (split `captured`) and writes
    `{split}/cam_params/{i}.json`, `{split}/smplx_optimized/smplx_params/{i}.json` and
    `smplx_optimized/shape_param.json`, and the reprojection errors in
    `{split}/fit_report/{i}.json` (`reprojection_report`)."""

    output_templates = (CAM_OUTPUT, SMPLX_OUTPUT)

    def __init__(self, body: BodySpec | None = None, settings: FitSettings | None = None,
                 landmark_embedding: str | None = None):
        """body: None = the subject's own (subject.json), read when the stage starts; a spec
        given here must agree with subject.json's kind and gender."""
        super().__init__()
        self.body_spec = body
        self.settings = FitSettings() if settings is None else settings
        self.landmark_embedding = landmark_embedding
        self.diagnostics: dict[str, FitDiagnostics] = {}
        if body is not None:
            self._load(body)

    def _load(self, spec: BodySpec) -> None:
        self.body_spec = spec
        self.body = load_body(spec)  # a submodule: Lightning moves it to the device
        embedding_file = self.landmark_embedding
        if (embedding_file is None and spec.kind == "smplx"
                and self.body.num_vertices == SMPLX_NUM_VERTICES):
            # real SMPL-X files carry their own face landmark embedding
            embedding_file = str(resolve_model_file(str(spec.model_path), spec.gender))
        embedding = None if embedding_file is None else read_landmark_embedding(embedding_file)
        self.table = landmark_table(self.body, embedding)

    def setup(self, stage: str) -> None:
        subject = Path(self.trainer.datamodule.subject_dir)
        subject_json = subject / "subject.json"
        declared = (read_subject_config(subject).get("body", {}) if subject_json.is_file()
                    else None)
        if self.body_spec is None:
            if declared is None:
                raise FileNotFoundError(f"{subject_json} is missing: start the subject with "
                                        "`persona prep init`, or set model.init_args.body")
            self._load(subject_body_spec(declared, subject_json))
        elif declared is not None:
            for key in ("kind", "gender"):
                if key in declared and declared[key] != getattr(self.body_spec, key):
                    raise ValueError(f"model.init_args.body.{key} is "
                                     f"{getattr(self.body_spec, key)!r} but {subject_json} "
                                     f"says {declared[key]!r}; leave model.init_args.body null "
                                     "to use the subject's")

    def process(self, item: dict[str, Any]) -> dict[str, Any]:
        split, index = item["split"], int(item["index"])
        if split != CAPTURED_SPLIT:
            raise ValueError(f"FitStage fits the {CAPTURED_SPLIT!r} split only (got {split!r}; "
                             f"set data.splits: [{CAPTURED_SPLIT}])")
        if "keypoints" not in item:
            raise FileNotFoundError(f"{split}/keypoints/{index}.json is missing: run the "
                                    f"keypoint stage first")
        height, width = item["image"].shape[:2]
        camera = fitting_camera(int(width), int(height), self.settings.focal)
        keypoints = item["keypoints"].detach().cpu().numpy().astype(np.float64)  # [133, 3]
        pose, betas, diagnostics = fit_smplx_to_keypoints(self.body, keypoints, camera,
                                                          self.settings, self.table)
        self.diagnostics[f"{split}/{index}"] = diagnostics
        mask = item.get("mask")
        mask_np = None if mask is None else np.asarray(mask.detach().cpu().numpy()
                                                       if hasattr(mask, "detach") else mask)
        outputs = fit_outputs(split, index, pose, betas, camera)
        outputs[REPORT_OUTPUT.format(split=split, index=index)] = reprojection_report(
            diagnostics, keypoints, self.settings.min_score, mask_np)
        return outputs

