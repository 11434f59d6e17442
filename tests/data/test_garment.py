"""The synthetic garment (persona/data/garment.py): a known, continuous function of the pose that
skinning reproduces exactly, and its test-frame masks."""

import math

import numpy as np
import pytest
import torch

from persona.body.lbs import skin_points
from persona.body.types import PoseParams
from persona.data import motions as M
from persona.data import synth as S
from persona.data.garment import bump, smoothstep
from persona.data.subject import FramePaths, read_frame_indices, read_mask

KICK_FRAME = 22  # make_kicks(): the right thigh raised high
# displacement difference across one edge, in canonical edge lengths, in kicks on the procedural
# body: this garment 1.71; the tunic it replaced 2.45 here (12.4 on the open body: it tore)
MAX_STRAIN = 2.0


@pytest.fixture(scope="module")
def procedural():
    from persona.body.loader import BodySpec, load_body

    body = load_body(BodySpec(kind="procedural", flat_hand_mean=True))
    config = S.preset_config("tiny")
    identity = S.subject_identity(body, 0)
    return body, S.build_avatar(body, identity, config), config


def _pose(full_pose: np.ndarray, root: tuple[float, float, float] = (0.0, 0.0, 0.0),
          transl: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> PoseParams:
    pose = torch.from_numpy(np.asarray(full_pose, np.float32)).clone()
    pose[0] = torch.tensor(root)
    return PoseParams(pose[None], torch.zeros(1, 10), torch.tensor([transl]))


def _displacement(body, avatar, config, pose: PoseParams) -> torch.Tensor:
    """World displacement [N, 3] of the dressed surface from the plainly skinned one."""
    transforms = body.transforms_from_canonical(avatar.identity, pose)
    plain = skin_points(avatar.canonical, avatar.weights, transforms)[0]
    return S.posed_means(body, avatar, pose, config.garment)[0] - plain


def test_weights_are_smooth_bumps():
    x = torch.linspace(-1.0, 3.0, 401)
    w = bump(x, 0.0, 1.0, 2.0, 0.5)
    assert w[x <= 0].abs().max() == 0 and w[x >= 2.5].abs().max() == 0
    assert torch.all(w[(x >= 1.0) & (x <= 2.0)] == 1.0)
    # no step: smoothstep's steepest slope is 1.5 / width (here the 0.5-wide fade)
    assert (w[1:] - w[:-1]).abs().max() <= 1.5 * 0.01 / 0.5 + 1e-6
    assert float(smoothstep(1.0, 0.0, torch.tensor(0.25))) == pytest.approx(0.84375)


def test_only_garment_gaussians_move_and_zero_pose_leaves_the_skirt(procedural):
    body, avatar, config = procedural
    parts = S.garment_regions(avatar)
    assert parts["skirt"].any() and parts["sleeves"].any() and (~parts["garment"]).any()
    kick = _displacement(body, avatar, config, _pose(M.make_kicks().poses[KICK_FRAME]))
    assert kick[~parts["garment"]].abs().max() < 1e-6
    zero = _displacement(body, avatar, config, _pose(np.zeros((55, 3))))
    skirt_only = parts["skirt"] & ~parts["sleeves"]
    assert zero[skirt_only].abs().max() < 1e-6  # hips and knees already hang straight
    # zero pose = T-pose: the full sleeves sag by sleeve_sag x the part of gravity that is
    # perpendicular to the (nearly horizontal) upper arm
    joints = body.rest_joints(avatar.identity)  # [55, 3]
    gravity = torch.tensor([0.0, -1.0, 0.0])
    for side, name in enumerate(("left", "right")):
        full = avatar.garment.sleeves[side] > 0.999
        assert full.any()
        arm = joints[S._J[f"{name}_elbow"]] - joints[S._J[f"{name}_shoulder"]]
        arm = arm / arm.norm()
        sag = config.garment.sleeve_sag * (gravity - (arm @ gravity) * arm)  # [3]
        assert sag[1] < -0.95 * config.garment.sleeve_sag
        torch.testing.assert_close(zero[full], sag.expand(int(full.sum()), 3), atol=1e-4,
                                   rtol=0)


def test_the_skirt_lags_the_kicking_leg(procedural):
    body, avatar, config = procedural
    pose = _pose(M.make_kicks().poses[KICK_FRAME])
    moved = _displacement(body, avatar, config, pose)
    transforms = body.transforms_from_canonical(avatar.identity, pose)
    from persona.data.garment import hanging

    skinned = skin_points(avatar.canonical, avatar.weights, transforms)[0]
    straight = skin_points(avatar.canonical, avatar.weights,
                           body.transforms_from_canonical(avatar.identity, hanging(pose)))[0]
    skirt = (avatar.garment.skirt > 0) & (avatar.garment.sleeves.amax(0) == 0)
    expected = config.garment.skirt_lag * avatar.garment.skirt[:, None] * (straight - skinned)
    torch.testing.assert_close(moved[skirt], expected[skirt], atol=1e-5, rtol=0)
    assert expected.norm(dim=-1).max() > 0.05  # the kick swings the skirt by centimetres
    assert (moved * (straight - skinned)).sum(-1)[skirt].min() >= 0  # towards the hanging leg


def test_skinning_the_offsets_is_exact_under_any_root(procedural):
    """canonical + garment_offsets, skinned, lands on the skinned surface plus the pelvis-frame
    garment field rotated by the root: the root translation and heading change nothing else."""
    body, avatar, config = procedural
    body_pose = M.make_dance().poses[10]
    upright = _displacement(body, avatar, config, _pose(body_pose))
    angle = math.pi / 3
    turned = _displacement(body, avatar, config, _pose(body_pose, (0.0, angle, 0.0),
                                                       (0.3, -0.2, 2.0)))
    c, s = math.cos(angle), math.sin(angle)
    about_y = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    torch.testing.assert_close(turned, upright @ about_y.T, atol=2e-5, rtol=0)


def test_the_garment_does_not_tear(procedural):
    body, avatar, config = procedural
    motion = M.make_kicks()
    poses = PoseParams(torch.from_numpy(motion.poses[::4]).float(),
                       torch.zeros(len(motion.poses[::4]), 10),
                       torch.zeros(len(motion.poses[::4]), 3))
    camera = S.front_camera(config.width, config.height)
    report = S.garment_displacement(body, avatar, poses, camera, config.garment)
    assert report["skirt"]["max_cm"] > 5.0  # it moves
    assert report["max_edge_strain"] < MAX_STRAIN


def test_test_frames_carry_a_garment_mask(tmp_path):
    out = tmp_path / "tiny"
    S.synthesize(out, S.preset_config("tiny", motions=("kicks",), frames=1, test_frames=2,
                                      novel_views=(90.0,)))
    covered = 0
    for index in read_frame_indices(out, "test"):
        paths = FramePaths("test", index)
        garment = read_mask(out / paths.garment_mask) > 0.5
        person = read_mask(out / paths.mask) > 0.5
        assert garment.shape == person.shape
        assert not np.any(garment & ~person)  # inside the person
        covered += int(garment.sum())
    assert covered > 0
    import json

    meta = json.loads((out / "meta.json").read_text())
    kicks = meta["garment_displacement"]["motions"]["kicks"]
    assert set(kicks) >= {"garment", "skirt", "sleeves", "max_edge_strain"}


def test_bad_settings_are_named(capsys):
    from persona.data.garment import GarmentSettings
    from persona.data.synth_cli import main

    with pytest.raises(ValueError, match="skirt_fade"):
        GarmentSettings(skirt_fade=0.0)
    with pytest.raises(ValueError, match="sleeve_start < sleeve_full"):
        GarmentSettings(sleeve_start=1.5)
    with pytest.raises(SystemExit):
        main(["--out", "unused", "--garment.skirt_lag", "-1"])
    assert "GarmentSettings.skirt_lag" in capsys.readouterr().err
