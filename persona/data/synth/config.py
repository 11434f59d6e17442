"""Every parameter of a synthetic subject (`SynthConfig`), its presets and its meta.json form."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from persona.data.garment import GarmentSettings


@dataclass
class FaultSettings:
    """Simulated diffusion faults at ``artifacts = 1`` (all scale linearly with it)."""

    drift_reference_angle: float = 0.6  # rad: mean body-joint distance from the input pose at
    #   which the identity drift is full
    drift_hue: float = 0.9  # rad: hue rotation of the clothes at full drift
    drift_pattern_phase: float = 0.5  # periods: shift of the trouser checks at full drift
    drift_face: float = 0.5  # blend of eye/brow/lip colours toward skin at full drift
    colour_gain_std: float = 0.06  # per-frame, per-channel multiplicative colour shift
    colour_bias_std: float = 0.03  # per-frame, per-channel additive colour shift
    blur_sigma_max: float = 2.5  # px at 576 px width: per-frame blur sigma ~ U(0, max)
    hand_swirl: float = 2.5  # rad: swirl of the image around each hand at the hand's centre
    hand_radius: float = 0.12  # m: radius of the swirled region around a hand
    pose_noise_body: float = 0.04  # rad: std of the written body-joint pose error
    pose_noise_hands: float = 0.1  # rad: std of the written finger pose error
    pose_noise_root: float = 0.02  # rad: std of the written root orientation error
    transl_noise: float = 0.01  # m: std of the written translation error

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if value < 0 or (item.name == "drift_reference_angle" and value == 0):
                bound = "> 0" if item.name == "drift_reference_angle" else ">= 0"
                raise ValueError(f"FaultSettings.{item.name}: expected {bound}, got {value}")


@dataclass
class SynthConfig:
    """Every parameter of a synthetic subject; meta.json records all of them."""

    preset: str = "tiny"
    seed: int = 0
    artifacts: float = 1.0  # 0: training frames are exact renders; 1: full simulated faults
    motions: tuple[str, ...] = ("punches", "kicks")  # one generated_<k> per motion
    test_motion: str = "wave"  # held-out motion of the test split
    width: int = 96
    height: int = 160
    frames: int = 4  # frames per generated video (evenly subsampled from the motion)
    test_frames: int = 3  # frontal frames of the held-out motion
    novel_views: tuple[float, ...] = (60.0, 180.0)  # degrees: test views orbiting the subject
    body: str = "procedural"  # open | procedural
    subdivide: int = 0  # subdivision levels of the avatar (Gaussians per vertex of the result)
    gaussian_scale: float = 0.55  # Gaussian std dev = this x mean edge length at the vertex
    background: float = 0.92  # plain light grey background of the images (0..1)
    ambient: float = 0.45  # baked Lambertian shading: ambient share
    light: tuple[float, float, float] = (0.35, 0.55, 0.75)  # light direction, body frame
    depth_noise: float = 0.003  # m: std of the depth-map noise
    normal_noise: float = 0.03  # std of the normal-map noise (before renormalising)
    faults: FaultSettings = field(default_factory=FaultSettings)
    garment: GarmentSettings = field(default_factory=GarmentSettings)
    preview: bool = False


PRESETS: dict[str, dict[str, Any]] = {
    # seconds on a 2-core CPU; the procedural body builds in < 1 s
    "tiny": dict(body="procedural", width=96, height=160, motions=("punches", "kicks"),
                 frames=4, test_frames=3, novel_views=(60.0, 180.0)),
    # the open body (cached after its first ~2 min build); train it at resolution_scale 0.5
    "garment": dict(body="open", width=288, height=512,
                    motions=("rotation", "punches", "kicks", "dance"), frames=20, test_frames=8,
                    novel_views=(45.0, 90.0, 180.0, 270.0),
                    # held out: swings the skirt (19 cm, 16 px at 144 x 256) and the sleeves; the
                    # wave (before 2026-12-04) left the skirt at exactly 0
                    test_motion="march"),
}
PRESETS["demo"] = PRESETS["garment"]  # the `make demo` subject wears the garment (older name)


def preset_config(preset: str, **overrides: Any) -> SynthConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return SynthConfig(preset=preset, **values)


def jsonable_config(config: SynthConfig) -> dict[str, Any]:
    """The config as meta.json stores it."""
    return _jsonable(asdict(config))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
