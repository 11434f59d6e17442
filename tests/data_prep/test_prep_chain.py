"""The whole preprocessing chain, photo -> training subject -> a training run, with tiny random
instances of the real models (SAM, Sapiens TorchScript heads, MimicMotion on diffusers) loaded
through the same `persona prep` configs and loaders as the released weights.

The photo is the captured frame of the `tiny` synthetic subject; its keypoints are the projection
of the known body (standing in for the Sapiens keypoint model, whose tiny random instance would
give meaningless points), so the fit has a known answer. Model outputs are random; what is
checked is the wiring: every stage reads what the previous one wrote, the subject validates,
the generated split holds exactly the driving poses and camera, and training accepts it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_mimicmotion import (
    flat_state,
    one_thread,  # noqa: F401 (autouse: tiny models on one thread)
    random_pose_net,
    tiny_unet,
)
from test_sam_segment import TINY as TINY_SAM
from test_sam_segment import tiny_sam_by_hand
from test_sapiens import FILE_NAMES, INPUT_SHAPE, tiny_modules

from data_prep.cli import main as prep_main
from data_prep.driving import driving_poses, project_coco133
from data_prep.fitting import fitting_camera
from data_prep.generate import align_reference_keypoints, fit_scale_shift, reference_on_white
from data_prep.mimicmotion import target_size
from data_prep.stage import keypoints_relpath, read_keypoints, read_mask_bool, write_keypoints
from persona.body.loader import load_body
from persona.data.datamodule import body_spec_from_config
from persona.data.motions import (
    VIRTUAL_HEIGHT,
    VIRTUAL_WIDTH,
    Motion,
    make_builtin_motion,
    save_motion,
)
from persona.data.subject import (
    camera_from_json,
    pose_from_json,
    read_frame_indices,
    read_frame_record,
    read_identity,
    read_subject_config,
    validate_subject,
)
from persona.data.synth import preset_config, synthesize

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "prep"
GENERATED_RESOLUTION = 144  # short side: 144 x 256 is exactly the virtual camera's 9:16
MOTION_FRAMES = 6  # a short driving motion keeps the tiny generation to a few seconds
FIT_ITERATIONS = "[80, 80, 40]"  # fewer than the authors' 3 x 250: a wiring test


def _tiny_weights(root: Path) -> dict[str, Path]:
    """Tiny random SAM, Sapiens heads and MimicMotion/SVD parts, saved in the released formats."""
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    paths: dict[str, Path] = {"sam": root / "sam_vit_b_01ec64.pth"}
    torch.save(tiny_sam_by_hand().state_dict(), paths["sam"])
    for task, module in tiny_modules().items():
        traced = torch.jit.trace(module.eval(), torch.zeros(INPUT_SHAPE), check_trace=False)
        paths[task] = root / FILE_NAMES[task]
        torch.jit.save(traced, str(paths[task]))
    torch.manual_seed(0)
    svd = paths["svd"] = root / "svd"
    unet = tiny_unet()
    unet.save_pretrained(svd / "unet")
    (svd / "unet" / "diffusion_pytorch_model.safetensors").unlink()  # config only, as released
    AutoencoderKLTemporalDecoder(block_out_channels=(32, 32, 32, 32),
                                 down_block_types=("DownEncoderBlock2D",) * 4,
                                 layers_per_block=1, latent_channels=4
                                 ).save_pretrained(svd / "vae")
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        image_size=224, patch_size=32, projection_dim=32)).save_pretrained(svd / "image_encoder")
    EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                           beta_schedule="scaled_linear", prediction_type="v_prediction",
                           use_karras_sigmas=True, sigma_min=0.002, sigma_max=700.0,
                           timestep_spacing="leading", timestep_type="continuous",
                           steps_offset=1).save_pretrained(svd / "scheduler")
    CLIPImageProcessor().save_pretrained(svd / "feature_extractor")
    paths["mimicmotion"] = root / "MimicMotion_1-1.pth"
    torch.save(flat_state(unet, random_pose_net(1)), paths["mimicmotion"])
    return paths


def _prep(config: str, subject: Path, *args: str) -> None:
    status = prep_main(["--config", str(CONFIGS / config), "--data.subject_dir", str(subject),
                        "--trainer.accelerator", "cpu", *args])
    assert status == 0, config


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("chain")
    weights = _tiny_weights(root)
    source = synthesize(root / "synth", preset_config("tiny")).root
    photo = source / "captured" / "images" / "0.png"
    subject = root / "subject"
    assert prep_main(["init", str(photo), str(subject), "--body", "procedural"]) == 0

    # keypoints of the known body, projected with the synthetic camera (the keypoint stage's job)
    body = load_body(body_spec_from_config(read_subject_config(source)["body"]))
    truth = read_frame_record(source, "captured", 0)
    identity = read_identity(source)
    keypoints = project_coco133(body, identity, truth.pose, truth.camera)[0]  # [133, 3]
    write_keypoints(subject / keypoints_relpath("captured", 0), keypoints)

    sam_arch = "{" + ", ".join(f"{k}: {v}" for k, v in TINY_SAM.items()) + "}"
    sam_args = ("--model.init_args.checkpoint", str(weights["sam"]),
                "--model.init_args.model_type", "vit_b", "--model.init_args.architecture",
                sam_arch)
    geometry_args = tuple(arg for task in ("depth", "normal", "seg") for arg in (
        f"--model.init_args.{task}_checkpoint", str(weights[task])))
    _prep("segment.yaml", subject, *sam_args)
    _prep("geometry.yaml", subject, *geometry_args)
    _prep("fit.yaml", subject, "--model.init_args.settings.iterations", FIT_ITERATIONS)
    _prep("albedo.yaml", subject)

    kicks = make_builtin_motion("kicks")
    stride = kicks.num_frames // MOTION_FRAMES
    short = Motion("short_kicks", kicks.poses[::stride][:MOTION_FRAMES],
                   kicks.transl[::stride][:MOTION_FRAMES], kicks.fps / stride)
    motion_path = root / "short_kicks.npz"
    save_motion(short, motion_path)
    generate_args = {"svd_dir": weights["svd"], "checkpoint": weights["mimicmotion"],
                     "device": "cpu", "resolution": GENERATED_RESOLUTION, "tile_size": 4,
                     "tile_overlap": 2, "num_inference_steps": 2, "decode_chunk_size": 4}
    _prep("generate.yaml", subject, "--model.init_args.motions", f"[{motion_path}]",
          *(a for k, v in generate_args.items()
            for a in (f"--model.init_args.generate.{k}", str(v))))
    _prep("segment.yaml", subject, "--data.splits", "[generated_0]", *sam_args)
    _prep("geometry.yaml", subject, "--data.splits", "[generated_0]", *geometry_args)
    return {"subject": subject, "source": source, "motion": short, "keypoints": keypoints,
            "truth": truth, "body": body}


def test_prepared_subject_validates(prepared: dict[str, object]) -> None:
    subject = prepared["subject"]
    assert validate_subject(subject) == []
    assert sorted(p.name for p in subject.iterdir()) == [
        "captured", "generated_0", "smplx_optimized", "subject.json"]


def test_fit_reprojects_the_photo_keypoints(prepared: dict[str, object]) -> None:
    subject, body = prepared["subject"], prepared["body"]
    record = read_frame_record(subject, "captured", 0)
    fitted = project_coco133(body, read_identity(subject), record.pose, record.camera)[0]
    truth = prepared["keypoints"]
    used = (truth[:, 2] > 0) & (fitted[:, 2] > 0)
    error = np.linalg.norm(fitted[used, :2] - truth[used, :2], axis=-1)
    height = record.camera.height
    assert error.mean() < 0.02 * height, error.mean()  # a few pixels at 160 px high
    torch.testing.assert_close(record.camera.K, fitting_camera(96, 160).K)


def test_generated_split_holds_the_driving_poses_and_camera(prepared: dict[str, object]) -> None:
    subject, body, motion = prepared["subject"], prepared["body"], prepared["motion"]
    split = subject / "generated_0"
    height, width = target_size(VIRTUAL_HEIGHT, VIRTUAL_WIDTH, GENERATED_RESOLUTION)
    assert (width, height) == (144, 256)
    assert read_frame_indices(subject, "generated_0") == list(range(MOTION_FRAMES))
    poses = driving_poses(body, read_identity(subject), motion)
    camera = fitting_camera(width, height)
    for i in range(MOTION_FRAMES):
        with Image.open(split / "images" / f"{i}.png") as image:
            assert image.size == (width, height) and image.mode == "RGB"
        with Image.open(split / "poses" / f"{i}.png") as pose:
            assert pose.size == (width, height) and np.asarray(pose).max() > 0
        written = camera_from_json(json.loads(
            (split / "cam_params" / f"{i}.json").read_text()), width, height)
        torch.testing.assert_close(written.K, camera.K)
        params = pose_from_json(json.loads(
            (split / "smplx_optimized" / "smplx_params" / f"{i}.json").read_text()))
        torch.testing.assert_close(params.full_pose[0], poses.full_pose[i], atol=1e-6, rtol=0)
        torch.testing.assert_close(params.transl[0], poses.transl[i], atol=1e-6, rtol=0)
    # the reference: the photo (on white outside its mask) placed so that its keypoints align
    # with driving frame 0's, exactly as reproduced here
    driving0 = project_coco133(body, read_identity(subject), poses, camera)[0]
    scale, shift = align_reference_keypoints(read_keypoints(
        subject / keypoints_relpath("captured", 0)), driving0)
    with Image.open(subject / "captured" / "images" / "0.png") as photo:
        expected = reference_on_white(np.asarray(photo.convert("RGB")), read_mask_bool(
            subject / "captured" / "masks" / "0.png"), scale, shift, (height, width))
    with Image.open(split / "reference.png") as reference:
        assert np.array_equal(np.asarray(reference), expected)
    assert 1.0 < scale < 3.0  # the 160-px photo is enlarged toward the 256-px frame


def test_training_accepts_the_prepared_subject(prepared: dict[str, object], tmp_path: Path
                                               ) -> None:
    from persona.cli import main

    run = tmp_path / "run"
    assert main(["fit", "--config", str(REPO / "configs" / "tiny.yaml"),
                 "--data.subject_dir", str(prepared["subject"]),
                 "--trainer.default_root_dir", str(run), "--trainer.max_steps", "2",
                 "--trainer.limit_val_batches", "0"]) == 0
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_scale_shift_fit_and_reference_warp_known_answer() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (9, 2))
    scale, shift = fit_scale_shift(src, 1.7 * src + np.array([5.0, -3.0]))
    assert scale == pytest.approx(1.7) and np.allclose(shift, [5.0, -3.0])
    photo = np.full((20, 10, 3), 40, np.uint8)
    photo[6, 3] = (200, 10, 10)  # one red pixel, centre (3.5, 6.5) in continuous coordinates
    out = reference_on_white(photo, None, 2.0, np.array([4.0, 1.0]), (60, 40))
    # its centre maps to (2 x 3.5 + 4, 2 x 6.5 + 1) = (11, 14), i.e. pixel index (10.5, 13.5)
    redness = out[..., 0].astype(float) - out[..., 1].astype(float)  # 0 on grey and white
    ys, xs = np.mgrid[0:60, 0:40]
    centroid = ((redness * xs).sum() / redness.sum(), (redness * ys).sum() / redness.sum())
    assert centroid == pytest.approx((10.5, 13.5), abs=0.05)
    assert (out[0, 39] == 255).all() and (out[5, 5] == 40).all()
    masked = reference_on_white(photo, np.zeros((20, 10), bool), 1.0, np.zeros(2), (20, 10))
    assert (masked == 255).all()


def test_keypoints_file_round_trip(tmp_path: Path) -> None:
    keypoints = np.random.default_rng(1).uniform(0, 50, (133, 3)).astype(np.float32)
    write_keypoints(tmp_path / "k.json", keypoints)
    assert np.array_equal(read_keypoints(tmp_path / "k.json"), keypoints)


def test_fit_stage_refuses_a_body_other_than_the_subjects(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photo = tmp_path / "photo.png"
    Image.new("RGB", (24, 40), (200, 180, 160)).save(photo)
    subject = tmp_path / "s"
    assert prep_main(["init", str(photo), str(subject), "--body", "procedural",
                      "--gender", "female"]) == 0
    assert read_subject_config(subject)["body"]["gender"] == "female"
    write_keypoints(subject / keypoints_relpath("captured", 0), np.zeros((133, 3), np.float32))
    assert prep_main(["--config", str(CONFIGS / "fit.yaml"), "--data.subject_dir", str(subject),
                      "--model.init_args.body.kind", "procedural"]) == 1
    assert re.search(r"model.init_args.body.gender is 'neutral' but .*subject.json says "
                     r"'female'", capsys.readouterr().err)
    # a missing weight file: one message naming the setting and the source, no traceback
    assert prep_main(["--config", str(CONFIGS / "segment.yaml"), "--data.subject_dir",
                      str(subject)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("persona prep: error: SAM checkpoint") and "Traceback" not in err
    assert "model.init_args.checkpoint" in err and "dl.fbaipublicfiles.com" in err
    assert prep_main(["--config", str(CONFIGS / "generate.yaml"), "--data.subject_dir",
                      str(subject)]) == 1
    assert "shape_param.json is missing: run configs/prep/fit.yaml first" in capsys.readouterr().err
    # a second init into the same folder is refused, and the photo must be an image
    assert prep_main(["init", str(photo), str(subject)]) == 1
    (tmp_path / "bad.png").write_text("not an image")
    assert prep_main(["init", str(tmp_path / "bad.png"), str(tmp_path / "t")]) == 1
    assert not (tmp_path / "t").exists() and not (tmp_path / ".t.partial").exists()
