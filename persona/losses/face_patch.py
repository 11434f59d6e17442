"""The face patch of the input image (METHOD.md section 5: "a 256^2 super-resolved face patch of
the input image adds patch losses x0.1 (optional)").

The authors super-resolve the face crop with ResShift; no SR model is used here, so the patch is
the input image's face at its native resolution (training runs at a lower
``data.resolution_scale``), resampled to a square of ``patch`` pixels. The avatar is rendered
with a camera whose image is exactly that square, so patch pixel (u, v) and native pixel
``(x0 + (u + 0.5) / s, y0 + (v + 0.5) / s)`` (s = patch / side) see the same ray.
Pure functions; the system wires them (``model.losses.face_patch``).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from persona.render.types import Camera


def face_box(points_2d: Tensor, width: int, height: int, margin: float) -> tuple[int, int, int]:
    """Square integer crop (x0, y0, side) around 2D points [P, 2] (pixels), enlarged by
    ``margin`` about their centre and shifted (not shrunk) to lie inside the image; the side is
    at most the image's shorter side."""
    lo, hi = points_2d.min(0).values, points_2d.max(0).values  # [2]
    centre = (lo + hi) / 2
    side = int(math.ceil(float((hi - lo).max()) * margin))
    side = max(1, min(side, width, height))
    x0 = int(round(float(centre[0]) - side / 2))
    y0 = int(round(float(centre[1]) - side / 2))
    return min(max(x0, 0), width - side), min(max(y0, 0), height - side), side


def crop_camera(camera: Camera, x0: int, y0: int, side: int, patch: int) -> Camera:
    """The camera whose ``patch`` x ``patch`` image is the square crop (x0, y0, side) of
    ``camera``'s image, resampled: u' = (u - x0) s with s = patch / side (continuous pixels)."""
    s = patch / side
    K = camera.K.clone()
    K[0, 0], K[1, 1] = K[0, 0] * s, K[1, 1] * s
    K[0, 2], K[1, 2] = (K[0, 2] - x0) * s, (K[1, 2] - y0) * s
    return Camera(K, camera.R, camera.t, patch, patch, camera.near, camera.far)


def crop_image(image: Tensor, x0: int, y0: int, side: int, patch: int) -> Tensor:
    """The square crop (x0, y0, side) of image [H, W, C] resampled to [patch, patch, C]
    (bilinear with antialiasing; pixel centres map as in ``crop_camera``)."""
    crop = image[y0:y0 + side, x0:x0 + side].permute(2, 0, 1)[None]  # [1, C, side, side]
    if side == patch:
        return crop[0].permute(1, 2, 0)
    out = F.interpolate(crop, size=(patch, patch), mode="bilinear", align_corners=False,
                        antialias=True)
    return out[0].permute(1, 2, 0).contiguous()  # [patch, patch, C]
