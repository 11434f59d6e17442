"""Following one person through a clip (persona/track/detect.py): detections linked into
people, the most prominent chosen, without the BlazePose files (hand-made detections)."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep import light_pose as lp
from persona.track.detect import choose_track, link_tracks


def _person(hip_x: float, size: float, hip_y: float = 300.0) -> lp.Person:
    hip = np.array([hip_x, hip_y])
    keypoints = np.stack([hip, hip + [0.0, -size / 2], hip, hip])  # body box side = size
    return lp.Person(0.9, np.zeros(4), keypoints)


def test_detections_link_into_people_and_the_most_prominent_comes_first() -> None:
    frames = []
    for slot in range(10):  # a small person standing still, a large one walking past
        people = [_person(100.0, 80.0)]
        if 3 <= slot <= 8:
            people.append(_person(900.0 - 60.0 * slot, 300.0))
        frames.append((slot, people[::-1] if slot % 2 else people))  # order does not matter
    tracks = link_tracks(frames)
    assert len(tracks) == 2
    walker, stander = tracks
    assert sorted(walker.people) == list(range(3, 9)) and walker.prominence == 6 * 300.0
    assert sorted(stander.people) == list(range(10))
    assert choose_track(tracks, None) == 0 and choose_track(tracks, 1) == 1
    with pytest.raises(ValueError, match="--person-index 2: 2 person"):
        choose_track(tracks, 2)


def test_a_far_jump_or_a_long_absence_starts_another_person() -> None:
    frames = [(0, [_person(100.0, 100.0)]), (1, [_person(400.0, 100.0)]),  # 3 sizes away
              (2, [_person(410.0, 100.0)]), (30, [_person(410.0, 100.0)])]  # 28 frames later
    tracks = link_tracks(frames)
    assert sorted(len(t.people) for t in tracks) == [1, 1, 2]
