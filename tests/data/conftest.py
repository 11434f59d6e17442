"""Fixtures of the data tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_subject import make_tiny_subject


@pytest.fixture
def tiny_subject(tmp_path: Path) -> Path:
    return make_tiny_subject(tmp_path / "tiny")
