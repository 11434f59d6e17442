"""PoseDeformer alone learns a known pose-dependent offset field and generalises to new poses.

The field is the synthetic subject's ground-truth garment deformation
(`persona.data.synth.garment_offsets` on the procedural body: a skirt that lags behind the swing
of the legs, sleeves that sag with gravity; persona/data/garment.py), in canonical space, so it is
exactly what the deformer must learn in a fit on a synthetic subject. The deformer (triplane +
MLP, 4-ring-masked pose) is fitted with direct 3D supervision on random training poses and scored
on held-out random poses. A pose-blind predictor (the best one: each Gaussian's mean training
offset) fails the same criteria, so the test cannot pass without using the pose.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from persona.avatar.deformer import PoseDeformer
from persona.avatar.template import build_avatar_template
from persona.body.types import SMPLX_JOINT_NAMES, PoseParams
from persona.data import synth
from persona.ops.rotations import axis_angle_to_rotation_6d

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
JOINT = {name: i for i, name in enumerate(SMPLX_JOINT_NAMES)}
# Random training / held-out poses: max |axis-angle component| (rad) of each moving joint.
POSE_RANGES = {"left_hip": 0.6, "right_hip": 0.6, "left_knee": 0.6, "right_knee": 0.6,
               "left_shoulder": 0.6, "right_shoulder": 0.6, "left_elbow": 0.5,
               "right_elbow": 0.5, "spine1": 0.1, "spine2": 0.1, "spine3": 0.1}
NUM_TRAIN_POSES = 128
NUM_HELDOUT_POSES = 32
TRAIN_SEED, HELDOUT_SEED = 0, 1
STEPS = 240  # Adam steps (about 10-20 s on 2 shared CPU cores)
POSES_PER_STEP = 8
LEARNING_RATE = 3e-3
DECAY_AT, DECAY_FACTOR = 0.75, 0.1  # one step decay of the learning rate, as in training
TRIPLANE_RESOLUTION = 32  # the procedural body has 2,960 vertices: a coarse triplane suffices
MIN_CORRELATION = 0.9  # Pearson over held-out Gaussian x pose x xyz components
MIN_POSE_CORRELATION = 0.9  # the same on the pose-dependent parts (mean over poses removed)
# mean |error| / mean |field| on held-out poses: the fit reaches 0.20 on the skirt + sleeves field
# (mean 54 mm), the best pose-blind predictor 0.58
MAX_RELATIVE_ERROR = 0.25
MIN_FIELD_MM = 10.0  # the field is not trivially small (mean magnitude on garment Gaussians)


def random_poses(num_expression: int, count: int, seed: int) -> PoseParams:
    """Poses moving the hips, knees, shoulders, elbows (and a little spine) uniformly."""
    generator = torch.Generator().manual_seed(seed)
    full_pose = torch.zeros(count, len(SMPLX_JOINT_NAMES), 3)  # [B, 55, 3]
    for name, limit in POSE_RANGES.items():
        full_pose[:, JOINT[name]] = (torch.rand(count, 3, generator=generator) * 2 - 1) * limit
    return PoseParams(full_pose, torch.zeros(count, num_expression), torch.zeros(count, 3))


def body_pose_6d(pose: PoseParams) -> Tensor:
    """The deformer's pose input: the 21 body joints in 6D. -> [B, 21, 6]."""
    return axis_angle_to_rotation_6d(pose.full_pose[:, 1:22])


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation over all components of two same-shape tensors."""
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


def scores(predicted: Tensor, truth: Tensor) -> dict[str, float]:
    """predicted, truth [B, G, 3] -> correlation, pose-part correlation, relative error."""
    pose_part = pearson(predicted - predicted.mean(0), truth - truth.mean(0))
    error = (predicted - truth).norm(dim=-1).mean() / truth.norm(dim=-1).mean()
    return {"correlation": pearson(predicted, truth), "pose_correlation": pose_part,
            "relative_error": float(error)}


def passes(score: dict[str, float]) -> bool:
    return (score["correlation"] >= MIN_CORRELATION
            and score["pose_correlation"] >= MIN_POSE_CORRELATION
            and score["relative_error"] <= MAX_RELATIVE_ERROR)


def build_garment_problem() -> dict:
    """Template inputs of the garment Gaussians and the known field on train / held-out poses."""
    config = synth.preset_config("tiny")  # the procedural body
    body = synth.load_synth_body(config)
    identity = synth.subject_identity(body, config.seed)
    truth = synth.build_avatar(body, identity, config)
    template = build_avatar_template(body, identity, subdivision_levels=0)
    garment = synth.garment_regions(truth)["garment"]  # [N]
    train = random_poses(body.num_expression, NUM_TRAIN_POSES, TRAIN_SEED)
    heldout = random_poses(body.num_expression, NUM_HELDOUT_POSES, HELDOUT_SEED)
    with torch.no_grad():
        train_field = synth.garment_offsets(body, truth, train, config.garment)[:, garment]
        heldout_field = synth.garment_offsets(body, truth, heldout, config.garment)[:, garment]
    return {"positions": template.triplane_positions[garment],
            "dominant": template.dominant_joint[garment],
            "zero_mask": template.deformer_zero_mask[garment],
            "train_pose": body_pose_6d(train), "heldout_pose": body_pose_6d(heldout),
            "train_field": train_field, "heldout_field": heldout_field}  # fields [B, G, 3]


@pytest.fixture(scope="module")
def garment_problem() -> dict:
    return build_garment_problem()


def fit_deformer(problem: dict, blind: bool = False) -> PoseDeformer:
    """Fit a fresh PoseDeformer (L1 on the 3D offsets); ``blind`` zeroes its pose input."""
    torch.manual_seed(0)
    deformer = PoseDeformer(triplane_resolution=TRIPLANE_RESOLUTION)
    optimiser = torch.optim.Adam(deformer.parameters(), lr=LEARNING_RATE)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimiser, [int(DECAY_AT * STEPS)],
                                                     DECAY_FACTOR)
    generator = torch.Generator().manual_seed(0)
    poses, field = problem["train_pose"], problem["train_field"]
    for _ in range(STEPS):
        rows = torch.randint(0, poses.shape[0], (POSES_PER_STEP,), generator=generator)
        pose = torch.zeros_like(poses[rows]) if blind else poses[rows]  # [b, 21, 6]
        offset = deformer(problem["positions"], problem["dominant"], pose,
                          problem["zero_mask"]).mean_offset  # [b, G, 3]
        loss = (offset - field[rows]).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        scheduler.step()
    return deformer


def test_field_is_a_real_pose_dependent_garment_field(garment_problem) -> None:
    field = garment_problem["heldout_field"]  # [B, G, 3]
    assert field.shape[1] > 100 and not garment_problem["zero_mask"].any()
    assert float(field.norm(dim=-1).mean()) * 1000 > MIN_FIELD_MM
    # The best pose-blind predictor (each Gaussian's mean training offset) fails the criteria.
    blind = garment_problem["train_field"].mean(0, keepdim=True).expand_as(field)
    assert not passes(scores(blind, field)), scores(blind, field)


def test_deformer_learns_the_field_on_heldout_poses(garment_problem) -> None:
    deformer = fit_deformer(garment_problem)
    with torch.no_grad():
        predicted = deformer(garment_problem["positions"], garment_problem["dominant"],
                             garment_problem["heldout_pose"],
                             garment_problem["zero_mask"]).mean_offset  # [B, G, 3]
    score = scores(predicted, garment_problem["heldout_field"])
    assert passes(score), score
