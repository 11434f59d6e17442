import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from subject_faults import FAULTS

from persona.body.types import PoseParams
from persona.data import subject as S
from persona.data.subject_cli import main as subject_main


def test_valid_tiny_subject_has_no_problem(tiny_subject: Path):
    assert S.validate_subject(tiny_subject) == []


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.__name__)
def test_each_fault_kind_is_reported_with_file_and_field(tiny_subject: Path, fault):
    expected = fault(tiny_subject)
    problems = S.validate_subject(tiny_subject)
    assert [(p.file, p.field, p.kind) for p in problems] == [expected]


def test_all_faults_at_once_are_all_reported(tiny_subject: Path, capsys):
    expected = {fault(tiny_subject) for fault in FAULTS}
    assert len({kind for _, _, kind in expected}) >= 10
    problems = S.validate_subject(tiny_subject)
    assert {(p.file, p.field, p.kind) for p in problems} == expected
    assert subject_main(["check", str(tiny_subject)]) == 1
    out = capsys.readouterr().out
    for file, field, _ in expected:
        assert f"{file}: [{field}]" in out


def test_cli_exit_zero_on_valid_subject(tiny_subject: Path, capsys):
    assert subject_main(["check", str(tiny_subject)]) == 0
    assert "OK" in capsys.readouterr().out


def test_missing_directory_is_a_problem(tmp_path: Path):
    problems = S.validate_subject(tmp_path / "nope")
    assert len(problems) == 1 and problems[0].kind == S.MISSING_FILE


def test_require_valid_subject_raises_with_full_report(tiny_subject: Path):
    expected = [fault(tiny_subject) for fault in FAULTS[:3]]
    with pytest.raises(S.SubjectError) as info:
        S.require_valid_subject(tiny_subject)
    assert len(info.value.problems) == 3
    for file, field, _ in expected:
        assert f"{file}: [{field}]" in str(info.value)


def test_pose_json_round_trip_and_joint_layout():
    full_pose = torch.randn(1, 55, 3)
    pose = PoseParams(full_pose, torch.randn(1, 7), torch.randn(1, 3))
    data = S.pose_to_json(pose)
    assert len(data["body_pose"]) == 63 and len(data["left_hand_pose"]) == 45
    assert data["jaw_pose"] == pytest.approx(full_pose[0, 22].tolist())
    assert data["right_hand_pose"][:3] == pytest.approx(full_pose[0, 40].tolist())
    back = S.pose_from_json(data)
    torch.testing.assert_close(back.full_pose, full_pose)
    torch.testing.assert_close(back.expression, pose.expression)
    torch.testing.assert_close(back.transl, pose.transl)


def test_authors_key_names_are_accepted():
    ours = S.pose_to_json(PoseParams(torch.randn(1, 55, 3), torch.randn(1, 5), torch.randn(1, 3)))
    theirs = {"root_pose": ours["global_orient"], "body_pose": ours["body_pose"],
              "jaw_pose": ours["jaw_pose"], "leye_pose": ours["leye_pose"],
              "reye_pose": ours["reye_pose"], "lhand_pose": ours["left_hand_pose"],
              "rhand_pose": ours["right_hand_pose"], "expr": ours["expression"],
              "trans": ours["transl"]}
    a, b = S.pose_from_json(ours), S.pose_from_json(theirs)
    torch.testing.assert_close(a.full_pose, b.full_pose)
    torch.testing.assert_close(a.transl, b.transl)
    torch.testing.assert_close(a.expression, b.expression)


def test_frame_records_and_maps(tiny_subject: Path):
    records = S.read_frame_records(tiny_subject, S.list_splits(tiny_subject))
    assert [(r.split, r.index) for r in records] == [
        ("captured", 0), ("generated_0", 0), ("generated_0", 1), ("generated_0", 2),
        ("generated_1", 0), ("generated_1", 1), ("test", 0), ("test", 1)]
    assert [r.is_input for r in records] == [True] + [False] * 7
    assert records[0].camera.width == 24 and records[0].camera.height == 32
    assert records[0].camera.K[0, 0].item() == pytest.approx(2000.0 * 24 / 576)
    maps = S.read_frame_maps(tiny_subject, "captured", 0)
    assert set(maps) == {"image", "mask", "depth", "normal", "seg", "albedo"}
    assert maps["image"].shape == (32, 24, 3) and maps["mask"].shape == (32, 24)


def test_writes_are_atomic_and_leave_no_temporary(tmp_path: Path):
    S.write_npy(tmp_path / "a" / "x.npy", np.ones(3, np.float32))
    S.write_json(tmp_path / "a" / "y.json", {"k": 1})
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.npy", "y.json"]


def test_copy_then_validate_is_independent(tiny_subject: Path, tmp_path: Path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_subject, copy)
    FAULTS[0](copy)
    assert S.validate_subject(tiny_subject) == []
    assert len(S.validate_subject(copy)) == 1
