"""Known-answer tests for data_prep.pose_draw (PREPROCESSING.md sections 1.8-1.10)."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.pose_draw import (
    DWPose,
    align_to_reference,
    canvas_scale,
    coco133_to_dwpose,
    draw_pose,
    fit_alignment,
    subset_from_scores,
)


def make_pose(
    body: np.ndarray | None = None,
    body_score: np.ndarray | None = None,
    hands: np.ndarray | None = None,
    hands_score: np.ndarray | None = None,
    faces: np.ndarray | None = None,
    faces_score: np.ndarray | None = None,
) -> DWPose:
    """One person; everything absent (score 0, coordinates 0) unless given."""
    body = np.zeros((18, 2)) if body is None else body
    body_score = np.zeros((1, 18)) if body_score is None else body_score
    return DWPose(
        body=body,
        subset=subset_from_scores(body_score),
        body_score=body_score,
        hands=np.zeros((2, 21, 2)) if hands is None else hands,
        hands_score=np.zeros((2, 21)) if hands_score is None else hands_score,
        faces=np.zeros((1, 68, 2)) if faces is None else faces,
        faces_score=np.zeros((1, 68)) if faces_score is None else faces_score,
    )


def limb_pose(s_neck: float, s_rsho: float) -> DWPose:
    """Neck (id 1) at (0.25, 0.5), right shoulder (id 2) at (0.75, 0.5): limb 0 = [2, 3]."""
    body = np.zeros((18, 2))
    body[1] = (0.25, 0.5)
    body[2] = (0.75, 0.5)
    score = np.zeros((1, 18))
    score[0, 1], score[0, 2] = s_neck, s_rsho
    return make_pose(body=body, body_score=score)


def test_canvas_scale() -> None:
    assert canvas_scale(1024, 576) == pytest.approx(2160 / 576)
    assert canvas_scale(2160, 3840) == 1.0


def test_limb_colour_at_midpoint_and_background() -> None:
    # table colour [255, 0, 0] (canvas BGR) * 1 * 1, then x0.6 -> 153; after BGR->RGB it is BLUE
    img = draw_pose(limb_pose(1.0, 1.0), 1080, 1080)  # canvas 2160 (sr = 2), resized back
    assert img.shape == (1080, 1080, 3) and img.dtype == np.uint8
    assert img[540, 540].tolist() == [0, 0, 153]
    assert img[100, 900].tolist() == [0, 0, 0]  # far from everything
    assert img[300, 540].tolist() == [0, 0, 0]  # above the stick (width 4 canvas px)


def test_limb_colour_scaled_by_both_scores() -> None:
    img = draw_pose(limb_pose(0.5, 0.8), 1080, 1080)
    assert img[540, 540].tolist() == [0, 0, int(int(255 * 0.5 * 0.8) * 0.6)]  # 61


def test_limb_skipped_below_threshold() -> None:
    img = draw_pose(limb_pose(1.0, 0.29), 1080, 1080)
    assert img[540, 540].tolist() == [0, 0, 0]


def test_joint_circle_colour() -> None:
    # joints are drawn after the x0.6 dimming: neck colour (255, 85, 0) BGR * 1 -> RGB (0, 85, 255)
    img = draw_pose(limb_pose(1.0, 1.0), 2160, 2160)  # sr = 1: no resize
    assert img[1080, 540].tolist() == [0, 85, 255]
    assert img[1080, 1620].tolist() == [0, 170, 255]  # right shoulder (255, 170, 0) BGR


def test_face_point_grey_level_is_score() -> None:
    faces = np.zeros((1, 68, 2))
    faces[0, 0] = (0.5, 0.5)
    faces[0, 1] = (0.005, 0.5)  # x <= 0.01: not drawn
    score = np.zeros((1, 68))
    score[0, :2] = 0.6
    img = draw_pose(make_pose(faces=faces, faces_score=score), 2160, 2160)
    assert img[1080, 1080].tolist() == [153] * 3  # int(0.6 * 255)
    assert img[1080, 10].tolist() == [0, 0, 0]
    assert img[1080, 1084].tolist() == [0, 0, 0]  # radius 3


def test_hand_point_red_and_edge_hsv_colour() -> None:
    hands = np.zeros((2, 21, 2))
    hands[0, 0] = (0.25, 0.5)
    hands[0, 1] = (0.75, 0.5)
    score = np.zeros((2, 21))
    score[0, 0] = 1.0
    score[0, 1] = 0.8
    img = draw_pose(make_pose(hands=hands, hands_score=score), 2160, 2160)
    assert img[1080, 540].tolist() == [255, 0, 0]  # point colour (0, 0, s*255) BGR -> red
    assert img[1080, 1620].tolist() == [204, 0, 0]
    # edge 0: hsv(0, 1, 1) = (1, 0, 0) * int(1 * 0.8 * 255) = 204 in canvas order -> blue
    assert img[1080, 1080].tolist() == [0, 0, 204]


def _coco_kpts(rng: np.random.Generator) -> np.ndarray:
    k = np.zeros((133, 3))
    k[:, 0] = rng.uniform(0, 200, 133)
    k[:, 1] = rng.uniform(0, 100, 133)
    k[:, 2] = rng.uniform(0.0, 1.0, 133)
    return k


def test_coco133_to_dwpose_neck_and_openpose_order() -> None:
    rng = np.random.default_rng(0)
    k = _coco_kpts(rng)
    k[5, 2], k[6, 2] = 0.9, 0.8
    pose = coco133_to_dwpose(k, height=100, width=200)
    wh = np.array([200.0, 100.0])
    # OpenPose-18 (section 4.1) by name -> COCO-WholeBody (section 4.2) by name
    coco_of_openpose = {0: 0, 2: 6, 3: 8, 4: 10, 5: 5, 6: 7, 7: 9, 8: 12, 9: 14, 10: 16,
                        11: 11, 12: 13, 13: 15, 14: 2, 15: 1, 16: 4, 17: 3}  # fmt: skip
    for op, coco in coco_of_openpose.items():
        np.testing.assert_allclose(pose.body[op], k[coco, :2] / wh)
        assert pose.body_score[0, op] == k[coco, 2]
    np.testing.assert_allclose(pose.body[1], (k[5, :2] + k[6, :2]) / 2 / wh)  # neck
    assert pose.body_score[0, 1] == 1.0
    np.testing.assert_allclose(pose.faces[0], k[23:91, :2] / wh)
    np.testing.assert_allclose(pose.hands[0], k[91:112, :2] / wh)  # left hand first
    np.testing.assert_allclose(pose.hands[1], k[112:133, :2] / wh)
    np.testing.assert_allclose(pose.hands_score[1], k[112:133, 2])
    expected_subset = np.where(pose.body_score[0] > 0.3, np.arange(18), -1)
    np.testing.assert_array_equal(pose.subset[0], expected_subset)


def test_coco133_neck_score_zero_when_a_shoulder_is_weak() -> None:
    k = _coco_kpts(np.random.default_rng(1))
    k[5, 2], k[6, 2] = 0.9, 0.3  # 0.3 is not > 0.3
    pose = coco133_to_dwpose(k, 100, 200)
    assert pose.body_score[0, 1] == 0.0 and pose.subset[0, 1] == -1


def test_alignment_recovers_known_scale_and_offset() -> None:
    rng = np.random.default_rng(2)
    ref_hw, frame_hw = (1024, 576), (720, 1280)
    ref_body = rng.uniform(0.2, 0.8, (18, 2))
    ref_score = np.ones((1, 18))
    ref_score[0, 16:] = 0.1  # ears invalid in the reference: excluded from the fit
    ref_body[16:] = 5.0  # garbage that would spoil the fit if used
    ref = make_pose(body=ref_body, body_score=ref_score)
    ay, by, bx = 0.8, 0.1, -0.05
    ax = ay / (frame_hw[0] / frame_hw[1] / ref_hw[0] * ref_hw[1])
    a, b = np.array([ax, ay]), np.array([bx, by])
    det_body = (ref_body - b) / a
    faces = rng.uniform(0, 1, (1, 68, 2))
    frame = make_pose(body=det_body, body_score=np.full((1, 18), 0.5), faces=faces)
    two_people = DWPose(
        body=rng.uniform(0, 1, (36, 2)), subset=np.zeros((2, 18)), body_score=np.ones((2, 18)),
        hands=np.zeros((4, 21, 2)), hands_score=np.zeros((4, 21)),
        faces=np.zeros((2, 68, 2)), faces_score=np.zeros((2, 68)),
    )  # fmt: skip
    a_fit, b_fit = fit_alignment(ref, [frame, two_people, frame], ref_hw, frame_hw)
    np.testing.assert_allclose(a_fit, a, atol=1e-9)
    np.testing.assert_allclose(b_fit, b, atol=1e-9)
    out = align_to_reference(ref, [frame, two_people], ref_hw, frame_hw)
    np.testing.assert_allclose(out[0].body[:16], ref_body[:16], atol=1e-9)
    np.testing.assert_allclose(out[0].faces, faces * a + b, atol=1e-9)
    np.testing.assert_allclose(out[1].body, two_people.body * a + b, atol=1e-9)  # all frames


def test_alignment_needs_a_single_person_frame() -> None:
    ref = limb_pose(1.0, 1.0)
    with pytest.raises(ValueError, match="exactly one person"):
        fit_alignment(ref, [], (10, 10), (10, 10))
