"""MimicMotion (pose-guided Stable Video Diffusion) on stock diffusers components.

Facts: /work/shared/reference/PREPROCESSING.md section 1 (1.2 PoseNet, 1.3 checkpoint, 1.4 base
model, 1.5 pose-latent injection, 1.6 pipeline, 1.7 defaults and image preprocessing) and
METHOD.md section 8 (the authors' settings). Written from those facts; no code copied.

Pose latents are injected with a forward hook on the stock ``unet.conv_in`` that is registered
only for the conditional UNet call and removed right after it (see :func:`unet_forward`), so the
UNet is the unmodified diffusers ``UNetSpatioTemporalConditionModel`` with the released key names.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ---- constants ----
POSE_NET_IN_CHANNELS = 3  # RGB pose image (1.2)
POSE_NET_OUT_CHANNELS = (3, 16, 16, 32, 32, 64, 64, 128)  # out channels of conv 0..14 (1.2)
POSE_NET_KERNELS = (3, 4, 3, 4, 3, 4, 3, 3)  # conv kernel sizes, stride 2 where k=4 (1.2)
POSE_NET_SCALE_INIT = 2.0  # learnable output scale, initial value (1.2)
UNET_PREFIX = "unet."  # checkpoint key prefix of the UNet (1.3)
POSE_NET_PREFIX = "pose_net."  # checkpoint key prefix of PoseNet (1.3)
CLIP_INPUT_SIZE = 224  # CLIP input: antialiased resize to 224x224 in [-1, 1] (1.6 step 2)
ASPECT_RATIO = 9 / 16  # constants.py ASPECT_RATIO (1.7)
LONG_SIDE_MULTIPLE = 64  # long side = int(resolution / ASPECT_RATIO // 64) * 64 (1.7)
VAE_LATENT_CHANNELS = 4  # SVD latent channels; the UNet sees 8 = noise + image latent (1.4)

# Config setting names and sources, for error messages (preamble: name the setting + source).
SVD_SETTING = "model.init_args.generate.svd_dir"
SVD_SOURCE = (
    "HF repo stabilityai/stable-video-diffusion-img2vid-xt-1-1 (gated; subfolders unet "
    "(config only), vae, image_encoder, scheduler, feature_extractor)"
)
CKPT_SETTING = "model.init_args.generate.checkpoint"
CKPT_SOURCE = "HF repo tencent/MimicMotion, file MimicMotion_1-1.pth"


# ------------------------------------------------------------------------------------------
# PoseNet (1.2)
# ------------------------------------------------------------------------------------------
class PoseNet(nn.Module):
    """Pose image [-1, 1] (N, 3, H, W) or (B, F, 3, H, W) -> (N or B*F, C, H/8, W/8)."""

    def __init__(self, noise_latent_channels: int = 320) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = POSE_NET_IN_CHANNELS
        for c_out, k in zip(POSE_NET_OUT_CHANNELS, POSE_NET_KERNELS, strict=True):
            stride = 2 if k == 4 else 1
            layers += [nn.Conv2d(c_in, c_out, k, stride, padding=1), nn.SiLU()]
            c_in = c_out
        self.conv_layers = nn.Sequential(*layers)
        self.final_proj = nn.Conv2d(c_in, noise_latent_channels, kernel_size=1)
        self._initialize_weights()
        self.scale = nn.Parameter(torch.ones(1) * POSE_NET_SCALE_INIT)

    def _initialize_weights(self) -> None:
        for m in self.conv_layers:
            if isinstance(m, nn.Conv2d):
                fan = m.kernel_size[0] * m.kernel_size[1] * m.in_channels
                nn.init.normal_(m.weight, mean=0.0, std=math.sqrt(2.0 / fan))
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.final_proj.weight)
        nn.init.zeros_(self.final_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 5:
            x = x.flatten(0, 1)  # "b f c h w -> (b f) c h w"
        return self.final_proj(self.conv_layers(x)) * self.scale


# ------------------------------------------------------------------------------------------
# Pose-latent injection (1.5)
# ------------------------------------------------------------------------------------------
@contextmanager
def pose_latents_added(unet: nn.Module, pose_latents: torch.Tensor) -> Iterator[None]:
    """While active, ``unet.conv_in``'s output gets ``pose_latents`` [B*F, C, h, w] added."""

    def hook(_module: nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
        if output.shape != pose_latents.shape:
            raise ValueError(
                f"pose latents {tuple(pose_latents.shape)} do not match conv_in output "
                f"{tuple(output.shape)}"
            )
        return output + pose_latents

    handle = unet.conv_in.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def unet_forward(
    unet: nn.Module,
    sample: torch.Tensor,  # [B, F, 8, h, w]
    timestep: torch.Tensor | float,
    encoder_hidden_states: torch.Tensor,  # [B, 1, D]
    added_time_ids: torch.Tensor,  # [B, 3]
    pose_latents: torch.Tensor | None = None,  # [B*F, C, h, w]
) -> torch.Tensor:
    """The MimicMotion UNet call (1.5): stock forward, pose latents added right after conv_in."""
    kwargs = {"encoder_hidden_states": encoder_hidden_states, "added_time_ids": added_time_ids}
    if pose_latents is None:
        return unet(sample, timestep, return_dict=False, **kwargs)[0]
    with pose_latents_added(unet, pose_latents):
        return unet(sample, timestep, return_dict=False, **kwargs)[0]  # [B, F, 4, h, w]


# ------------------------------------------------------------------------------------------
# Checkpoint (1.3)
# ------------------------------------------------------------------------------------------
def split_checkpoint(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Flat dict -> (unet dict, pose_net dict), prefixes stripped; any other prefix is an error."""
    unet_sd: dict[str, torch.Tensor] = {}
    pose_sd: dict[str, torch.Tensor] = {}
    foreign: list[str] = []
    for key, value in state.items():
        if key.startswith(UNET_PREFIX):
            unet_sd[key[len(UNET_PREFIX) :]] = value
        elif key.startswith(POSE_NET_PREFIX):
            pose_sd[key[len(POSE_NET_PREFIX) :]] = value
        else:
            foreign.append(key)
    if foreign:
        prefixes = sorted({k.split(".", 1)[0] + "." for k in foreign})
        raise ValueError(
            f"MimicMotion checkpoint has {len(foreign)} keys outside 'unet.'/'pose_net.' "
            f"(prefixes {prefixes}, e.g. {foreign[0]!r})"
        )
    return unet_sd, pose_sd


def _strict_load(
    module: nn.Module, state: dict[str, torch.Tensor], name: str, path: Path, assign: bool
) -> None:
    expected = set(module.state_dict().keys())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{path}: the {name!r} part does not match the model: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    module.load_state_dict(state, strict=True, assign=assign)


def load_mimicmotion_checkpoint(
    path: str | Path, unet: nn.Module, pose_net: PoseNet, assign: bool = False
) -> None:
    """Load ``MimicMotion_1-1.pth`` (flat dict, keys ``unet.*`` / ``pose_net.*``) strictly.

    ``assign=True`` replaces the module tensors by the file's (for modules built on the meta
    device); the caller then casts dtype/device.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"MimicMotion checkpoint not found: {path} (set {CKPT_SETTING}; from {CKPT_SOURCE})"
        )
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a flat state dict, got {type(state).__name__}")
    unet_sd, pose_sd = split_checkpoint(state)
    _strict_load(unet, unet_sd, "unet", path, assign)
    _strict_load(pose_net, pose_sd, "pose_net", path, assign)


# ------------------------------------------------------------------------------------------
# Pure pieces of the pipeline (1.6)
# ------------------------------------------------------------------------------------------
def tile_indices(num_frames: int, tile_size: int, tile_overlap: int) -> list[list[int]]:
    """Frame indices of each tile; every tile has frame 0 and tile_size frames (1.6 step 9)."""
    if num_frames < tile_size:
        raise ValueError(
            f"num_frames ({num_frames}) must be >= tile_size ({tile_size}); the authors' tiling "
            "has no tile otherwise"
        )
    if not 0 <= tile_overlap < tile_size:
        raise ValueError(f"tile_overlap ({tile_overlap}) must be in [0, tile_size={tile_size})")
    step = tile_size - tile_overlap
    indices = [
        [0, *range(i + 1, min(i + tile_size, num_frames))]
        for i in range(0, num_frames - tile_size + 1, step)
    ]
    if indices[-1][-1] < num_frames - 1:
        indices.append([0, *range(num_frames - tile_size + 1, num_frames)])
    return indices


def tile_weights(tile_size: int) -> torch.Tensor:
    """Triangle weights [T]: w = (arange(T) + 0.5) * 2 / T, min(w, 2 - w) (1.6 step 10)."""
    w = (torch.arange(tile_size, dtype=torch.float64) + 0.5) * 2.0 / tile_size
    return torch.minimum(w, 2.0 - w)


def fuse_tiles(
    tile_preds: Sequence[torch.Tensor],  # each [B, T, C, h, w]
    indices: Sequence[Sequence[int]],
    weights: torch.Tensor,  # [T]
    num_frames: int,
) -> torch.Tensor:
    """Per-frame weighted average of the tiles' predictions -> [B, F, C, h, w] (1.6 step 10)."""
    first = tile_preds[0]
    out = first.new_zeros((first.shape[0], num_frames, *first.shape[2:]))
    cnt = first.new_zeros((num_frames,))
    w = weights.to(first.dtype)
    for pred, idx in zip(tile_preds, indices, strict=True):
        out[:, idx] += pred * w[:, None, None, None]
        cnt[idx] += w
    return out / cnt[:, None, None, None]


def draw_noise(
    generator: torch.Generator,
    image_shape: Sequence[int],
    latent_shape: Sequence[int],
    device: torch.device,
    latent_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RNG order of 1.6 step 7: noise-augmentation noise first (float32), then one tile of
    latent noise [1, T, 4, h, w] (unscaled)."""
    aug = torch.randn(tuple(image_shape), generator=generator, device=device, dtype=torch.float32)
    lat = torch.randn(tuple(latent_shape), generator=generator, device=device, dtype=latent_dtype)
    return aug, lat


def repeat_tile_noise(noise: torch.Tensor, num_frames: int) -> torch.Tensor:
    """[1, T, ...] -> [1, F, ...]: the same noise every T frames (1.6 step 7)."""
    tile = noise.shape[1]
    return noise.repeat(1, num_frames // tile + 1, *([1] * (noise.ndim - 2)))[:, :num_frames]


def target_size(height: int, width: int, resolution: int = 576) -> tuple[int, int]:
    """(H, W) of the generated video: portrait (h > w) 1024x576, else 576x1024 (1.7)."""
    long_side = int(resolution / ASPECT_RATIO // LONG_SIDE_MULTIPLE) * LONG_SIDE_MULTIPLE
    return (long_side, resolution) if height > width else (resolution, long_side)


def preprocess_image(
    image: np.ndarray,  # [h, w, 3] uint8 RGB
    out_hw: tuple[int, int],
) -> np.ndarray:
    """Resize to cover ``out_hw`` (bilinear, no antialias; ceil of the other side), then centre
    crop (1.7, torchvision resize/center_crop semantics). Returns uint8 [H, W, 3]."""
    h, w = image.shape[:2]
    ht, wt = out_hw
    ratio = float(h) / float(w)
    if ratio < ht / wt:
        hr, wr = ht, math.ceil(ht / ratio)
    else:
        hr, wr = math.ceil(wt * ratio), wt
    x = image
    if (hr, wr) != (h, w):
        t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        t = F.interpolate(t, size=(hr, wr), mode="bilinear", align_corners=False, antialias=False)
        x = t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    top = int(round((hr - ht) / 2.0))
    left = int(round((wr - wt) / 2.0))
    return np.ascontiguousarray(x[top : top + ht, left : left + wt])


# ------------------------------------------------------------------------------------------
# Pipeline (1.6)
# ------------------------------------------------------------------------------------------
class MimicMotionPipeline:
    """Pose-guided SVD sampling with progressive latent fusion over tiles (1.6).

    Components are diffusers/transformers modules: ``vae`` AutoencoderKLTemporalDecoder,
    ``image_encoder`` CLIPVisionModelWithProjection, ``unet`` UNetSpatioTemporalConditionModel,
    ``scheduler`` EulerDiscreteScheduler, ``pose_net`` PoseNet; ``clip_mean``/``clip_std`` from
    the feature extractor (CLIPImageProcessor image_mean / image_std).
    """

    def __init__(
        self,
        vae: nn.Module,
        image_encoder: nn.Module,
        unet: nn.Module,
        scheduler: Any,
        pose_net: PoseNet,
        clip_mean: Sequence[float],
        clip_std: Sequence[float],
    ) -> None:
        self.vae = vae
        self.image_encoder = image_encoder
        self.unet = unet
        self.scheduler = scheduler
        self.pose_net = pose_net
        self.clip_mean = torch.tensor(list(clip_mean), dtype=torch.float32).view(1, 3, 1, 1)
        self.clip_std = torch.tensor(list(clip_std), dtype=torch.float32).view(1, 3, 1, 1)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def encode_clip(self, image: torch.Tensor) -> torch.Tensor:
        """[1, 3, H, W] in [0, 1] -> [2, 1, D] = [zeros, embedding] (1.6 step 2)."""
        from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
            _resize_with_antialiasing,
        )

        x = _resize_with_antialiasing(image * 2.0 - 1.0, (CLIP_INPUT_SIZE, CLIP_INPUT_SIZE))
        x = (x + 1.0) / 2.0
        x = (x - self.clip_mean.to(x.device)) / self.clip_std.to(x.device)
        enc_dtype = next(self.image_encoder.parameters()).dtype
        emb = self.image_encoder(x.to(enc_dtype)).image_embeds.unsqueeze(1)  # [1, 1, D]
        return torch.cat([torch.zeros_like(emb), emb])

    def encode_vae(self, image: torch.Tensor) -> torch.Tensor:
        """[1, 3, H, W] in [-1, 1] (noise-augmented) -> [2, 4, h, w] = [zeros, latent.mode()],
        no scaling factor (1.6 step 4). Encodes in float32 when the VAE asks for upcasting."""
        vae_dtype = next(self.vae.parameters()).dtype
        upcast = vae_dtype == torch.float16 and bool(getattr(self.vae.config, "force_upcast", 0))
        if upcast:
            self.vae.to(torch.float32)
        try:
            enc_dtype = torch.float32 if upcast else vae_dtype
            lat = self.vae.encode(image.to(enc_dtype)).latent_dist.mode()
        finally:
            if upcast:
                self.vae.to(vae_dtype)
        return torch.cat([torch.zeros_like(lat), lat])

    def decode(self, latents: torch.Tensor, decode_chunk_size: int) -> torch.Tensor:
        """[1, F, 4, h, w] -> [F, 3, H, W] float32 in [0, 1], chunks of decode_chunk_size
        (1.6 step 11)."""
        flat = latents.flatten(0, 1) / self.vae.config.scaling_factor
        frames = []
        for i in range(0, flat.shape[0], decode_chunk_size):
            chunk = flat[i : i + decode_chunk_size]
            frames.append(self.vae.decode(chunk, num_frames=chunk.shape[0]).sample.float())
        video = torch.cat(frames)  # [F, 3, H, W] in [-1, 1]
        return (video / 2.0 + 0.5).clamp(0.0, 1.0)

    @torch.no_grad()
    def __call__(
        self,
        image: torch.Tensor,  # [3, H, W] float in [0, 1]
        image_pose: torch.Tensor,  # [F, 3, H, W] float in [-1, 1], frame 0 = reference pose
        *,
        generator: torch.Generator,
        tile_size: int = 72,
        tile_overlap: int = 6,
        num_inference_steps: int = 25,
        min_guidance_scale: float = 2.0,
        max_guidance_scale: float = 2.0,
        fps: int = 7,
        motion_bucket_id: int = 127,
        noise_aug_strength: float = 0.0,
        decode_chunk_size: int = 8,
        output_latents: bool = False,
    ) -> torch.Tensor:
        """Returns frames [F, 3, H, W] float32 in [0, 1] (or latents [1, F, 4, h, w])."""
        if max_guidance_scale <= 1.0:
            raise ValueError("MimicMotion needs classifier-free guidance (max_guidance_scale > 1)")
        device = next(self.unet.parameters()).device
        dtype = self.dtype
        num_frames, _, height, width = image_pose.shape
        if tuple(image.shape[-2:]) != (height, width):
            raise ValueError(f"image {tuple(image.shape)} and poses {tuple(image_pose.shape)}")
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise ValueError(f"height and width must be multiples of {self.vae_scale_factor}")
        indices = tile_indices(num_frames, tile_size, tile_overlap)
        ref = image[None].to(device=device, dtype=torch.float32)  # [1, 3, H, W]

        emb = self.encode_clip(ref).to(dtype)  # [2, 1, D]
        cond_fps = fps - 1  # SVD was conditioned on fps - 1 (1.6 step 3)

        h, w = height // self.vae_scale_factor, width // self.vae_scale_factor
        latent_shape = (1, tile_size, VAE_LATENT_CHANNELS, h, w)
        aug, noise = draw_noise(generator, ref.shape, latent_shape, device, dtype)
        image_latents = self.encode_vae(ref * 2.0 - 1.0 + noise_aug_strength * aug).to(dtype)
        image_latents = image_latents[:, None].repeat(1, num_frames, 1, 1, 1)  # [2, F, 4, h, w]

        time_ids = torch.tensor([[cond_fps, motion_bucket_id, noise_aug_strength]], dtype=dtype)
        time_ids = time_ids.to(device).repeat(2, 1)  # [2, 3]

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        latents = repeat_tile_noise(noise * self.scheduler.init_noise_sigma, num_frames)

        guidance = torch.linspace(min_guidance_scale, max_guidance_scale, num_frames)
        guidance = guidance.to(device, dtype).view(1, num_frames, 1, 1, 1)
        weights = tile_weights(tile_size).to(device)
        pose = image_pose.to(device=device, dtype=dtype)

        for t in timesteps:
            lmi = self.scheduler.scale_model_input(torch.cat([latents] * 2), t)
            lmi = torch.cat([lmi, image_latents], dim=2)  # [2, F, 8, h, w]
            uncond_preds, cond_preds = [], []
            for idx in indices:
                pose_latents = self.pose_net(pose[idx])  # [T, C, h, w]
                uncond_preds.append(unet_forward(self.unet, lmi[:1, idx], t, emb[:1], time_ids[:1]))
                cond_preds.append(
                    unet_forward(self.unet, lmi[1:, idx], t, emb[1:], time_ids[1:], pose_latents)
                )
            uncond = fuse_tiles(uncond_preds, indices, weights, num_frames)
            cond = fuse_tiles(cond_preds, indices, weights, num_frames)
            noise_pred = uncond + guidance * (cond - uncond)
            latents = self.scheduler.step(noise_pred, t, latents).prev_sample

        if output_latents:
            return latents
        return self.decode(latents, decode_chunk_size)


# ------------------------------------------------------------------------------------------
# Generator: local loading + uint8 in / uint8 out (1.3, 1.4, 1.7)
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerateConfig:
    """Settings of ``configs/prep/generate.yaml`` (defaults: 1.7, METHOD.md section 8)."""

    svd_dir: str = "weights/stable-video-diffusion-img2vid-xt-1-1"
    checkpoint: str = "weights/mimicmotion/MimicMotion_1-1.pth"
    device: str = "auto"  # "auto": cuda when available, else cpu
    dtype: str = "auto"  # "auto": float16 on CUDA, float32 on CPU (1.7 uses fp16)
    resolution: int = 576  # short side of the generated video (1.7)
    tile_size: int = 72  # frames per tile = num_frames of test.yaml (1.7)
    tile_overlap: int = 6  # frames_overlap (1.7)
    num_inference_steps: int = 25  # (1.7)
    guidance_scale: float = 2.0  # min = max guidance (1.7)
    noise_aug_strength: float = 0.0  # (1.7)
    seed: int = 42  # (1.7)
    decode_chunk_size: int = 8  # (1.7)
    fps: int = 7  # conditioning fps passed to the pipeline; 6 is used (1.6 step 3, 1.7)
    motion_bucket_id: int = 127  # pipeline default (1.6)


def load_generate_config(path: str | Path) -> GenerateConfig:
    """Read ``model.init_args.generate`` of ``configs/prep/generate.yaml`` (the generation
    stage's config); unknown keys are errors."""
    import yaml

    with open(path) as handle:
        data = yaml.safe_load(handle) or {}
    block = ((data.get("model") or {}).get("init_args") or {}).get("generate")
    if not isinstance(block, dict):
        raise ValueError(f"{path}: expected a 'model.init_args.generate' mapping")
    known = set(GenerateConfig.__dataclass_fields__)
    unknown = sorted(set(block) - known)
    if unknown:
        raise ValueError(f"{path}: unknown model.init_args.generate settings {unknown}; "
                         f"known {sorted(known)}")
    return GenerateConfig(**block)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    table = {"float16": torch.float16, "fp16": torch.float16, "float32": torch.float32,
             "fp32": torch.float32, "bfloat16": torch.bfloat16}  # fmt: skip
    if name not in table:
        raise ValueError(f"model.init_args.generate.dtype must be auto or one of "
                         f"{sorted(table)}, got {name}")
    return table[name]


def _variant(folder: Path) -> str | None:
    """'fp16' when the folder holds the fp16 variant files (the released SVD layout)."""
    return "fp16" if any(".fp16." in p.name for p in folder.iterdir()) else None


def _require_svd_parts(svd_dir: Path) -> None:
    if not svd_dir.is_dir():
        raise FileNotFoundError(
            f"SVD folder not found: {svd_dir} (set {SVD_SETTING}; {SVD_SOURCE})"
        )
    needed = {
        "unet": "config.json",
        "vae": "config.json",
        "image_encoder": "config.json",
        "scheduler": "scheduler_config.json",
        "feature_extractor": "preprocessor_config.json",
    }
    for sub, name in needed.items():
        if not (svd_dir / sub / name).is_file():
            raise FileNotFoundError(
                f"{svd_dir / sub / name} missing (set {SVD_SETTING}; {SVD_SOURCE})"
            )


def _has_meta(module: nn.Module) -> bool:
    return any(t.is_meta for t in [*module.parameters(), *module.buffers()])


def load_components(
    svd_dir: str | Path, checkpoint: str | Path, device: torch.device, dtype: torch.dtype
) -> MimicMotionPipeline:
    """Build the pipeline from local files only (1.3, 1.4)."""
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    svd = Path(svd_dir)
    _require_svd_parts(svd)
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(
            f"MimicMotion checkpoint not found: {checkpoint} (set {CKPT_SETTING}; {CKPT_SOURCE})"
        )
    unet_config = UNetSpatioTemporalConditionModel.load_config(svd / "unet", local_files_only=True)
    with torch.device("meta"):  # the UNet comes only from the checkpoint (1.3): skip random init
        unet = UNetSpatioTemporalConditionModel.from_config(unet_config)
    pose_net = PoseNet(noise_latent_channels=unet.config.block_out_channels[0])
    load_mimicmotion_checkpoint(checkpoint, unet, pose_net, assign=True)
    if _has_meta(unet):
        raise ValueError(f"{checkpoint}: UNet tensors left uninitialised after loading")
    vae = AutoencoderKLTemporalDecoder.from_pretrained(
        svd / "vae", local_files_only=True, variant=_variant(svd / "vae"), torch_dtype=dtype
    )
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(
        svd / "image_encoder", local_files_only=True, variant=_variant(svd / "image_encoder"),
        dtype=dtype,
    )  # fmt: skip
    scheduler = EulerDiscreteScheduler.from_pretrained(svd / "scheduler", local_files_only=True)
    fe = CLIPImageProcessor.from_pretrained(svd / "feature_extractor", local_files_only=True)
    for m in (unet, pose_net, vae, image_encoder):
        m.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return MimicMotionPipeline(
        vae, image_encoder, unet, scheduler, pose_net, fe.image_mean, fe.image_std
    )


class MimicMotionGenerator:
    """Reference photo + pose frames (uint8) -> generated frames (uint8), authors' settings."""

    def __init__(self, config: GenerateConfig | None = None, **overrides: Any) -> None:
        cfg = config or GenerateConfig()
        if overrides:
            cfg = GenerateConfig(**{**cfg.__dict__, **overrides})
        self.config = cfg
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        self.pipeline = load_components(cfg.svd_dir, cfg.checkpoint, self.device, self.dtype)

    def generate(
        self,
        reference: np.ndarray,  # [h, w, 3] uint8 RGB
        pose_frames: np.ndarray,  # [F, h', w', 3] uint8 RGB, frame 0 = the reference's pose
    ) -> np.ndarray:
        """Returns uint8 [F-1, H, W, 3] at the target size of 1.7 (frame 0 dropped)."""
        cfg = self.config
        if reference.dtype != np.uint8 or pose_frames.dtype != np.uint8:
            raise ValueError("reference and pose_frames must be uint8")
        out_hw = target_size(*reference.shape[:2], resolution=cfg.resolution)
        ref = preprocess_image(reference, out_hw)
        poses = np.stack([preprocess_image(p, out_hw) for p in pose_frames])  # [F, H, W, 3]
        image = torch.from_numpy(ref).permute(2, 0, 1).float() / 255.0  # [3, H, W] in [0, 1]
        pose = torch.from_numpy(poses).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [F,3,H,W]
        generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        frames = self.pipeline(
            image,
            pose,
            generator=generator,
            tile_size=cfg.tile_size,
            tile_overlap=cfg.tile_overlap,
            num_inference_steps=cfg.num_inference_steps,
            min_guidance_scale=cfg.guidance_scale,
            max_guidance_scale=cfg.guidance_scale,
            fps=cfg.fps,
            motion_bucket_id=cfg.motion_bucket_id,
            noise_aug_strength=cfg.noise_aug_strength,
            decode_chunk_size=cfg.decode_chunk_size,
        )  # [F, 3, H, W] in [0, 1]
        video = (frames.cpu() * 255.0).to(torch.uint8)  # truncation, as inference.py
        return video[1:].permute(0, 2, 3, 1).contiguous().numpy()  # drop the reference frame


# ------------------------------------------------------------------------------------------
# Folder runner (the generation stage proper is wired by the lead)
# ------------------------------------------------------------------------------------------
def read_rgb(path: str | Path) -> np.ndarray:
    """PNG/JPEG -> uint8 [H, W, 3] RGB."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def numbered_pngs(folder: str | Path) -> list[Path]:
    """``{i}.png`` files of a folder in numeric order."""
    paths = [p for p in Path(folder).glob("*.png") if p.stem.isdigit()]
    return sorted(paths, key=lambda p: int(p.stem))


def generate_folder(
    generator: MimicMotionGenerator,
    reference_path: str | Path,
    pose_dir: str | Path,
    out_dir: str | Path,
) -> list[Path]:
    """Reference image + ``pose_dir/{i}.png`` (i = 0..F-1, frame 0 = the reference's own pose)
    -> ``out_dir/{i}.png`` for i = 0..F-2 (generated frame i is pose frame i + 1), written
    atomically. Returns the written paths."""
    from persona.data.subject import write_png

    pose_paths = numbered_pngs(pose_dir)
    if not pose_paths:
        raise FileNotFoundError(f"no numbered PNG pose frames in {pose_dir}")
    frames = generator.generate(
        read_rgb(reference_path), np.stack([read_rgb(p) for p in pose_paths])
    )  # [F-1, H, W, 3]
    out = [Path(out_dir) / f"{i}.png" for i in range(frames.shape[0])]
    for path, frame in zip(out, frames, strict=True):
        write_png(path, frame)
    return out
