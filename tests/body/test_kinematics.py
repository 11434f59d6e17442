import pytest
import torch

from persona.body.kinematics import ring_mask, tree_distances
from persona.body.types import SMPLX_JOINT_NAMES, SMPLX_PARENTS

J = {name: i for i, name in enumerate(SMPLX_JOINT_NAMES)}


def test_zero_ring_is_identity_and_none_is_everything():
    assert torch.equal(ring_mask(SMPLX_PARENTS, 0), torch.eye(55, dtype=torch.bool))
    assert ring_mask(SMPLX_PARENTS, None).all()


def test_one_ring_is_parent_and_children():
    mask = ring_mask(SMPLX_PARENTS, 1)
    for joint in range(55):
        expected = {joint} | {c for c, p in enumerate(SMPLX_PARENTS) if p == joint}
        if SMPLX_PARENTS[joint] >= 0:
            expected.add(SMPLX_PARENTS[joint])
        assert set(torch.nonzero(mask[joint])[:, 0].tolist()) == expected


@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_rings_are_symmetric_and_nested(k):
    mask = ring_mask(SMPLX_PARENTS, k)
    assert torch.equal(mask, mask.T)
    assert torch.all(ring_mask(SMPLX_PARENTS, k - 1) <= mask)


def test_known_tree_distances():
    distances = tree_distances(SMPLX_PARENTS)
    # pelvis-spine1-spine2-spine3-left_collar-left_shoulder-left_elbow-left_wrist
    assert distances[J["pelvis"], J["left_wrist"]] == 7
    assert distances[J["left_index3"], J["left_thumb3"]] == 6
    assert distances[J["left_wrist"], J["right_wrist"]] == 8
    assert ring_mask(SMPLX_PARENTS, int(distances.max())).all()
    assert not ring_mask(SMPLX_PARENTS, int(distances.max()) - 1).all()


def test_not_a_tree():
    with pytest.raises(ValueError, match="one tree"):
        tree_distances([-1, 0, -1])
