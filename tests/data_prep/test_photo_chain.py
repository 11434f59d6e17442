"""`persona prep photo` (data_prep/photo.py): the whole CPU chain from one real photo, and what
training does with a subject that declares maps and splits missing.

The real-photo tests use the BSD-3 crop in tests/data_prep/real/ (its README gives the
provenance) and the BlazePose files; they skip with the reason when those are missing. The pure
parts (crop planning, the body normal map, the "missing" declaration) always run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from test_light_pose import (
    DETECTOR,
    LANDMARKER,
    REAL_PHOTO,
    TWO_PEOPLE_GAP,
    needs_models,
    two_people,
)

from data_prep import photo as chain
from data_prep.albedo import body_normal_map, drop_grazing
from persona.data.subject import (
    MISSING_KEY,
    declared_missing,
    read_frame_maps,
    validate_subject,
    write_json,
)
from persona.render.types import Camera

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "prep"
REPROJECTION_BAR = 3.0  # % of the person's height (issue 14)
OPEN_BODY = chain.body_section("open", "neutral", 10, 10)
TINY_SCALE, TINY_CANVAS = 0.4, 300  # the real person at 40 %: found (measured), ~86 px tall


def photo_config(folder: Path, **detect: object) -> Path:
    """configs/prep/photo_light.yaml with absolute paths (tests run from any folder)."""
    data = yaml.safe_load((CONFIGS / "photo_light.yaml").read_text())
    data["detect"].update(detector_model=str(DETECTOR), landmark_model=str(LANDMARKER), **detect)
    data["stages"] = {name: str(REPO / path) for name, path in data["stages"].items()}
    path = folder / "photo.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def save_rgb(path: Path, image: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def run_main(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    status = chain.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_nothing_written(folder: Path) -> None:
    """No subject and no staging folder left beside the inputs."""
    left = sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert left == [], left


# ----------------------------------------------------------------------------------------------
# Pure parts
# ----------------------------------------------------------------------------------------------
def test_crop_adds_the_margin_clips_and_scales() -> None:
    settings = chain.DetectSettings(margin=0.1, target_height=(256, 1024), max_upscale=4)
    crop = chain.plan_crop(np.array([100.0, 50.0, 200.0, 450.0]), (1000, 480), settings)
    assert crop.box == (60, 10, 240, 480)  # 40 px margin; the bottom clipped to the photo
    assert crop.scale == 1.0 and crop.size == (180, 470)
    small = chain.plan_crop(np.array([10.0, 10.0, 40.0, 110.0]), (500, 500), settings)
    assert small.scale == pytest.approx(2.56)  # 100 px person -> 256 px
    assert small.to_subject([10.0, 10.0]) == pytest.approx([(10 - 0) * 2.56, (10 - 0) * 2.56])
    tall = chain.plan_crop(np.array([0.0, 0.0, 100.0, 2048.0]), (500, 4000), settings)
    assert tall.scale == pytest.approx(0.5)
    tiny = chain.plan_crop(np.array([0.0, 0.0, 10.0, 20.0]), (500, 500), settings)
    assert tiny.scale == 4.0  # never enlarged more than max_upscale


def test_body_normal_map_known_answer() -> None:
    """A square facing the camera at z = 2: normals (0, 0, +-1) on it, 0 around it; tilting
    it past the grazing limit drops it."""
    K = torch.tensor([[100.0, 0.0, 32.0], [0.0, 100.0, 32.0], [0.0, 0.0, 1.0]])
    camera = Camera(K=K, R=torch.eye(3), t=torch.zeros(3), width=64, height=64)
    square = torch.tensor([[-0.2, -0.2, 2.0], [0.2, -0.2, 2.0], [0.2, 0.2, 2.0], [-0.2, 0.2, 2.0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    normals = body_normal_map(square, faces, camera)  # [64, 64, 3]
    covered = np.abs(normals).sum(-1) > 0
    assert covered[32, 32] and not covered[2, 2]
    assert covered.sum() == pytest.approx(20 * 20, abs=2 * 20 + 1)  # 0.4 m at 2 m, f 100
    np.testing.assert_allclose(np.abs(normals[covered, 2]), 1.0, atol=1e-5)
    kept = drop_grazing(normals, K.numpy())
    assert (np.abs(kept).sum(-1) > 0).sum() == covered.sum()  # facing the camera: all kept
    edge_on = normals.copy()
    edge_on[covered] = [1.0, 0.0, 0.0]  # seen edge-on
    assert not np.abs(drop_grazing(edge_on, K.numpy())).sum(-1).any()


def test_missing_declaration_is_validated() -> None:
    assert declared_missing({MISSING_KEY: ["depth", "generated"]}) == {"depth", "generated"}
    assert declared_missing({}) == frozenset()


def test_settings_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"detect": {"target_height": [500, 100]}}))
    with pytest.raises(ValueError, match=r"bad\.yaml.*target_height"):
        chain.read_settings(bad)
    bad.write_text(yaml.safe_dump({"stages": {"depth": "x.yaml"}}))
    with pytest.raises(ValueError, match=r"bad\.yaml.*unknown stage"):
        chain.read_settings(bad)


# ----------------------------------------------------------------------------------------------
# The chain on the real crop
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    if not REAL_PHOTO.is_file() or not DETECTOR.is_file():
        pytest.skip("the BlazePose files or the real photo are missing")
    folder = tmp_path_factory.mktemp("photo_chain")
    config = photo_config(folder)
    subject = folder / "subject"
    log = chain.run_chain(REAL_PHOTO, subject, OPEN_BODY, config=config)
    return {"subject": subject, "config": config, "log": log, "folder": folder}


@needs_models
def test_chain_gives_a_valid_subject_that_reprojects_its_keypoints(
        prepared: dict[str, object]) -> None:
    subject = Path(prepared["subject"])
    assert validate_subject(subject) == []
    report = json.loads((subject / "captured/fit_report/0.json").read_text())
    assert report["height_from"] == "mask" and report["keypoints_used"] >= 15
    assert report["median_error_percent_of_height"] < REPROJECTION_BAR
    errors = np.array(list(report["errors_px"].values()))
    assert report["median_error_px"] == pytest.approx(np.median(errors), abs=1e-3)
    assert report["median_error_percent_of_height"] == pytest.approx(
        100 * report["median_error_px"] / report["person_height_px"])
    log = prepared["log"]
    assert set(log["stages"]) == set(chain.STAGE_NAMES)
    assert log["reprojection"]["median_error_percent_of_height"] < REPROJECTION_BAR


@needs_models
def test_chain_records_person_crop_missing_and_albedo_source(prepared: dict[str, object]
                                                             ) -> None:
    subject = Path(prepared["subject"])
    config = json.loads((subject / "subject.json").read_text())
    assert config["missing"] == list(chain.MISSING_ON_CPU)
    assert config["person"]["num_people"] == 1 and config["person"]["rule"] == "largest"
    image = rgb(subject / "captured/images/0.png")
    crop = config["crop"]
    assert crop["size"] == [image.shape[1], image.shape[0]]
    x0, y0, x1, y1 = crop["box"]
    assert crop["size"] == [round((x1 - x0) * crop["scale"]), round((y1 - y0) * crop["scale"])]
    if config["person"]["height_px_in_photo"] < chain.DetectSettings().target_height[0]:
        assert crop["scale"] > 1.0  # a small person is enlarged
    keypoints = json.loads((subject / "captured/keypoints/0.json").read_text())
    assert keypoints["person"]["rule"] == "nearest"  # found again near the chosen hip
    albedo = json.loads((subject / "captured/image_intrinsics/0_albedo.json").read_text())
    assert albedo["normals"] == "fitted body" and albedo["mask_pixels_with_normals"] > 0.5


@needs_models
def test_rerun_does_no_work_and_resume_runs_only_what_is_missing(
        prepared: dict[str, object], capsys: pytest.CaptureFixture) -> None:
    subject = Path(prepared["subject"])
    files = {p: p.stat().st_mtime_ns for p in subject.rglob("*") if p.is_file()
             and p.name != chain.PHOTO_LOG}

    def refuse(argv: list[str]) -> int:
        raise AssertionError(f"a stage ran on a finished subject: {argv}")

    chain.run_chain(REAL_PHOTO, subject, OPEN_BODY, config=prepared["config"],
                    run_stage=refuse)
    out = capsys.readouterr().out
    assert out.count("skipped") == len(chain.STAGE_NAMES)
    assert {p: p.stat().st_mtime_ns for p in files} == files  # nothing rewritten
    from data_prep.cli import main as prep_main

    ran: list[str] = []

    def record(argv: list[str]) -> int:
        ran.append(Path(argv[argv.index("--config") + 1]).name)
        return prep_main(argv)

    (subject / "captured/image_intrinsics/0_albedo.png").unlink()  # as if killed there
    chain.run_chain(REAL_PHOTO, subject, OPEN_BODY, config=prepared["config"], run_stage=record)
    assert ran == ["albedo_light.yaml"]
    assert (subject / "captured/image_intrinsics/0_albedo.png").is_file()


@needs_models
def test_resuming_with_another_person_or_photo_is_refused(prepared: dict[str, object],
                                                          tmp_path: Path) -> None:
    subject = Path(prepared["subject"])
    with pytest.raises(ValueError, match=r"person\.requested_index.*--overwrite"):
        chain.run_chain(REAL_PHOTO, subject, OPEN_BODY, person_index=1,
                        config=prepared["config"])
    other = save_rgb(tmp_path / "other.png", rgb(REAL_PHOTO)[:, ::-1].copy())
    with pytest.raises(ValueError, match=r"photo\.sha256"):
        chain.run_chain(other, subject, OPEN_BODY, config=prepared["config"])


@needs_models
def test_training_runs_on_the_photo_subject_with_the_missing_terms_off(
        prepared: dict[str, object], tmp_path: Path) -> None:
    from persona.cli import main
    from persona.data.datamodule import PersonaDataModule
    from persona.losses.table import LossWeights, without_missing_maps

    subject = Path(prepared["subject"])
    dm = PersonaDataModule(str(subject))
    dm.setup("fit")
    assert dm.missing == set(chain.MISSING_ON_CPU) and dm.generated_rows == []
    sampler = dm.make_sampler()
    assert len(sampler) == 100 and set(sampler) == set(dm.input_rows)  # input image only
    sample = dm.train_dataset()[0]
    assert not sample["depth"].any() and not sample["normal"].any() and not sample["seg"].any()

    weights, off = without_missing_maps(LossWeights(), dm.missing)
    assert off == ["depth", "normal", "seg"]
    assert (weights.depth, weights.normal, weights.seg) == (0.0, 0.0, 0.0)
    assert weights.mask == LossWeights().mask  # the rest untouched
    run = tmp_path / "run"
    assert main(["fit", "--config", str(REPO / "configs" / "tiny.yaml"),
                 "--data.subject_dir", str(subject), "--data.resolution_scale", "0.5",
                 "--trainer.default_root_dir", str(run), "--trainer.max_steps", "2",
                 "--trainer.logger", "false"]) == 0
    assert (run / "checkpoints" / "last.ckpt").is_file()


@needs_models
def test_undeclared_missing_maps_are_still_reported(prepared: dict[str, object],
                                                    tmp_path: Path) -> None:
    """Without the declaration the same subject is invalid (the check is not weakened), and
    an unknown name in "missing" is a problem of its own."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(Path(prepared["subject"]), copy)
    config = json.loads((copy / "subject.json").read_text())
    config["missing"] = ["depth", "normal"]
    write_json(copy / "subject.json", config)
    problems = {(p.kind, p.file) for p in validate_subject(copy)}
    assert problems == {("missing_file", "captured/segs/0.png"),
                        ("missing_split", "generated_0")}
    config["missing"] = ["depth", "normal", "seg", "generated", "albedo"]
    write_json(copy / "subject.json", config)
    problems = {(p.kind, p.field) for p in validate_subject(copy)}
    assert ("bad_value", "missing") in problems  # and, not honoured, the maps are asked for
    assert ("missing_file", "file") in problems
    maps = read_frame_maps(copy, "captured", 0, frozenset({"depth", "normal", "seg"}))
    assert maps["depth"].shape == maps["image"].shape[:2] and not maps["normal"].any()


# ----------------------------------------------------------------------------------------------
# Bad input: one line naming the file, nothing half-written
# ----------------------------------------------------------------------------------------------
def test_not_an_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    fake = inputs / "holiday.jpg"
    fake.write_text("this is not a photo\n")
    status, _, err = run_main([str(fake), str(inputs / "subject"), "--config",
                               str(photo_config(tmp_path))], capsys)
    assert status == 1
    assert len(err.strip().splitlines()) == 1 and "holiday.jpg" in err
    assert "not a readable image" in err
    assert_nothing_written(inputs)


@needs_models
def test_no_person(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    blank = save_rgb(inputs / "wall.png", np.full((300, 240, 3), 200, np.uint8))
    status, _, err = run_main([str(blank), str(inputs / "subject"), "--config",
                               str(photo_config(tmp_path))], capsys)
    assert status == 1
    assert len(err.strip().splitlines()) == 1 and "wall.png" in err
    assert "no person found" in err
    assert_nothing_written(inputs)


@needs_models
def test_a_failed_overwrite_keeps_the_old_subject(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    old = tmp_path / "subject"
    old.mkdir()
    (old / "subject.json").write_text("{}")
    blank = save_rgb(tmp_path / "wall.png", np.full((300, 240, 3), 200, np.uint8))
    status, _, err = run_main([str(blank), str(old), "--overwrite", "--config",
                               str(photo_config(tmp_path))], capsys)
    assert status == 1 and "no person found" in err
    assert (old / "subject.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["subject"]


@needs_models
def test_tiny_person(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    image = rgb(REAL_PHOTO)
    small = cv2.resize(image, (int(image.shape[1] * TINY_SCALE), int(image.shape[0] * TINY_SCALE)),
                       interpolation=cv2.INTER_AREA)
    canvas = np.full((TINY_CANVAS, TINY_CANVAS, 3), 255, np.uint8)
    canvas[-small.shape[0]:, 20:20 + small.shape[1]] = small
    path = save_rgb(inputs / "far_away.png", canvas)
    status, _, err = run_main([str(path), str(inputs / "subject"), "--config",
                               str(photo_config(tmp_path))], capsys)
    assert status == 1
    assert len(err.strip().splitlines()) == 1 and "far_away.png" in err
    assert "px tall, under detect.min_person_height" in err
    assert_nothing_written(inputs)


@needs_models
def test_two_people_the_choice_is_reported_and_recorded(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    image = rgb(REAL_PHOTO)
    height, width = image.shape[:2]
    canvas = two_people(image)
    gap = TWO_PEOPLE_GAP
    path = save_rgb(tmp_path / "two.png", canvas)
    config = str(photo_config(tmp_path, min_detection_score=0.3))
    status, out, _ = run_main([str(path), str(tmp_path / "largest"), "--config", config,
                               "--until", "start"], capsys)
    assert status == 0
    assert "2 person(s) found in two.png" in out and "--person-index" in out
    kept = json.loads((tmp_path / "largest/subject.json").read_text())
    assert kept["person"]["num_people"] == 2 and kept["person"]["rule"] == "largest"
    assert kept["crop"]["box"][2] <= width + gap // 2  # the full-size person, on the left
    other = 1 - kept["person"]["chosen"]
    status, out, _ = run_main([str(path), str(tmp_path / "other"), "--config", config,
                               "--until", "start", "--person-index", str(other)], capsys)
    assert status == 0 and f"--person-index {other}" in out
    chosen = json.loads((tmp_path / "other/subject.json").read_text())
    assert chosen["person"]["chosen"] == other and chosen["crop"]["box"][0] >= width


def test_smplx_without_its_files_is_one_line_before_anything_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(chain.SMPLX_PATH_ENV, raising=False)
    inputs = tmp_path / "in"
    inputs.mkdir()
    photo = save_rgb(inputs / "me.png", np.zeros((64, 64, 3), np.uint8))
    status, _, err = run_main([str(photo), str(inputs / "subject"), "--body", "smplx"], capsys)
    assert status == 1 and len(err.strip().splitlines()) == 1
    assert chain.SMPLX_PATH_ENV in err
    assert_nothing_written(inputs)


SHORT_FIT_ITERATIONS = [60, 60, 60]  # the wiring test below: a quicker fit


@needs_models
def test_chain_with_a_body_in_the_smplx_file_format(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`--body smplx` end to end on SMPL-X-format files (the procedural body written as
    smplx/SMPLX_NEUTRAL.npz, as tests/data_prep/test_convert_then_prep.py does): the subject
    says kind smplx, the fit and the albedo load it from $PERSONA_SMPLX_PATH, the subject
    validates. A shorter fit: this checks the path, the open-body test above the accuracy."""
    from persona.body.procedural import build_procedural_arrays
    from persona.body.smplx_format import write_smplx_npz

    models = tmp_path / "models"
    write_smplx_npz(models / "smplx" / "SMPLX_NEUTRAL.npz", build_procedural_arrays())
    monkeypatch.setenv(chain.SMPLX_PATH_ENV, str(models))
    fit = yaml.safe_load((CONFIGS / "fit.yaml").read_text())
    fit["model"]["init_args"]["settings"]["iterations"] = SHORT_FIT_ITERATIONS
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(fit))
    config = photo_config(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["stages"]["fit"] = str(tmp_path / "fit.yaml")
    config.write_text(yaml.safe_dump(data))
    subject = tmp_path / "subject"
    log = chain.run_chain(REAL_PHOTO, subject, chain.body_section("smplx", "neutral", 10, 10),
                          config=config)
    assert json.loads((subject / "subject.json").read_text())["body"]["kind"] == "smplx"
    assert validate_subject(subject) == []
    assert log["reprojection"]["median_error_percent_of_height"] < REPROJECTION_BAR


@needs_models
@pytest.mark.skipif(not os.environ.get(chain.SMPLX_PATH_ENV),
                    reason=f"${chain.SMPLX_PATH_ENV} is not set (real SMPL-X files)")
def test_chain_with_real_smplx(tmp_path: Path) -> None:
    subject = tmp_path / "subject"
    log = chain.run_chain(REAL_PHOTO, subject, chain.body_section("smplx", "neutral", 10, 10),
                          config=photo_config(tmp_path))
    assert validate_subject(subject) == []
    assert log["reprojection"]["median_error_percent_of_height"] < REPROJECTION_BAR
