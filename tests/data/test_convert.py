"""Benchmark converters (persona/data/convert/) on tiny fixtures written here in each dataset's
exact file layout (docs/BENCHMARKS.md lists the sources): a few frames, tiny images, synthetic
SMPL(-X) parameters, valid COLMAP text files. Nothing is downloaded."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from persona.cli import main as persona_main
from persona.data.convert.common import project, quaternion_to_matrix, write_subject
from persona.data.convert.neuman import convert_neuman, official_split
from persona.data.convert.xhumans import convert_xhumans
from persona.data.subject import (
    ALBEDO_RELPATH,
    FramePaths,
    validate_subject,
)
from persona.errors import UserError

W, H = 12, 16  # fixture image size
PERSON = (slice(4, 12), slice(3, 9))  # rows, cols of the person in every fixture frame
XH_TAKES = {"train": {"Take15": [1, 2]}, "test": {"Take1": [1, 2, 3], "Take2": [1, 2]}}
NM_FRAMES = 10  # NeuMan fixture frames 00000..00009


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _image(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    return Rotation.from_rotvec(rng.normal(0, 0.5, 3)).as_matrix()


# ---------------------------------------------------------------------------- X-Humans fixture
def write_xhumans(root: Path, subject: str = "00028") -> Path:
    """X-Avatar data_process/README.md layout; test/Take2 has render/mask, the others depth."""
    rng = _rng(1)
    base = root / subject
    base.mkdir(parents=True)
    (base / "gender.txt").write_text("male\n")
    np.save(base / "mean_shape_smplx.npy", rng.normal(0, 1, 10).astype(np.float32))
    for split, takes in XH_TAKES.items():
        for take, frames in takes.items():
            folder = base / split / take
            for sub in ("render/image", "render/depth", "SMPLX"):
                (folder / sub).mkdir(parents=True)
            extrinsic = []
            for frame in frames:
                Image.fromarray(_image(rng)).save(folder / f"render/image/color_{frame:06d}.png")
                if take == "Take2":
                    (folder / "render/mask").mkdir(exist_ok=True)
                    mask = np.full((H, W), 30, np.uint8)
                    mask[PERSON] = 200
                    Image.fromarray(mask).save(folder / f"render/mask/mask_{frame:06d}.png")
                else:
                    depth = np.full((H, W), 7.5, np.float32)  # background = the maximum
                    depth[PERSON] = 2.0 + rng.random((8, 6)).astype(np.float32)
                    Image.fromarray(depth, mode="F").save(
                        folder / f"render/depth/depth_{frame:06d}.tiff")
                E = np.eye(4)
                E[:3, :3], E[:3, 3] = _rotation(rng), rng.normal(0, 0.3, 3) + [0, 0, 6]
                extrinsic.append(E)
                params = {"global_orient": rng.normal(0, 1, 3), "transl": rng.normal(0, 1, 3),
                          "body_pose": rng.normal(0, 0.3, (1, 63)),  # (1, N) as some takes
                          "left_hand_pose": rng.normal(0, 0.3, 45),
                          "right_hand_pose": rng.normal(0, 0.3, 45),
                          "jaw_pose": rng.normal(0, 0.1, 3), "expression": rng.normal(0, 1, 10),
                          "betas": rng.normal(0, 1, 10)}
                if frame != 2:  # frame 2 lacks the eye poses (X-Avatar zeros them)
                    params["leye_pose"], params["reye_pose"] = rng.normal(0, .1, (2, 3))
                with open(folder / f"SMPLX/mesh-f{frame:05d}_smplx.pkl", "wb") as handle:
                    pickle.dump(params, handle, protocol=2)
            K = np.array([[1800.0, 0, W / 2], [0, 1800.0, H / 2], [0, 0, 1]])
            np.savez(folder / "render/cameras.npz", intrinsic=K, extrinsic=np.stack(extrinsic))
    return base


def _xh_source(base: Path, source_id: str) -> tuple[Path, int, int]:
    split, take, frame = source_id.split()
    frames = XH_TAKES[split][take]
    return base / split / take, int(frame), frames.index(int(frame))


# ---------------------------------------------------------------------------- NeuMan fixture
def write_neuman(root: Path, split_files: bool = True, authors_smplx: bool = False) -> Path:
    """apple/ml-neuman layout (colmap_helper.py's exact headers, neuman_helper.py's names)."""
    rng = _rng(2)
    seq = root / "bike"
    for sub in ("images", "segmentations", "sparse"):
        (seq / sub).mkdir(parents=True)
    names = [f"{i:05d}.png" for i in range(NM_FRAMES)]
    (seq / "sparse/cameras.txt").write_text(
        "# Camera list with one line of data per camera:\n"
        "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n# Number of cameras: 1\n"
        f"1 PINHOLE {W} {H} 900.5 901.5 {W / 2 + 0.25} {H / 2 - 0.5}\n")
    lines = ["# Image list with two lines of data per image:",
             "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
             "#   POINTS2D[] as (X, Y, POINT3D_ID)",
             f"# Number of images: {NM_FRAMES}, mean observations per image: 1.5"]
    alignments, poses = {}, []
    for i, name in reversed(list(enumerate(names))):  # COLMAP lists images in any order
        quat = Rotation.from_matrix(_rotation(rng)).as_quat()  # x, y, z, w
        t = rng.normal(0, 0.2, 3) + [0, 0, 5]
        lines.append(f"{i + 1} {quat[3]} {quat[0]} {quat[1]} {quat[2]} {t[0]} {t[1]} {t[2]} "
                     f"1 {name}")
        lines.append("" if i % 2 else "1.5 2.5 7 3.0 4.0 -1")  # POINTS2D, sometimes empty
    for i, name in enumerate(names):
        Image.fromarray(_image(rng)).save(seq / "images" / name)
        seg = np.full((H, W, 3), 255, np.uint8)  # NeuMan: 255 = background
        seg[PERSON] = 0
        seg[PERSON[0].start, PERSON[1].start] = 128  # NeuMan's rule: anything but 255 = person
        if i == 3:
            seg[0:H, 0:W - 1] = 0  # frame 3 has the largest person
        Image.fromarray(seg).save(seq / "segmentations" / name)
        M = np.zeros((4, 3))  # world = [x, 1] @ M: scaled rotation then shift
        M[:3] = (1.7 * _rotation(rng)).T
        M[3] = rng.normal(0, 1, 3)
        alignments[name] = M
        poses.append(rng.normal(0, 0.4, 72).astype(np.float32))
    (seq / "sparse/images.txt").write_text("\n".join(lines) + "\n")
    np.save(seq / "alignments.npy", alignments, allow_pickle=True)
    with open(seq / "smpl_output_optimized.pkl", "wb") as handle:  # joblib.load reads it too
        pickle.dump({1: {"pose": poses, "betas": [np.zeros(10)] * NM_FRAMES}}, handle)
    if split_files:
        for split, frames in (("train", [0, 1, 3, 4, 5, 6, 8, 9]), ("val", [7]),
                              ("test", [2, 5])):
            (seq / f"{split}_split.txt").write_text("".join(f"{names[i]}\n" for i in frames))
    if authors_smplx:
        folder = seq / "smplx_optimized/smplx_params"
        folder.mkdir(parents=True)
        for i in range(NM_FRAMES):
            data = {"root_pose": rng.normal(0, 1, 3).tolist(),
                    "body_pose": rng.normal(0, .3, (21, 3)).tolist(),
                    "jaw_pose": rng.normal(0, .1, 3).tolist(),
                    "leye_pose": [0.0] * 3, "reye_pose": [0.0] * 3,
                    "lhand_pose": rng.normal(0, .3, (15, 3)).tolist(),
                    "rhand_pose": rng.normal(0, .3, (15, 3)).tolist(),
                    "expr": rng.normal(0, 1, 50).tolist(), "trans": rng.normal(0, 1, 3).tolist()}
            (folder / f"{i}.json").write_text(json.dumps(data))
        (seq / "smplx_optimized/shape_param.json").write_text(json.dumps([0.5] * 10))
    return seq


# ---------------------------------------------------------------------------- helpers
def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _convert(subject, out: Path) -> Path:
    return write_subject(subject, out)


def expected_prep_problems(root: Path) -> set[tuple[str, str]]:
    """(kind, file) of every problem `validate_subject` finds in a converted subject: exactly
    what `persona prep` makes (docs/BENCHMARKS.md section 4): depth, normals and part-seg of the
    photo and of every test frame, the albedo, a generated split; converted without the
    dataset's annotations of the photo (the paper's setting) also the photo's SAM mask and fit."""
    test_ids = [int(x) for x in (root / "test/frame_idx_list.txt").read_text().split()]
    frames = [FramePaths("captured", 0)] + [FramePaths("test", i) for i in test_ids]
    missing = {p.depth for p in frames} | {p.normal for p in frames} | {p.seg for p in frames}
    missing.add(ALBEDO_RELPATH)
    if _json(root / "subject.json")["source"]["input_annotations"] == "none":
        photo = FramePaths("captured", 0)
        missing |= {photo.mask, photo.camera, photo.smplx, "smplx_optimized/shape_param.json"}
    return {("missing_file", str(path)) for path in missing} | {("missing_split", "generated_0")}


def assert_only_prep_outputs_missing(root: Path) -> None:
    problems = {(problem.kind, problem.file) for problem in validate_subject(root)}
    assert problems == expected_prep_problems(root)


# ---------------------------------------------------------------------------- X-Humans tests
def test_xhumans_cameras_project_like_the_source(tmp_path):
    base = write_xhumans(tmp_path / "xh")
    out = _convert(convert_xhumans(base, input_annotations="dataset"), tmp_path / "s")
    ids = (out / "test/frame_idx_orig.txt").read_text().split("\n")[:-1]
    assert ids == [f"test Take1 {f}" for f in (1, 2, 3)] + [f"test Take2 {f}" for f in (1, 2)]
    assert (out / "test/frame_idx_list.txt").read_text().split() == ["0", "1", "2", "3", "4"]
    points = _rng(5).normal(0, 0.5, (7, 3))  # world points near the origin
    for i, source_id in enumerate(ids + ["train Take15 1"]):
        take, _, row = _xh_source(base, source_id)
        with np.load(take / "render/cameras.npz") as cams:
            K, E = cams["intrinsic"], cams["extrinsic"][row]
        cam = points @ E[:3, :3].T + E[:3, 3]
        expected = (cam @ K.T)[:, :2] / cam[:, 2:3]  # [7, 2], the source convention
        split_index = ("test", i) if i < len(ids) else ("captured", 0)
        camera = _json(out / FramePaths(*split_index).camera)
        np.testing.assert_allclose(project(camera, points), expected, atol=1e-9)


def test_xhumans_smplx_round_trip(tmp_path):
    base = write_xhumans(tmp_path / "xh")
    out = _convert(convert_xhumans(base, input_annotations="dataset"), tmp_path / "s")
    ids = (out / "test/frame_idx_orig.txt").read_text().split("\n")[:-1]
    for i, source_id in enumerate(ids):
        take, frame, _ = _xh_source(base, source_id)
        with open(take / f"SMPLX/mesh-f{frame:05d}_smplx.pkl", "rb") as handle:
            src = pickle.load(handle)
        got = _json(out / FramePaths("test", i).smplx)
        for key in ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose",
                    "jaw_pose", "expression", "transl"):
            np.testing.assert_allclose(got[key], np.reshape(src[key], -1), atol=1e-12)
        for key in ("leye_pose", "reye_pose"):
            np.testing.assert_allclose(got[key], np.reshape(src.get(key, np.zeros(3)), -1))
        assert len(got["body_pose"]) == 63
    betas = _json(out / "smplx_optimized/shape_param.json")["betas"]
    np.testing.assert_allclose(betas, np.load(base / "mean_shape_smplx.npy"), atol=1e-6)
    subject = _json(out / "subject.json")
    assert subject["body"]["flat_hand_mean"] is False
    assert subject["source"]["input_frame"] == "train Take15 1"  # ExAvatar's take, first frame
    assert subject["source"]["dataset_gender"] == "male"


def test_xhumans_masks_binarised_from_depth_and_mask_files(tmp_path):
    base = write_xhumans(tmp_path / "xh")
    out = _convert(convert_xhumans(base), tmp_path / "s")
    expected = np.zeros((H, W), np.uint8)
    expected[PERSON] = 255
    for i in range(5):  # 0-2 from depth (Take1), 3-4 from render/mask (Take2)
        with Image.open(out / FramePaths("test", i).mask) as mask:
            assert mask.mode == "L"
            np.testing.assert_array_equal(np.asarray(mask), expected)
    # the paper's default: the input photo only, the rest comes from persona prep
    assert sorted(p.name for p in (out / "captured").iterdir()) == ["frame_idx_orig.txt",
                                                                   "images"]
    assert not (out / "smplx_optimized").exists()


def test_xhumans_converted_subject_lacks_only_prep_outputs(tmp_path, capsys):
    """`persona subject check` passes once persona prep has run: test_convert_then_prep.py."""
    base = write_xhumans(tmp_path / "xh")
    out = _convert(convert_xhumans(tmp_path / "xh", subject="00028", take="Take15", frame=2,
                                   test_takes=["Take2"], input_annotations="dataset"),
                   tmp_path / "s")
    assert (out / "captured/frame_idx_orig.txt").read_text() == "train Take15 2\n"
    assert len((out / "test/frame_idx_list.txt").read_text().split()) == 2
    assert base.is_dir()
    assert_only_prep_outputs_missing(out)
    assert persona_main(["subject", "check", str(out)]) == 1  # until persona prep has run
    report = capsys.readouterr().out
    assert f"{len(expected_prep_problems(out))} problem(s)" in report
    assert "test/depths/0.npy: [file] file is missing" in report


@pytest.mark.parametrize("missing", ["test/Take1/render/cameras.npz",
                                     "test/Take2/SMPLX/mesh-f00002_smplx.pkl",
                                     "test/Take1/render/depth/depth_000003.tiff",
                                     "mean_shape_smplx.npy"])
def test_xhumans_missing_file_is_named(tmp_path, missing):
    base = write_xhumans(tmp_path / "xh")
    (base / missing).unlink()
    with pytest.raises(UserError, match=Path(missing).name.replace(".", r"\.")):
        _convert(convert_xhumans(base, input_annotations="dataset"), tmp_path / "s")
    assert not (tmp_path / "s").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["xh"]  # no staging folder left behind


def test_convert_cli_one_line_error_and_success(tmp_path, capsys):
    base = write_xhumans(tmp_path / "xh")
    (base / "test/Take1/render/cameras.npz").unlink()
    assert persona_main(["convert", "xhumans", str(base), "--out", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cameras.npz" in err[0] and "Traceback" not in err[0]
    base = write_xhumans(tmp_path / "xh2")
    assert persona_main(["convert", "xhumans", str(tmp_path / "xh2"), "--subject", "00028",
                         "--out", str(tmp_path / "s")]) == 0
    assert persona_main(["convert", "xhumans", str(base), "--out", str(tmp_path / "s")]) == 1
    assert "--overwrite" in capsys.readouterr().err


# ---------------------------------------------------------------------------- NeuMan tests
def test_neuman_official_split_rule():
    names = [f"{i:05d}.png" for i in range(100)]
    split = official_split(names)
    assert split["test"] == [f"{i:05d}.png" for i in range(2, 50, 5)]
    assert split["val"] == [f"{i:05d}.png" for i in range(52, 100, 5)]
    assert len(split["train"]) == 80 and not set(split["train"]) & set(split["test"])
    assert official_split(names[:10])["test"] == ["00002.png"]


def test_colmap_quaternion_matches_scipy():
    rng = _rng(3)
    for _ in range(5):
        R = _rotation(rng)
        x, y, z, w = Rotation.from_matrix(R).as_quat()
        np.testing.assert_allclose(quaternion_to_matrix(w, x, y, z), R, atol=1e-12)


def test_neuman_smpl_cameras_and_mapping(tmp_path):
    seq = write_neuman(tmp_path / "nm")
    out = _convert(convert_neuman(seq, input_annotations="dataset"), tmp_path / "s")
    ids = (out / "test/frame_idx_orig.txt").read_text().split()
    assert ids == ["00002.png", "00005.png"]  # test_split.txt
    src = _json(out / "subject.json")["source"]
    assert src["input_frame"] == "00003.png"  # the train frame with the largest mask
    with open(seq / "smpl_output_optimized.pkl", "rb") as handle:
        poses = pickle.load(handle)[1]["pose"]
    alignments = np.load(seq / "alignments.npy", allow_pickle=True).item()
    images = {line.split()[9]: line.split() for line in
              (seq / "sparse/images.txt").read_text().splitlines()
              if len(line.split()) == 10 and not line.startswith("#")}
    points = _rng(6).normal(0, 0.5, (6, 3))  # SMPL-frame points
    for split, i, name in [("test", 0, ids[0]), ("test", 1, ids[1]), ("captured", 0, "00003.png")]:
        camera = _json(out / FramePaths(split, i).camera)
        world = np.c_[points, np.ones(len(points))] @ alignments[name]  # NeuMan: [x, 1] @ M
        qw, qx, qy, qz, tx, ty, tz = (float(v) for v in images[name][1:8])
        R = Rotation.from_quat([qx, qy, qz, qw]).as_matrix()
        cam = world @ R.T + [tx, ty, tz]
        K = np.array([[900.5, 0, W / 2 + 0.25], [0, 901.5, H / 2 - 0.5], [0, 0, 1]])
        expected = (cam @ K.T)[:, :2] / cam[:, 2:3]
        np.testing.assert_allclose(project(camera, points), expected, atol=1e-8)
        np.testing.assert_allclose(np.linalg.det(np.asarray(camera["R"])), 1.0, atol=1e-9)
        smplx = _json(out / FramePaths(split, i).smplx)
        pose = poses[int(name[:5])]
        np.testing.assert_allclose(smplx["global_orient"], pose[:3], atol=1e-6)
        np.testing.assert_allclose(smplx["body_pose"], pose[3:66], atol=1e-6)
        for key in ("left_hand_pose", "right_hand_pose", "jaw_pose", "transl", "expression"):
            assert not np.any(smplx[key]), key
    assert "hand joints 22-23 dropped" in src["smplx"]
    assert _json(out / "smplx_optimized/shape_param.json")["betas"] == [0.0] * 10


def test_neuman_masks_binarised_and_split_computed(tmp_path):
    seq = write_neuman(tmp_path / "nm", split_files=False)
    out = _convert(convert_neuman(seq, input_frame=4), tmp_path / "s")
    assert (out / "test/frame_idx_orig.txt").read_text() == "00002.png\n"  # NeuMan's rule
    assert (out / "captured/frame_idx_orig.txt").read_text() == "00004.png\n"
    with Image.open(out / FramePaths("test", 0).mask) as mask:
        got = np.asarray(mask)
    expected = np.zeros((H, W), np.uint8)
    expected[PERSON] = 255  # value 0 and value 128 are both person, 255 background
    np.testing.assert_array_equal(got, expected)
    assert_only_prep_outputs_missing(out)  # the photo only: its mask and fit too


def test_neuman_authors_smplx_round_trip_lacks_only_prep_outputs(tmp_path, capsys):
    seq = write_neuman(tmp_path / "nm", authors_smplx=True)
    out = _convert(convert_neuman(seq, input_frame=1, input_annotations="dataset"),
                   tmp_path / "s")
    for i, name in enumerate(["00002.png", "00005.png"]):
        src = _json(seq / f"smplx_optimized/smplx_params/{int(name[:5])}.json")
        got = _json(out / FramePaths("test", i).smplx)
        np.testing.assert_allclose(got["global_orient"], src["root_pose"])
        np.testing.assert_allclose(got["body_pose"], np.reshape(src["body_pose"], -1))
        np.testing.assert_allclose(got["left_hand_pose"], np.reshape(src["lhand_pose"], -1))
        np.testing.assert_allclose(got["expression"], src["expr"][:10])  # 10 coefficients
        np.testing.assert_allclose(got["transl"], src["trans"])
    assert _json(out / "smplx_optimized/shape_param.json")["betas"] == [0.5] * 10
    assert_only_prep_outputs_missing(out)
    assert persona_main(["subject", "check", str(out)]) == 1  # until persona prep has run
    report = capsys.readouterr().out
    assert f"{len(expected_prep_problems(out))} problem(s)" in report
    assert "test/depths/0.npy: [file] file is missing" in report


@pytest.mark.parametrize("missing", ["sparse/images.txt", "alignments.npy",
                                     "segmentations/00005.png", "images/00002.png"])
def test_neuman_missing_file_is_named(tmp_path, missing):
    seq = write_neuman(tmp_path / "nm")
    (seq / missing).unlink()
    with pytest.raises(UserError, match=Path(missing).name.replace(".", r"\.")):
        _convert(convert_neuman(seq, input_frame=1, input_annotations="dataset"),
                 tmp_path / "s")
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------------------- protocol configs
@pytest.mark.parametrize("name", ["xhumans", "neuman"])
def test_protocol_configs_are_the_authors_protocol_on_full_frames(name):
    import inspect

    import yaml

    from persona.data.datamodule import PersonaDataModule
    from persona.metrics.protocol import EvalProtocol, load_protocol

    path = Path(__file__).parents[2] / "configs" / "protocol" / f"{name}.yaml"
    assert load_protocol(path) == EvalProtocol(name=name, paste_into_full_image=False)
    data = yaml.safe_load(path.read_text())["data"]
    assert set(data) <= set(inspect.signature(PersonaDataModule.__init__).parameters)
    assert data["resolution_scale"] == 1.0
