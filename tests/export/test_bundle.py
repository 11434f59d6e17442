"""`persona export --bundle`: the animatable avatar bundle, re-posed by the standalone
persona/export/bundle_loader.py (copied out of the package) within 1 mm of persona's posing."""

from __future__ import annotations

import ast
import copy
import dataclasses
import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch

import persona.export.bundle_loader as packaged_loader
from persona.avatar import posing as posing_lib
from persona.data.motions import Motion, resolve_motion, save_motion
from persona.export.cli import export_main, motion_pose

MAX_ERROR_MM = 1.0  # the bundle re-posed vs persona's own posed means
MM = 1000.0  # millimetres per metre
LOADER_IMPORTS = {"__future__", "os", "dataclasses", "numpy", "torch"}  # all it may import
EXPRESSION_FRAMES = 6  # frames of the user motion with expressions
OFFSET_ATOL = 1e-5  # metres: float32 posing, float64 solve
POSE_MEAN_STD = 0.3  # radians: a made-up hand mean
RANDOM_POSE_STD = 0.4  # radians per joint of the random test poses
TRANSFORM_ATOL = 1e-5  # float32 body vs float64 loader


def _copied_loader(folder: Path) -> ModuleType:
    """bundle_loader.py copied into an unrelated folder and imported from there."""
    folder.mkdir()
    copy = folder / "bundle_loader.py"
    shutil.copy(packaged_loader.__file__, copy)
    spec = importlib.util.spec_from_file_location("copied_bundle_loader", copy)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolves annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_the_loader_is_one_standalone_file() -> None:
    tree = ast.parse(Path(packaged_loader.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= LOADER_IMPORTS, imported - LOADER_IMPORTS
    assert not any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(tree))


def test_bundle_loader_reposes_every_frame_within_a_millimetre(
        tiny_ckpt: Path, tiny_system, tmp_path: Path) -> None:
    loader = _copied_loader(tmp_path / "elsewhere")
    path = tmp_path / "avatar_bundle.npz"
    assert export_main(["--ckpt", str(tiny_ckpt), "--bundle", "--motion", "dance",
                        "--out", str(path), "--device", "cpu"]) == 0
    bundle = loader.load_bundle(path)
    motion = resolve_motion("dance")
    n = tiny_system.template.num_vertices
    assert bundle.num_frames == motion.num_frames and bundle.offsets.shape == (motion.num_frames,
                                                                                 n, 3)
    assert bundle.motion_name == "dance" and bundle.fps == 30.0 and bundle.variant == "refined"
    assert np.array_equal(bundle.motion_poses, motion.poses)
    assert np.array_equal(bundle.motion_transl, motion.transl)
    assert np.ptp(motion.transl, axis=0).max() > 0.1  # the root travels: transl is exercised
    assert np.array_equal(bundle.parents, tiny_system.body.parents.numpy())
    np.testing.assert_allclose(bundle.weights.sum(1), 1.0, atol=1e-5)

    errors, without_offsets = [], []
    for t in range(motion.num_frames):
        with torch.no_grad():
            gaussians, colours = tiny_system.posed_gaussians(
                motion_pose(motion.poses, motion.transl, motion.expression, t), "refined")
        full_pose, transl = bundle.motion_frame(t)
        posed = loader.pose_gaussians(bundle, full_pose, transl, frame=t)
        expected = gaussians.means.double()
        errors.append((posed["means"] - expected).norm(dim=-1).max().item() * MM)
        plain = loader.pose_means(bundle, full_pose, transl)  # no offsets
        without_offsets.append((plain - expected).norm(dim=-1).max().item() * MM)
        if t == 0:  # the pose-independent appearance is persona's
            np.testing.assert_allclose(posed["scales"].numpy(), gaussians.scales.numpy(),
                                       rtol=1e-6)
            np.testing.assert_allclose(posed["opacities"].numpy(), gaussians.opacities.numpy())
            np.testing.assert_allclose(posed["rgb"].numpy(), colours["rgb"].numpy(), atol=1e-7)
    worst = max(errors)
    print(f"\nbundle re-posing over {motion.num_frames} frames of 'dance': max position error "
          f"{worst:.6f} mm (without the offsets: {min(without_offsets):.1f} to "
          f"{max(without_offsets):.1f} mm)")
    assert worst < MAX_ERROR_MM
    # the offsets carry the pose dependence: without them every frame is off by > 1 mm
    assert min(without_offsets) > MAX_ERROR_MM


def test_base_bundle_offsets_are_the_expression_alone(tiny_ckpt: Path, tiny_system,
                                                      tmp_path: Path) -> None:
    """The "base" variant skins the canonical means + expression with the base weights: with the
    bundle's weights (persona's field lookup) its exact offsets are the expression offsets."""
    dance = resolve_motion("dance")
    rng = np.random.default_rng(0)
    expression = rng.normal(size=(EXPRESSION_FRAMES, 10)).astype(np.float32)
    motion_file = tmp_path / "talking.npz"
    save_motion(Motion("talking", dance.poses[:EXPRESSION_FRAMES],
                       dance.transl[:EXPRESSION_FRAMES], 25.0, expression), motion_file)
    path = tmp_path / "base_bundle.npz"
    assert export_main(["--ckpt", str(tiny_ckpt), "--bundle", "--motion", str(motion_file),
                        "--variant", "base", "--out", str(path), "--device", "cpu"]) == 0
    bundle = packaged_loader.load_bundle(path)
    assert bundle.num_frames == EXPRESSION_FRAMES and bundle.fps == 25.0
    assert np.array_equal(bundle.motion_expression, expression)
    for t in range(EXPRESSION_FRAMES):
        with torch.no_grad():
            expected = posing_lib.expression_offsets(tiny_system.template,
                                                     torch.from_numpy(expression[t]))
        assert expected.abs().max() > 1e-3  # a visible expression
        np.testing.assert_allclose(bundle.offsets[t], expected.numpy(), atol=OFFSET_ATOL)

    # without --motion: the canonical avatar and skeleton, no offsets
    plain = tmp_path / "plain.npz"
    assert export_main(["--ckpt", str(tiny_ckpt), "--bundle", "--out", str(plain),
                        "--device", "cpu"]) == 0
    static = packaged_loader.load_bundle(plain)
    assert static.offsets is None and static.motion_poses is None
    np.testing.assert_array_equal(static.weights, bundle.weights)
    with pytest.raises(ValueError, match="--motion"):
        packaged_loader.pose_means(static, dance.poses[0], dance.transl[0], frame=0)


def test_loader_joint_transforms_match_the_body_with_a_hand_mean(tiny_system) -> None:
    """The loader's kinematics (Rodrigues, chain, pose mean, canonical inverse, translation)
    equal BodyModel.transforms_from_canonical, on a copy of the body given a non-zero pose mean
    (the tiny body's is zero, SMPL-X's hand mean is not)."""
    from persona.body.types import PoseParams
    from persona.export.bundle import skeleton_arrays

    body = copy.deepcopy(tiny_system.body)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        body.pose_mean.copy_(torch.randn(55, 3, generator=generator) * POSE_MEAN_STD)
    skeleton = {k: (v.numpy() if isinstance(v, torch.Tensor) else v)
                for k, v in skeleton_arrays(SimpleNamespace(body=body,
                                                            identity=tiny_system.identity)).items()}
    n = 2
    bundle = packaged_loader.AvatarBundle(
        means=np.zeros((n, 3)), scales=np.ones((n, 3)), opacities=np.ones(n),
        rgb=np.zeros((n, 3)), weights=np.full((n, 55), 1 / 55), parents=skeleton["parents"],
        rest_joints=skeleton["rest_joints"],
        canonical_transforms=skeleton["canonical_transforms"], pose_mean=skeleton["pose_mean"])
    for _ in range(3):
        full_pose = torch.randn(1, 55, 3, generator=generator) * RANDOM_POSE_STD
        transl = torch.randn(1, 3, generator=generator)
        with torch.no_grad():
            expected = body.transforms_from_canonical(
                tiny_system.identity, PoseParams(full_pose, torch.zeros(1, 10), transl))[0]
        got = packaged_loader.joint_transforms(bundle, full_pose[0].numpy(), transl[0].numpy())
        np.testing.assert_allclose(got.numpy(), expected.double().numpy(), atol=TRANSFORM_ATOL)
    # the pose mean matters: without it the transforms differ
    no_mean = dataclasses.replace(bundle, pose_mean=np.zeros((55, 3)))
    assert np.abs(packaged_loader.joint_transforms(no_mean, full_pose[0], transl[0]).numpy()
                  - expected.double().numpy()).max() > 10 * TRANSFORM_ATOL


def test_load_bundle_names_the_file_and_key(tmp_path: Path) -> None:
    wrong = tmp_path / "motion.npz"
    np.savez(wrong, poses=np.zeros((1, 55, 3)))
    with pytest.raises(ValueError, match="motion.npz.*format"):
        packaged_loader.load_bundle(wrong)
    broken = tmp_path / "broken.npz"
    arrays = {"format": np.asarray(packaged_loader.BUNDLE_FORMAT), "version": np.asarray(1),
              "means": np.zeros((4, 3)), "scales": np.zeros((4, 3)), "opacities": np.zeros(4),
              "rgb": np.zeros((4, 3)), "weights": np.zeros((5, 55)),
              "parents": np.zeros(55), "rest_joints": np.zeros((55, 3)),
              "canonical_transforms": np.zeros((55, 4, 4)), "pose_mean": np.zeros((55, 3))}
    np.savez(broken, **arrays)
    with pytest.raises(ValueError, match="broken.npz: 'weights'"):
        packaged_loader.load_bundle(broken)
