"""The Sapiens 28-class "goliath" part-segmentation palette (METHOD.md section 5).

Sapiens defines 34 "goliath" classes and drops six of them (chair, eyeglass frame and lenses,
headset, lower spandex, visible badge) for its 28-class segmentation models; the colour of each
kept class is unchanged. Part-seg maps are stored as RGB images in these colours.
"""

from __future__ import annotations

import numpy as np

# Sapiens' original 34 goliath classes and their RGB colours (index i <-> colour i).
ORIGINAL_GOLIATH_CLASSES: tuple[str, ...] = (
    "Background", "Apparel", "Chair", "Eyeglass_Frame", "Eyeglass_Lenses", "Face_Neck", "Hair",
    "Headset", "Left_Foot", "Left_Hand", "Left_Lower_Arm", "Left_Lower_Leg", "Left_Shoe",
    "Left_Sock", "Left_Upper_Arm", "Left_Upper_Leg", "Lower_Clothing", "Lower_Spandex",
    "Right_Foot", "Right_Hand", "Right_Lower_Arm", "Right_Lower_Leg", "Right_Shoe", "Right_Sock",
    "Right_Upper_Arm", "Right_Upper_Leg", "Torso", "Upper_Clothing", "Visible_Badge", "Lower_Lip",
    "Upper_Lip", "Lower_Teeth", "Upper_Teeth", "Tongue",
)
ORIGINAL_GOLIATH_PALETTE: tuple[tuple[int, int, int], ...] = (
    (50, 50, 50), (255, 218, 0), (102, 204, 0), (14, 0, 204), (0, 204, 160), (128, 200, 255),
    (255, 0, 109), (0, 255, 36), (189, 0, 204), (255, 0, 218), (0, 160, 204), (0, 255, 145),
    (204, 0, 131), (182, 0, 255), (255, 109, 0), (0, 255, 255), (72, 0, 255), (204, 43, 0),
    (204, 131, 0), (255, 0, 0), (72, 255, 0), (189, 204, 0), (182, 255, 0), (102, 0, 204),
    (32, 72, 204), (0, 145, 255), (14, 204, 0), (0, 128, 72), (204, 0, 43), (235, 205, 119),
    (115, 227, 112), (157, 113, 143), (132, 93, 50), (82, 21, 114),
)
# The six classes the 28-class models drop.
REMOVED_GOLIATH_CLASSES: frozenset[str] = frozenset(
    {"Chair", "Eyeglass_Frame", "Eyeglass_Lenses", "Headset", "Lower_Spandex", "Visible_Badge"}
)

GOLIATH_CLASSES: tuple[str, ...] = tuple(
    name for name in ORIGINAL_GOLIATH_CLASSES if name not in REMOVED_GOLIATH_CLASSES
)
GOLIATH_PALETTE: tuple[tuple[int, int, int], ...] = tuple(
    colour for name, colour in zip(ORIGINAL_GOLIATH_CLASSES, ORIGINAL_GOLIATH_PALETTE, strict=True)
    if name not in REMOVED_GOLIATH_CLASSES
)
NUM_GOLIATH_CLASSES = 28


def class_index(name: str) -> int:
    """Index of a class name in the 28-class list; ValueError naming the known classes."""
    if name not in GOLIATH_CLASSES:
        raise ValueError(f"unknown goliath class {name!r}; known: {', '.join(GOLIATH_CLASSES)}")
    return GOLIATH_CLASSES.index(name)


def palette_array() -> np.ndarray:
    """The palette as uint8 [28, 3]."""
    return np.asarray(GOLIATH_PALETTE, dtype=np.uint8)


def labels_to_rgb(labels: np.ndarray) -> np.ndarray:
    """Class labels [H, W] (ints in 0..27) -> palette colours uint8 [H, W, 3]."""
    labels = np.asarray(labels)
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= NUM_GOLIATH_CLASSES:
        raise ValueError(f"labels must lie in 0..{NUM_GOLIATH_CLASSES - 1}")
    return palette_array()[labels]


def rgb_to_labels(rgb: np.ndarray) -> np.ndarray:
    """Palette colours uint8 [H, W, 3] -> labels int64 [H, W]; -1 where a colour is off-palette."""
    rgb = np.asarray(rgb, dtype=np.int64)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]  # [H, W]
    palette = palette_array().astype(np.int64)
    palette_codes = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]  # [28]
    order = np.argsort(palette_codes)
    position = np.searchsorted(palette_codes[order], codes).clip(0, NUM_GOLIATH_CLASSES - 1)
    found = palette_codes[order][position] == codes
    return np.where(found, order[position], -1)
