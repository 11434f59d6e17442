"""Bad input to every user-facing command ends in one line naming the file or setting, exit 1,
no traceback (persona/errors.py); `--debug` / PERSONA_DEBUG=1 shows the traceback instead.

Each test is a row of docs/ERRORS.md. Commands run in-process through `persona.cli.main` (capsys)
except the subprocess tests, which check the console script's exit status and stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from persona.cli import main
from persona.data.subject import SubjectError
from persona.errors import (
    UserError,
    nearest_keys,
    run_user_command,
    split_debug,
    suggestion,
    user_message,
)
from persona.lightning_cli import BASE_CONFIG

TINY = str(BASE_CONFIG.parent / "tiny.yaml")
FIT_STEPS = 1  # optimiser steps of the module's run: a real checkpoint, as cheap as possible
TRUNCATED_BYTES = 5000  # a checkpoint cut after this many bytes (it is ~2.5 MB)
REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def subject(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from persona.data.synth import preset_config, synthesize

    root = tmp_path_factory.mktemp("errors") / "subject"
    synthesize(root, preset_config("tiny", seed=2))
    return root


@pytest.fixture
def own_subject(subject: Path, tmp_path: Path) -> Path:
    """A copy of the tiny subject this test may break."""
    return Path(shutil.copytree(subject, tmp_path / "subject"))


@pytest.fixture(scope="module")
def run(subject: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RUN of a one-step `persona fit` (RUN/config.yaml, RUN/checkpoints/last.ckpt)."""
    run = tmp_path_factory.mktemp("errors_run") / "run"
    assert main(["fit", "--config", TINY, "--data.subject_dir", str(subject),
                 "--trainer.default_root_dir", str(run), "--trainer.max_steps", str(FIT_STEPS),
                 "--data.epoch_length", str(FIT_STEPS), "--trainer.max_epochs", "1",
                 "--trainer.limit_val_batches", "0", "--trainer.logger", "false"]) == 0
    assert (run / "checkpoints" / "last.ckpt").is_file()
    return run


@pytest.fixture(scope="module")
def other_body_ckpt(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RUN2/checkpoints/last.ckpt (RUN's config beside it) whose avatar has fewer Gaussians, as
    a checkpoint of another body would."""
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    state = checkpoint["state_dict"]
    state["avatar.mean_offset"] = state["avatar.mean_offset"][:100]
    other = tmp_path_factory.mktemp("errors_other") / "run2"
    (other / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "config.yaml", other / "config.yaml")
    torch.save(checkpoint, other / "checkpoints" / "last.ckpt")
    return other / "checkpoints" / "last.ckpt"


def in_run_folder(tmp_path: Path, run: Path, data: bytes) -> Path:
    """RUN-like folder (RUN's config.yaml) with `data` as checkpoints/last.ckpt."""
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    shutil.copy(run / "config.yaml", tmp_path / "run" / "config.yaml")
    ckpt.write_bytes(data)
    return ckpt


def small_torch_file(path: Path, obj: object = None) -> Path:
    """A valid torch.save archive (by default a Lightning-like checkpoint with no tensors)."""
    torch.save({"state_dict": {}} if obj is None else obj, path)
    return path


# ---------------------------------------------------------------------------- helpers
def one_line(capsys: pytest.CaptureFixture, command: str, argv: list[str],
             *names: str) -> str:
    """Run `persona <argv>`: exit 1, exactly one `persona <command>: ...` line on stderr that
    contains every one of `names`, no traceback. Returns the line."""
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 1, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"persona {command}: ")]
    assert len(lines) == 1, err
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def export_line(capsys: pytest.CaptureFixture, argv: list[str], *names: str) -> str:
    """`persona export|animate|view` print their own one line and exit 1 like every command
    (persona/export/cli.py)."""
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 1, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"persona {argv[0]}: ")]
    assert len(lines) == 1, err
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def parser_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """jsonargparse's answer to a bad config: exit 2, its `error: ...` text."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("error: ") == 1, err
    return err[err.index("error: "):].strip()  # a type error adds an indented line


def fit_argv(subject: Path, tmp_path: Path, *extra: str) -> list[str]:
    """`persona fit` of one step without loggers (each test expects it to stop before)."""
    return ["fit", "--config", TINY, "--data.subject_dir", str(subject),
            "--trainer.default_root_dir", str(tmp_path / "out"), "--trainer.logger", "false",
            "--trainer.max_steps", str(FIT_STEPS), "--data.epoch_length", str(FIT_STEPS),
            "--trainer.limit_val_batches", "0", *extra]


def persona_test_argv(run: Path, ckpt: Path | str) -> list[str]:
    return ["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(ckpt)]


def edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------------------- subjects (fit)
def test_fit_missing_subject_folder(capsys, tmp_path):
    missing = tmp_path / "nowhere"
    line = one_line(capsys, "fit", fit_argv(missing, tmp_path), str(missing),
                    "subject directory does not exist")
    assert "problem" in line


def test_fit_conflicting_trainer_settings(capsys, tmp_path, own_subject):
    # Lightning refuses a progress bar switched off while the config adds one as a callback
    line = one_line(capsys, "fit", fit_argv(own_subject, tmp_path,
                                            "--trainer.enable_progress_bar", "false"),
                    "trainer settings conflict", "enable_progress_bar", "RichProgressBar")
    assert "--trainer" in line


def test_fit_subject_json_not_json(capsys, tmp_path, own_subject):
    (own_subject / "subject.json").write_text("{not json")
    one_line(capsys, "fit", fit_argv(own_subject, tmp_path), str(own_subject), "subject.json",
             "not valid JSON")


def test_fit_missing_mask_file(capsys, tmp_path, own_subject):
    (own_subject / "generated_0" / "masks" / "1.png").unlink()
    one_line(capsys, "fit", fit_argv(own_subject, tmp_path), "generated_0/masks/1.png",
             "file is missing")


def test_fit_corrupt_depth_npy(capsys, tmp_path, own_subject):
    (own_subject / "generated_0" / "depths" / "2.npy").write_bytes(b"not an npy file")
    one_line(capsys, "fit", fit_argv(own_subject, tmp_path), "generated_0/depths/2.npy",
             "not a readable .npy")


def test_fit_nan_in_body_pose(capsys, tmp_path, own_subject):
    def edit(data: dict) -> None:
        data["body_pose"][5] = float("nan")
    edit_json(own_subject / "generated_1" / "smplx_optimized" / "smplx_params" / "0.json", edit)
    one_line(capsys, "fit", fit_argv(own_subject, tmp_path),
             "generated_1/smplx_optimized/smplx_params/0.json", "[body_pose]", "NaN")


def test_fit_nan_in_depth_map(capsys, tmp_path, own_subject):
    path = own_subject / "test" / "depths" / "0.npy"
    depth = np.load(path)
    depth[0, 0] = np.nan
    np.save(path, depth)
    one_line(capsys, "fit", fit_argv(own_subject, tmp_path), "test/depths/0.npy", "NaN")


def test_fit_wrong_shape_hand_pose(capsys, tmp_path, own_subject):
    def edit(data: dict) -> None:
        data["right_hand_pose"] = data["right_hand_pose"][:30]
    edit_json(own_subject / "captured" / "smplx_optimized" / "smplx_params" / "0.json", edit)
    one_line(capsys, "fit", fit_argv(own_subject, tmp_path), "[right_hand_pose]",
             "expected shape [45], got [30]")


def test_fit_normal_map_wrong_shape(capsys, tmp_path, own_subject):
    np.save(own_subject / "generated_1" / "normals" / "1.npy", np.zeros((4, 4), np.float32))
    one_line(capsys, "fit", fit_argv(own_subject, tmp_path), "generated_1/normals/1.npy",
             "expected float [H, W, 3]")


def test_fit_bad_image_file(capsys, tmp_path, own_subject):
    (own_subject / "generated_0" / "images" / "0.png").write_bytes(b"garbage, not a PNG")
    one_line(capsys, "fit", fit_argv(own_subject, tmp_path), "generated_0/images/0.png",
             "not a readable image")


def test_fit_frame_list_names_a_missing_frame(capsys, tmp_path, own_subject):
    with open(own_subject / "generated_0" / "frame_idx_list.txt", "a") as handle:
        handle.write("999\n")
    one_line(capsys, "fit", fit_argv(own_subject, tmp_path), "generated_0/frame_idx_list.txt",
             "frame 999 is listed")


def test_fit_unknown_body_kind(capsys, tmp_path, own_subject):
    edit_json(own_subject / "subject.json", lambda d: d["body"].update(kind="smpl-h"))
    one_line(capsys, "fit", fit_argv(own_subject, tmp_path), "subject.json", "[body.kind]",
             "unknown body model 'smpl-h'")


def test_fit_subject_made_for_smplx_without_smplx_files(capsys, tmp_path, own_subject):
    edit_json(own_subject / "subject.json", lambda d: d["body"].update(kind="smplx"))
    one_line(capsys, "fit", fit_argv(own_subject, tmp_path), "model.body.model_path",
             "required for kind='smplx'")


def test_fit_subject_betas_do_not_match_its_body(capsys, tmp_path, own_subject):
    edit_json(own_subject / "subject.json", lambda d: d["body"].update(num_betas=300))
    one_line(capsys, "fit", fit_argv(own_subject, tmp_path),
             "smplx_optimized/shape_param.json", "[betas]", "expected shape [300], got [10]")


def test_fit_many_problems_are_counted_on_one_line(capsys, tmp_path, own_subject):
    for index in range(3):
        (own_subject / "generated_0" / "masks" / f"{index}.png").unlink()
    (own_subject / "generated_1" / "masks" / "0.png").unlink()
    line = one_line(capsys, "fit", fit_argv(own_subject, tmp_path), "4 problem(s)",
                    "and 1 more", f"persona subject check {own_subject}")
    assert line.count("file is missing") == 3


# ---------------------------------------------------------------------------- settings
def test_fit_bad_setting_value(capsys, tmp_path, subject):
    one_line(capsys, "fit", fit_argv(subject, tmp_path, "--data.resolution_scale", "0"),
             "resolution_scale must be > 0")


def test_fit_option_typo_suggests_the_key(capsys, tmp_path, subject):
    line = parser_error(capsys, ["fit", "--config", TINY, "--data.subjct_dir", str(subject)])
    assert "--data.subjct_dir" in line and "did you mean --data.subject_dir?" in line


def test_fit_config_file_key_typo_suggests_the_key(capsys, tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text("trainr:\n  max_steps: 1\n")
    line = parser_error(capsys, ["fit", "--config", TINY, "--config", str(typo)])
    assert "trainr.max_steps" in line and "did you mean trainer.max_steps" in line


def test_fit_nested_config_key_typo_suggests_the_key(capsys, tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  deformer:\n    triplane_resoluton: 8\n")
    line = parser_error(capsys, ["fit", "--config", TINY, "--config", str(typo)])
    assert "model.deformer.triplane_resolution" in line


def test_fit_missing_config_file(capsys, tmp_path):
    missing = tmp_path / "nothere.yaml"
    line = parser_error(capsys, ["fit", "--config", str(missing)])
    assert str(missing) in line and "does not exist" in line


def test_fit_config_file_not_yaml(capsys, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    assert "Problems parsing config" in parser_error(capsys, ["fit", "--config", str(broken)])


def test_fit_setting_of_the_wrong_type(capsys):
    line = parser_error(capsys, ["fit", "--config", TINY, "--model.subdivision_levels", "abc"])
    assert "model.subdivision_levels" in line


def test_fit_setting_not_among_the_choices(capsys):
    line = parser_error(capsys, ["fit", "--config", TINY, "--model.lpips_net_train", "vgx"])
    assert "model.lpips_net_train" in line and "vgg" in line


# ---------------------------------------------------------------------------- output folders
def test_fit_output_folder_under_a_file(capsys, tmp_path, subject):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    one_line(capsys, "fit", fit_argv(subject, tmp_path, "--trainer.default_root_dir",
                                     str(blocker / "run")), str(blocker), "Not a directory")


@pytest.fixture
def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process may not create files in (as root: /sys, when that refuses)."""
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir(mode=0o500)
        return folder
    try:
        os.mkdir("/sys/persona-errors-probe")
    except PermissionError:
        return Path("/sys")
    os.rmdir("/sys/persona-errors-probe")
    pytest.skip("running as root with a writable /sys: no unwritable folder to use")


def test_fit_unwritable_output_folder(capsys, tmp_path, subject, unwritable_folder):
    out = unwritable_folder / "persona-run"
    one_line(capsys, "fit", fit_argv(subject, tmp_path, "--trainer.default_root_dir",
                                     str(out)), str(out), "not allowed")


def test_synth_output_folder_exists(capsys, subject):
    one_line(capsys, "synth", ["synth", "--out", str(subject)], str(subject),
             "pass --overwrite")


# ---------------------------------------------------------------------------- checkpoints
def test_test_missing_checkpoint(capsys, run, tmp_path):
    missing = tmp_path / "none.ckpt"
    one_line(capsys, "test", persona_test_argv(run, missing), str(missing), "file not found")


def test_test_truncated_checkpoint(capsys, run, tmp_path):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((run / "checkpoints" / "last.ckpt").read_bytes()[:TRUNCATED_BYTES])
    one_line(capsys, "test", persona_test_argv(run, truncated), str(truncated),
             "truncated or corrupt", "re-run `persona fit` or pick another checkpoint")


def test_test_corrupt_checkpoint_bytes(capsys, run, tmp_path):
    """A flipped byte inside a tensor: torch.load would load garbage; the CRC check refuses."""
    source = run / "checkpoints" / "last.ckpt"
    with zipfile.ZipFile(source) as archive:
        member = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
    data = bytearray(source.read_bytes())
    header = member.header_offset
    name_length = int.from_bytes(data[header + 26:header + 28], "little")
    extra_length = int.from_bytes(data[header + 28:header + 30], "little")
    data[header + 30 + name_length + extra_length] ^= 0xFF  # first byte of the tensor data
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(bytes(data))
    one_line(capsys, "test", persona_test_argv(run, corrupt), str(corrupt), "corrupt",
             "checksum mismatch in", "data/0")


def test_test_empty_checkpoint(capsys, run, tmp_path):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    one_line(capsys, "test", persona_test_argv(run, empty), str(empty), "empty file")


def test_test_checkpoint_is_a_text_file(capsys, run, tmp_path):
    text = tmp_path / "notes.ckpt"
    text.write_text("hello\n")
    one_line(capsys, "test", persona_test_argv(run, text), str(text), "not a PyTorch checkpoint")


def test_test_checkpoint_is_an_npz(capsys, run, tmp_path):
    npz = tmp_path / "arrays.npz"
    np.savez(npz, a=np.zeros(3))
    one_line(capsys, "test", persona_test_argv(run, npz), str(npz), "without data.pkl")


def test_test_checkpoint_is_a_folder(capsys, run, tmp_path):
    one_line(capsys, "test", persona_test_argv(run, tmp_path), str(tmp_path), "is a folder")


def test_test_checkpoint_without_state_dict(capsys, run, tmp_path):
    other = small_torch_file(tmp_path / "other.ckpt", {"weights": torch.zeros(2)})
    one_line(capsys, "test", persona_test_argv(run, other), str(other), "no 'state_dict'")


def test_fit_resume_from_a_weights_only_checkpoint(capsys, tmp_path, subject):
    weights = small_torch_file(tmp_path / "weights.ckpt")
    one_line(capsys, "fit", fit_argv(subject, tmp_path, "--ckpt_path", str(weights)),
             str(weights), "'optimizer_states'", "resuming needs a full checkpoint")


def test_test_checkpoint_of_another_body(capsys, run, other_body_ckpt):
    one_line(capsys, "test", persona_test_argv(run, other_body_ckpt), str(other_body_ckpt),
             "does not fit", "avatar.mean_offset", "[100, 3]")


def test_export_truncated_checkpoint(capsys, run, tmp_path):
    ckpt = in_run_folder(tmp_path, run,
                         (run / "checkpoints" / "last.ckpt").read_bytes()[:TRUNCATED_BYTES])
    export_line(capsys, ["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "a.ply"),
                         "--device", "cpu"], str(ckpt), "truncated or corrupt")


def test_animate_truncated_checkpoint(capsys, run, tmp_path):
    ckpt = in_run_folder(tmp_path, run,
                         (run / "checkpoints" / "last.ckpt").read_bytes()[:TRUNCATED_BYTES])
    export_line(capsys, ["animate", "--ckpt", str(ckpt), "--motion", "wave", "--out",
                         str(tmp_path / "a.mp4"), "--device", "cpu"], str(ckpt),
                "truncated or corrupt")


def test_export_checkpoint_without_run_config(capsys, run, tmp_path):
    ckpt = tmp_path / "lonely.ckpt"
    shutil.copy(run / "checkpoints" / "last.ckpt", ckpt)
    export_line(capsys, ["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "a.ply")],
                str(ckpt), "no config.yaml")


def test_export_run_config_not_yaml(capsys, run, tmp_path):
    ckpt = in_run_folder(tmp_path, run, (run / "checkpoints" / "last.ckpt").read_bytes())
    (tmp_path / "run" / "config.yaml").write_text("model: [unclosed\n")
    export_line(capsys, ["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "a.ply")],
                str(tmp_path / "run" / "config.yaml"), "not valid YAML")


def test_export_checkpoint_of_another_body(capsys, other_body_ckpt, tmp_path):
    export_line(capsys, ["export", "--ckpt", str(other_body_ckpt), "--out",
                         str(tmp_path / "a.ply"), "--device", "cpu"], str(other_body_ckpt),
                "does not fit the model built from", "config.yaml", "avatar.mean_offset")


def test_export_output_under_a_file(capsys, run, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    one_line(capsys, "export", ["export", "--ckpt", str(run / "checkpoints" / "last.ckpt"),
                                "--out", str(blocker / "avatar.ply"), "--device", "cpu"],
             str(blocker))


# ---------------------------------------------------------------------------- motions, cameras
def test_animate_unknown_motion(capsys, tmp_path):
    export_line(capsys, ["animate", "--ckpt", str(tmp_path / "x.ckpt"), "--motion", "dnace",
                         "--out", str(tmp_path / "a.mp4")], "'dnace'", "built-ins: ")


def test_animate_motion_with_nan(capsys, tmp_path):
    motion = tmp_path / "motion.npz"
    np.savez(motion, poses=np.full((3, 55, 3), np.nan, np.float32),
             transl=np.zeros((3, 3), np.float32), fps=np.float32(30))
    export_line(capsys, ["animate", "--ckpt", str(tmp_path / "x.ckpt"), "--motion",
                         str(motion), "--out", str(tmp_path / "a.mp4")], str(motion),
                "'poses' contains NaN")


def test_animate_motion_of_the_wrong_shape(capsys, tmp_path):
    motion = tmp_path / "motion.npz"
    np.savez(motion, poses=np.zeros((3, 24, 3), np.float32),
             transl=np.zeros((3, 3), np.float32), fps=np.float32(30))
    export_line(capsys, ["animate", "--ckpt", str(tmp_path / "x.ckpt"), "--motion",
                         str(motion), "--out", str(tmp_path / "a.mp4")], str(motion),
                "'poses' must have shape [T, 55, 3]", "got [3, 24, 3]")


def test_animate_camera_file_without_fields(capsys, tmp_path):
    camera = tmp_path / "camera.json"
    camera.write_text("{}")
    export_line(capsys, ["animate", "--ckpt", str(tmp_path / "x.ckpt"), "--motion", "wave",
                         "--camera", str(camera), "--out", str(tmp_path / "a.mp4")],
                str(camera), "not a cam_params JSON")


def test_synth_unknown_motion(capsys, tmp_path):
    one_line(capsys, "synth", ["synth", "--out", str(tmp_path / "s"), "--motions", "nosuch"],
             "'nosuch'", "built-ins: ")


def test_prep_init_bad_photo(capsys, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"not an image")
    status = main(["prep", "init", str(photo), str(tmp_path / "subject")])
    captured = capsys.readouterr()
    assert status == 1 and "Traceback" not in captured.err + captured.out
    assert f"persona prep init: photo {photo}: not a readable image" in captured.err


# ---------------------------------------------------------------------------- the console script
def console(*argv: str, debug_env: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PERSONA_DEBUG"}
    if debug_env:
        env["PERSONA_DEBUG"] = "1"
    return subprocess.run([sys.executable, "-m", "persona", *argv], capture_output=True,
                          text=True, check=False, env=env, cwd=REPO)


def test_console_script_truncated_checkpoint_exits_1_without_traceback(run, tmp_path):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((run / "checkpoints" / "last.ckpt").read_bytes()[:TRUNCATED_BYTES])
    result = console("test", "--config", TINY, "--ckpt_path", str(truncated))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"persona test: checkpoint {truncated}: truncated or corrupt")


def test_console_script_persona_debug_env_shows_the_traceback(subject):
    """Without it the same command is one line (test_synth_output_folder_exists)."""
    loud = console("synth", "--out", str(subject), debug_env=True)
    assert loud.returncode == 1
    assert "Traceback" in loud.stderr and "FileExistsError" in loud.stderr
    assert not any(line.startswith("persona synth: ") for line in loud.stderr.splitlines())


# ---------------------------------------------------------------------------- --debug, mapping
def test_debug_flag_anywhere_raises_the_original_exception(tmp_path, monkeypatch):
    monkeypatch.delenv("PERSONA_DEBUG", raising=False)
    with pytest.raises(SubjectError, match="subject directory does not exist"):
        main(fit_argv(tmp_path / "nowhere", tmp_path, "--debug"))
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="empty file"):
        main(["--debug", "test", "--config", TINY, "--ckpt_path", str(empty)])
    monkeypatch.setenv("PERSONA_DEBUG", "1")
    with pytest.raises(UserError, match="empty file"):
        main(["test", "--config", TINY, "--ckpt_path", str(empty)])


def test_split_debug_removes_the_flag_and_reads_the_environment():
    assert split_debug(["fit", "--debug", "--x", "1"], {}) == (["fit", "--x", "1"], True)
    assert split_debug(["fit"], {"PERSONA_DEBUG": "1"}) == (["fit"], True)
    assert split_debug(["fit"], {"PERSONA_DEBUG": "0"}) == (["fit"], False)


def _raise(error: BaseException) -> Callable[[list[str]], int]:
    def command(argv: list[str]) -> int:
        raise error
    return command


def test_bugs_keep_their_traceback(capsys):
    """Only the listed kinds become one line: a KeyError, a RuntimeError, and a ValueError
    raised outside persona's own `raise` statements propagate."""
    for error in (KeyError("x"), RuntimeError("boom"), ValueError("from a library")):
        with pytest.raises(type(error)):
            run_user_command("fit", _raise(error), [])
    assert capsys.readouterr().err == ""


def test_own_validation_errors_become_one_line(capsys):
    from persona.data.motions import check_builtin_name

    def command(argv: list[str]) -> int:
        check_builtin_name("nosuch")  # persona's own `raise ValueError(...)`
        return 0

    assert run_user_command("animate", command, []) == 1
    assert capsys.readouterr().err.startswith("persona animate: unknown built-in motion")
    assert run_user_command("x", _raise(UserError("a\n  b")), []) == 1
    assert capsys.readouterr().err == "persona x: a; b\n"


def test_os_errors_name_the_file():
    error = FileNotFoundError(2, "No such file or directory", "/a/b.png")
    assert user_message(error) == "/a/b.png: No such file or directory (check the path)"
    assert user_message(PermissionError(13, "Permission denied", "/x")).startswith(
        "/x: Permission denied (not allowed")


def test_nearest_keys_prefers_the_same_section():
    known = ["trainer.max_steps", "trainer.min_steps", "data.subject_dir", "model.renderer"]
    assert nearest_keys("trainr.max_steps", known)[0] == "trainer.max_steps"
    assert nearest_keys("data.subjct_dir", known) == ["data.subject_dir"]
    assert suggestion("unrecognized arguments: --data.subjct_dir x", known) == (
        "--data.subjct_dir: did you mean --data.subject_dir?")
    assert suggestion("unrecognized arguments: --zzzz 1", known) == ""
