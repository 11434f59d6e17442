"""Accuracy of a tracked clip against known joints: MPJPE and PA-MPJPE (experiments/
track_accuracy.py), and the reprojection error against the detected keypoints (real videos)."""

from __future__ import annotations

import numpy as np

MM_PER_M = 1000.0
ROOT_JOINT = 0  # the pelvis: MPJPE is measured after aligning it


def mpjpe(predicted: np.ndarray, truth: np.ndarray, root: int = ROOT_JOINT) -> np.ndarray:
    """Per-frame mean joint error after moving the predicted root onto the true one.
    predicted, truth [T, J, 3] metres -> [T] millimetres."""
    aligned = predicted - predicted[:, root:root + 1] + truth[:, root:root + 1]
    return np.linalg.norm(aligned - truth, axis=-1).mean(-1) * MM_PER_M


def procrustes(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """source [J, 3] moved by the similarity (scale, rotation, translation) that best fits it to
    target [J, 3] in the least-squares sense (Umeyama, no reflection) -> [J, 3]."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    s, t = source - mu_s, target - mu_t
    u, sigma, vt = np.linalg.svd(s.T @ t)  # s^T t = U S V^T
    sign = np.sign(np.linalg.det(u @ vt))
    d = np.diag([1.0, 1.0, sign])
    rotation = (u @ d @ vt).T  # applied as rotation @ x
    scale = (sigma * np.diag(d)).sum() / max((s**2).sum(), 1e-12)
    return scale * s @ rotation.T + mu_t


def pa_mpjpe(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-frame mean joint error after a per-frame Procrustes alignment. [T, J, 3] -> [T] mm."""
    aligned = np.stack([procrustes(p, g) for p, g in zip(predicted, truth, strict=True)])
    return np.linalg.norm(aligned - truth, axis=-1).mean(-1) * MM_PER_M


def reprojection_summary(errors_px: np.ndarray) -> dict[str, float]:
    """Per-keypoint reprojection errors [T, K] (nan where not weighted) -> median, mean, p90."""
    values = errors_px[np.isfinite(errors_px)]
    if values.size == 0:
        return {"median_px": float("nan"), "mean_px": float("nan"), "p90_px": float("nan")}
    return {"median_px": float(np.median(values)), "mean_px": float(values.mean()),
            "p90_px": float(np.percentile(values, 90))}
