"""A converted benchmark subject through the real `persona prep` chain (docs/BENCHMARKS.md
section 4, in its order and with its arguments), then `persona subject check` and a short
`persona fit`: the user's path from `persona convert` to training.

The fixtures are the X-Humans and NeuMan layouts of tests/data/test_convert.py; the models are
the tiny random instances of tests/data_prep/test_prep_chain.py (SAM, Sapiens TorchScript heads,
MimicMotion on diffusers) loaded through the same configs as the released weights; the SMPL-X
files are the procedural body written in the SMPL-X file format ($PERSONA_SMPLX_PATH, as the
docs say). Model outputs are random, so what is checked is the wiring: every stage reads a
converted subject and what the stages before it wrote, the subject validates, the dataset's test
split (cameras, SMPL-X, masks, images) comes out byte for byte as converted, and training
accepts it. X-Humans is converted with `--input-annotations dataset` (the input photo's mask,
camera, SMPL-X and betas come from the dataset, so SAM and the fit keep them); NeuMan without
(the paper's setting: SAM and the fit make them from the photo).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from test_prep_chain import CONFIGS, GENERATED_RESOLUTION, MOTION_FRAMES, REPO, _tiny_weights
from test_sam_segment import TINY as TINY_SAM
from test_sapiens import pose_centres, pose_heatmaps

from data_prep.cli import main as prep_main
from data_prep.fitting import fitting_camera
from data_prep.stage import keypoints_relpath, load_subject_body, read_keypoints
from persona.body.procedural import build_procedural_arrays
from persona.body.smplx_format import write_smplx_npz
from persona.cli import main as persona_main
from persona.data.motions import Motion, make_builtin_motion, save_motion
from persona.data.subject import (
    camera_from_json,
    read_frame_indices,
    read_subject_config,
    validate_subject,
)

# the tests on the two prep chains (module fixtures) and the fit: ~45 s together on the
# shared 2-core machine at load 8 (measured)
SLOW = pytest.mark.slow

FIT_ITERATIONS = "[5, 5, 5]"  # the photo's fit (NeuMan): wiring only, the keypoints are random
FOOTFIX_ITERATIONS = "20"  # ankle fix steps: wiring only
GENERATED_SPLIT = "generated_0"
PREP_TEST_OUTPUTS = ("depths", "normals", "segs")  # what prep adds to a converted test split
# the X-Humans fixture's person (tests/data/test_convert.py PERSON: rows 4-11, cols 3-8) as
# person_box gives it: outer pixel edges [x1, y1, x2, y2] in index coordinates
XH_PERSON_BOX = (2.5, 3.5, 8.5, 11.5)
POSE_PADDING = 1.25  # configs/prep/keypoints.yaml padding
POSE_HEATMAP_WH = (192.0, 256.0)  # Sapiens pose heatmap width, height


def _load_convert_fixtures():
    """tests/data/test_convert.py (the dataset layouts), under its own module name."""
    path = REPO / "tests" / "data" / "test_convert.py"
    spec = importlib.util.spec_from_file_location("_convert_then_prep_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FIXTURES = _load_convert_fixtures()


def _digests(root: Path, folder: str) -> dict[str, str]:
    """{subject-relative path: sha256} of every file under root/folder."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / folder).rglob("*")) if p.is_file()}


def _prep(config: str, subject: Path, *args: str) -> None:
    status = prep_main(["--config", str(CONFIGS / config), "--data.subject_dir", str(subject),
                        "--trainer.accelerator", "cpu", *args])
    assert status == 0, config


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """Tiny weights, SMPL-X-format body files in $PERSONA_SMPLX_PATH and a short motion; one
    torch thread while the module runs."""
    root = tmp_path_factory.mktemp("tools")
    weights = _tiny_weights(root)
    models = root / "models"
    write_smplx_npz(models / "smplx" / "SMPLX_NEUTRAL.npz", build_procedural_arrays())
    kicks = make_builtin_motion("kicks")
    stride = kicks.num_frames // MOTION_FRAMES
    short = Motion("short_kicks", kicks.poses[::stride][:MOTION_FRAMES],
                   kicks.transl[::stride][:MOTION_FRAMES], kicks.fps / stride)
    motion = root / "short_kicks.npz"
    save_motion(short, motion)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on 2 shared cores: 2 threads made generation 8x slower
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("PERSONA_SMPLX_PATH", str(models))  # docs/BENCHMARKS.md section 4
            yield {"weights": weights, "models": models, "motion": motion}
    finally:
        torch.set_num_threads(threads)


def _run_benchmark_prep(subject: Path, tools: dict[str, object]) -> None:
    """docs/BENCHMARKS.md section 4, stage by stage, with the tiny weights."""
    weights = tools["weights"]
    sam_arch = "{" + ", ".join(f"{k}: {v}" for k, v in TINY_SAM.items()) + "}"
    sam = ("--model.init_args.checkpoint", str(weights["sam"]),
           "--model.init_args.model_type", "vit_b", "--model.init_args.architecture", sam_arch)
    geometry = tuple(arg for task in ("depth", "normal", "seg") for arg in (
        f"--model.init_args.{task}_checkpoint", str(weights[task])))
    pose = ("--model.init_args.pose_checkpoint", str(weights["pose"]))
    generate = {"svd_dir": weights["svd"], "checkpoint": weights["mimicmotion"],
                "device": "cpu", "resolution": GENERATED_RESOLUTION, "tile_size": 4,
                "tile_overlap": 2, "num_inference_steps": 2, "decode_chunk_size": 4}
    generated = ("--data.splits", f"[{GENERATED_SPLIT}]")
    _prep("keypoints.yaml", subject, "--data.splits", "[captured]", *pose)
    _prep("segment.yaml", subject, "--data.splits", "[captured]", *sam)
    _prep("geometry.yaml", subject, "--data.splits", "[captured,test]", *geometry)
    _prep("fit.yaml", subject, "--model.init_args.settings.iterations", FIT_ITERATIONS)
    _prep("albedo.yaml", subject)
    _prep("generate.yaml", subject, "--model.init_args.motions", f"[{tools['motion']}]",
          *(a for k, v in generate.items() for a in (f"--model.init_args.generate.{k}", str(v))))
    _prep("keypoints.yaml", subject, *generated, *pose)
    _prep("footfix.yaml", subject, "--model.init_args.settings.iterations", FOOTFIX_ITERATIONS)
    _prep("segment.yaml", subject, *generated, *sam)
    _prep("geometry.yaml", subject, *generated, *geometry)


def _convert_and_prep(root: Path, tools: dict[str, object], dataset: str, src: Path,
                      *convert_args: str) -> dict[str, object]:
    subject = root / "subject"
    assert persona_main(["convert", dataset, str(src), "--out", str(subject),
                         *convert_args]) == 0
    FIXTURES.assert_only_prep_outputs_missing(subject)
    converted = {folder: _digests(subject, folder) for folder in ("test", "captured")}
    shape = subject / "smplx_optimized" / "shape_param.json"
    shape_bytes = shape.read_bytes() if shape.is_file() else None
    _run_benchmark_prep(subject, tools)
    return {"subject": subject, "converted": converted, "shape": shape_bytes}


@pytest.fixture(scope="module")
def xhumans(tmp_path_factory: pytest.TempPathFactory, tools: dict[str, object]
            ) -> dict[str, object]:
    """X-Humans 00028, input photo train Take15 frame 2 with the dataset's annotations."""
    root = tmp_path_factory.mktemp("xhumans")
    base = FIXTURES.write_xhumans(root / "xh")
    return _convert_and_prep(root, tools, "xhumans", base, "--take", "Take15", "--frame", "2",
                             "--input-annotations", "dataset")


@pytest.fixture(scope="module")
def neuman(tmp_path_factory: pytest.TempPathFactory, tools: dict[str, object]
           ) -> dict[str, object]:
    """NeuMan `bike`, the paper's setting: the input photo only."""
    root = tmp_path_factory.mktemp("neuman")
    seq = FIXTURES.write_neuman(root / "nm")
    return _convert_and_prep(root, tools, "neuman", seq, "--input-frame", "1")


def _assert_test_split_as_converted(prepped: dict[str, object]) -> None:
    """Every converted test file is byte-equal after prep; prep added only depth, normals
    and part-seg for each test frame."""
    subject, before = prepped["subject"], prepped["converted"]["test"]
    after = _digests(subject, "test")
    assert {path: after.get(path) for path in before} == before
    indices = read_frame_indices(subject, "test")
    added = {f"test/{folder}/{i}.{'png' if folder == 'segs' else 'npy'}"
             for folder in PREP_TEST_OUTPUTS for i in indices}
    assert set(after) - set(before) == added
    for folder in ("cam_params", "smplx_optimized/smplx_params", "masks", "images"):
        assert len([p for p in before if p.startswith(f"test/{folder}/")]) == len(indices)


@SLOW
@pytest.mark.parametrize("name", ["xhumans", "neuman"])
def test_prepped_converted_subject_passes_subject_check(name: str, request, capsys) -> None:
    prepped = request.getfixturevalue(name)
    subject = prepped["subject"]
    assert persona_main(["subject", "check", str(subject)]) == 0, capsys.readouterr().out
    assert validate_subject(subject) == []
    assert read_frame_indices(subject, GENERATED_SPLIT) == list(range(MOTION_FRAMES))
    assert (subject / GENERATED_SPLIT / "smplx_optimized" / "footfix.json").is_file()
    assert (subject / "captured" / "image_intrinsics" / "0_albedo.png").is_file()


@SLOW
@pytest.mark.parametrize("name", ["xhumans", "neuman"])
def test_prep_leaves_the_converted_test_split_byte_equal(name: str, request) -> None:
    _assert_test_split_as_converted(request.getfixturevalue(name))


@SLOW
def test_xhumans_dataset_annotations_of_the_photo_are_kept(xhumans: dict[str, object]) -> None:
    """SAM and the fit skip the photo: its dataset mask, camera, SMPL-X and betas stay."""
    subject, before = xhumans["subject"], xhumans["converted"]["captured"]
    after = _digests(subject, "captured")
    assert {path: after.get(path) for path in before} == before
    for path in ("captured/masks/0.png", "captured/cam_params/0.json",
                 "captured/smplx_optimized/smplx_params/0.json"):
        assert path in before
    assert (subject / "smplx_optimized" / "shape_param.json").read_bytes() == xhumans["shape"]
    source = read_subject_config(subject)["source"]
    assert source["input_frame"] == "train Take15 2"


@SLOW
def test_xhumans_photo_keypoints_are_cropped_to_the_dataset_mask(
        xhumans: dict[str, object]) -> None:
    """The tiny pose model puts known heatmap peaks; the keypoint stage maps them through the
    crop of the dataset mask's box (padding 1.25, the image's aspect), not the whole image."""
    keypoints = read_keypoints(xhumans["subject"] / keypoints_relpath("captured", 0))
    x1, y1, x2, y2 = XH_PERSON_BOX
    height, width = FIXTURES.H, FIXTURES.W
    box_w, box_h = (x2 - x1) * POSE_PADDING, (y2 - y1) * POSE_PADDING
    aspect = width / height
    scale = np.array([box_w, box_w / aspect] if box_w > box_h * aspect
                     else [box_h * aspect, box_h])
    center = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
    want = (pose_centres() / (np.array(POSE_HEATMAP_WH) - 1.0) * scale + center
            - 0.5 * scale + 0.5)
    np.testing.assert_allclose(keypoints[:, :2], want, atol=0.01)
    peaks = pose_heatmaps()[0].flatten(1).max(1).values.numpy()
    np.testing.assert_allclose(keypoints[:, 2], peaks, rtol=1e-5)


@SLOW
def test_neuman_photo_is_segmented_and_fitted_by_prep(neuman: dict[str, object]) -> None:
    """The paper's setting: the converter wrote the photo only; SAM wrote its mask and the fit
    its virtual camera, SMPL-X parameters and betas."""
    subject, before = neuman["subject"], neuman["converted"]["captured"]
    assert sorted(before) == ["captured/frame_idx_orig.txt", "captured/images/0.png"]
    assert neuman["shape"] is None
    for path in ("captured/masks/0.png", "captured/keypoints/0.json",
                 "captured/smplx_optimized/smplx_params/0.json"):
        assert (subject / path).is_file(), path
    assert (subject / "smplx_optimized" / "shape_param.json").is_file()
    camera = camera_from_json(json.loads((subject / "captured/cam_params/0.json").read_text()),
                              FIXTURES.W, FIXTURES.H)
    np.testing.assert_allclose(camera.K.numpy(), fitting_camera(FIXTURES.W, FIXTURES.H).K.numpy(),
                               rtol=1e-6)


@SLOW
def test_training_accepts_the_prepped_converted_subject(xhumans: dict[str, object],
                                                        tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert persona_main(["fit", "--config", str(REPO / "configs" / "tiny.yaml"),
                         "--data.subject_dir", str(xhumans["subject"]),
                         "--trainer.default_root_dir", str(run), "--trainer.max_steps", "2",
                         "--trainer.limit_val_batches", "0", "--trainer.logger", "false"]) == 0
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_prep_reads_an_smplx_subjects_files_from_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
        ) -> None:
    """subject.json of a converted subject says `smplx` without a folder: the stages that load
    the subject's body (fit, generate, footfix) take $PERSONA_SMPLX_PATH, as `persona fit` does;
    without it the error names the variable and the file (before, generate and footfix could
    not load an SMPL-X subject at all: they have no body setting)."""
    base = FIXTURES.write_xhumans(tmp_path / "xh")
    subject = tmp_path / "subject"
    assert persona_main(["convert", "xhumans", str(base), "--out", str(subject),
                         "--input-annotations", "dataset"]) == 0
    monkeypatch.delenv("PERSONA_SMPLX_PATH", raising=False)
    with pytest.raises(ValueError, match=r"subject\.json: body kind 'smplx' needs the SMPL-X "
                                         r"files: set \$PERSONA_SMPLX_PATH"):
        load_subject_body(subject)
    capsys.readouterr()
    assert prep_main(["--config", str(CONFIGS / "footfix.yaml"), "--data.subject_dir",
                      str(subject)]) == 1
    assert "$PERSONA_SMPLX_PATH" in capsys.readouterr().err
    models = tmp_path / "models"
    arrays = build_procedural_arrays()
    write_smplx_npz(models / "smplx" / "SMPLX_NEUTRAL.npz", arrays)
    monkeypatch.setenv("PERSONA_SMPLX_PATH", str(models))
    body, identity, config = load_subject_body(subject)
    assert body.num_vertices == len(arrays["v_template"]) and config["kind"] == "smplx"
    betas = json.loads((subject / "smplx_optimized" / "shape_param.json").read_text())["betas"]
    np.testing.assert_allclose(identity.betas.numpy(), betas, rtol=1e-6)
