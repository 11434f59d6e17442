"""The motion library: SMPL-X pose sequences that drive the generated videos (METHOD.md section 8).

A motion is an ``.npz`` with ``poses`` [T, 55, 3] (axis-angle, SMPL-X joint order, in the body's
own frame: y up, facing +z), ``transl`` [T, 3] (metres, same frame), ``fps`` (scalar) and an
optional ``expression`` [T, E]. Users add their own by writing such a file (``save_motion``) and
passing its path wherever a built-in name is accepted.

The built-ins (rotation, punches, kicks, dance, wave) are procedural: a few joints keyframed as
Euler angles and interpolated with a monotone cubic (PCHIP), so they are smooth and repeatable.
``python -m persona.data.motions DIR`` writes them as npz files: starting points for your own.

``place_in_camera`` puts a motion in front of the virtual camera of METHOD.md section 8 (camera
at the origin, R = I, t = 0; focal 2000 and principal point (288, 512) at 576 x 1024): the body is
turned upright in OpenCV axes (a rotation of pi about x) and its root translated so that the
pelvis sits at a given distance on the optical axis.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.spatial.transform import Rotation

from persona.atomic import atomic_write_bytes
from persona.body.types import NUM_JOINTS, SMPLX_JOINT_NAMES

BUILTIN_MOTIONS: tuple[str, ...] = ("rotation", "punches", "kicks", "dance", "wave", "march",
                                    "kicks_side")
DEFAULT_FPS = 30.0  # frames per second of the built-in motions

# The virtual camera of METHOD.md section 8 at its native size; scale with the resolution.
VIRTUAL_FOCAL = 2000.0  # pixels at 576 x 1024
VIRTUAL_WIDTH = 576
VIRTUAL_HEIGHT = 1024
SUBJECT_DISTANCE = 4.5  # metres from the camera to the pelvis: a 1.7 m body spans ~74 % of height
PELVIS_HEIGHT_IN_IMAGE = -0.05  # metres (camera y, down positive): pelvis just above the centre

_JOINT = {name: i for i, name in enumerate(SMPLX_JOINT_NAMES)}


@dataclass
class Motion:
    """An SMPL-X pose sequence in the body frame (y up, facing +z)."""

    name: str
    poses: np.ndarray  # [T, 55, 3] axis-angle
    transl: np.ndarray  # [T, 3] metres
    fps: float
    expression: np.ndarray | None = None  # [T, E]

    @property
    def num_frames(self) -> int:
        return int(self.poses.shape[0])


# ----------------------------------------------------------------------------------------------
# npz IO
# ----------------------------------------------------------------------------------------------
def save_motion(motion: Motion, path: str | Path) -> None:
    validate_motion_arrays(motion.poses, motion.transl, motion.fps, motion.expression, str(path))
    arrays = {"poses": motion.poses.astype(np.float32), "transl": motion.transl.astype(np.float32),
              "fps": np.float32(motion.fps)}
    if motion.expression is not None:
        arrays["expression"] = motion.expression.astype(np.float32)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def validate_motion_arrays(poses: np.ndarray, transl: np.ndarray, fps: float,
                           expression: np.ndarray | None, where: str) -> None:
    """Raise ValueError naming the file and the key when a motion array is malformed."""
    if poses.ndim != 3 or poses.shape[1:] != (NUM_JOINTS, 3) or poses.shape[0] < 1:
        raise ValueError(f"{where}: 'poses' must have shape [T, 55, 3] (axis-angle, SMPL-X joint "
                         f"order), got {list(poses.shape)}")
    frames = poses.shape[0]
    if transl.shape != (frames, 3):
        raise ValueError(f"{where}: 'transl' must have shape [{frames}, 3], got "
                         f"{list(transl.shape)}")
    if expression is not None and (expression.ndim != 2 or expression.shape[0] != frames):
        raise ValueError(f"{where}: 'expression' must have shape [{frames}, E], got "
                         f"{list(expression.shape)}")
    for key, value in (("poses", poses), ("transl", transl), ("expression", expression)):
        if value is not None and not np.isfinite(value).all():
            raise ValueError(f"{where}: '{key}' contains NaN or infinite values")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"{where}: 'fps' must be a positive number, got {fps}")


def load_motion(path: str | Path) -> Motion:
    """Read and validate a motion npz; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"motion file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: np.asarray(data[key]) for key in data.files}
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable npz file: {error}") from error
    for key in ("poses", "transl", "fps"):
        if key not in arrays:
            raise ValueError(f"{path}: missing key '{key}' (a motion needs poses [T,55,3], "
                             f"transl [T,3], fps)")
    if arrays["fps"].size != 1:
        raise ValueError(f"{path}: 'fps' must be a scalar, got shape {list(arrays['fps'].shape)}")
    poses = arrays["poses"].astype(np.float32)
    transl = arrays["transl"].astype(np.float32)
    expression = arrays.get("expression")
    expression = None if expression is None else expression.astype(np.float32)
    fps = float(arrays["fps"].reshape(()))
    validate_motion_arrays(poses, transl, fps, expression, str(path))
    return Motion(path.stem, poses, transl, fps, expression)


def check_builtin_name(name: str) -> None:
    if name not in BUILTIN_MOTIONS:
        raise ValueError(f"unknown built-in motion {name!r}; built-ins: "
                         f"{', '.join(BUILTIN_MOTIONS)} (or give the path of an .npz)")


def resolve_motion(name_or_path: str) -> Motion:
    """A built-in name (made from its definition below) or the path of a user npz."""
    if name_or_path in BUILTIN_MOTIONS:
        return make_builtin_motion(name_or_path)
    if not name_or_path.endswith(".npz") and not Path(name_or_path).exists():
        check_builtin_name(name_or_path)  # raises: unknown built-in, lists them
    return load_motion(name_or_path)


# ----------------------------------------------------------------------------------------------
# Procedural definitions
# ----------------------------------------------------------------------------------------------
Keyframes = dict[str, list[tuple[float, tuple[float, float, float]]]]


def euler_to_rotvec(angles_xyz: np.ndarray) -> np.ndarray:
    """Rotate about the parent's z, then y, then x (angles given as x, y, z). [..., 3] -> [..., 3]
    """
    flat = angles_xyz.reshape(-1, 3)
    rotvec = Rotation.from_euler("zyx", flat[:, ::-1]).as_rotvec()
    return rotvec.reshape(angles_xyz.shape)


def mirror(angles_xyz: tuple[float, float, float]) -> tuple[float, float, float]:
    """Left <-> right mirror (through the x = 0 plane) of Euler angles."""
    x, y, z = angles_xyz
    return (x, -y, -z)


def _interpolate(times: np.ndarray, keys: list[tuple[float, tuple[float, ...]]]) -> np.ndarray:
    """PCHIP through (time, value) keys; constant outside. [T] -> [T, D]."""
    key_times = np.array([k[0] for k in keys])
    values = np.array([k[1] for k in keys], dtype=np.float64)  # [K, D]
    if len(keys) == 1:
        return np.repeat(values, len(times), axis=0)
    return PchipInterpolator(key_times, values, axis=0, extrapolate=False)(
        np.clip(times, key_times[0], key_times[-1]))


def keyframed_motion(name: str, duration: float, joint_keys: Keyframes,
                     transl_keys: list[tuple[float, tuple[float, float, float]]] | None = None,
                     fps: float = DEFAULT_FPS) -> Motion:
    """Joints keyed as Euler angles (x, y, z about the parent's axes), other joints zero."""
    times = np.arange(round(duration * fps)) / fps  # [T]
    euler = np.zeros((len(times), NUM_JOINTS, 3))  # [T, 55, 3]
    for joint, keys in joint_keys.items():
        euler[:, _JOINT[joint]] = _interpolate(times, keys)
    poses = euler_to_rotvec(euler)  # [T, 55, 3]
    transl = (np.zeros((len(times), 3)) if transl_keys is None
              else _interpolate(times, transl_keys))  # [T, 3]
    return Motion(name, poses.astype(np.float32), transl.astype(np.float32), fps)


# A relaxed standing pose: arms down beside the body, elbows slightly bent.
RELAXED: dict[str, tuple[float, float, float]] = {
    "left_shoulder": (0.0, 0.0, -1.2), "right_shoulder": mirror((0.0, 0.0, -1.2)),
    "left_elbow": (0.0, -0.25, 0.0), "right_elbow": mirror((0.0, -0.25, 0.0)),
}
# A boxing guard: upper arms down and forward, forearms up.
GUARD: dict[str, tuple[float, float, float]] = {
    "left_shoulder": (0.0, -0.6, -1.0), "right_shoulder": mirror((0.0, -0.6, -1.0)),
    "left_elbow": (0.0, -2.0, 0.0), "right_elbow": mirror((0.0, -2.0, 0.0)),
}
LEFT_PUNCH = {"left_shoulder": (0.0, -1.35, -0.15), "left_elbow": (0.0, -0.1, 0.0),
              "spine2": (0.0, -0.25, 0.0)}
RIGHT_PUNCH = {"right_shoulder": mirror((0.0, -1.35, -0.15)),
               "right_elbow": mirror((0.0, -0.1, 0.0)), "spine2": (0.0, 0.25, 0.0)}


def _pose_track(keyed_poses: list[tuple[float, dict[str, tuple[float, float, float]]]]
                ) -> Keyframes:
    """A list of (time, partial pose) -> per-joint keys; a joint absent at a time is zero."""
    joints = sorted({joint for _, pose in keyed_poses for joint in pose})
    return {joint: [(time, pose.get(joint, (0.0, 0.0, 0.0))) for time, pose in keyed_poses]
            for joint in joints}


def casual_pose() -> np.ndarray:
    """The input image's casual pose (arms relaxed, weight on one leg, head tilted). [55, 3]."""
    euler = np.zeros((NUM_JOINTS, 3))
    casual = {**RELAXED, "left_shoulder": (0.1, -0.15, -1.1), "right_shoulder": (0.0, 0.3, 1.3),
              "right_elbow": (0.0, 0.6, 0.0), "left_hip": (-0.08, 0.0, 0.06),
              "right_hip": (0.0, -0.1, -0.04), "left_knee": (0.15, 0.0, 0.0),
              "head": (0.05, 0.12, 0.08), "spine2": (0.0, 0.05, -0.04)}
    for joint, angles in casual.items():
        euler[_JOINT[joint]] = angles
    return euler_to_rotvec(euler).astype(np.float32)


def make_rotation() -> Motion:
    """A full turn in place in 3 s, arms relaxed."""
    duration = 3.0
    keys = {joint: [(0.0, angles)] for joint, angles in RELAXED.items()}
    keys["pelvis"] = [(t, (0.0, 2 * math.pi * t / duration, 0.0))
                      for t in np.linspace(0.0, duration, 7)]
    return keyframed_motion("rotation", duration, keys)


def make_punches() -> Motion:
    """Guard, then left, right, left, right jabs (2.4 s)."""
    track = [(0.0, GUARD)]
    for i, punch in enumerate((LEFT_PUNCH, RIGHT_PUNCH, LEFT_PUNCH, RIGHT_PUNCH)):
        start = 0.3 + 0.5 * i
        track += [(start + 0.15, {**GUARD, **punch}), (start + 0.4, GUARD)]
    track.append((2.4, GUARD))
    return keyframed_motion("punches", 2.4, _pose_track(track))


def make_kicks() -> Motion:
    """Front kicks, right then left, arms in guard (2.6 s)."""
    chamber_right = {"right_hip": (-1.3, 0.0, 0.0), "right_knee": (1.8, 0.0, 0.0),
                     "spine1": (0.1, 0.0, 0.0)}
    extend_right = {"right_hip": (-1.4, 0.0, 0.0), "right_knee": (0.15, 0.0, 0.0),
                    "spine1": (0.2, 0.0, 0.0), "left_knee": (0.1, 0.0, 0.0)}
    chamber_left = {"left_hip": (-1.3, 0.0, 0.0), "left_knee": (1.8, 0.0, 0.0),
                    "spine1": (0.1, 0.0, 0.0)}
    extend_left = {"left_hip": (-1.4, 0.0, 0.0), "left_knee": (0.15, 0.0, 0.0),
                   "spine1": (0.2, 0.0, 0.0), "right_knee": (0.1, 0.0, 0.0)}
    track = [(0.0, GUARD), (0.3, GUARD), (0.55, {**GUARD, **chamber_right}),
             (0.75, {**GUARD, **extend_right}), (0.95, {**GUARD, **chamber_right}),
             (1.25, GUARD), (1.45, GUARD), (1.7, {**GUARD, **chamber_left}),
             (1.9, {**GUARD, **extend_left}), (2.1, {**GUARD, **chamber_left}), (2.4, GUARD),
             (2.6, GUARD)]
    return keyframed_motion("kicks", 2.6, _pose_track(track))


def make_dance() -> Motion:
    """Hip sway with bouncing knees, arms raised in turn, head and torso following (3 s)."""
    beat = 0.375  # seconds per beat (160 bpm half-time)
    arm_up = {"left": (0.0, 0.0, 1.2), "right": mirror((0.0, 0.0, 1.2))}
    track = []
    transl_keys = []
    for i in range(9):
        time = i * beat
        side = 1.0 if i % 2 else -1.0
        pose = dict(RELAXED)
        pose["pelvis"] = (0.0, 0.15 * side, 0.08 * side)
        pose["spine2"] = (0.0, -0.1 * side, -0.12 * side)
        pose["head"] = (0.1 * (i % 3 == 1), 0.25 * side, 0.0)
        bend = 0.35 if i % 2 else 0.05
        pose["left_hip"] = (-bend / 2, 0.0, 0.0)
        pose["right_hip"] = (-bend / 2, 0.0, 0.0)
        pose["left_knee"] = (bend, 0.0, 0.0)
        pose["right_knee"] = (bend, 0.0, 0.0)
        phase = i % 4
        if phase == 1:
            pose["left_shoulder"], pose["left_elbow"] = arm_up["left"], (0.0, 0.0, 0.6)
        elif phase == 3:
            pose["right_shoulder"] = arm_up["right"]
            pose["right_elbow"] = mirror((0.0, 0.0, 0.6))
        track.append((time, pose))
        transl_keys.append((time, (0.08 * side, -0.05 * bend / 0.35, 0.0)))
    return keyframed_motion("dance", 8 * beat, _pose_track(track), transl_keys)


def make_wave() -> Motion:
    """A right-hand wave while turning slightly (2 s); the default held-out test motion."""
    raised = {**RELAXED, "right_shoulder": mirror((0.0, 0.0, 0.25)),
              "right_elbow": mirror((0.0, 0.0, 1.3))}
    track = [(0.0, RELAXED)]
    for i in range(5):
        swing = 1.0 if i % 2 else 1.6
        track.append((0.4 + 0.3 * i, {**raised, "right_elbow": mirror((0.0, 0.0, swing)),
                                      "pelvis": (0.0, -0.3 + 0.15 * i, 0.0)}))
    track.append((2.0, {**raised, "pelvis": (0.0, 0.3, 0.0)}))
    return keyframed_motion("wave", 2.0, _pose_track(track))


# The march's knee-up pose of the right leg (the left is its mirror): thigh raised to about the
# kicks' chamber (hip -1.3 there), knee bent, the opposite arm swung forward, the pelvis turned.
MARCH_HIP_FLEX = -1.1  # rad about x: thigh forward and up
MARCH_KNEE_BEND = 1.3  # rad about x
MARCH_ARM_SWING = 0.5  # rad about x from RELAXED: the arm opposite the raised knee forward
MARCH_PELVIS_TURN = 0.1  # rad about y toward the raised knee


def _march_step(side: str) -> dict[str, tuple[float, float, float]]:
    """Knee up on ``side`` ("left" | "right"), the other arm forward, this arm back."""
    other = "left" if side == "right" else "right"
    turn = MARCH_PELVIS_TURN if side == "left" else -MARCH_PELVIS_TURN
    relaxed = RELAXED[f"{other}_shoulder"]
    forward = (relaxed[0] - MARCH_ARM_SWING, relaxed[1], relaxed[2])
    relaxed_own = RELAXED[f"{side}_shoulder"]
    back = (relaxed_own[0] + MARCH_ARM_SWING / 2, relaxed_own[1], relaxed_own[2])
    return {**RELAXED, f"{side}_hip": (MARCH_HIP_FLEX, 0.0, 0.0),
            f"{side}_knee": (MARCH_KNEE_BEND, 0.0, 0.0), f"{other}_knee": (0.05, 0.0, 0.0),
            f"{other}_shoulder": forward, f"{side}_shoulder": back,
            "pelvis": (0.0, turn, 0.0), "spine2": (0.0, -turn, 0.0)}


def make_march() -> Motion:
    """High-knee marching in place with arm swing, right knee first (2 s); the garment preset's
    held-out test motion: it swings the skirt (the legs) and the sleeves (the arms) in
    combinations no training motion has (docs/SUBJECT_FORMAT.md, the displacement table)."""
    track = [(0.0, RELAXED)]
    for i in range(4):
        start = 0.5 * i
        track += [(start + 0.25, _march_step("right" if i % 2 == 0 else "left")),
                  (start + 0.5, RELAXED)]
    return keyframed_motion("march", 2.0, _pose_track(track))


SIDE_TURN = math.pi / 2  # rad about the vertical: the body turned to show its right side


def make_kicks_side() -> Motion:
    """The front kicks with the whole body turned a quarter to its left, so a front camera sees
    the legs (and a skirt) swing across the image instead of towards it."""
    kicks = make_kicks()
    turn = Rotation.from_rotvec([0.0, SIDE_TURN, 0.0])
    poses = kicks.poses.astype(np.float64).copy()  # [T, 55, 3]
    poses[:, 0] = (turn * Rotation.from_rotvec(poses[:, 0])).as_rotvec()
    return Motion("kicks_side", poses.astype(np.float32), kicks.transl, kicks.fps,
                  kicks.expression)


_MAKERS = {"rotation": make_rotation, "punches": make_punches, "kicks": make_kicks,
           "dance": make_dance, "wave": make_wave,
           "march": make_march, "kicks_side": make_kicks_side}


def make_builtin_motion(name: str) -> Motion:
    check_builtin_name(name)
    return _MAKERS[name]()


def write_builtin_motions(folder: str | Path) -> list[Path]:
    """The built-in motions as npz files in folder: starting points for your own motions."""
    paths = []
    for name in BUILTIN_MOTIONS:
        path = Path(folder) / f"{name}.npz"
        save_motion(make_builtin_motion(name), path)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------
# Camera placement (METHOD.md section 8)
# ----------------------------------------------------------------------------------------------
def virtual_intrinsics(width: int, height: int) -> np.ndarray:
    """The virtual camera scaled to ``width`` x ``height`` (aspect kept by the caller). [3, 3]."""
    scale_x, scale_y = width / VIRTUAL_WIDTH, height / VIRTUAL_HEIGHT
    return np.array([[VIRTUAL_FOCAL * scale_x, 0.0, width / 2.0],
                     [0.0, VIRTUAL_FOCAL * scale_y, height / 2.0],
                     [0.0, 0.0, 1.0]])


UPRIGHT_IN_CAMERA = np.diag([1.0, -1.0, -1.0])  # body frame (y up, facing +z) -> OpenCV camera


def place_in_camera(poses: np.ndarray, transl: np.ndarray, rest_pelvis: np.ndarray,
                    distance: float = SUBJECT_DISTANCE,
                    pelvis_height: float = PELVIS_HEIGHT_IN_IMAGE,
                    centre_on_mean: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Body-frame poses [T,55,3] and translations [T,3] -> camera-frame (R = I, t = 0) ones.

    SMPL-X rotates the root about the rest pelvis ``rest_pelvis`` [3] (the shaped zero-pose root
    joint), so turning the whole body by U = UPRIGHT_IN_CAMERA needs
    transl' = U (J0 + transl) - J0 + offset, with the offset placing the (mean) pelvis at
    (0, pelvis_height, distance). Returns (poses [T,55,3], transl [T,3]).
    """
    upright = UPRIGHT_IN_CAMERA
    root = Rotation.from_matrix(np.broadcast_to(upright, (len(poses), 3, 3))) * \
        Rotation.from_rotvec(poses[:, 0].astype(np.float64))
    out_poses = poses.astype(np.float64).copy()
    out_poses[:, 0] = root.as_rotvec()
    anchor = transl.mean(axis=0) if centre_on_mean else transl[0]
    target = np.array([0.0, pelvis_height, distance])
    out_transl = (transl - anchor) @ upright.T + target - rest_pelvis  # [T, 3]
    return out_poses.astype(np.float32), out_transl.astype(np.float32)


if __name__ == "__main__":
    import sys

    for written in write_builtin_motions(sys.argv[1] if len(sys.argv) > 1 else "motions"):
        print(written)
