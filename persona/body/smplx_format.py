"""The SMPL-X `.npz` file format: reading with clear errors, atomic writing, the `smplx` layer.

Required arrays (smplx 0.1.28): `v_template [V,3]`, `f [F,3]`, `shapedirs [V,3,K]` (K = 400:
300 shape + 100 expression columns; fewer columns means the v1.0 layout of 10 + 10),
`posedirs [V,3,486]`, `J_regressor [55,V]`, `kintree_table [2,55]`, `weights [V,55]`,
`hands_componentsl/r [45,45]`, `hands_meanl/r [45]`, `lmk_faces_idx [51]`,
`lmk_bary_coords [51,3]`, `dynamic_lmk_faces_idx [79,17]`, `dynamic_lmk_bary_coords [79,17,3]`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from persona.atomic import atomic_write
from persona.body.types import NUM_JOINTS

SMPLX_DOWNLOAD_URL = "https://smpl-x.is.tue.mpg.de"
MODEL_PATH_KEY = "model.body.model_path"
GENDER_KEY = "model.body.gender"
GENDERS = ("neutral", "male", "female")
SHAPE_SPACE_DIM = 300  # smplx: shape columns of a full-layout shapedirs
EXPRESSION_SPACE_DIM = 100  # smplx: expression columns after the 300 shape columns
NUM_POSE_BASIS = 486  # 54 joints x 9 rotation-matrix entries (pose correctives)
NUM_HAND_POSE = 45  # 15 finger joints x 3 axis-angle
NUM_STATIC_LANDMARKS = 51
NUM_DYNAMIC_LANDMARK_BINS = 79  # contour lookup bins over neck rotation
NUM_DYNAMIC_LANDMARKS = 17


def model_file_name(gender: str) -> str:
    """File name smplx.create expects for a gender: SMPLX_NEUTRAL.npz etc."""
    return f"SMPLX_{gender.upper()}.npz"


def expected_layout(gender: str = "neutral") -> str:
    names = ", ".join(model_file_name(g) for g in GENDERS)
    return (f"expected DIR/smplx/{model_file_name(gender)} (one of {names}); real SMPL-X files "
            f"come from {SMPLX_DOWNLOAD_URL} (registration required)")


def check_gender(gender: str) -> str:
    if gender not in GENDERS:
        raise ValueError(f"{GENDER_KEY}: unknown gender {gender!r}; expected one of {GENDERS}")
    return gender


def resolve_model_file(model_path: str | os.PathLike[str], gender: str) -> Path:
    """The .npz of `gender` under a SMPL-X folder (DIR/smplx/SMPLX_{GENDER}.npz, or DIR/... or
    the file itself), with an error naming the config keys and the expected names."""
    check_gender(gender)
    root = Path(model_path).expanduser()
    if root.is_file():
        return root
    if not root.exists():
        raise FileNotFoundError(f"{MODEL_PATH_KEY}: folder {root} does not exist; "
                                f"{expected_layout(gender)}")
    for candidate in (root / "smplx" / model_file_name(gender), root / model_file_name(gender)):
        if candidate.is_file():
            return candidate
    present = sorted(p.name for p in root.rglob("SMPLX_*"))
    raise FileNotFoundError(
        f"{MODEL_PATH_KEY}={root} with {GENDER_KEY}={gender!r}: no {model_file_name(gender)} "
        f"found (present: {present or 'none'}); {expected_layout(gender)}")


def expected_shapes(num_vertices: int, num_faces: int) -> dict[str, tuple[int | None, ...]]:
    """Expected array shapes (None = any length) given V and F."""
    return {
        "v_template": (num_vertices, 3),
        "f": (num_faces, 3),
        "shapedirs": (num_vertices, 3, None),
        "posedirs": (num_vertices, 3, NUM_POSE_BASIS),
        "J_regressor": (NUM_JOINTS, num_vertices),
        "kintree_table": (2, NUM_JOINTS),
        "weights": (num_vertices, NUM_JOINTS),
        "hands_componentsl": (NUM_HAND_POSE, NUM_HAND_POSE),
        "hands_componentsr": (NUM_HAND_POSE, NUM_HAND_POSE),
        "hands_meanl": (NUM_HAND_POSE,),
        "hands_meanr": (NUM_HAND_POSE,),
        "lmk_faces_idx": (NUM_STATIC_LANDMARKS,),
        "lmk_bary_coords": (NUM_STATIC_LANDMARKS, 3),
        "dynamic_lmk_faces_idx": (NUM_DYNAMIC_LANDMARK_BINS, NUM_DYNAMIC_LANDMARKS),
        "dynamic_lmk_bary_coords": (NUM_DYNAMIC_LANDMARK_BINS, NUM_DYNAMIC_LANDMARKS, 3),
    }


def read_smplx_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read and validate every array of a SMPL-X-format npz. Errors name the file and field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such SMPL-X model file; {expected_layout()}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: np.asarray(npz[key]) for key in npz.files}
    except Exception as exc:  # noqa: BLE001 - zip, zlib, EOF and header errors all mean "bad file"
        raise ValueError(f"{path}: not a readable SMPL-X .npz (truncated or corrupt: "
                         f"{type(exc).__name__}: {exc}); re-download it from "
                         f"{SMPLX_DOWNLOAD_URL} or rebuild it") from None
    validate_smplx_arrays(arrays, str(path))
    return arrays


def validate_smplx_arrays(arrays: dict[str, np.ndarray], where: str) -> None:
    """Raise ValueError naming `where` and the field for a missing key or a wrong shape."""
    if "v_template" not in arrays or "f" not in arrays:
        missing = [k for k in ("v_template", "f") if k not in arrays]
        raise ValueError(f"{where}: missing array(s) {missing}; not a SMPL-X model file")
    num_vertices, num_faces = arrays["v_template"].shape[0], arrays["f"].shape[0]
    shapes = expected_shapes(num_vertices, num_faces)
    missing = [key for key in shapes if key not in arrays]
    if missing:
        raise ValueError(f"{where}: missing array(s) {missing} required by smplx 0.1.28 "
                         f"(use_face_contour=True); not a complete SMPL-X model file")
    for key, shape in shapes.items():
        actual = arrays[key].shape
        if len(actual) != len(shape) or any(e is not None and a != e
                                            for a, e in zip(actual, shape, strict=True)):
            raise ValueError(f"{where}: field {key!r} has shape {list(actual)}, expected "
                             f"{['*' if e is None else e for e in shape]}")
        if arrays[key].dtype.kind == "f" and not np.isfinite(arrays[key]).all():
            raise ValueError(f"{where}: field {key!r} contains NaN or infinite values")
    faces = arrays["f"]
    if faces.min() < 0 or faces.max() >= num_vertices:
        raise ValueError(f"{where}: field 'f' indexes vertices outside 0..{num_vertices - 1}")


def write_smplx_npz(path: str | os.PathLike[str], arrays: dict[str, np.ndarray],
                    compress: bool = True) -> Path:
    """Validate and write arrays atomically (temporary name in the same folder, then rename).
    compress=False trades disk (zeros of the unused basis columns are stored) for ~0.7 s less
    zlib time per load."""
    validate_smplx_arrays(arrays, str(path))
    return atomic_write(path, lambda temporary: save_npz(temporary, arrays, compress))


def save_npz(target: Path, arrays: dict[str, np.ndarray], compress: bool) -> None:
    """np.savez(_compressed) into the file `target` as named (given a path, numpy would add
    .npz to a name without it)."""
    with open(target, "wb") as stream:
        (np.savez_compressed if compress else np.savez)(stream, **arrays)


def build_smplx_layer(path: str | os.PathLike[str], num_betas: int, num_expression: int,
                      flat_hand_mean: bool, gender: str = "neutral"):
    """An `smplx.SMPLX` layer for one npz file (use_pca=False, use_face_contour=True).

    smplx reports a missing key as `AttributeError: 'Struct' object has no attribute ...`;
    that becomes a ValueError naming the file. Small bodies (fewer vertices than the SMPL-X
    keypoint vertex ids reach, e.g. the procedural body) get their extra keypoints (nose, toes,
    finger tips; PERSONA uses none of them) pointed at vertex 0 so that smplx's forward runs.
    """
    import smplx  # imported here: heavy, and only the loader needs it

    path = Path(path)
    try:
        layer = smplx.SMPLX(str(path), num_betas=num_betas, num_expression_coeffs=num_expression,
                            use_pca=False, flat_hand_mean=flat_hand_mean, use_face_contour=True,
                            gender=gender, ext="npz")
    except AttributeError as exc:
        raise ValueError(f"{path}: not a complete SMPL-X model file ({exc}); "
                         f"{expected_layout(gender)}") from None
    num_vertices = layer.v_template.shape[0]
    selector = layer.vertex_joint_selector
    if int(selector.extra_joints_idxs.max()) >= num_vertices:
        selector.extra_joints_idxs.zero_()
    return layer
