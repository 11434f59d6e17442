"""Writing a synthetic subject (`synthesize`): captured/0, generated_<k>, test, meta.json."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from persona.atomic import replace_folder
from persona.body.types import NUM_JOINTS, Identity, PoseParams
from persona.data import motions as motion_lib
from persona.data.subject import (
    ALBEDO_RELPATH,
    CAPTURED_SPLIT,
    FORMAT_VERSION,
    FRAME_LIST_NAME,
    TEST_SPLIT,
    FramePaths,
    camera_to_json,
    float_to_uint8,
    generated_split,
    pose_to_json,
    write_frame_list,
    write_identity,
    write_json,
    write_npy,
    write_png,
)
from persona.data.synth.avatar import albedo_colours, build_avatar
from persona.data.synth.cameras import (
    camera_frame_poses,
    front_camera,
    orbit_camera,
    select,
    subsample,
)
from persona.data.synth.config import SynthConfig, jsonable_config
from persona.data.synth.displacement import motion_displacements
from persona.data.synth.faults import apply_image_faults, drift_for, geometry_noise, noisy_pose
from persona.data.synth.render import FrameRender, render_frame
from persona.render.types import Camera

BETAS_STD = 0.5  # std of the random betas of a subject's identity
GENERATOR = "persona.data.synth"  # meta.json "generator" (persona/metrics/deformation.py reads it)


def write_frame(root: Path, split: str, index: int, image: np.ndarray, frame: FrameRender,
                depth: np.ndarray, normal: np.ndarray, camera: Camera, pose: PoseParams) -> None:
    paths = FramePaths(split, index)
    write_png(root / paths.image, float_to_uint8(image))
    write_png(root / paths.mask, frame.mask)
    write_npy(root / paths.depth, depth)
    write_npy(root / paths.normal, normal)
    write_png(root / paths.seg, frame.seg)
    write_json(root / paths.camera, camera_to_json(camera))
    write_json(root / paths.smplx, pose_to_json(pose))


@dataclass
class SynthResult:
    root: Path
    seconds: float
    num_generated: int
    num_test: int
    num_gaussians: int
    preview: Path | None


def load_synth_body(config: SynthConfig) -> Any:
    from persona.body.loader import BodySpec, load_body

    return load_body(BodySpec(kind=config.body, flat_hand_mean=True))


def subject_identity(body: Any, seed: int) -> Identity:
    """Random but plausible betas (std 0.5), zero joint offsets, no face offset."""
    generator = torch.Generator().manual_seed(seed)
    betas = BETAS_STD * torch.randn(body.num_betas, generator=generator)
    return Identity(betas, None, torch.zeros(NUM_JOINTS, 3))


def synthesize(out: str | Path, config: SynthConfig, overwrite: bool = False) -> SynthResult:
    """Build the subject into a temporary sibling folder, then rename it to ``out``."""
    from persona.render.torch_renderer import TorchRenderer

    start = time.perf_counter()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty (pass --overwrite to replace)")
    if not 0.0 <= config.artifacts <= 1.0:
        raise ValueError(f"--artifacts must lie in [0, 1], got {config.artifacts}")
    motions = [motion_lib.resolve_motion(name) for name in config.motions]
    test_motion = motion_lib.resolve_motion(config.test_motion)
    body = load_synth_body(config)
    identity = subject_identity(body, config.seed)
    avatar = build_avatar(body, identity, config)
    renderer = TorchRenderer()
    rng = np.random.default_rng(config.seed)
    num_expression = body.num_expression
    tmp = out.with_name(f".{out.name}.tmp-synth")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    width, height = config.width, config.height
    front = front_camera(width, height)

    # captured: the casual input pose
    input_body_pose = motion_lib.casual_pose()[None]  # [1, 55, 3]
    input_pose = camera_frame_poses(body, identity, input_body_pose, np.zeros((1, 3)),
                                    num_expression)
    frame = render_frame(body, avatar, input_pose, front, renderer, config)
    depth, normal = geometry_noise(frame, config, rng)
    write_frame(tmp, CAPTURED_SPLIT, 0, frame.image, frame, depth, normal, front, input_pose)
    write_png(tmp / ALBEDO_RELPATH, float_to_uint8(frame.albedo))

    # generated_k: one per motion, with faults
    true_poses: dict[str, list[PoseParams]] = {}
    num_generated = 0
    for k, motion in enumerate(motions):
        split = generated_split(k)
        poses = camera_frame_poses(body, identity, motion.poses, motion.transl, num_expression)
        indices = subsample(motion.num_frames, config.frames)
        direction = float(rng.choice([-1.0, 1.0]))
        true_poses[split] = []
        for index, source in enumerate(indices):
            pose = select(poses, source)
            true_poses[split].append(pose)
            drift = drift_for(pose.full_pose[0], input_pose.full_pose[0], config.artifacts,
                              config.faults, direction)
            frame = render_frame(body, avatar, pose, front, renderer, config,
                                 albedo_colours(avatar, drift))
            image = apply_image_faults(frame, config.artifacts, config.faults, rng, width)
            depth, normal = geometry_noise(frame, config, rng)
            written = noisy_pose(pose, config.artifacts, config.faults, rng)
            write_frame(tmp, split, index, image, frame, depth, normal, front, written)
        write_frame_list(tmp / split / FRAME_LIST_NAME, list(range(len(indices))))
        num_generated += len(indices)

    # test: held-out motion from the front, then novel views; clean, exact maps
    test_poses = camera_frame_poses(body, identity, test_motion.poses, test_motion.transl,
                                    num_expression)
    test_items: list[tuple[PoseParams, Camera]] = [
        (select(test_poses, i), front) for i in subsample(test_motion.num_frames,
                                                          config.test_frames)]
    pelvis_centre = torch.tensor([0.0, motion_lib.PELVIS_HEIGHT_IN_IMAGE,
                                  motion_lib.SUBJECT_DISTANCE])
    for j, yaw in enumerate(config.novel_views):
        pose = select(test_poses, subsample(test_motion.num_frames, len(config.novel_views))[j])
        test_items.append((pose, orbit_camera(width, height, yaw, pelvis_centre)))
    for index, (pose, camera) in enumerate(test_items):
        frame = render_frame(body, avatar, pose, camera, renderer, config)
        write_frame(tmp, TEST_SPLIT, index, frame.image, frame, frame.depth, frame.normal,
                    camera, pose)
        write_png(tmp / FramePaths(TEST_SPLIT, index).garment_mask, frame.garment_mask)
    write_frame_list(tmp / TEST_SPLIT / FRAME_LIST_NAME, list(range(len(test_items))))

    write_identity(tmp, identity)
    write_json(tmp / "subject.json", {
        "format_version": FORMAT_VERSION, "name": f"synth-{config.preset}-seed{config.seed}",
        "body": {"kind": config.body, "gender": "neutral", "num_betas": body.num_betas,
                 "num_expression": num_expression, "flat_hand_mean": True}})
    seconds = time.perf_counter() - start
    write_json(tmp / "meta.json", {
        "generator": GENERATOR, "config": jsonable_config(config),
        "num_gaussians": avatar.num_gaussians, "num_generated_frames": num_generated,
        "num_test_frames": len(test_items),
        "splits": {generated_split(k): m.name for k, m in enumerate(motions)},
        "test_motion": test_motion.name,
        "background_rgb": [config.background] * 3,
        "garment_displacement": {"camera": f"front {width}x{height}",
                                 "motions": motion_displacements(body, avatar, config, front)},
        "seconds": round(seconds, 2),
    })
    preview = None
    if config.preview:
        from persona.data.preview import contact_sheet

        preview = contact_sheet(tmp, body, avatar, true_poses, renderer, config)
    replace_folder(tmp, out)
    if preview is not None:
        preview = out / preview.name
    return SynthResult(out, time.perf_counter() - start, num_generated, len(test_items),
                       avatar.num_gaussians, preview)
