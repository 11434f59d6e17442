"""The self-contained avatar file (`persona export --avatar-file`): export and animate from it
with the subject folder and RUN/config.yaml gone, and its bad-input errors."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch
import yaml

from persona.body.types import PoseParams
from persona.export.avatar_file import AVATAR_FORMAT, AVATAR_VERSION
from persona.export.cli import animate_main, export_main, load_avatar
from persona.export.poses import canonical_pose

MOTION = "dance"  # built-in motion of the posed comparisons
MOTION_FRAME = 10  # a frame of MOTION away from the rest pose
ANIMATE_FRAMES = 2  # frames rendered by the animate test (CPU renderer: keep it short)
ANIMATE_SIZE = ("48", "64")  # width, height of the animate test's video


@dataclass
class HiddenRun:
    """The tiny run's avatar file, written while its run was complete, and what the checkpoint
    gave then; while the fixture is active the subject folder and config.yaml are moved away."""

    ckpt: Path
    avatar: Path
    reference_ply: Path
    reference_posed: dict[str, tuple]  # pose name -> (Gaussians, channels) of the checkpoint
    poses: dict[str, PoseParams]
    hidden: list[Path]  # the paths moved away (absent while the fixture is active)
    config: dict


def motion_frame_pose() -> PoseParams:
    from persona.data.motions import resolve_motion
    from persona.export.poses import motion_pose

    motion = resolve_motion(MOTION)
    return motion_pose(motion.poses, motion.transl, motion.expression, MOTION_FRAME, MOTION)


def posed(avatar, pose: PoseParams) -> tuple:
    with torch.no_grad():
        return avatar.posed_gaussians(pose, "refined")


@pytest.fixture(scope="module")
def hidden_run(tiny_ckpt: Path, tiny_system, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("avatar_file")
    avatar = folder / "tiny.persona"
    reference_ply = folder / "from_ckpt.ply"
    run = tiny_ckpt.parent.parent  # a run folder stands for its checkpoints/last.ckpt
    assert export_main(["--ckpt", str(run), "--avatar-file", "--out", str(avatar)]) == 0
    assert export_main(["--ckpt", str(tiny_ckpt), "--out", str(reference_ply),
                        "--pose", f"motion:{MOTION}:{MOTION_FRAME}", "--device", "cpu"]) == 0
    poses = {"canonical": canonical_pose(), "motion": motion_frame_pose()}
    reference = {name: posed(tiny_system, pose) for name, pose in poses.items()}
    config_file = tiny_ckpt.parent.parent / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    subject = Path(config["data"]["subject_dir"])
    hidden = [subject, config_file]
    stash = folder / "stash"
    stash.mkdir()
    moved = []
    try:
        for index, path in enumerate(hidden):
            target = stash / f"{index}_{path.name}"
            shutil.move(path, target)
            moved.append((target, path))
        yield HiddenRun(tiny_ckpt, avatar, reference_ply, reference, poses, hidden, config)
    finally:  # the session's other tests use the complete run
        for target, path in moved:
            shutil.move(target, path)


def assert_same_gaussians(got: tuple, want: tuple) -> None:
    (gaussians, channels), (ref_gaussians, ref_channels) = got, want
    for name in ("means", "scales", "opacities", "quats"):
        a, b = getattr(gaussians, name), getattr(ref_gaussians, name)
        if b is None:
            assert a is None, name
            continue
        assert a.shape == b.shape, name
        assert torch.equal(a, b), name  # bitwise
    assert set(channels) == set(ref_channels)
    for name, value in channels.items():
        assert torch.equal(value, ref_channels[name]), name


# ---------------------------------------------------------------------------- the file
def test_avatar_file_holds_config_subject_state_and_provenance(hidden_run: HiddenRun) -> None:
    payload = torch.load(hidden_run.avatar, weights_only=True)  # plain values and tensors only
    assert payload["format"] == AVATAR_FORMAT and payload["version"] == AVATAR_VERSION
    assert payload["config"]["model"] == hidden_run.config["model"]
    assert payload["config"]["data"] == hidden_run.config["data"]
    assert "ckpt_path" not in payload["config"]
    checkpoint = torch.load(hidden_run.ckpt, map_location="cpu", weights_only=False)
    assert payload["state_dict"].keys() == checkpoint["state_dict"].keys()
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(payload["state_dict"][key], value), key
    subject = payload["subject"]
    assert subject["identity"]["betas"].ndim == 1
    poses = subject["train_poses"]
    assert poses["full_pose"].shape[1:] == (55, 3)
    assert poses["transl"].shape == (poses["full_pose"].shape[0], 3)
    provenance = payload["provenance"]
    assert provenance["checkpoint"] == str(hidden_run.ckpt.resolve())
    assert provenance["checkpoint_sha256"] == hashlib.sha256(
        hidden_run.ckpt.read_bytes()).hexdigest()
    assert provenance["global_step"] == checkpoint["global_step"] > 0
    assert not list(hidden_run.avatar.parent.glob(".*.tmp*"))  # the temporary file is gone
    print(f"avatar file {hidden_run.avatar.stat().st_size} bytes, checkpoint "
          f"{hidden_run.ckpt.stat().st_size} bytes")  # docs/EXPORT.md quotes them (-s)


# ---------------------------------------------------------------------------- without the run
def test_the_run_is_really_gone(hidden_run: HiddenRun) -> None:
    """The checkpoint alone no longer loads: what follows only works from the avatar file."""
    assert not any(path.exists() for path in hidden_run.hidden)
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        load_avatar(hidden_run.ckpt, "cpu")


def test_avatar_file_poses_like_the_checkpoint(hidden_run: HiddenRun) -> None:
    avatar = load_avatar(hidden_run.avatar, "cpu")
    for name, pose in hidden_run.poses.items():
        assert_same_gaussians(posed(avatar, pose), hidden_run.reference_posed[name])
    # the two poses differ: the comparison tells poses apart
    canonical, moved = (hidden_run.reference_posed[n][0].means for n in ("canonical", "motion"))
    assert (canonical - moved).abs().max() > 0.01


def test_export_ply_from_avatar_file_equals_the_checkpoint_export(hidden_run: HiddenRun,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "from_avatar.ply"
    assert export_main(["--ckpt", str(hidden_run.avatar), "--out", str(out),
                        "--pose", f"motion:{MOTION}:{MOTION_FRAME}", "--device", "cpu"]) == 0
    assert out.read_bytes() == hidden_run.reference_ply.read_bytes()


def test_sequence_and_bundle_exports_from_avatar_file(hidden_run: HiddenRun,
                                                      tmp_path: Path) -> None:
    import numpy as np

    sequence = tmp_path / "sequence"
    assert export_main(["--ckpt", str(hidden_run.avatar), "--motion", MOTION, "--max-frames",
                        "2", "--out", str(sequence), "--device", "cpu"]) == 0
    assert sorted(p.name for p in sequence.glob("*.ply")) == ["frame_00000.ply",
                                                              "frame_00001.ply"]
    bundle = tmp_path / "bundle.npz"
    assert export_main(["--ckpt", str(hidden_run.avatar), "--bundle", "--out", str(bundle),
                        "--device", "cpu"]) == 0
    with np.load(bundle) as arrays:
        means = hidden_run.reference_posed["canonical"][0].means
        assert arrays["means"].shape == tuple(means.shape)


def test_animate_from_avatar_file_writes_an_mp4(hidden_run: HiddenRun, tmp_path: Path) -> None:
    out = tmp_path / "wave.mp4"
    width, height = ANIMATE_SIZE
    assert animate_main(["--ckpt", str(hidden_run.avatar), "--motion", "wave", "--out",
                         str(out), "--max-frames", str(ANIMATE_FRAMES), "--width", width,
                         "--height", height, "--renderer", "torch", "--device", "cpu"]) == 0
    video = iio.imread(out)
    assert video.shape == (ANIMATE_FRAMES, int(height), int(width), 3)
    assert video[:, int(height) // 2].min() < 230  # the avatar is in the picture (on white)


# ---------------------------------------------------------------------------- bad input
def run_persona(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    from persona.cli import main

    code = main(argv)
    return code, capsys.readouterr().err


def assert_one_line(err: str, *parts: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for part in parts:
        assert part in lines[0], (part, lines[0])


@pytest.mark.parametrize("command", ["export", "animate"])
def test_truncated_avatar_file(hidden_run: HiddenRun, tmp_path: Path, command: str,
                               capsys: pytest.CaptureFixture) -> None:
    broken = tmp_path / "broken.persona"
    data = hidden_run.avatar.read_bytes()
    broken.write_bytes(data[:len(data) // 2])
    tail = (["--out", str(tmp_path / "x.ply")] if command == "export"
            else ["--motion", "wave", "--out", str(tmp_path / "x.mp4")])
    code, err = run_persona([command, "--ckpt", str(broken), *tail], capsys)
    assert code == 1
    assert_one_line(err, f"persona {command}: avatar file {broken}: truncated or corrupt",
                    "--avatar-file")
    assert not (tmp_path / "x.ply").exists() and not (tmp_path / "x.mp4").exists()


def test_avatar_file_with_a_damaged_byte(hidden_run: HiddenRun, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    import struct
    import zipfile

    broken = tmp_path / "damaged.persona"
    data = bytearray(hidden_run.avatar.read_bytes())
    with zipfile.ZipFile(hidden_run.avatar) as archive:  # a byte inside the largest tensor
        info = max(archive.infolist(), key=lambda i: i.file_size)
    start = info.header_offset  # local header: 30 bytes, then the name and extra fields
    name_length, extra_length = struct.unpack("<HH", data[start + 26:start + 30])
    data[start + 30 + name_length + extra_length + info.file_size // 2] ^= 0xFF
    broken.write_bytes(bytes(data))
    code, err = run_persona(["export", "--ckpt", str(broken), "--out",
                             str(tmp_path / "x.ply")], capsys)
    assert code == 1
    assert_one_line(err, f"avatar file {broken}: corrupt (checksum mismatch in "
                    f"{info.filename})", "--avatar-file")


def rewritten(hidden_run: HiddenRun, path: Path, **changes) -> Path:
    payload = torch.load(hidden_run.avatar, weights_only=True)
    payload.update(changes)
    torch.save(payload, path)
    return path


def test_avatar_file_of_another_version(hidden_run: HiddenRun, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    newer = rewritten(hidden_run, tmp_path / "newer.persona", version=AVATAR_VERSION + 1)
    code, err = run_persona(["export", "--ckpt", str(newer), "--out", str(tmp_path / "x.ply")],
                            capsys)
    assert code == 1
    assert_one_line(err, f"avatar file {newer}: format version {AVATAR_VERSION + 1}",
                    f"reads version {AVATAR_VERSION}")


def test_avatar_file_told_apart_by_content_not_name(hidden_run: HiddenRun, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    renamed = tmp_path / "avatar.ckpt"  # an avatar file under a checkpoint's name still loads
    shutil.copy(hidden_run.avatar, renamed)
    avatar = load_avatar(renamed, "cpu")
    assert_same_gaussians(posed(avatar, hidden_run.poses["canonical"]),
                          hidden_run.reference_posed["canonical"])
    other = tmp_path / "other.persona"  # a torch file that is not an avatar file
    torch.save({"state_dict": {}}, other)
    code, err = run_persona(["export", "--ckpt", str(other), "--out", str(tmp_path / "x.ply")],
                            capsys)
    assert code == 1
    assert_one_line(err, f"avatar file {other}: not a persona avatar file")


def test_avatar_file_without_its_body_files_names_the_setting(
        hidden_run: HiddenRun, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERSONA_SMPLX_PATH", raising=False)
    payload = torch.load(hidden_run.avatar, weights_only=True)
    subject = dict(payload["subject"])
    subject["body"] = {**subject["body"], "kind": "smplx", "model_path": str(tmp_path / "no")}
    smplx = rewritten(hidden_run, tmp_path / "smplx.persona", subject=subject)
    code, err = run_persona(["export", "--ckpt", str(smplx), "--out", str(tmp_path / "x.ply")],
                            capsys)
    assert code == 1
    assert_one_line(err, f"avatar file {smplx}: its body model is not stored in it",
                    "model.body.model_path")


def test_avatar_file_options(hidden_run: HiddenRun, tmp_path: Path,
                             capsys: pytest.CaptureFixture) -> None:
    assert export_main(["--ckpt", str(hidden_run.ckpt), "--avatar-file", "--out",
                        str(tmp_path / "a.npz")]) == 1
    assert "an avatar file is one .persona file" in capsys.readouterr().err
    assert export_main(["--ckpt", str(hidden_run.ckpt), "--avatar-file", "--bundle", "--out",
                        str(tmp_path / "a.persona")]) == 1
    assert "drop --bundle" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
