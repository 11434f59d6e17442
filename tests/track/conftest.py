"""Fixtures of the `persona track` tests (helpers: track_helpers.py)."""

from __future__ import annotations

import pytest
from track_helpers import BLAZEPOSE_DIR


@pytest.fixture(scope="session")
def body():
    from persona.body.loader import BodySpec, load_body

    return load_body(BodySpec(kind="procedural", flat_hand_mean=True))


@pytest.fixture(scope="session")
def pose_models():
    from persona.track.cli import load_pose_models

    return load_pose_models(str(BLAZEPOSE_DIR))
