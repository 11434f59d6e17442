"""DWPose-style pose images for MimicMotion: the pose container, drawing and alignment.

Facts: /work/shared/reference/PREPROCESSING.md section 1.8 (DWPose layout and the
COCO-WholeBody -> OpenPose-18 reorder), 1.9 (confidence-aware ``draw_pose``) and 1.10
(reference-pose alignment). Written from those facts; no code copied.

Coordinates inside a :class:`DWPose` are normalised to [0, 1] by the image size (x / W, y / H),
exactly as the DWPose detector returns them. ``draw_pose`` returns an RGB uint8 image [H, W, 3]
(the authors return CHW; we keep the project's HWC convention).
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

# ---- constants (PREPROCESSING.md section numbers in brackets) ----
NUM_BODY = 18  # OpenPose-18 body points per person [1.8, 4.1]
NUM_HAND = 21  # points per hand [1.8]
NUM_FACE = 68  # iBUG-68 face points [1.8]
NUM_COCO_WHOLEBODY = 133  # COCO-WholeBody keypoints [4.2]
BODY_SCORE_THRESHOLD = 0.3  # subset -1 and limbs skipped below this score [1.8, 1.9]
NECK_SCORE_THRESHOLD = 0.3  # neck score = both shoulders above this [1.8]
COCO_LEFT_SHOULDER = 5  # COCO-WholeBody index [4.2]
COCO_RIGHT_SHOULDER = 6  # COCO-WholeBody index [4.2]
NECK_INSERT_INDEX = 17  # the neck is inserted at index 17 of the 133 points -> 134 [1.8]
# new[:, REORDER_DST] = new[:, REORDER_SRC] turns the 134 points into OpenPose body order [1.8]
REORDER_DST = (1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17)
REORDER_SRC = (17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3)
FACE_SLICE = slice(24, 92)  # face in the 134-point DWPose layout [1.8]
LEFT_HAND_SLICE = slice(92, 113)  # left hand in the 134-point layout [1.8]
RIGHT_HAND_SLICE = slice(113, 134)  # right hand in the 134-point layout [1.8]

CANVAS_REF = 2160  # draw on a canvas whose short side is 2160 px [1.9]
STICK_WIDTH = 4  # limb ellipse half-width on the canvas [1.9]
NUM_LIMBS_DRAWN = 17  # only the first 17 limbs are drawn (no shoulder-ear limbs) [1.9]
LIMB_DIM = 0.6  # canvas *= 0.6 after the limbs, before the joints [1.9]
JOINT_RADIUS = 4  # body joint circle radius [1.9]
HAND_LINE_THICKNESS = 2  # hand edge thickness [1.9]
HAND_POINT_RADIUS = 4  # hand point circle radius [1.9]
FACE_POINT_RADIUS = 3  # face point circle radius [1.9]
HAND_FACE_EPS = 0.01  # hand/face points are drawn only if normalised x, y > this [1.9]
# OpenPose limbs, 1-based body ids [1.9]
LIMB_SEQ = (
    (2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12),
    (12, 13), (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (3, 17), (6, 18),
)  # fmt: skip
# Body colours, written in canvas (BGR) order; the final BGR->RGB swap makes [255,0,0] blue [1.9]
BODY_COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip
# Hand edges (0-based, 21-point hand) [1.9]
HAND_EDGES = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10),
    (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19),
    (19, 20),
)  # fmt: skip
# OpenPose ids used to fit the reference alignment: nose, neck, shoulders, hips, knees,
# ankles, eyes, ears [1.10]
ALIGN_IDS = (0, 1, 2, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17)


@dataclass(frozen=True)
class DWPose:
    """DWPose output for n people, normalised coordinates (PREPROCESSING.md section 1.8).

    ``subset[i, j] = 18 * i + j`` when ``body_score[i, j] > 0.3`` else -1 (an index into
    ``body``). ``hands`` holds all left hands, then all right hands.
    """

    body: np.ndarray  # [18n, 2] float, normalised (x / W, y / H)
    subset: np.ndarray  # [n, 18] float, candidate index or -1
    body_score: np.ndarray  # [n, 18] float
    hands: np.ndarray  # [2n, 21, 2] float, normalised
    hands_score: np.ndarray  # [2n, 21] float
    faces: np.ndarray  # [n, 68, 2] float, normalised
    faces_score: np.ndarray  # [n, 68] float

    @property
    def num_people(self) -> int:
        return int(self.subset.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """The authors' dict layout: ``bodies{candidate, subset, score}, hands, hands_score,
        faces, faces_score``."""
        return {
            "bodies": {"candidate": self.body, "subset": self.subset, "score": self.body_score},
            "hands": self.hands,
            "hands_score": self.hands_score,
            "faces": self.faces,
            "faces_score": self.faces_score,
        }

    @classmethod
    def from_dict(cls, pose: dict[str, Any]) -> DWPose:
        bodies = pose["bodies"]
        return cls(
            body=np.asarray(bodies["candidate"], dtype=np.float64),
            subset=np.asarray(bodies["subset"], dtype=np.float64),
            body_score=np.asarray(bodies["score"], dtype=np.float64),
            hands=np.asarray(pose["hands"], dtype=np.float64),
            hands_score=np.asarray(pose["hands_score"], dtype=np.float64),
            faces=np.asarray(pose["faces"], dtype=np.float64),
            faces_score=np.asarray(pose["faces_score"], dtype=np.float64),
        )


def subset_from_scores(body_score: np.ndarray) -> np.ndarray:
    """[n, 18] scores -> [n, 18] subset: 18*i+j where score > 0.3, else -1 (section 1.8)."""
    n = body_score.shape[0]
    index = np.arange(n * NUM_BODY, dtype=np.float64).reshape(n, NUM_BODY)
    return np.where(body_score > BODY_SCORE_THRESHOLD, index, -1.0)


def coco133_to_dwpose(kpts: np.ndarray, height: int, width: int) -> DWPose:
    """COCO-WholeBody keypoints in pixels -> DWPose (neck insertion + OpenPose reorder, 1.8).

    kpts: [133, 3] or [n, 133, 3] (x, y, score) in pixels of an image of size (height, width).
    """
    k = np.asarray(kpts, dtype=np.float64)
    if k.ndim == 2:
        k = k[None]
    if k.ndim != 3 or k.shape[1:] != (NUM_COCO_WHOLEBODY, 3):
        raise ValueError(f"expected keypoints [133, 3] or [n, 133, 3], got {k.shape}")
    xy, score = k[..., :2], k[..., 2]  # [n, 133, 2], [n, 133]
    neck_xy = xy[:, [COCO_LEFT_SHOULDER, COCO_RIGHT_SHOULDER]].mean(axis=1)  # [n, 2]
    neck_score = np.logical_and(
        score[:, COCO_LEFT_SHOULDER] > NECK_SCORE_THRESHOLD,
        score[:, COCO_RIGHT_SHOULDER] > NECK_SCORE_THRESHOLD,
    ).astype(np.float64)  # [n]
    xy = np.insert(xy, NECK_INSERT_INDEX, neck_xy, axis=1)  # [n, 134, 2]
    score = np.insert(score, NECK_INSERT_INDEX, neck_score, axis=1)  # [n, 134]
    xy[:, list(REORDER_DST)] = xy[:, list(REORDER_SRC)]
    score[:, list(REORDER_DST)] = score[:, list(REORDER_SRC)]
    xy = xy / np.array([float(width), float(height)])
    n = xy.shape[0]
    body_score = score[:, :NUM_BODY]
    return DWPose(
        body=xy[:, :NUM_BODY].reshape(n * NUM_BODY, 2),
        subset=subset_from_scores(body_score),
        body_score=body_score,
        hands=np.concatenate([xy[:, LEFT_HAND_SLICE], xy[:, RIGHT_HAND_SLICE]], axis=0),
        hands_score=np.concatenate([score[:, LEFT_HAND_SLICE], score[:, RIGHT_HAND_SLICE]], 0),
        faces=xy[:, FACE_SLICE],
        faces_score=score[:, FACE_SLICE],
    )


def _scaled_color(color: Sequence[int], *factors: float) -> list[int]:
    out = []
    for c in color:
        v = float(c)
        for f in factors:  # multiplied left to right, as c * s_a * s_b in the authors' code
            v = v * float(f)
        out.append(int(v))
    return out


def _draw_body(canvas: np.ndarray, pose: DWPose) -> np.ndarray:
    """Limbs (ellipses, colour * s_a * s_b), x0.6, then joints (colour * s). Section 1.9."""
    h, w = canvas.shape[:2]
    cand = pose.body
    for i in range(NUM_LIMBS_DRAWN):
        a, b = LIMB_SEQ[i][0] - 1, LIMB_SEQ[i][1] - 1
        for n in range(pose.num_people):
            s_a, s_b = pose.body_score[n, a], pose.body_score[n, b]
            ia, ib = int(pose.subset[n, a]), int(pose.subset[n, b])
            # ia/ib < 0 only when a score is exactly 0.3 (subset needs > 0.3, limbs need >= 0.3)
            if s_a < BODY_SCORE_THRESHOLD or s_b < BODY_SCORE_THRESHOLD or ia < 0 or ib < 0:
                continue
            xs = cand[[ia, ib], 0] * float(w)
            ys = cand[[ia, ib], 1] * float(h)
            length = math.hypot(xs[0] - xs[1], ys[0] - ys[1])
            angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
            polygon = cv2.ellipse2Poly(
                (int(np.mean(xs)), int(np.mean(ys))), (int(length / 2), STICK_WIDTH),
                int(angle), 0, 360, 1,
            )  # fmt: skip
            cv2.fillConvexPoly(canvas, polygon, _scaled_color(BODY_COLORS[i], s_a, s_b))
    canvas = (canvas * LIMB_DIM).astype(np.uint8)
    for j in range(NUM_BODY):
        for n in range(pose.num_people):
            index = int(pose.subset[n, j])
            if index == -1:
                continue
            x, y = cand[index]
            center = (int(x * w), int(y * h))
            color = _scaled_color(BODY_COLORS[j], pose.body_score[n, j])
            cv2.circle(canvas, center, JOINT_RADIUS, color, thickness=-1)
    return canvas


def _visible(xy: np.ndarray) -> bool:
    return bool(xy[0] > HAND_FACE_EPS and xy[1] > HAND_FACE_EPS)


def _draw_hands(canvas: np.ndarray, pose: DWPose) -> np.ndarray:
    """Edges in HSV colours scaled by s_a*s_b*255, then points (0, 0, s*255). Section 1.9."""
    h, w = canvas.shape[:2]
    for peaks, scores in zip(pose.hands, pose.hands_score, strict=True):
        for ie, (a, b) in enumerate(HAND_EDGES):
            if not (_visible(peaks[a]) and _visible(peaks[b])):
                continue
            rgb = np.array(colorsys.hsv_to_rgb(ie / float(len(HAND_EDGES)), 1.0, 1.0))
            color = tuple(float(c) for c in rgb * int(scores[a] * scores[b] * 255))
            p1 = (int(peaks[a, 0] * w), int(peaks[a, 1] * h))
            p2 = (int(peaks[b, 0] * w), int(peaks[b, 1] * h))
            cv2.line(canvas, p1, p2, color, thickness=HAND_LINE_THICKNESS)
        for xy, s in zip(peaks, scores, strict=True):
            if _visible(xy):
                center = (int(xy[0] * w), int(xy[1] * h))
                cv2.circle(canvas, center, HAND_POINT_RADIUS, (0, 0, int(s * 255)), thickness=-1)
    return canvas


def _draw_faces(canvas: np.ndarray, pose: DWPose) -> np.ndarray:
    """Grey circles whose level is int(score * 255). Section 1.9."""
    h, w = canvas.shape[:2]
    for lmks, scores in zip(pose.faces, pose.faces_score, strict=True):
        for xy, s in zip(lmks, scores, strict=True):
            if _visible(xy):
                level = int(s * 255)
                center = (int(xy[0] * w), int(xy[1] * h))
                cv2.circle(canvas, center, FACE_POINT_RADIUS, (level,) * 3, thickness=-1)
    return canvas


def canvas_scale(height: int, width: int) -> float:
    """sr = 2160 / min(H, W) (1 if the short side is 2160). Section 1.9."""
    short = min(height, width)
    return CANVAS_REF / short if short != CANVAS_REF else 1.0


def draw_pose(pose: DWPose, height: int, width: int) -> np.ndarray:
    """Draw body, hands, face on a 2160-short-side canvas, resize, BGR->RGB. Section 1.9.

    Returns uint8 [height, width, 3] RGB.
    """
    sr = canvas_scale(height, width)
    canvas = np.zeros((int(height * sr), int(width * sr), 3), dtype=np.uint8)
    canvas = _draw_body(canvas, pose)
    canvas = _draw_hands(canvas, pose)
    canvas = _draw_faces(canvas, pose)
    resized = cv2.resize(canvas, (width, height))  # default INTER_LINEAR, as the authors
    return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)  # [H, W, 3]


def fit_alignment(
    ref: DWPose,
    frames: Sequence[DWPose],
    ref_hw: tuple[int, int],
    frame_hw: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Affine (a [2], b [2]) with ``aligned = cand * a + b`` (section 1.10).

    y: least-squares line (np.polyfit degree 1) from the frames' y to the reference's y over the
    14 ALIGN_IDS valid in the reference (person 0, subset >= 0), pooled over every frame with
    exactly 18 body candidates (one person). x: the same scale corrected for the aspect ratios,
    ``ax = ay / (fh / fw / H * W)``, and offset ``bx = mean(ref_x - det_x * ax)``.

    Poses projected from SMPL-X always have 18 candidates, so every frame is used and all 14
    points of each frame enter the fit whatever their score (as the authors: only the
    reference's validity filters ids).
    """
    height, width = ref_hw
    fh, fw = frame_hw
    if ref.num_people == 0:
        raise ValueError("reference pose has no person")
    ids = [i for i in ALIGN_IDS if ref.subset[0, i] >= 0]
    if len(ids) < 2:
        raise ValueError(f"reference pose has {len(ids)} valid alignment points; need >= 2")
    usable = [f.body for f in frames if f.body.shape[0] == NUM_BODY]
    if not usable:
        raise ValueError("no frame with exactly one person (18 body candidates) to fit on")
    ref_body = ref.body[ids]  # [k, 2]
    det = np.stack(usable)[:, ids]  # [m, k, 2]
    ay, by = np.polyfit(det[:, :, 1].ravel(), np.tile(ref_body[:, 1], len(usable)), 1)
    ax = ay / (fh / fw / height * width)
    bx = np.mean(np.tile(ref_body[:, 0], len(usable)) - det[:, :, 0].ravel() * ax)
    return np.array([ax, ay]), np.array([bx, by])


def apply_alignment(pose: DWPose, a: np.ndarray, b: np.ndarray) -> DWPose:
    """``cand * a + b`` on body, hands and faces (section 1.10 step 6)."""
    return replace(pose, body=pose.body * a + b, hands=pose.hands * a + b, faces=pose.faces * a + b)


def align_to_reference(
    ref: DWPose,
    frames: Sequence[DWPose],
    ref_hw: tuple[int, int],
    frame_hw: tuple[int, int],
) -> list[DWPose]:
    """Rescale every frame's pose onto the reference (section 1.10); draw the result at ref_hw."""
    a, b = fit_alignment(ref, frames, ref_hw, frame_hw)
    return [apply_alignment(f, a, b) for f in frames]
