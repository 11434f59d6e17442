"""Known-answer tests for data_prep.mimicmotion (PREPROCESSING.md section 1.2-1.7).

Tiny randomly initialised diffusers/transformers components (PACKAGES.md sizes, but a 4-level
VAE so the latent is 1/8 of the image like SVD's and PoseNet's) are saved in the released layout
(an SVD folder + a flat ``.pth`` with ``unet.`` / ``pose_net.`` keys) and loaded through
``MimicMotionGenerator``, the code path real weights use.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep.mimicmotion import (
    GenerateConfig,
    MimicMotionGenerator,
    PoseNet,
    draw_noise,
    fuse_tiles,
    generate_folder,
    load_generate_config,
    load_mimicmotion_checkpoint,
    preprocess_image,
    repeat_tile_noise,
    split_checkpoint,
    target_size,
    tile_indices,
    tile_weights,
    unet_forward,
)

H = W = 64  # tiny image; latent 8x8
TINY_CHANNELS = 32  # tiny UNet block_out_channels[0] = PoseNet output channels
TINY_SETTINGS = dict(  # noqa: C408
    device="cpu", resolution=64, tile_size=4, tile_overlap=2, num_inference_steps=2,
    decode_chunk_size=3, seed=42,
)  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> object:
    """Tiny models: 2 OpenMP threads on 2 busy shared cores made each UNet call ~5 s (measured);
    one thread runs it in ~20 ms. Restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_unet() -> torch.nn.Module:
    from diffusers import UNetSpatioTemporalConditionModel

    return UNetSpatioTemporalConditionModel(
        sample_size=8, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(TINY_CHANNELS, 64), addition_time_embed_dim=32,
        projection_class_embeddings_input_dim=96, layers_per_block=1, cross_attention_dim=32,
        num_attention_heads=(2, 4), num_frames=4,
    ).eval()  # fmt: skip


def random_pose_net(seed: int) -> PoseNet:
    g = torch.Generator().manual_seed(seed)
    net = PoseNet(noise_latent_channels=TINY_CHANNELS)
    with torch.no_grad():
        net.final_proj.weight.copy_(torch.randn(net.final_proj.weight.shape, generator=g) * 0.1)
        net.final_proj.bias.copy_(torch.randn(net.final_proj.bias.shape, generator=g) * 0.1)
    return net.eval()


def flat_state(unet: torch.nn.Module, pose_net: torch.nn.Module) -> dict[str, torch.Tensor]:
    sd = {f"unet.{k}": v.half() for k, v in unet.state_dict().items()}  # released file is fp16
    sd.update({f"pose_net.{k}": v.half() for k, v in pose_net.state_dict().items()})
    return sd


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("mimicmotion")
    svd = root / "svd"
    unet = tiny_unet()
    unet.save_pretrained(svd / "unet")  # the real loader reads only its config
    (svd / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
        layers_per_block=1, latent_channels=4,
    ).save_pretrained(svd / "vae")  # fmt: skip
    clip_cfg = CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        image_size=224, patch_size=32, projection_dim=32,
    )  # fmt: skip
    CLIPVisionModelWithProjection(clip_cfg).save_pretrained(svd / "image_encoder")
    EulerDiscreteScheduler(  # SVD scheduler config (section 1.4)
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
        beta_schedule="scaled_linear", prediction_type="v_prediction",
        interpolation_type="linear", use_karras_sigmas=True, sigma_min=0.002, sigma_max=700.0,
        timestep_spacing="leading", timestep_type="continuous", steps_offset=1,
    ).save_pretrained(svd / "scheduler")  # fmt: skip
    CLIPImageProcessor().save_pretrained(svd / "feature_extractor")
    ckpt = root / "MimicMotion_tiny.pth"
    torch.save(flat_state(unet, random_pose_net(1)), ckpt)
    return {"svd_dir": svd, "checkpoint": ckpt}


@pytest.fixture(scope="module")
def generator(tiny_weights: dict[str, Path]) -> MimicMotionGenerator:
    cfg = GenerateConfig(
        svd_dir=str(tiny_weights["svd_dir"]), checkpoint=str(tiny_weights["checkpoint"]),
        **TINY_SETTINGS,
    )  # fmt: skip
    return MimicMotionGenerator(cfg)


def unet_inputs(frames: int = 3, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, frames, 8, 8, 8, generator=g)
    ehs = torch.randn(1, 1, 32, generator=g)
    time_ids = torch.tensor([[6.0, 127.0, 0.0]])
    return sample, ehs, time_ids


# ---------------------------------------------------------------------------------- PoseNet
def test_pose_net_layout_and_init() -> None:
    torch.manual_seed(0)
    net = PoseNet(noise_latent_channels=320)
    assert sum(p.numel() for p in net.parameters()) == 205_557
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    convs = {0: (3, 3, 3, 3), 2: (16, 3, 4, 4), 4: (16, 16, 3, 3), 6: (32, 16, 4, 4),
             8: (32, 32, 3, 3), 10: (64, 32, 4, 4), 12: (64, 64, 3, 3), 14: (128, 64, 3, 3)}
    expected = {"scale": (1,), "final_proj.weight": (320, 128, 1, 1), "final_proj.bias": (320,)}
    for i, s in convs.items():
        expected[f"conv_layers.{i}.weight"] = s
        expected[f"conv_layers.{i}.bias"] = (s[0],)
    assert shapes == expected
    assert net.scale.item() == 2.0
    assert torch.count_nonzero(net.final_proj.weight) == 0
    assert torch.count_nonzero(net.final_proj.bias) == 0
    assert all(torch.count_nonzero(net.conv_layers[i].bias) == 0 for i in convs)
    w = net.conv_layers[14].weight  # N(0, sqrt(2 / (3*3*64)))
    assert w.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.03)
    x = torch.rand(2, 3, 3, 64, 32) * 2 - 1  # (b, f, c, h, w) is flattened to (b f)
    out = net(x)
    assert out.shape == (6, 320, 8, 4)
    assert torch.count_nonzero(out) == 0  # zero residual at init


# ------------------------------------------------------------------------------ injection
def test_zero_pose_latents_leave_unet_unchanged_nonzero_change_it() -> None:
    torch.manual_seed(0)
    unet = tiny_unet()
    sample, ehs, tid = unet_inputs()
    with torch.no_grad():
        plain = unet(sample, 10.0, encoder_hidden_states=ehs, added_time_ids=tid)[0]
        pose = torch.rand(3, 3, 64, 64) * 2 - 1
        zero = PoseNet(TINY_CHANNELS)(pose)
        hooked = unet_forward(unet, sample, 10.0, ehs, tid, zero)
        changed = unet_forward(unet, sample, 10.0, ehs, tid, random_pose_net(3)(pose))
    assert torch.equal(hooked, plain)
    assert (changed - plain).abs().max() > 1e-3
    assert len(unet.conv_in._forward_hooks) == 0  # hook removed after the call


def test_pose_latents_added_right_after_conv_in() -> None:
    # a spatially constant pose latent c[k] is the same as adding c to conv_in's bias
    torch.manual_seed(0)
    unet = tiny_unet()
    sample, ehs, tid = unet_inputs()
    c = torch.linspace(-0.5, 0.5, TINY_CHANNELS)
    pose_latents = c.view(1, -1, 1, 1).expand(3, -1, 8, 8).contiguous()
    with torch.no_grad():
        hooked = unet_forward(unet, sample, 10.0, ehs, tid, pose_latents)
        unet.conv_in.bias += c
        shifted = unet(sample, 10.0, encoder_hidden_states=ehs, added_time_ids=tid)[0]
    torch.testing.assert_close(hooked, shifted, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="do not match"):
        unet_forward(unet, sample, 10.0, ehs, tid, pose_latents[:2])


# ----------------------------------------------------------------------------- checkpoint
def test_checkpoint_loads_strictly(tiny_weights: dict[str, Path], tmp_path: Path) -> None:
    state = torch.load(tiny_weights["checkpoint"], weights_only=True)
    unet, net = tiny_unet(), PoseNet(TINY_CHANNELS)
    load_mimicmotion_checkpoint(tiny_weights["checkpoint"], unet, net)
    assert torch.equal(net.final_proj.weight, state["pose_net.final_proj.weight"].float())
    assert torch.equal(unet.conv_in.weight, state["unet.conv_in.weight"].float())

    foreign = dict(state, **{"vae.encoder.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"outside 'unet.'/'pose_net.'.*'vae.'"):
        split_checkpoint(foreign)
    path = tmp_path / "foreign.pth"
    torch.save(foreign, path)
    with pytest.raises(ValueError, match="vae"):
        load_mimicmotion_checkpoint(path, tiny_unet(), PoseNet(TINY_CHANNELS))

    missing = {k: v for k, v in state.items() if k != "pose_net.scale"}
    torch.save(missing, path)
    with pytest.raises(ValueError, match=r"'pose_net' part.*1 missing.*scale"):
        load_mimicmotion_checkpoint(path, tiny_unet(), PoseNet(TINY_CHANNELS))
    with pytest.raises(FileNotFoundError,
                       match=r"model\.init_args\.generate\.checkpoint.*MimicMotion"):
        load_mimicmotion_checkpoint(tmp_path / "nope.pth", tiny_unet(), PoseNet(TINY_CHANNELS))


def test_generate_yaml_holds_the_authors_settings(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    cfg = load_generate_config(repo / "configs" / "prep" / "generate.yaml")
    assert cfg == GenerateConfig()
    assert (cfg.tile_size, cfg.tile_overlap, cfg.num_inference_steps) == (72, 6, 25)
    assert (cfg.guidance_scale, cfg.noise_aug_strength, cfg.seed) == (2.0, 0.0, 42)
    assert (cfg.decode_chunk_size, cfg.fps, cfg.resolution) == (8, 7, 576)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    generate:\n      tile: 72\n")
    with pytest.raises(ValueError, match="unknown model.init_args.generate settings.*tile"):
        load_generate_config(bad)


def test_missing_svd_dir_names_the_setting(tmp_path: Path) -> None:
    cfg = GenerateConfig(svd_dir=str(tmp_path / "nope"), checkpoint="x.pth", device="cpu")
    with pytest.raises(FileNotFoundError,
                       match=r"model\.init_args\.generate\.svd_dir.*stable-video"):
        MimicMotionGenerator(cfg)


# ------------------------------------------------------------------------- tiles / noise
def test_tile_indices_by_hand() -> None:
    assert tile_indices(10, 4, 2) == [[0, 1, 2, 3], [0, 3, 4, 5], [0, 5, 6, 7], [0, 7, 8, 9]]
    # the last window stops at 9 < 10, so a tile ending at the last frame is appended
    assert tile_indices(11, 4, 2) == [
        [0, 1, 2, 3], [0, 3, 4, 5], [0, 5, 6, 7], [0, 7, 8, 9], [0, 8, 9, 10],
    ]  # fmt: skip
    assert tile_indices(4, 4, 2) == [[0, 1, 2, 3]]
    assert tile_indices(73, 72, 6) == [list(range(72)), [0, *range(2, 73)]]
    with pytest.raises(ValueError, match="tile_size"):
        tile_indices(3, 4, 2)


def test_tile_weights_triangle() -> None:
    torch.testing.assert_close(tile_weights(4), torch.tensor([0.25, 0.75, 0.75, 0.25]).double())
    torch.testing.assert_close(tile_weights(5), torch.tensor([0.2, 0.6, 1.0, 0.6, 0.2]).double())


def test_fuse_tiles_weighted_average() -> None:
    indices = [[0, 1, 2, 3], [0, 3, 4, 5]]
    w = tile_weights(4)  # [.25, .75, .75, .25]
    a = torch.full((1, 4, 1, 1, 1), 1.0)
    b = torch.full((1, 4, 1, 1, 1), 3.0)
    out = fuse_tiles([a, b], indices, w, 6).flatten()
    # frame 0: both tiles, weight .25 each -> 2; frame 3: a at .25, b at .75 -> 2.5
    torch.testing.assert_close(out, torch.tensor([2.0, 1.0, 1.0, 2.5, 3.0, 3.0]))


def test_noise_rng_order_and_tile_repeat() -> None:
    g = torch.Generator().manual_seed(7)
    aug, lat = draw_noise(g, (1, 3, 16, 16), (1, 4, 4, 2, 2), torch.device("cpu"), torch.float32)
    ref = torch.Generator().manual_seed(7)
    torch.testing.assert_close(aug, torch.randn(1, 3, 16, 16, generator=ref))  # aug noise first
    torch.testing.assert_close(lat, torch.randn(1, 4, 4, 2, 2, generator=ref))
    rep = repeat_tile_noise(lat, 10)
    assert rep.shape == (1, 10, 4, 2, 2)
    assert torch.equal(rep[:, 4:8], lat) and torch.equal(rep[:, 8:], lat[:, :2])


# -------------------------------------------------------------------------- preprocessing
def test_target_size_by_orientation() -> None:
    assert target_size(1500, 800) == (1024, 576)
    assert target_size(800, 1500) == (576, 1024)
    assert target_size(700, 700) == (576, 1024)


def test_preprocess_cover_then_centre_crop() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (1024, 700, 3), dtype=np.uint8)
    # h/w = 1.463 < 1024/576: height 1024 kept, width ceil(1024/1.463) = 700 -> no resize;
    # centre crop of 576 columns starts at round(124 / 2) = 62
    np.testing.assert_array_equal(preprocess_image(img, (1024, 576)), img[:, 62:638])
    flat = np.full((512, 288, 3), 77, dtype=np.uint8)  # exact 1/2 scale, constant
    out = preprocess_image(flat, (1024, 576))
    assert out.shape == (1024, 576, 3) and (out == 77).all()


# ---------------------------------------------------------------------------- pipeline
def test_one_tile_equals_stock_svd_when_pose_net_is_zero(generator: MimicMotionGenerator) -> None:
    """F == tile_size and a zero PoseNet: MimicMotion is exactly SVD img2vid with CFG."""
    from diffusers import StableVideoDiffusionPipeline
    from transformers import CLIPImageProcessor

    pipe = generator.pipeline
    svd_dir = Path(generator.config.svd_dir)
    svd = StableVideoDiffusionPipeline(
        vae=pipe.vae, image_encoder=pipe.image_encoder, unet=pipe.unet, scheduler=pipe.scheduler,
        feature_extractor=CLIPImageProcessor.from_pretrained(svd_dir / "feature_extractor"),
    )  # fmt: skip
    svd.set_progress_bar_config(disable=True)
    ref = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    poses = torch.rand(4, 3, H, W) * 2 - 1
    saved = [p.detach().clone() for p in pipe.pose_net.final_proj.parameters()]
    try:
        with torch.no_grad():
            for p in pipe.pose_net.final_proj.parameters():
                p.zero_()
        ours = pipe(
            torch.from_numpy(ref).permute(2, 0, 1).float() / 255.0, poses,
            generator=torch.Generator().manual_seed(3), tile_size=4, tile_overlap=2,
            num_inference_steps=2, decode_chunk_size=3,
        )  # fmt: skip
    finally:
        with torch.no_grad():
            for p, s in zip(pipe.pose_net.final_proj.parameters(), saved, strict=True):
                p.copy_(s)
    theirs = svd(
        Image.fromarray(ref), height=H, width=W, num_frames=4, num_inference_steps=2,
        min_guidance_scale=2.0, max_guidance_scale=2.0, fps=7, motion_bucket_id=127,
        noise_aug_strength=0.0, decode_chunk_size=3, generator=torch.Generator().manual_seed(3),
        output_type="pt",
    ).frames  # fmt: skip
    assert ours.shape == (4, 3, H, W)
    torch.testing.assert_close(ours, theirs[0].float(), atol=1e-4, rtol=0)


def test_generate_shape_drops_frame_zero_and_is_deterministic(
    generator: MimicMotionGenerator,
) -> None:
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    poses = rng.integers(0, 256, (6, H, W, 3), dtype=np.uint8)  # 2 tiles: [0..3], [0,3,4,5]
    out = generator.generate(ref, poses)
    assert out.shape == (5, H, W, 3) and out.dtype == np.uint8
    frames = generator.pipeline(
        torch.from_numpy(ref).permute(2, 0, 1).float() / 255.0,
        torch.from_numpy(poses).permute(0, 3, 1, 2).float() / 127.5 - 1.0,
        generator=torch.Generator().manual_seed(42), tile_size=4, tile_overlap=2,
        num_inference_steps=2, decode_chunk_size=3,
    )  # fmt: skip
    expected = (frames * 255.0).to(torch.uint8)[1:].permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(out, expected)  # frame 0 (the reference) is dropped
    np.testing.assert_array_equal(generator.generate(ref, poses), out)  # same seed, same video
    other_pose = generator.generate(ref, poses[::-1].copy())
    assert np.abs(other_pose.astype(int) - out.astype(int)).max() > 0  # poses matter


def test_generate_folder_writes_numbered_frames(
    generator: MimicMotionGenerator, tmp_path: Path
) -> None:
    rng = np.random.default_rng(4)
    ref = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    poses = rng.integers(0, 256, (5, H, W, 3), dtype=np.uint8)
    Image.fromarray(ref).save(tmp_path / "ref.png")
    for i in (0, 1, 2, 3, 4):  # written out of numeric-string order on purpose: 10 > 9
        Image.fromarray(poses[i]).save(tmp_path / f"{[0, 1, 2, 9, 10][i]}.png")
    written = generate_folder(generator, tmp_path / "ref.png", tmp_path, tmp_path / "out")
    assert [p.name for p in written] == ["0.png", "1.png", "2.png", "3.png"]
    expected = generator.generate(ref, poses)
    for i, path in enumerate(written):
        np.testing.assert_array_equal(np.asarray(Image.open(path)), expected[i])


def test_float16_path_runs_and_restores_the_vae_dtype(tiny_weights: dict[str, Path]) -> None:
    """The CUDA setting (fp16), exercised on CPU: the VAE encodes upcast to float32 (force_upcast)
    and is back in float16 afterwards; the output is a valid video."""
    cfg = GenerateConfig(
        svd_dir=str(tiny_weights["svd_dir"]), checkpoint=str(tiny_weights["checkpoint"]),
        dtype="float16", **TINY_SETTINGS,
    )  # fmt: skip
    gen = MimicMotionGenerator(cfg)
    assert gen.pipeline.dtype == torch.float16
    rng = np.random.default_rng(5)
    ref = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    out = gen.generate(ref, rng.integers(0, 256, (4, H, W, 3), dtype=np.uint8))
    assert out.shape == (3, H, W, 3) and out.dtype == np.uint8
    assert next(gen.pipeline.vae.parameters()).dtype == torch.float16
