import pickle
import shutil

import numpy as np
import pytest
import torch

from persona.body.loader import BodySpec, load_body
from persona.body.model import DERIVED_FROM_WEIGHTS, OFFICIAL_IDS
from persona.body.regions import FLAME_IDS_FILE, MANO_IDS_FILE
from persona.body.types import SMPLX_JOINT_NAMES

J = {name: i for i, name in enumerate(SMPLX_JOINT_NAMES)}


def test_derived_masks_follow_the_body(procedural_body):
    body = procedural_body
    masks = body.region_masks
    assert body.region_mask_source == DERIVED_FROM_WEIGHTS
    rest = body.rest_joints(body.zero_identity())
    vertices = body.v_template
    left, right = masks["left_hand"], masks["right_hand"]
    assert left.sum() > 100 and right.sum() == left.sum()  # the body is symmetric
    assert torch.all(vertices[left, 0] > rest[J["left_wrist"], 0])  # beyond the wrist
    assert torch.all(vertices[right, 0] < rest[J["right_wrist"], 0])
    assert torch.equal(masks["hands"], left | right)
    eye_weight = body.lbs_weights[:, [J["left_eye_smplhf"], J["right_eye_smplhf"]]].sum(-1)
    assert torch.equal(masks["eyes"], eye_weight > 0.5)
    face = masks["face"]
    assert torch.all(masks["eyes"] <= face)
    assert torch.all(vertices[face, 1] > rest[J["neck"], 1])  # the face is on the head
    moved = body.exprdirs.abs().amax(dim=(1, 2)) > 1e-6
    assert torch.equal(moved | masks["eyes"], face)  # the expression region and the eyes
    assert not masks["mouth_interior"].any()


def test_official_vertex_ids_are_used_when_present(procedural_folder):
    count = load_body(BodySpec(kind="procedural")).num_vertices
    rng = np.random.default_rng(0)
    ids = {"left_hand": rng.choice(count, 50, replace=False),
           "right_hand": rng.choice(count, 60, replace=False)}
    face = rng.choice(count, 70, replace=False)
    with open(procedural_folder / MANO_IDS_FILE, "wb") as stream:
        pickle.dump(ids, stream)
    np.save(procedural_folder / FLAME_IDS_FILE, face)
    body = load_body(BodySpec(kind="smplx", model_path=str(procedural_folder)))
    assert body.region_mask_source == OFFICIAL_IDS
    masks = body.region_masks
    assert set(torch.nonzero(masks["left_hand"])[:, 0].tolist()) == set(ids["left_hand"])
    assert set(torch.nonzero(masks["face"])[:, 0].tolist()) == set(face)
    assert masks["hands"].sum() == len(set(ids["left_hand"]) | set(ids["right_hand"]))


def test_official_ids_out_of_range_are_an_error(procedural_folder):
    with open(procedural_folder / MANO_IDS_FILE, "wb") as stream:
        pickle.dump({"left_hand": np.array([0, 10**6]), "right_hand": np.array([1])}, stream)
    np.save(procedural_folder / FLAME_IDS_FILE, np.arange(5))
    with pytest.raises(ValueError, match="left_hand ids outside"):
        load_body(BodySpec(kind="smplx", model_path=str(procedural_folder)))


def test_only_one_auxiliary_file_falls_back_to_derived(procedural_folder, tmp_path):
    np.save(procedural_folder / FLAME_IDS_FILE, np.arange(5))
    body = load_body(BodySpec(kind="smplx", model_path=str(procedural_folder)))
    assert body.region_mask_source == DERIVED_FROM_WEIGHTS
    shutil.rmtree(procedural_folder)
