"""The tracked clip as a motion npz (persona/data/motions.py format) with what was reported.

The fit lives in the camera frame (OpenCV axes: y down, z away from the camera); a motion lives
in the body's own frame (y up, facing +z). The camera frame is the body frame turned by
U = UPRIGHT_IN_CAMERA (`place_in_camera`), so with the root rotating about the rest pelvis J0:
R_body = U R_cam and x_body = U (x_cam + J0) - J0. The trajectory is then anchored: the first
frame at x = z = 0 and the height relative to its mean over the clip.

Beside poses / transl / fps (all `load_motion` reads) the npz holds `track_missing_frames` (int:
frames without landmarks, interpolated), `track_dropped_frames` (int: frames absent from the
video's timestamps) and `track_report` (a JSON string: source, people, camera, errors).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from persona.atomic import atomic_write_bytes
from persona.data.motions import UPRIGHT_IN_CAMERA, Motion, validate_motion_arrays

MISSING_KEY = "track_missing_frames"
DROPPED_KEY = "track_dropped_frames"
REPORT_KEY = "track_report"


def camera_to_body_frame(full_pose: np.ndarray, transl: np.ndarray, rest_pelvis: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame poses [T, 55, 3] and translations [T, 3] -> body-frame ones (anchored)."""
    upright = UPRIGHT_IN_CAMERA
    poses = np.array(full_pose, dtype=np.float64, copy=True)
    root = Rotation.from_matrix(np.broadcast_to(upright, (len(poses), 3, 3))) * \
        Rotation.from_rotvec(poses[:, 0])
    poses[:, 0] = root.as_rotvec()
    body_transl = (transl + rest_pelvis) @ upright.T - rest_pelvis  # [T, 3]
    anchor = np.array([body_transl[0, 0], body_transl[:, 1].mean(), body_transl[0, 2]])
    return poses, body_transl - anchor


def motion_npz_bytes(motion: Motion, missing: list[int], dropped: list[int],
                     report: dict[str, Any], where: str) -> bytes:
    """The npz file's bytes (validated like `save_motion`, plus the tracker's keys)."""
    validate_motion_arrays(motion.poses, motion.transl, motion.fps, None, where)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, poses=motion.poses.astype(np.float32),
                        transl=motion.transl.astype(np.float32), fps=np.float32(motion.fps),
                        **{MISSING_KEY: np.asarray(missing, np.int32),
                           DROPPED_KEY: np.asarray(dropped, np.int32),
                           REPORT_KEY: np.asarray(json.dumps(report))})
    return buffer.getvalue()


def write_track_motion(path: str | Path, motion: Motion, missing: list[int], dropped: list[int],
                       report: dict[str, Any]) -> Path:
    """Write the motion npz atomically (a temporary name, then a rename)."""
    path = Path(path)
    atomic_write_bytes(path, motion_npz_bytes(motion, missing, dropped, report, str(path)))
    return path


def read_track_report(path: str | Path) -> tuple[list[int], list[int], dict[str, Any]]:
    """(missing frames, dropped frames, report) of a motion written by `persona track`."""
    with np.load(path, allow_pickle=False) as data:
        return (data[MISSING_KEY].tolist(), data[DROPPED_KEY].tolist(),
                json.loads(str(data[REPORT_KEY])))
