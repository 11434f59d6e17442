"""A plain flat-shaded picture of a body mesh (painter's algorithm with matplotlib): for docs
and for looking at a body without a renderer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

LIGHT_DIRECTION = np.array([0.3, 0.5, 1.0])  # towards the viewer, from the upper right
BASE_COLOUR = np.array([0.80, 0.68, 0.58])  # skin-like grey-beige


def draw_mesh(axis, vertices: np.ndarray, faces: np.ndarray, yaw: float = 0.0,
              title: str = "") -> None:
    """Draw vertices [V,3] (y up, facing +z) seen from the front, turned by `yaw` rad."""
    from matplotlib.collections import PolyCollection

    cos, sin = np.cos(yaw), np.sin(yaw)
    rotation = np.array([[cos, 0.0, sin], [0.0, 1.0, 0.0], [-sin, 0.0, cos]])
    points = vertices @ rotation.T  # [V, 3]
    triangles = points[faces]  # [F, 3, 3]
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    facing = normals[:, 2] > 0
    light = LIGHT_DIRECTION / np.linalg.norm(LIGHT_DIRECTION)
    shade = 0.25 + 0.75 * np.clip(normals @ light, 0.0, 1.0)
    order = np.argsort(triangles[:, :, 2].mean(axis=1))
    order = order[facing[order]]
    colours = np.clip(BASE_COLOUR[None] * shade[order, None], 0, 1)
    axis.add_collection(PolyCollection(triangles[order][:, :, :2], facecolors=colours,
                                       edgecolors="none"))
    used = points[np.unique(faces)]
    low, high = used.min(axis=0), used.max(axis=0)
    centre, half = 0.5 * (low + high), 0.55 * float((high - low)[:2].max())
    axis.set_xlim(centre[0] - half, centre[0] + half)
    axis.set_ylim(centre[1] - half, centre[1] + half)
    axis.set_aspect("equal")
    axis.axis("off")
    if title:
        axis.set_title(title, fontsize=9)


def save_views(path: str | Path, meshes: list[tuple[np.ndarray, np.ndarray, float, str]],
               panel_size: float = 3.2) -> Path:
    """One panel per (vertices, faces, yaw, title); written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from persona.atomic import atomic_write

    size = (panel_size * len(meshes), panel_size * 1.4)
    figure, axes = plt.subplots(1, len(meshes), figsize=size)
    for axis, (vertices, faces, yaw, title) in zip(np.atleast_1d(axes), meshes, strict=True):
        draw_mesh(axis, vertices, faces, yaw, title)
    figure.tight_layout()
    atomic_write(Path(path), lambda p: figure.savefig(p, dpi=110, format="png"))
    plt.close(figure)
    return Path(path)
