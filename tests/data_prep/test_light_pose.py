"""Light CPU backends (data_prep/light_pose.py): BlazePose on ai-edge-litert, mapped onto
COCO-WholeBody 133, as the keypoint and mask stages.

The pure parts (mapping table, anchors, NMS, crop geometry, person choice, errors, install
checks) always run. The real-photo tests need the `ai-edge-litert` package and the .tflite files
(`python -m data_prep.light_pose install weights/blazepose`, or $PERSONA_BLAZEPOSE_DIR); they
skip with the reason otherwise.
"""

from __future__ import annotations

import io
import json
import math
import os
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_prep import light_pose as lp
from data_prep.stage import KEYPOINTS_FORMAT, read_keypoints, read_mask_bool

REPO = Path(__file__).resolve().parents[2]
REAL_PHOTO = Path(__file__).parent / "real" / "s2d_f150_person.jpg"  # 250 x 287, one person
MODEL_DIR = Path(os.environ.get("PERSONA_BLAZEPOSE_DIR", REPO / lp.DEFAULT_MODEL_DIR))
DETECTOR = MODEL_DIR / "pose_detection.tflite"
LANDMARKER = MODEL_DIR / "pose_landmark_full.tflite"


def _runtime_missing() -> str | None:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return "ai-edge-litert is not installed (pip install ai-edge-litert==2.3.0)"
    for path in (DETECTOR, LANDMARKER):
        if not path.is_file():
            return (f"{path} missing: python -m data_prep.light_pose install {MODEL_DIR} "
                    "(or set PERSONA_BLAZEPOSE_DIR)")
    return None


needs_models = pytest.mark.skipif(_runtime_missing() is not None,
                                  reason=str(_runtime_missing()))


# ----------------------------------------------------------------------------------------------
# Mapping table
# ----------------------------------------------------------------------------------------------
# COCO-WholeBody index -> BlazePose index, written out by hand (docs/REAL_DATA.md table).
EXPECTED_TABLE = {
    0: 0, 1: 2, 2: 5, 3: 7, 4: 8, 5: 11, 6: 12, 7: 13, 8: 14, 9: 15, 10: 16,
    11: 23, 12: 24, 13: 25, 14: 26, 15: 27, 16: 28,
    17: 31, 19: 29, 20: 32, 22: 30,
    53: 0, 59: 6, 62: 4, 65: 1, 68: 3, 71: 10, 77: 9,
    91: 15, 112: 16,
}


def test_mapping_table_is_exactly_the_documented_one() -> None:
    assert lp.COCO_FROM_BLAZEPOSE == EXPECTED_TABLE
    assert lp.BLAZEPOSE_NAMES[31] == "left_foot_index" and lp.BLAZEPOSE_NAMES[30] == "right_heel"
    doc = (REPO / "docs/REAL_DATA.md").read_text()
    for coco, blaze in EXPECTED_TABLE.items():  # every row is in the documented table
        assert f"| {coco} | {blaze} {lp.BLAZEPOSE_NAMES[blaze]} |" in doc


def test_mapping_moves_each_landmark_and_zeroes_the_rest() -> None:
    landmarks = np.zeros((33, 5))
    landmarks[:, 0] = np.arange(33) * 10.0 + 1  # x identifies the landmark
    landmarks[:, 1] = np.arange(33) * 10.0 + 2
    landmarks[:, 3] = 0.9  # visibility
    landmarks[:, 4] = 0.4  # presence
    coco = lp.blazepose_to_coco133(landmarks)
    assert coco.shape == (133, 3) and coco.dtype == np.float32
    for c in range(133):
        if c in EXPECTED_TABLE:
            b = EXPECTED_TABLE[c]
            np.testing.assert_allclose(coco[c], [b * 10 + 1, b * 10 + 2, 0.9], rtol=1e-6)
        else:
            assert coco[c].tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(lp.blazepose_to_coco133(landmarks, "presence")[0, 2], 0.4)
    np.testing.assert_allclose(lp.blazepose_to_coco133(landmarks, "min")[5, 2], 0.4)
    with pytest.raises(ValueError, match="model.init_args.score_source"):
        lp.blazepose_to_coco133(landmarks, "heatmap")


# ----------------------------------------------------------------------------------------------
# Detector decoding and person choice
# ----------------------------------------------------------------------------------------------
def test_anchors_match_the_detector_output_rows() -> None:
    anchors = lp.ssd_anchors()
    assert anchors.shape == (lp.NUM_ANCHORS, 2)
    np.testing.assert_allclose(anchors[0], [0.5 / 28, 0.5 / 28])
    np.testing.assert_allclose(anchors[1], anchors[0])  # 2 anchors per stride-8 cell
    np.testing.assert_allclose(anchors[2], [1.5 / 28, 0.5 / 28])  # row-major: x moves first
    np.testing.assert_allclose(anchors[28 * 28 * 2], [0.5 / 14, 0.5 / 14])  # stride-16 grid
    np.testing.assert_allclose(anchors[-6:], [[6.5 / 7, 6.5 / 7]] * 6)  # 3 x 2 stride-32


def test_weighted_nms_merges_overlaps_and_keeps_separate_people() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], float)
    kps = np.repeat(boxes[:, None, :2], 4, axis=1)  # [3, 4, 2]
    scores = np.array([0.6, 0.9, 0.7])
    out_boxes, out_kps, out_scores = lp.weighted_nms(boxes, kps, scores)
    np.testing.assert_allclose(out_scores, [0.9, 0.7])  # best first, the best's score
    np.testing.assert_allclose(out_boxes[0], [0.6, 0, 10.6, 10])  # (0.6*0 + 0.9*1) / 1.5
    np.testing.assert_allclose(out_kps[0, 0], [0.6, 0])
    np.testing.assert_allclose(out_boxes[1], boxes[2])


def _person(hip: tuple[float, float], half_size: float, score: float) -> lp.Person:
    hip_xy = np.array(hip)
    kps = np.stack([hip_xy, hip_xy + [0, -half_size], hip_xy, hip_xy])
    return lp.Person(score, np.zeros(4), kps)


def test_person_choice_largest_by_default_or_by_index() -> None:
    small_sure = _person((100, 200), 50, 0.95)  # best score, small
    large = _person((400, 300), 120, 0.6)
    people = [small_sure, large]
    assert large.size == pytest.approx(240) and small_sure.size == pytest.approx(100)
    np.testing.assert_allclose(large.body_box, [280, 180, 520, 420])
    assert lp.choose_person(people) == 1
    assert lp.choose_person(people, person_index=0) == 0
    with pytest.raises(ValueError, match="person_index = 2, but 2 person"):
        lp.choose_person(people, person_index=2)
    with pytest.raises(ValueError, match="no person"):
        lp.choose_person([])


def test_crop_geometry_follows_the_body_axis() -> None:
    upright = lp.detection_roi(np.array([[100.0, 200], [100, 120], [0, 0], [0, 0]]))
    assert upright.rotation == pytest.approx(0.0)
    assert upright.side == pytest.approx(2 * 80 * lp.ROI_SCALE)
    matrix = lp.roi_to_image_matrix(upright, 256)
    np.testing.assert_allclose(matrix @ [128, 128, 1], [100, 200])  # crop centre -> mid-hip
    np.testing.assert_allclose(matrix @ [128, 0, 1], [100, 200 - upright.side / 2])  # top: up
    lying = lp.detection_roi(np.array([[100.0, 200], [180, 200], [0, 0], [0, 0]]))
    assert lying.rotation == pytest.approx(math.pi / 2)
    top = lp.roi_to_image_matrix(lying, 256) @ [128, 0, 1]
    np.testing.assert_allclose(top, [100 + lying.side / 2, 200])  # crop's up -> toward kp1
    image = np.zeros((400, 400, 3), np.uint8)
    image[190:210, 140:160] = 255  # a patch a quarter side toward kp1 (side 200)
    crop = lp.crop_roi(image, lying, 64)
    assert crop.shape == (64, 64, 3)
    assert crop[16, 32].min() == 255 and crop[48, 32].max() == 0  # it lands at the crop's top


def test_refine_from_heatmap_moves_to_the_weighted_peak() -> None:
    heat = np.full((64, 64, 2), -50.0)
    heat[10, 20, 0] = 50.0  # sure peak at col 20, row 10 for landmark 0
    heat[40, 40, 1] = -1.0  # landmark 1: nothing confident -> unchanged
    out = lp.refine_from_heatmap(np.array([[21.5 / 64, 11.2 / 64], [0.5, 0.5]]), heat)
    np.testing.assert_allclose(out[0], [20 / 64, 10 / 64], atol=1e-6)
    np.testing.assert_allclose(out[1], [0.5, 0.5])


# ----------------------------------------------------------------------------------------------
# Errors and the install step
# ----------------------------------------------------------------------------------------------
def test_missing_or_wrong_model_files_name_the_setting_and_the_install(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.init_args.detector_model.*install"):
        lp.check_model_file(tmp_path / "nope.tflite", lp.DETECTOR_SETTING)
    bogus = tmp_path / "bogus.tflite"
    bogus.write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match="model.init_args.landmark_model.*not a .tflite"):
        lp.check_model_file(bogus, lp.LANDMARK_SETTING)


def test_native_stderr_loses_only_the_named_lines(capfd) -> None:
    with lp.native_stderr_without(lp.LITERT_NOTICES):
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"ERROR: something else\nINFO: kept too\n")
    assert capfd.readouterr().err == "ERROR: something else\nINFO: kept too\n"


@needs_models
def test_loading_a_model_prints_no_litert_notice(capfd) -> None:
    interpreter = lp.load_interpreter(DETECTOR, lp.DETECTOR_SETTING)
    assert interpreter.get_input_details()
    assert "XNNPACK" not in capfd.readouterr().err


def test_extract_checks_every_sha256(tmp_path: Path) -> None:
    tarball = tmp_path / "pose.tgz"
    with tarfile.open(tarball, "w:gz") as archive:
        for member, _ in lp.MODEL_FILES.values():
            data = b"\0\0\0\0TFL3 tampered"
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="sha256"):
        lp.extract_models(tarball, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []  # nothing half-installed, no temporary


# ----------------------------------------------------------------------------------------------
# Real photo (models needed)
# ----------------------------------------------------------------------------------------------
def _photo() -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(REAL_PHOTO)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def pose() -> lp.LightPose:
    return lp.LightPose(DETECTOR, LANDMARKER)


@needs_models
def test_real_photo_one_person_inside_its_mask(pose: lp.LightPose) -> None:
    image = _photo()
    height, width = image.shape[:2]
    result = pose(image)
    assert len(result.people) == 1 and result.chosen == 0 and result.rule == "largest"
    assert result.pose_presence > 0.9
    mask = result.mask > lp.MASK_THRESHOLD
    assert 0.05 < mask.mean() < 0.30  # a standing adult in a tight crop (measured 0.113)
    near = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0  # 3 px slack
    body = result.coco[:17]
    sure = body[body[:, 2] > 0.5]
    assert len(sure) >= 12
    cols = np.clip(sure[:, 0].astype(int), 0, width - 1)
    rows = np.clip(sure[:, 1].astype(int), 0, height - 1)
    assert near[rows, cols].mean() >= 0.9
    for ankle, hip in ((15, 11), (16, 12)):  # image y grows downwards
        assert result.coco[ankle, 1] > result.coco[hip, 1] + 0.2 * height
    assert result.coco[0, 1] < result.coco[11, 1]  # nose above the hip
    # world landmarks: metres, origin between the hips, a body about 1.5-2 m tall
    hips = result.world[[23, 24]].mean(0)
    np.testing.assert_allclose(hips, 0.0, atol=0.05)
    extent = result.world[:, 1].max() - result.world[:, 1].min()
    assert 1.0 < extent < 2.2


TWO_PEOPLE_SCALE = 0.8  # the second person: the same photo at this size
TWO_PEOPLE_GAP = 40  # px of white between the two


def two_people(image: np.ndarray) -> np.ndarray:
    """The photo with a smaller copy of itself to its right, feet aligned, on white:
    [H, W + gap + 0.8 W, 3] uint8 (the full-size person is on the left)."""
    height, width = image.shape[:2]
    size = (int(width * TWO_PEOPLE_SCALE), int(height * TWO_PEOPLE_SCALE))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    canvas = np.full((height, width + TWO_PEOPLE_GAP + small.shape[1], 3), 255, np.uint8)
    canvas[:, :width] = image
    canvas[height - small.shape[0]:, width + TWO_PEOPLE_GAP:] = small
    return canvas


@needs_models
def test_real_two_people_largest_or_by_index() -> None:
    image = _photo()
    width, gap = image.shape[1], TWO_PEOPLE_GAP
    canvas = two_people(image)
    pose = lp.LightPose(DETECTOR, LANDMARKER, min_detection_score=0.3)
    result = pose(canvas)
    assert len(result.people) == 2
    sizes = [p.size for p in result.people]
    assert result.chosen == int(np.argmax(sizes))
    assert result.landmarks[23, 0] < width  # the full-size person, on the left
    record = result.person_record()
    assert record["num_people"] == 2 and record["rule"] == "largest"
    assert record["chosen"] == result.chosen and len(record["boxes"]) == 2
    other = pose(canvas, person_index=1 - result.chosen)
    assert other.rule == "person_index" and other.landmarks[23, 0] > width + gap
    assert (other.mask > 0.5)[:, :width].mean() < 0.01  # its mask stays on its side


@needs_models
def test_stages_write_the_sapiens_and_sam_files(tmp_path: Path) -> None:
    from data_prep.cli import main as prep_main
    from data_prep.init_subject import init_subject
    from persona.body.loader import BodySpec

    subject = init_subject(REAL_PHOTO, tmp_path / "subject", BodySpec(kind="open"))
    models = ["--model.init_args.detector_model", str(DETECTOR),
              "--model.init_args.landmark_model", str(LANDMARKER)]
    for config in ("keypoints_light.yaml", "segment_light.yaml"):
        status = prep_main(["--config", str(REPO / "configs/prep" / config),
                            "--data.subject_dir", str(subject), *models])
        assert status == 0
    path = subject / "captured/keypoints/0.json"
    data = json.loads(path.read_text())
    assert data["format"] == KEYPOINTS_FORMAT
    keypoints = read_keypoints(path)  # the reader the fit and footfix stages use
    assert keypoints.shape == (133, 3)
    assert (keypoints[:17, 2] > 0).all() and (keypoints[23 + 17, 2] == 0)  # eyebrow: none
    assert data["person"]["num_people"] == 1 and data["person"]["chosen"] == 0
    mask = read_mask_bool(subject / "captured/masks/0.png")
    image = cv2.imread(str(subject / "captured/images/0.png"))
    assert mask.shape == image.shape[:2] and 0.05 < mask.mean() < 0.30
