"""Bad inputs give one clear error naming the config key, the file and the field."""

import numpy as np
import pytest

from persona.body.loader import BodySpec, load_body
from persona.body.procedural import build_procedural_arrays
from persona.body.smplx_format import (
    build_smplx_layer,
    read_smplx_npz,
    resolve_model_file,
    write_smplx_npz,
)


def test_missing_folder_names_the_key_files_and_download_page(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_body(BodySpec(kind="smplx", model_path=str(tmp_path / "nowhere")))
    message = str(error.value)
    assert "model.body.model_path" in message and "SMPLX_NEUTRAL.npz" in message
    assert "https://smpl-x.is.tue.mpg.de" in message


def test_wrong_gender_name_names_the_key(procedural_folder):
    with pytest.raises(ValueError, match="model.body.gender: unknown gender 'neutrall'"):
        load_body(BodySpec(kind="smplx", model_path=str(procedural_folder), gender="neutrall"))


def test_missing_gender_file_lists_what_is_there(procedural_folder):
    with pytest.raises(FileNotFoundError, match=r"no SMPLX_MALE\.npz found.*SMPLX_NEUTRAL\.npz"):
        resolve_model_file(procedural_folder, "male")


def test_truncated_npz_is_reported_with_the_file(procedural_folder):
    path = procedural_folder / "smplx" / "SMPLX_NEUTRAL.npz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"SMPLX_NEUTRAL\.npz: not a readable SMPL-X \.npz"):
        load_body(BodySpec(kind="smplx", model_path=str(procedural_folder)))


def test_missing_key_and_wrong_shape_name_the_field(tmp_path):
    arrays = build_procedural_arrays()
    incomplete = {k: v for k, v in arrays.items() if k != "lmk_faces_idx"}
    path = tmp_path / "SMPLX_NEUTRAL.npz"
    np.savez(path, **incomplete)
    with pytest.raises(ValueError, match="missing array.*lmk_faces_idx"):
        read_smplx_npz(path)
    # smplx's own AttributeError ('Struct' object has no attribute ...) is wrapped too
    with pytest.raises(ValueError, match="not a complete SMPL-X model file.*lmk_faces_idx"):
        build_smplx_layer(path, 10, 10, False)
    arrays["weights"] = arrays["weights"][:, :54]
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"field 'weights' has shape \[\d+, 54\]"):
        read_smplx_npz(path)


def test_write_is_atomic_and_validated(tmp_path):
    arrays = build_procedural_arrays()
    arrays["J_regressor"] = arrays["J_regressor"][:10]
    with pytest.raises(ValueError, match="J_regressor"):
        write_smplx_npz(tmp_path / "x.npz", arrays)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_betas_of_the_wrong_length(procedural_body):
    import torch

    from persona.body.types import Identity

    with pytest.raises(ValueError, match="identity.betas"):
        procedural_body.rest_joints(Identity(torch.zeros(3)))


def test_spec_ranges():
    with pytest.raises(ValueError, match="model.body.num_betas"):
        BodySpec(kind="procedural", num_betas=301).validate()
    with pytest.raises(ValueError, match="model.body.num_expression"):
        BodySpec(kind="procedural", num_expression=0).validate()
    with pytest.raises(ValueError, match="model.body.kind"):
        BodySpec(kind="smpl").validate()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="model.body.model_path: required"):
        BodySpec(kind="smplx").validate()
