"""X-Humans (Shen et al., CVPR 2023) -> a converted subject (docs/BENCHMARKS.md).

Source layout (X-Avatar's data_process/README.md; names checked against X-Avatar's loaders and
ExAvatar's data/XHumans/XHumans.py):

    SUBJECT/gender.txt                          male | female
    SUBJECT/mean_shape_smplx.npy                SMPL-X betas [10]
    SUBJECT/{train,test}/TakeN/render/image/color_xxxxxx.png     RGB, frame number in 6 digits
    SUBJECT/{train,test}/TakeN/render/depth/depth_xxxxxx.tiff    float depth, background = max
    SUBJECT/{train,test}/TakeN/render/mask/mask_xxxxxx.png       only in re-rendered takes
    SUBJECT/{train,test}/TakeN/render/cameras.npz               intrinsic [3, 3],
                                                                extrinsic [N, 4, 4] world-to-camera
                                                                (OpenCV axes), i-th = i-th image
    SUBJECT/{train,test}/TakeN/SMPLX/mesh-fxxxxx_smplx.pkl      global_orient 3, transl 3,
        body_pose 63, left/right_hand_pose 45, jaw/leye/reye_pose 3, expression 10, betas 10
        (world frame of the cameras; hands relative to the mean hand: flat_hand_mean false)

The paper's protocol (PERSONA_RELEASE preprocess/tools/XHumans/prepare_captured_test_imgs.py):
test = every frame of every take under SUBJECT/test; the input photo is one train frame (the
authors list theirs in captured/frame_idx_orig.txt, shared on Google Drive, not in the repo).
"""

from __future__ import annotations

import pickle
import re
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from persona.data.convert.common import (
    CONVERTER_VERSION,
    INPUT_ANNOTATIONS,
    NUM_BETAS,
    ConvertedSubject,
    Frame,
    body_section,
    camera_json,
    expression_of,
    fit_length,
    flat_array,
    pick,
    read_grey,
    read_rgb,
    require_dir,
    require_file,
    smplx_json,
)
from persona.errors import UserError

PAPER_SUBJECTS = ("00028", "00034", "00087")  # paper Table 2
# the train take ExAvatar fitted per subject (ExAvatar_RELEASE fitting/data/XHumans/XHumans.py)
EXAVATAR_TAKES = {"00028": "Take15", "00034": "Take14", "00087": "Take8"}
TRAIN, TEST = "train", "test"
IMAGE_DIR, IMAGE_NAME = "render/image", "color_{:06d}.png"
DEPTH_DIR, DEPTH_NAME = "render/depth", "depth_{:06d}.tiff"
MASK_DIR, MASK_NAME = "render/mask", "mask_{:06d}.png"
CAMERAS_NAME = "render/cameras.npz"
SMPLX_DIR, SMPLX_NAME = "SMPLX", "mesh-f{:05d}_smplx.pkl"
MEAN_SHAPE_NAME, GENDER_NAME = "mean_shape_smplx.npy", "gender.txt"
IMAGE_PATTERN = re.compile(r"color_(\d+)\.png")
MASK_THRESHOLD = 127  # render/mask PNGs: > this = person
FLAT_HAND_MEAN = False  # X-Avatar's XHumans configs: flat_hand_mean false, use_pca false
# SMPL-X pkl key -> (our key, values); leye/reye absent in some takes (X-Avatar zeros them)
POSE_KEYS = {"global_orient": 3, "body_pose": 63, "jaw_pose": 3, "leye_pose": 3,
             "reye_pose": 3, "left_hand_pose": 45, "right_hand_pose": 45}
OPTIONAL_KEYS = ("leye_pose", "reye_pose")


def find_subject(src: Path, subject: str | None) -> Path:
    """SRC is the subject folder itself (holds train/ and test/) or the dataset root."""
    require_dir(src, "the X-Humans dataset or one subject of it")
    if (src / TEST).is_dir() and (subject is None or src.name == subject):
        return src
    if subject is None:
        found = sorted(p.name for p in src.iterdir() if (p / TEST).is_dir())
        raise UserError(f"{src}: not an X-Humans subject folder (no {TEST}/); pass --subject "
                        f"ID (present: {', '.join(found) or 'none'})")
    return require_dir(src / subject / TEST, f"X-Humans subject {subject}").parent


def take_frames(take: Path) -> list[int]:
    """Frame numbers of a take, sorted (the order of cameras.npz's extrinsics)."""
    folder = require_dir(take / IMAGE_DIR, "rendered colour images")
    numbers = sorted(int(m.group(1)) for p in folder.iterdir()
                     if (m := IMAGE_PATTERN.fullmatch(p.name)))
    if not numbers:
        raise UserError(f"{folder}: no color_xxxxxx.png images")
    return numbers


def read_cameras(take: Path, frames: list[int]) -> dict[int, dict[str, Any]]:
    """render/cameras.npz -> frame number -> our cam_params dict."""
    path = require_file(take / CAMERAS_NAME, "camera intrinsics and extrinsics")
    try:
        with np.load(path, allow_pickle=True) as data:
            arrays = {key: np.asarray(data[key], dtype=np.float64) for key in data.files}
    except (OSError, ValueError, EOFError) as error:
        raise UserError(f"{path}: not a readable .npz ({error})") from error
    for key in ("intrinsic", "extrinsic"):
        if key not in arrays:
            raise UserError(f"{path}: field '{key}' is missing")
    K, E = arrays["intrinsic"], arrays["extrinsic"]  # [3, 3], [N, 4, 4] (or [N, 3, 4])
    if K.shape != (3, 3):
        raise UserError(f"{path}: field 'intrinsic' has shape {list(K.shape)}, expected [3, 3]")
    if E.ndim != 3 or E.shape[1:] not in ((4, 4), (3, 4)) or len(E) != len(frames):
        raise UserError(f"{path}: field 'extrinsic' has shape {list(E.shape)}, expected "
                        f"[{len(frames)}, 4, 4] (one per image of the take)")
    focal, princpt = (K[0, 0], K[1, 1]), (K[0, 2], K[1, 2])
    return {frame: camera_json(E[i, :3, :3], E[i, :3, 3], focal, princpt)
            for i, frame in enumerate(frames)}


def read_smplx(take: Path, frame: int) -> dict[str, list[float]]:
    """SMPLX/mesh-fxxxxx_smplx.pkl -> our SMPL-X JSON dict (world frame, as shipped)."""
    path = require_file(take / SMPLX_DIR / SMPLX_NAME.format(frame), "SMPL-X registration")
    try:
        with open(path, "rb") as handle:
            data = pickle.load(handle, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as error:
        raise UserError(f"{path}: not a readable pickle ({error})") from error
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a dict of SMPL-X parameters")
    pose = {key: flat_array(data, key, n, str(path),
                            default=0.0 if key in OPTIONAL_KEYS else None)
            for key, n in POSE_KEYS.items()}
    return smplx_json(pose, expression_of(data, "expression", str(path)),
                      flat_array(data, "transl", 3, str(path)))


def read_mask(take: Path, frame: int) -> np.ndarray:
    """bool [H, W]: render/mask when present, else the depth map below its maximum (the
    background's depth), as ExAvatar's XHumans loader does."""
    mask_path = take / MASK_DIR / MASK_NAME.format(frame)
    if mask_path.is_file():
        return read_grey(mask_path) > MASK_THRESHOLD
    depth_path = take / DEPTH_DIR / DEPTH_NAME.format(frame)
    require_file(depth_path, f"depth map (no {MASK_DIR}/{MASK_NAME.format(frame)} either)")
    depth = read_grey(depth_path, mode="F")  # [H, W]
    finite = np.isfinite(depth)
    if not finite.any():
        raise UserError(f"{depth_path}: no finite depth")
    return finite & (depth < depth[finite].max()) & (depth > 0)


def frame_record(take: Path, split: str, frame: int, cameras: dict[int, dict[str, Any]] | None
                 ) -> Frame:
    """One frame; with `cameras` also its mask, camera and SMPL-X parameters."""
    image = partial(read_rgb, take / IMAGE_DIR / IMAGE_NAME.format(frame))
    source_id = f"{split} {take.name} {frame}"
    if cameras is None:
        return Frame(source_id, image)
    return Frame(source_id, image, partial(read_mask, take, frame), cameras[frame],
                 read_smplx(take, frame))


def take_record(take: Path, split: str) -> list[Frame]:
    """Every frame of a take with its annotations."""
    frames = take_frames(take)
    cameras = read_cameras(take, frames)
    return [frame_record(take, split, frame, cameras) for frame in frames]


def convert_xhumans(src: str | Path, subject: str | None = None, take: str | None = None,
                    frame: int | None = None, test_takes: list[str] | None = None,
                    input_annotations: str = "none", body_kind: str = "smplx",
                    gender: str = "neutral") -> ConvertedSubject:
    """Read one X-Humans subject: the input photo (a train frame) and every test frame."""
    if input_annotations not in INPUT_ANNOTATIONS:
        raise UserError(f"--input-annotations: expected one of {INPUT_ANNOTATIONS}")
    root = find_subject(Path(src), subject)
    name = root.name
    train_dir = require_dir(root / TRAIN, "train takes (the input photo is a train frame)")
    takes = [p.name for p in train_dir.iterdir() if p.is_dir()]
    take = pick(takes, take or EXAVATAR_TAKES.get(name) or min(takes, default=""), "train take",
                train_dir)
    frames = take_frames(train_dir / take)
    frame = frames[0] if frame is None else frame
    if frame not in frames:
        raise UserError(f"{train_dir / take / IMAGE_DIR}: no frame {frame} "
                        f"({IMAGE_NAME.format(frame)}); frames {frames[0]}..{frames[-1]}")
    with_dataset = input_annotations == "dataset"
    take_dir = train_dir / take
    captured = frame_record(take_dir, TRAIN, frame,
                            read_cameras(take_dir, frames) if with_dataset else None)
    test_dir = require_dir(root / TEST, "test takes")
    present = [p.name for p in test_dir.iterdir() if p.is_dir()]
    chosen = [pick(present, t, "test take", test_dir) for t in test_takes] if test_takes \
        else sorted(present, key=_take_number)
    if not chosen:
        raise UserError(f"{test_dir}: no test takes")
    test_frames = [f for t in chosen for f in take_record(test_dir / t, TEST)]
    betas = None
    if with_dataset:
        shape_path = require_file(root / MEAN_SHAPE_NAME, "SMPL-X betas of the subject")
        betas = fit_length(np.load(shape_path).astype(np.float64).reshape(-1), NUM_BETAS).tolist()
    dataset_gender = (root / GENDER_NAME).read_text().strip() if (root / GENDER_NAME).is_file() \
        else None
    source = {
        "dataset": "X-Humans", "converter": f"persona.data.convert.xhumans v{CONVERTER_VERSION}",
        "subject": name, "input_frame": captured.source_id, "test_takes": chosen,
        "num_test_frames": len(test_frames), "input_annotations": input_annotations,
        "dataset_gender": dataset_gender,
        "notes": "test cameras from render/cameras.npz, SMPL-X from SMPLX/*.pkl (world frame, "
                 "registered with the dataset's gendered SMPL-X and mean_shape_smplx.npy), masks "
                 "from render/mask or the depth maps; run persona prep on the input image "
                 "(docs/BENCHMARKS.md). The authors instead crop every image around the person, "
                 "use a virtual camera and fit SMPL-X to each test image with the identity frozen.",
    }
    return ConvertedSubject(name=name, body=body_section(body_kind, gender, FLAT_HAND_MEAN),
                            captured=captured, test_frames=test_frames, source=source,
                            betas=betas)


def _take_number(name: str) -> tuple[int, str]:
    match = re.search(r"\d+", name)
    return (int(match.group()) if match else -1, name)
