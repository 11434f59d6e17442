"""Per-frame landmarks of one person: BlazePose (data_prep/light_pose.py) over a clip.

Two passes over the frames:
1. the detector on every frame; detections are linked into people (tracks): a detection
   continues the track whose last mid-hip is nearest, within FOLLOW_GATE of its body size and
   MAX_TRACK_GAP frames. The person tracked is the most prominent (the largest summed body size
   over the clip: big and long in view) or the `--person-index`-th by prominence; the choice
   and the number of people are reported;
2. the landmark model per frame on that person: the crop tracked from the previous frame's
   landmarks (MediaPipe's video mode; the detector misses small or backlit people) while it stays
   on the person's detection, else the person's detection crop.
A frame keeps no landmarks when the person is not seen, is smaller than `min_person_px`, or the
landmark model says there is no pose: its status says which, and the fit interpolates it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_prep import light_pose as lp

MIN_PERSON_PX = 96  # px: a person's body box (BlazePose's, ~ its height) below this is too small
FOLLOW_GATE = 1.0  # a detection continues a person within this x the person's body size (px)
MAX_TRACK_GAP = 15  # frames a person may go undetected and still be the same person
STATUS_OK = "ok"
STATUS_NONE = "no person"
STATUS_TINY = "too small"
STATUS_NO_POSE = "no pose"
STATUS_DROPPED = "dropped"
STATUSES = (STATUS_OK, STATUS_NONE, STATUS_TINY, STATUS_NO_POSE, STATUS_DROPPED)
KP_HIP = lp.KP_HIP  # detection keypoint 0: the mid-hip


@dataclass
class FrameDetection:
    """One frame's outcome."""

    status: str  # one of STATUSES
    num_people: int = 0
    person_size: float = 0.0  # px, the chosen person's body box side
    hip: np.ndarray | None = None  # [2] px, the chosen person's mid-hip (detector)
    landmarks: np.ndarray | None = None  # [33, 3] x, y (px), visibility
    world: np.ndarray | None = None  # [33, 3] metres, origin between the hips, camera axes
    next_roi: lp.Roi | None = None  # the crop tracked into the next frame


@dataclass
class Detections:
    """All frames on the regular time grid (dropped slots included)."""

    landmarks: np.ndarray  # [T, 33, 3] x, y, score (score 0 where status != ok)
    world: np.ndarray  # [T, 33, 3] metres (0 where status != ok)
    status: list[str]  # [T]
    num_people: np.ndarray  # [T] int
    person_size: np.ndarray  # [T] px
    first_choice: dict = field(default_factory=dict)  # how the person was chosen (reported)

    @property
    def valid(self) -> np.ndarray:
        """[T] bool: frames with landmarks."""
        return np.array([s == STATUS_OK for s in self.status])

    def frames_with(self, status: str) -> list[int]:
        return [i for i, s in enumerate(self.status) if s == status]


def default_models(folder: str | Path = lp.DEFAULT_MODEL_DIR) -> tuple[Path, Path]:
    """(detector, landmark model) .tflite paths in a weights folder."""
    folder = Path(folder)
    return folder / "pose_detection.tflite", folder / "pose_landmark_full.tflite"


@dataclass
class PersonTrack:
    """One person's detections over the clip."""

    people: dict[int, lp.Person] = field(default_factory=dict)  # grid slot -> detection
    last_slot: int = 0

    @property
    def prominence(self) -> float:
        """Summed body size (px) over the frames the person is detected in."""
        return float(sum(p.size for p in self.people.values()))

    @property
    def last(self) -> lp.Person:
        return self.people[self.last_slot]


def _hip(person: lp.Person) -> np.ndarray:
    return person.keypoints[KP_HIP]


def link_tracks(detections: list[tuple[int, list[lp.Person]]]) -> list[PersonTrack]:
    """(slot, people) per frame -> tracks, most prominent first. Greedy nearest matching: a
    detection continues a track last seen at most MAX_TRACK_GAP slots before, whose mid-hip is
    within FOLLOW_GATE x its last body size; any other detection starts a track."""
    tracks: list[PersonTrack] = []
    for slot, people in detections:
        pairs = []
        for t, track in enumerate(tracks):
            if slot - track.last_slot > MAX_TRACK_GAP:
                continue
            for p, person in enumerate(people):
                distance = float(np.linalg.norm(_hip(person) - _hip(track.last)))
                if distance <= FOLLOW_GATE * max(track.last.size, 1.0):
                    pairs.append((distance / max(track.last.size, 1.0), t, p))
        used_tracks, used_people = set(), set()
        for _, t, p in sorted(pairs):
            if t in used_tracks or p in used_people:
                continue
            tracks[t].people[slot], tracks[t].last_slot = people[p], slot
            used_tracks.add(t)
            used_people.add(p)
        for p, person in enumerate(people):
            if p not in used_people:
                tracks.append(PersonTrack({slot: person}, slot))
    return sorted(tracks, key=lambda track: -track.prominence)


def choose_track(tracks: list[PersonTrack], person_index: int | None) -> int:
    """Index into tracks (most prominent first): person_index, or 0."""
    index = 0 if person_index is None else int(person_index)
    if not 0 <= index < len(tracks):
        raise ValueError(f"--person-index {person_index}: {len(tracks)} person(s) were found "
                         f"over the clip (indices 0-{len(tracks) - 1}, most prominent first)")
    return index


def tracking_roi(raw_landmarks: np.ndarray, roi: lp.Roi) -> lp.Roi:
    """The next frame's crop from this frame's two auxiliary landmarks (33: mid-hip, 34: the
    body-scale point), placed like a detection's keypoints 0 and 1 (MediaPipe's video mode:
    pose_landmarks_to_roi.pbtxt). raw_landmarks [195] in crop pixels."""
    values = raw_landmarks.reshape(lp.NUM_RAW_LANDMARKS, lp.LANDMARK_VALUES)
    aux = values[lp.NUM_LANDMARKS:lp.NUM_LANDMARKS + 2, :2] / lp.LANDMARK_SIZE  # [2, 2]
    matrix = lp.roi_to_image_matrix(roi, 1)
    points = aux @ matrix[:, :2].T + matrix[:, 2]  # [2, 2] image px
    return lp.detection_roi(np.concatenate([points, np.zeros((2, 2))]))


def landmarks_in_roi(pose: lp.LightPose, image: np.ndarray, roi: lp.Roi, found: FrameDetection
                     ) -> FrameDetection:
    """Run the landmark model on one crop; fills `found` (STATUS_NO_POSE when the model's pose
    flag is below threshold)."""
    raw = pose.landmarks_in(image, roi)
    if float(raw["flag"].reshape(-1)[0]) < lp.POSE_PRESENCE_THRESHOLD:
        found.status = STATUS_NO_POSE
        return found
    landmarks = lp.decode_landmarks(raw["landmarks"], raw["heatmap"], roi)  # [33, 5]
    scores = lp.landmark_scores(landmarks, pose.score_source)  # [33]
    found.status = STATUS_OK
    found.landmarks = np.concatenate([landmarks[:, :2], scores[:, None]], axis=1)
    found.world = lp.decode_world(raw["world"], roi)
    found.next_roi = tracking_roi(raw["landmarks"], roi)
    return found


def detect_frame(pose: lp.LightPose, image: np.ndarray, previous: FrameDetection | None,
                 person: lp.Person | None, num_people: int, min_person_px: float
                 ) -> FrameDetection:
    """The landmark model on one uint8 RGB frame [H, W, 3] for the tracked person: the crop
    tracked from the previous frame while it stays within FOLLOW_GATE of the person's detection
    here (or there is none), else the detection's crop; person None: not detected here."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if previous is not None and previous.next_roi is not None:
        roi = previous.next_roi
        size = roi.side / lp.ROI_SCALE
        near = person is None or float(np.linalg.norm(roi.center - _hip(person))) <= \
            FOLLOW_GATE * max(size, person.size)
        if near and size >= min_person_px:
            tracked = landmarks_in_roi(pose, image, roi, FrameDetection(
                STATUS_OK, num_people, size, roi.center.copy()))
            if tracked.status == STATUS_OK:
                return tracked
    if person is None:
        return FrameDetection(STATUS_NONE, num_people)
    found = FrameDetection(STATUS_OK, num_people, person.size, _hip(person).copy())
    if person.size < min_person_px:
        found.status = STATUS_TINY
        return found
    return landmarks_in_roi(pose, image, person.roi, found)


def detect_all(pose: lp.LightPose, frames: Callable[[], Iterable[np.ndarray]],
               grid_index: np.ndarray, num_frames: int, person_index: int | None = None,
               min_person_px: float = MIN_PERSON_PX) -> Detections:
    """frames() iterates the decoded frames (the i-th at grid slot grid_index[i]); it is called
    twice (detector pass, landmark pass). -> Detections on the grid of num_frames slots; slots
    without a decoded frame get STATUS_DROPPED."""
    found_people = [(int(slot), lp.detect_people(np.ascontiguousarray(image, np.uint8),
                                                 pose.detector, pose.min_detection_score))
                    for slot, image in zip(grid_index, frames(), strict=False)]
    tracks = link_tracks(found_people)
    landmarks = np.zeros((num_frames, lp.NUM_LANDMARKS, 3))
    world = np.zeros((num_frames, lp.NUM_LANDMARKS, 3))
    status = [STATUS_DROPPED] * num_frames
    num_people = np.zeros(num_frames, np.int64)
    sizes = np.zeros(num_frames)
    for slot, people in found_people:
        status[slot], num_people[slot] = STATUS_NONE, len(people)
    if not tracks:
        return Detections(landmarks, world, status, num_people, sizes, {"num_tracks": 0})
    chosen = choose_track(tracks, person_index)
    track = tracks[chosen]
    choice = {"rule": "most prominent" if person_index is None else "person_index",
              "index": chosen, "num_tracks": len(tracks),
              "frames_detected": len(track.people), "first_frame": min(track.people)}
    previous: FrameDetection | None = None
    for slot, image in zip(grid_index, frames(), strict=False):
        slot = int(slot)
        found = detect_frame(pose, image, previous, track.people.get(slot), int(num_people[slot]),
                             min_person_px)
        status[slot], sizes[slot] = found.status, found.person_size
        if found.landmarks is not None:
            landmarks[slot], world[slot] = found.landmarks, found.world
        previous = found
    return Detections(landmarks, world, status, num_people, sizes, choice)
