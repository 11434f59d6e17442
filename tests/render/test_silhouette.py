"""The mesh silhouette rasteriser against a brute-force point-in-triangle reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from persona.render.silhouette import rasterize_labels, rasterize_silhouette
from persona.render.types import Camera


def brute_force(vertices: np.ndarray, faces: np.ndarray, K: np.ndarray, R: np.ndarray,
                t: np.ndarray, width: int, height: int, near: float) -> np.ndarray:
    """Every pixel centre against every triangle with barycentric coordinates (float64)."""
    cam = vertices @ R.T + t
    uv = np.stack([K[0, 0] * cam[:, 0] / cam[:, 2] + K[0, 2],
                   K[1, 1] * cam[:, 1] / cam[:, 2] + K[1, 2]], axis=-1)
    py, px = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    mask = np.zeros((height, width), dtype=bool)
    for f in faces:
        if (cam[f, 2] < near).any():
            continue
        a, b, c = uv[f]
        area2 = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        if area2 == 0:
            continue
        # barycentric weight of each vertex = signed area of the opposite sub-triangle
        l0 = (c[0] - b[0]) * (py - b[1]) - (c[1] - b[1]) * (px - b[0])
        l1 = (a[0] - c[0]) * (py - c[1]) - (a[1] - c[1]) * (px - c[0])
        l2 = (b[0] - a[0]) * (py - a[1]) - (b[1] - a[1]) * (px - a[0])
        if area2 > 0:
            mask |= (l0 >= 0) & (l1 >= 0) & (l2 >= 0)
        else:
            mask |= (l0 <= 0) & (l1 <= 0) & (l2 <= 0)
    return mask


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_silhouette_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_vert, n_face, width, height = 60, 40, 37, 29
    vertices = rng.uniform(-1, 1, size=(n_vert, 3)) * np.array([0.8, 0.6, 1.2])
    vertices[:, 2] += 2.0
    vertices[:5, 2] = rng.uniform(-0.5, 0.005, size=5)  # behind / inside the near plane
    vertices[5:8, 0] += 3.0  # partly off-screen
    faces = np.stack([rng.choice(n_vert, size=3, replace=False) for _ in range(n_face)])
    K = np.array([[30.0, 0, 17.0], [0, 28.0, 15.5], [0, 0, 1]])
    ang = 0.3
    R = np.array([[np.cos(ang), 0, np.sin(ang)], [0, 1, 0], [-np.sin(ang), 0, np.cos(ang)]])
    t = np.array([0.1, -0.05, 0.2])
    cam = Camera(torch.tensor(K), torch.tensor(R), torch.tensor(t), width, height)
    got = rasterize_silhouette(torch.tensor(vertices), torch.tensor(faces), cam,
                               max_pairs=500).numpy()
    ref = brute_force(vertices, faces, K, R, t, width, height, cam.near)
    assert got.dtype == np.float32 and set(np.unique(got)) <= {0.0, 1.0}
    assert 0.05 < ref.mean() < 0.95  # the mesh covers part of the image (the test can fail)
    np.testing.assert_array_equal(got.astype(bool), ref)


def test_silhouette_square_known_answer() -> None:
    """Two triangles making the square [-0.5, 0.5]^2 at z = 1, f = 10: columns/rows 5..14."""
    vertices = torch.tensor([[-0.5, -0.5, 1.0], [0.5, -0.5, 1.0], [0.5, 0.5, 1.0],
                             [-0.5, 0.5, 1.0]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    K = torch.tensor([[10.0, 0, 10.0], [0, 10.0, 10.0], [0, 0, 1]], dtype=torch.float64)
    cam = Camera(K, torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 20, 20)
    mask = rasterize_silhouette(vertices, faces, cam)
    expected = torch.zeros(20, 20)
    expected[5:15, 5:15] = 1.0
    torch.testing.assert_close(mask, expected)


def test_silhouette_bad_faces() -> None:
    cam = Camera(torch.eye(3), torch.eye(3), torch.zeros(3), 4, 4)
    with pytest.raises(ValueError, match="faces"):
        rasterize_silhouette(torch.zeros(3, 3), torch.tensor([[0, 1, 5]]), cam)


def brute_force_labels(vertices: np.ndarray, faces: np.ndarray, labels: np.ndarray,
                       K: np.ndarray, width: int, height: int, near: float) -> np.ndarray:
    """Per pixel, the label of the covering triangle whose plane is nearest along the pixel's
    ray (ray-plane intersection in camera space, independent of the screen-space maths)."""
    out = np.full((height, width), -1)
    best = np.full((height, width), np.inf)
    py, px = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    rays = np.stack([(px - K[0, 2]) / K[0, 0], (py - K[1, 2]) / K[1, 1], np.ones_like(px)], -1)
    cover_all = brute_force(vertices, faces, K, np.eye(3), np.zeros(3), width, height, near)
    assert cover_all.any()
    for f, label in zip(faces, labels, strict=True):
        if (vertices[f, 2] < near).any():
            continue
        covered = brute_force(vertices, f[None], K, np.eye(3), np.zeros(3), width, height, near)
        a, b, c = vertices[f]
        normal = np.cross(b - a, c - a)
        if np.linalg.norm(normal) == 0:
            continue
        depth = (normal @ a) / (rays @ normal)  # z of the ray's hit on the triangle's plane
        nearer = covered & (depth < best)
        best[nearer], out[nearer] = depth[nearer], label
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_labels_equal_a_ray_cast_z_buffer(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_face, width, height = 30, 33, 27
    centres = rng.uniform([-0.6, -0.5, 1.5], [0.6, 0.5, 3.5], size=(n_face, 1, 3))
    vertices = (centres + rng.uniform(-0.4, 0.4, size=(n_face, 3, 3))).reshape(-1, 3)
    faces = np.arange(3 * n_face).reshape(n_face, 3)  # separate, overlapping triangles
    labels = rng.integers(0, 4, size=n_face)
    K = np.array([[28.0, 0, 16.0], [0, 27.0, 13.5], [0, 0, 1]])
    cam = Camera(torch.tensor(K), torch.eye(3, dtype=torch.float64),
                 torch.zeros(3, dtype=torch.float64), width, height)
    got = rasterize_labels(torch.tensor(vertices), torch.tensor(faces), torch.tensor(labels),
                           cam, max_pairs=300).numpy()
    ref = brute_force_labels(vertices, faces, labels, K, width, height, cam.near)
    assert len(np.unique(ref)) >= 4  # several labels visible, some occluded
    np.testing.assert_array_equal(got, ref)  # random floats: no ties at equal depth
    covered = rasterize_silhouette(torch.tensor(vertices), torch.tensor(faces), cam).numpy()
    np.testing.assert_array_equal(got >= 0, covered.astype(bool))


def test_labels_occlusion_known_answer() -> None:
    """A hand square (label 1) behind a torso square (label 0) that hides its left half."""
    square = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    hand = np.concatenate([square * 0.8 + [0.4, 0.0], np.full((4, 1), 2.0)], axis=1)
    torso = np.concatenate([square * [1.92, 1.6] - [0.64, 0.0], np.full((4, 1), 1.6)], axis=1)
    vertices = torch.tensor(np.concatenate([hand, torso]), dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    K = torch.tensor([[20.0, 0, 20.0], [0, 20.0, 20.0], [0, 0, 1]], dtype=torch.float64)
    cam = Camera(K, torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 40, 40)
    labels = rasterize_labels(vertices, faces, torch.tensor([1, 1, 0, 0]), cam)
    hand_only = rasterize_silhouette(vertices, faces[:2], cam).bool()
    visible_hand = labels == 1
    # hand x in [0, 0.8], y in [-0.4, 0.4] at z 2 -> u in [20, 28], v in [16, 24];
    # torso x in [-1.6, 0.32] at z 1.6 -> u < 24: the hand's columns 20-23 are hidden
    assert hand_only[16:24, 20:28].all() and hand_only.sum() == 64
    assert not visible_hand[:, :24].any() and visible_hand[16:24, 24:28].all()
    assert visible_hand.sum() == 32 and torch.equal(visible_hand, hand_only & (labels != 0))
    # move the torso behind the hand: the whole hand square shows
    vertices[4:, 2] = 3.0
    labels = rasterize_labels(vertices, faces, torch.tensor([1, 1, 0, 0]), cam)
    assert torch.equal(labels == 1, hand_only)
