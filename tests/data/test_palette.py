import numpy as np

from persona.data.palette import (
    GOLIATH_CLASSES,
    GOLIATH_PALETTE,
    class_index,
    labels_to_rgb,
    rgb_to_labels,
)


def test_28_classes_with_sapiens_colours():
    assert len(GOLIATH_CLASSES) == len(GOLIATH_PALETTE) == 28
    assert len(set(GOLIATH_PALETTE)) == 28
    # values from Sapiens' classes_and_palettes.py (the 34-class list with 6 classes dropped)
    assert GOLIATH_PALETTE[0] == (50, 50, 50) and GOLIATH_CLASSES[0] == "Background"
    assert GOLIATH_PALETTE[class_index("Face_Neck")] == (128, 200, 255)
    assert GOLIATH_PALETTE[class_index("Left_Foot")] == (189, 0, 204)
    assert GOLIATH_PALETTE[class_index("Upper_Clothing")] == (0, 128, 72)
    assert GOLIATH_CLASSES[-1] == "Tongue" and GOLIATH_PALETTE[-1] == (82, 21, 114)
    assert "Chair" not in GOLIATH_CLASSES and "Visible_Badge" not in GOLIATH_CLASSES


def test_labels_round_trip_and_off_palette():
    labels = np.arange(28).reshape(4, 7)
    rgb = labels_to_rgb(labels)
    assert (rgb_to_labels(rgb) == labels).all()
    rgb[0, 0] = [1, 2, 3]
    assert rgb_to_labels(rgb)[0, 0] == -1
