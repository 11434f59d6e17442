import pytest
import torch

from persona.body.types import (
    NUM_JOINTS,
    SMPLX_JOINT_NAMES,
    SMPLX_PARENTS,
    PoseParams,
    big_pose,
    check_finite,
)


def test_joint_tree_is_smplx():
    smplx_names = pytest.importorskip("smplx.joint_names").JOINT_NAMES
    assert list(SMPLX_JOINT_NAMES) == list(smplx_names[:NUM_JOINTS])
    assert all(p < i for i, p in enumerate(SMPLX_PARENTS))  # topological order
    assert SMPLX_PARENTS[0] == -1


def test_big_pose_only_moves_hips():
    pose = big_pose()
    assert pose[1, 2] == pytest.approx(1 / 3) and pose[2, 2] == pytest.approx(-1 / 3)
    pose[1, 2] = pose[2, 2] = 0
    assert torch.count_nonzero(pose) == 0


@pytest.mark.parametrize("field,bad", [
    ("full_pose", torch.zeros(2, 54, 3)),
    ("expression", torch.zeros(3, 10)),
    ("transl", torch.zeros(2, 2)),
])
def test_pose_params_shape_errors_name_the_field(field, bad):
    kwargs = {"full_pose": torch.zeros(2, 55, 3), "expression": torch.zeros(2, 10),
              "transl": torch.zeros(2, 3)}
    kwargs[field] = bad
    with pytest.raises(ValueError, match=field):
        PoseParams(**kwargs).validate()


def test_pose_params_nan_is_reported():
    pose = PoseParams(torch.zeros(1, 55, 3), torch.zeros(1, 10), torch.zeros(1, 3))
    pose.full_pose[0, 5, 1] = float("nan")
    with pytest.raises(ValueError, match="full_pose: contains NaN"):
        pose.validate()


def test_check_finite_names_the_first_bad_field_and_skips_none():
    good, bad = torch.zeros(4, 3), torch.tensor([0.0, float("inf")])
    check_finite({"w.a": good, "w.b": None, "w.c": torch.zeros(0)})  # all finite: no error
    with pytest.raises(ValueError, match=r"^w\.c: contains NaN or infinite values$"):
        check_finite({"w.a": good, "w.b": None, "w.c": bad, "w.d": bad * float("nan")})
    check_finite({})
