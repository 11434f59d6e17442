"""Ground-truth synthetic subjects (`persona synth`): the embedded default of ARCHITECTURE.md.

A known Gaussian avatar (one isotropic Gaussian per body vertex) with a procedural texture
(skin, hair, eyes, brows, lips, a top with a star logo and stripes, checked trousers, shoes), a
pose-driven garment deformation that is a KNOWN function of the body pose (a tunic hem that
follows the thighs, loose sleeves that sag with gravity), applied as a canonical mean offset
before skinning with the body's template weights. From it, a subject in the on-disk format of a
real one (persona/data/subject.py):

- captured/0: a casual pose, frontal virtual camera, the avatar colour (albedo with baked
  Lambertian shading) and the unshaded albedo.
- generated_k: one per driving motion, with simulated diffusion faults scaled by ``artifacts``:
  identity drift growing with the pose's distance from the input pose (clothes hue, pattern
  phase, face colours), per-frame colour gain/bias, blur, swirled hands, and SMPL-X parameters
  written with small errors (the image shows the true pose).
- test: a held-out motion from the front and novel views, clean, with ground-truth maps.

Geometry maps (mask, depth, camera-frame normals, part-seg) are rendered from the true pose and
stay reliable (depth and normals with mild noise), as SAM/Sapiens maps do.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from persona.body.lbs import skin_points
from persona.body.types import NUM_JOINTS, SMPLX_JOINT_NAMES, Identity, PoseParams
from persona.data import motions as motion_lib
from persona.data.garment import GarmentField, GarmentSettings, arm_progress, garment_field
from persona.data.garment import garment_offsets as _garment_offsets
from persona.data.palette import GOLIATH_PALETTE, class_index
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
from persona.ops.mesh import vertex_normals
from persona.render.projection import project_points
from persona.render.types import Camera, ChannelGroup, Gaussians, RenderSettings

_J = {name: i for i, name in enumerate(SMPLX_JOINT_NAMES)}
CM_PER_M = 100.0
MIN_EDGE_M = 1e-4  # m: edge length floor of the strain ratio (degenerate edges)
HAND_MIN_DEPTH = 1e-3  # m: camera z of a hand centre is clamped to this (fault placement)
BODY_JOINTS = slice(1, 22)  # the 21 body joints (root excluded): what the pose deformer sees


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------
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
                    novel_views=(45.0, 90.0, 180.0, 270.0)),
}
PRESETS["demo"] = PRESETS["garment"]  # the `make demo` subject wears the garment (older name)


def preset_config(preset: str, **overrides: Any) -> SynthConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return SynthConfig(preset=preset, **values)


# ----------------------------------------------------------------------------------------------
# Geometry helpers
# ----------------------------------------------------------------------------------------------
def mean_edge_length(vertices: Tensor, faces: Tensor) -> Tensor:
    """Mean length of the edges at each vertex. [V, 3], [F, 3] -> [V]."""
    total = torch.zeros(vertices.shape[0], dtype=vertices.dtype)
    count = torch.zeros(vertices.shape[0], dtype=vertices.dtype)
    for i, j in ((0, 1), (1, 2), (2, 0)):
        length = (vertices[faces[:, i]] - vertices[faces[:, j]]).norm(dim=-1)  # [F]
        for end in (faces[:, i], faces[:, j]):
            total.index_add_(0, end, length)
            count.index_add_(0, end, torch.ones_like(length))
    return total / count.clamp(min=1)


def rotate_hue(rgb: Tensor, angle: Tensor | float) -> Tensor:
    """Rotate colours [..., 3] about the grey axis by ``angle`` rad (keeps luminance roughly)."""
    angle = torch.as_tensor(angle, dtype=rgb.dtype)
    axis = torch.full((3,), 1.0 / math.sqrt(3.0), dtype=rgb.dtype)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Rodrigues: v cos + (k x v) sin + k (k.v)(1 - cos)
    cross = torch.cross(axis.expand_as(rgb), rgb, dim=-1)
    dot = (rgb * axis).sum(-1, keepdim=True)
    return (rgb * cos + cross * sin + axis * dot * (1 - cos)).clamp(0.0, 1.0)


def star_inside(x: Tensor, y: Tensor, radius: float, points: int = 5,
                inner_ratio: float = 0.45) -> Tensor:
    """Whether 2D points lie inside a star centred at the origin (one tip pointing up)."""
    angle = torch.atan2(x, y)  # 0 = up
    r = torch.sqrt(x * x + y * y)
    sector = 2 * math.pi / points
    local = torch.remainder(angle + sector / 2, sector) - sector / 2  # [-sector/2, sector/2]
    # the boundary is the segment from a tip (local 0, radius R) to a notch (sector/2, rR)
    tip = torch.tensor([radius, 0.0])
    notch = torch.tensor([inner_ratio * radius * math.cos(sector / 2),
                          inner_ratio * radius * math.sin(sector / 2)])
    dx, dy = notch[0] - tip[0], notch[1] - tip[1]
    ray_x, ray_y = torch.cos(local.abs()), torch.sin(local.abs())
    # the ray rho (cos, sin) meets tip + s (notch - tip) at rho = R dy / (dy cos - dx sin)
    rho = tip[0] * dy / (ray_x * dy - ray_y * dx)
    return r <= rho


# ----------------------------------------------------------------------------------------------
# The ground-truth avatar
# ----------------------------------------------------------------------------------------------
@dataclass
class Landmarks:
    """Rest-pose (zero pose, y up, facing +z) reference points of the textured regions."""

    eyes: Tensor  # [2, 3] left, right eye joints
    head: Tensor  # [3]
    neck: Tensor  # [3]
    chest: Tensor  # [3] spine3 joint
    pelvis: Tensor  # [3]
    hips: Tensor  # [2, 3]
    ankles: Tensor  # [2, 3]
    elbows: Tensor  # [2, 3]
    wrists: Tensor  # [2, 3]
    shoulders: Tensor  # [2, 3]


@dataclass
class Drift:
    """Identity drift of one generated frame (all zero = the true identity)."""

    hue: float = 0.0
    pattern_phase: float = 0.0
    face: float = 0.0


@dataclass
class GroundTruthAvatar:
    """The known avatar: canonical Gaussians with texture, part classes and garment weights."""

    identity: Identity
    canonical: Tensor  # [N, 3] big-pose positions
    rest: Tensor  # [N, 3] zero-pose shaped positions (texture coordinates)
    faces: Tensor  # [F, 3]
    weights: Tensor  # [N, 55] template skinning weights
    dominant: Tensor  # [N] dominant joint
    scales: Tensor  # [N] Gaussian std dev (m)
    regions: dict[str, Tensor]  # name -> [N] bool
    garment: GarmentField  # pose-driven offset weights of the garment parts
    seg_class: Tensor  # [N] goliath class index
    shading: Tensor  # [N] baked Lambertian factor
    landmarks: Landmarks
    canonical_joints: Tensor  # [55, 3] big-pose joints

    @property
    def num_gaussians(self) -> int:
        return self.canonical.shape[0]


def _landmarks(joints: Tensor) -> Landmarks:
    return Landmarks(
        eyes=joints[[_J["left_eye_smplhf"], _J["right_eye_smplhf"]]],
        head=joints[_J["head"]], neck=joints[_J["neck"]], chest=joints[_J["spine3"]],
        pelvis=joints[_J["pelvis"]], hips=joints[[_J["left_hip"], _J["right_hip"]]],
        ankles=joints[[_J["left_ankle"], _J["right_ankle"]]],
        elbows=joints[[_J["left_elbow"], _J["right_elbow"]]],
        wrists=joints[[_J["left_wrist"], _J["right_wrist"]]],
        shoulders=joints[[_J["left_shoulder"], _J["right_shoulder"]]],
    )


def _in_joints(dominant: Tensor, names: tuple[str, ...]) -> Tensor:
    return torch.isin(dominant, torch.tensor([_J[n] for n in names]))


def _arm_progress(rest: Tensor, lm: Landmarks, side: int) -> Tensor:
    """0 at the shoulder, 1 at the elbow, 2 at the wrist, along one arm (by projection)."""
    return arm_progress(rest, lm.shoulders[side], lm.elbows[side], lm.wrists[side])[0]


def define_regions(rest: Tensor, dominant: Tensor, lm: Landmarks, garment: GarmentSettings,
                   eye_mask: Tensor, rest_normals: Tensor) -> dict[str, Tensor]:
    """Texture regions {name: [N] bool} from rest positions and dominant joints (the garment's
    offset weights are persona.data.garment.garment_field's, smooth and independent of these)."""
    x, y, z = rest.unbind(-1)
    interocular = (lm.eyes[0] - lm.eyes[1]).norm()
    eye_y, eye_z = lm.eyes[:, 1].mean(), lm.eyes[:, 2].mean()
    head = _in_joints(dominant, ("head", "jaw", "left_eye_smplhf", "right_eye_smplhf"))
    head = head | (_in_joints(dominant, ("neck",)) & (y > eye_y - 1.6 * interocular))
    front = z > eye_z - 0.35 * interocular
    hair = head & ((y > eye_y + 0.9 * interocular)
                   | ((z < eye_z - 1.3 * interocular) & (y > eye_y - 1.5 * interocular)))
    near_eye = torch.zeros_like(x, dtype=torch.bool)
    brows = torch.zeros_like(near_eye)
    for side in range(2):
        ex, ey = lm.eyes[side, 0], lm.eyes[side, 1]
        planar = torch.sqrt((x - ex) ** 2 + (y - ey) ** 2)
        near_eye = near_eye | (head & front & (planar < 0.22 * interocular))
        brows = brows | (head & front & ((x - ex).abs() < 0.36 * interocular)
                         & (y > ey + 0.3 * interocular) & (y < ey + 0.48 * interocular))
    eyes = (eye_mask | near_eye) & ~hair
    mouth_y = eye_y - 1.15 * interocular
    lips = head & front & (((x / (0.42 * interocular)) ** 2
                            + ((y - mouth_y) / (0.13 * interocular)) ** 2) < 1.0)
    upper_lip = lips & (y >= mouth_y)

    arms = _in_joints(dominant, ("left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
                                 "left_collar", "right_collar"))
    progress = torch.stack([_arm_progress(rest, lm, 0), _arm_progress(rest, lm, 1)])  # [2, N]
    side_of = (x < 0).long()  # 0 = left (+x), 1 = right
    arm_progress = progress.gather(0, side_of[None])[0]  # [N]
    sleeves = arms & (arm_progress < garment.sleeve_end)
    torso = _in_joints(dominant, ("spine1", "spine2", "spine3", "left_collar", "right_collar"))
    torso = torso | (_in_joints(dominant, ("neck",)) & ~head)
    hip_y = lm.hips[:, 1].mean()
    hem_y = hip_y - garment.skirt_hem
    lower_body = _in_joints(dominant, ("pelvis", "left_hip", "right_hip", "left_knee",
                                       "right_knee"))
    skirt = lower_body & (y > hem_y)
    top = (torso | sleeves) & ~skirt
    ankle_y = lm.ankles[:, 1].mean()
    feet = _in_joints(dominant, ("left_ankle", "right_ankle", "left_foot", "right_foot"))
    shoes = feet & (y < ankle_y + 0.03)
    trousers = (lower_body | feet) & ~skirt & ~shoes  # leggings below the skirt
    chest_x, chest_y = x, y - (lm.chest[1] - 0.02)
    facing_front = rest_normals[:, 2] > FRONT_FACING_COSINE
    logo = top & torso & facing_front & star_inside(chest_x, chest_y, 0.065)
    stripe_phase = torch.remainder((y - hip_y) / 0.03, 2.0)
    stripes = top & (y < hip_y + 0.1) & (stripe_phase < 0.6)
    return {
        "hair": hair, "eyes": eyes, "brows": brows & ~hair, "lips": lips, "upper_lip": upper_lip,
        "head": head, "top": top, "sleeves": sleeves, "logo": logo, "stripes": stripes,
        "skirt": skirt, "trousers": trousers, "shoes": shoes,
    }


def segmentation_classes(dominant: Tensor, regions: dict[str, Tensor], rest: Tensor) -> Tensor:
    """Goliath class per Gaussian: body part of the dominant joint, clothes and face override."""
    names = ["Torso"] * NUM_JOINTS
    for side, prefix in (("left", "Left"), ("right", "Right")):
        names[_J[f"{side}_hip"]] = f"{prefix}_Upper_Leg"
        names[_J[f"{side}_knee"]] = f"{prefix}_Lower_Leg"
        names[_J[f"{side}_ankle"]] = f"{prefix}_Foot"
        names[_J[f"{side}_foot"]] = f"{prefix}_Foot"
        names[_J[f"{side}_shoulder"]] = f"{prefix}_Upper_Arm"
        names[_J[f"{side}_elbow"]] = f"{prefix}_Lower_Arm"
        names[_J[f"{side}_wrist"]] = f"{prefix}_Hand"
        names[_J[f"{side}_collar"]] = "Torso"
    for joint in range(25, 40):
        names[joint] = "Left_Hand"
    for joint in range(40, 55):
        names[joint] = "Right_Hand"
    for joint in ("neck", "head", "jaw", "left_eye_smplhf", "right_eye_smplhf"):
        names[_J[joint]] = "Face_Neck"
    table = torch.tensor([class_index(n) for n in names])
    classes = table[dominant]
    left = rest[:, 0] >= 0
    overrides = (
        ("trousers", "Lower_Clothing"), ("skirt", "Lower_Clothing"), ("top", "Upper_Clothing"),
        ("hair", "Hair"),
    )
    for region, name in overrides:
        classes = torch.where(regions[region], class_index(name), classes)
    classes = torch.where(regions["shoes"] & left, class_index("Left_Shoe"), classes)
    classes = torch.where(regions["shoes"] & ~left, class_index("Right_Shoe"), classes)
    classes = torch.where(regions["lips"] & regions["upper_lip"], class_index("Upper_Lip"),
                          classes)
    classes = torch.where(regions["lips"] & ~regions["upper_lip"], class_index("Lower_Lip"),
                          classes)
    return classes


# Base albedo colours of the identity (linear-ish RGB in [0, 1]).
SKIN = (0.87, 0.66, 0.52)
HAIR = (0.22, 0.13, 0.07)
IRIS = (0.18, 0.35, 0.55)
BROWS = (0.25, 0.15, 0.08)
LIPS = (0.72, 0.25, 0.28)
TOP = (0.12, 0.55, 0.58)
STRIPE = (0.95, 0.95, 0.92)
LOGO = (0.98, 0.80, 0.10)
TROUSERS = (0.22, 0.24, 0.48)  # leggings below the skirt
SKIRT = (0.62, 0.52, 0.28)
SKIRT_CHECK = (0.55, 0.18, 0.20)
SHOES = (0.55, 0.10, 0.08)
SOLE = (0.95, 0.95, 0.95)
CHECK_PERIOD = 0.07  # m: skirt check size
FRONT_FACING_COSINE = 0.5  # the chest logo is printed where the rest normal is within 60 deg of +z


def albedo_colours(avatar: GroundTruthAvatar, drift: Drift | None = None) -> Tensor:
    """The albedo of every Gaussian [N, 3]; ``drift`` perturbs clothes and face (faults)."""
    drift = drift or Drift()
    regions, rest, lm = avatar.regions, avatar.rest, avatar.landmarks
    x, y, _ = rest.unbind(-1)

    def paint(mask: Tensor, colour: tuple[float, float, float] | Tensor, out: Tensor) -> Tensor:
        return torch.where(mask[:, None], torch.as_tensor(colour, dtype=out.dtype), out)

    rgb = torch.tensor(SKIN).expand(rest.shape[0], 3).clone()
    face_colour = torch.tensor(SKIN)
    blend = drift.face

    def face(colour: tuple[float, float, float]) -> Tensor:
        return (1 - blend) * torch.tensor(colour) + blend * face_colour

    rgb = paint(regions["brows"], face(BROWS), rgb)
    rgb = paint(regions["lips"], face(LIPS), rgb)
    # eyes: dark pupil, coloured iris, white sclera by distance from the eye joint
    interocular = (lm.eyes[0] - lm.eyes[1]).norm()
    side = (x < 0).long()
    eye_centre = lm.eyes[side]  # [N, 3]
    planar = (rest[:, :2] - eye_centre[:, :2]).norm(dim=-1) / interocular
    eye_colour = torch.where((planar < 0.06)[:, None], torch.tensor([0.05, 0.05, 0.05]),
                             torch.where((planar < 0.12)[:, None], face(IRIS),
                                         torch.tensor([0.95, 0.95, 0.95])))
    rgb = torch.where(regions["eyes"][:, None], eye_colour, rgb)
    rgb = paint(regions["hair"], HAIR, rgb)
    # clothes (their hue drifts)
    top = torch.tensor(TOP)
    top_colour = torch.where(regions["stripes"][:, None], torch.tensor(STRIPE), top)
    top_colour = torch.where(regions["logo"][:, None], torch.tensor(LOGO), top_colour)
    phase = drift.pattern_phase
    check = ((torch.floor(x / CHECK_PERIOD + phase) + torch.floor(y / CHECK_PERIOD + phase))
             .remainder(2) == 0)
    thin_line = (torch.remainder(x / CHECK_PERIOD + phase, 1.0) < 0.15)
    skirt_colour = torch.where((check | thin_line)[:, None], torch.tensor(SKIRT_CHECK),
                               torch.tensor(SKIRT))
    sole = y < lm.ankles[:, 1].mean() - 0.04
    shoe_colour = torch.where(sole[:, None], torch.tensor(SOLE), torch.tensor(SHOES))
    clothes = torch.where(regions["top"][:, None], top_colour, torch.tensor(TROUSERS))
    clothes = torch.where(regions["skirt"][:, None], skirt_colour, clothes)
    clothes = torch.where(regions["shoes"][:, None], shoe_colour, clothes)
    if drift.hue:
        clothes = rotate_hue(clothes, drift.hue)
    is_clothes = regions["top"] | regions["skirt"] | regions["trousers"] | regions["shoes"]
    return torch.where(is_clothes[:, None], clothes, rgb)


def build_avatar(body: Any, identity: Identity, config: SynthConfig) -> GroundTruthAvatar:
    """The ground-truth avatar on a loaded BodyModel."""
    with torch.no_grad():
        canonical = body.canonical(identity)
        rest = body.shaped_vertices(identity)  # [V, 3]
        faces = body.faces
        weights = body.lbs_weights
        eye_mask = body.region_masks["eyes"]
        if config.subdivide:
            from persona.body.subdivide import subdivide

            attributes = {"rest": rest, "weights": weights, "eyes": eye_mask.float()}
            vertices, faces, attributes = subdivide(canonical.vertices, faces, attributes,
                                                    config.subdivide, binary={"eyes"})
            rest, weights = attributes["rest"], attributes["weights"]
            eye_mask = attributes["eyes"] > 0.5
        else:
            vertices = canonical.vertices
        joints = body.rest_joints(identity)  # [55, 3] zero pose
        dominant = weights.argmax(dim=1)
        lm = _landmarks(joints)
        regions = define_regions(rest, dominant, lm, config.garment, eye_mask.bool(),
                                 vertex_normals(rest, faces))
        normals = vertex_normals(vertices, faces)  # canonical normals
        light = F.normalize(torch.tensor(config.light, dtype=torch.float32), dim=0)
        shading = config.ambient + (1 - config.ambient) * (normals @ light).clamp(min=0)
        return GroundTruthAvatar(
            identity=identity, canonical=vertices, rest=rest, faces=faces, weights=weights,
            dominant=dominant, scales=config.gaussian_scale * mean_edge_length(vertices, faces),
            regions=regions, garment=garment_field(rest, joints, config.garment),
            seg_class=segmentation_classes(dominant, regions, rest), shading=shading,
            landmarks=lm, canonical_joints=canonical.joints)


# ----------------------------------------------------------------------------------------------
# Posing: the known garment deformation, then LBS with the template weights
# ----------------------------------------------------------------------------------------------
def garment_offsets(body: Any, avatar: GroundTruthAvatar, pose: PoseParams,
                    garment: GarmentSettings) -> Tensor:
    """Canonical mean offsets [B, N, 3] of the true garment in ``pose`` (persona/data/garment.py:
    a known function of the 21 body joints; skinning canonical + offset gives the posed garment)."""
    return _garment_offsets(body, avatar.identity, avatar.canonical, avatar.canonical_joints,
                            avatar.weights, avatar.garment, pose, garment)


def garment_regions(avatar: GroundTruthAvatar) -> dict[str, Tensor]:
    """The garment's Gaussians {"garment": all, then one entry per part}: [N] bool, where the
    pose-driven offset weight is above zero. The one definition every metric uses."""
    parts = {name: weight > 0 for name, weight in avatar.garment.parts().items()}
    return {"garment": torch.stack(list(parts.values())).any(0), **parts}


def posed_means(body: Any, avatar: GroundTruthAvatar, pose: PoseParams,
                garment: GarmentSettings) -> Tensor:
    """World positions [B, N, 3] of the Gaussians in ``pose``."""
    offsets = garment_offsets(body, avatar, pose, garment)  # [B, N, 3]
    transforms = body.transforms_from_canonical(avatar.identity, pose)  # [B, 55, 4, 4]
    return skin_points(avatar.canonical[None] + offsets, avatar.weights, transforms)


def garment_displacement(body: Any, avatar: GroundTruthAvatar, poses: PoseParams,
                         camera: Camera, garment: GarmentSettings) -> dict[str, Any]:
    """How far the garment moves the surface in ``poses`` (batch B): per garment part, the
    median and max displacement over its Gaussians and the poses (cm, world; px in ``camera``),
    and ``max_edge_strain``: the largest difference of displacement across one mesh edge over
    the edge's canonical length (a tear shows as a large value; 1 = one edge length)."""
    with torch.no_grad():
        transforms = body.transforms_from_canonical(avatar.identity, poses)  # [B, 55, 4, 4]
        plain = skin_points(avatar.canonical, avatar.weights, transforms)  # [B, N, 3]
        dressed = posed_means(body, avatar, poses, garment)  # [B, N, 3]
        moved = (dressed - plain).norm(dim=-1) * CM_PER_M  # [B, N]
        pixels = torch.stack([
            (project_points(dressed[b], camera, HAND_MIN_DEPTH)[0]
             - project_points(plain[b], camera, HAND_MIN_DEPTH)[0]).norm(dim=-1)
            for b in range(dressed.shape[0])])  # [B, N]
        edges = torch.cat([avatar.faces[:, [0, 1]], avatar.faces[:, [1, 2]],
                           avatar.faces[:, [2, 0]]])  # [3F, 2]
        offset = dressed - plain  # [B, N, 3]
        jump = (offset[:, edges[:, 0]] - offset[:, edges[:, 1]]).norm(dim=-1)  # [B, 3F]
        length = (avatar.canonical[edges[:, 0]] - avatar.canonical[edges[:, 1]]).norm(dim=-1)
    report: dict[str, Any] = {}
    for part, inside in garment_regions(avatar).items():
        report[part] = {"median_cm": float(moved[:, inside].median()),
                        "max_cm": float(moved[:, inside].max()),
                        "median_px": float(pixels[:, inside].median()),
                        "max_px": float(pixels[:, inside].max())}
    report["max_edge_strain"] = float((jump / length.clamp(min=MIN_EDGE_M)).max())
    return report


def motion_displacements(body: Any, avatar: GroundTruthAvatar, config: SynthConfig,
                         camera: Camera) -> dict[str, Any]:
    """garment_displacement of every motion of the subject, at the frames it renders."""
    report = {}
    for name, count in [(m, config.frames) for m in config.motions] + [
            (config.test_motion, config.test_frames)]:
        motion = motion_lib.resolve_motion(name)
        poses = camera_frame_poses(body, avatar.identity, motion.poses, motion.transl,
                                   body.num_expression)
        index = subsample(motion.num_frames, count)
        chosen = PoseParams(poses.full_pose[index], poses.expression[index], poses.transl[index])
        report[name] = garment_displacement(body, avatar, chosen, camera, config.garment)
    return report


# ----------------------------------------------------------------------------------------------
# Rendering a frame
# ----------------------------------------------------------------------------------------------
@dataclass
class FrameRender:
    """Everything rendered for one frame (float32 numpy, [H, W, C])."""

    image: np.ndarray  # [H, W, 3] composited on the background
    albedo: np.ndarray  # [H, W, 3] composited on the background
    mask: np.ndarray  # [H, W] uint8 {0, 255}
    depth: np.ndarray  # [H, W] metres, 0 = invalid
    normal: np.ndarray  # [H, W, 3] unit, camera frame, 0 = invalid
    seg: np.ndarray  # [H, W, 3] uint8 palette
    hand_pixels: np.ndarray  # [2, 2] (u, v) of the left and right hand centres
    hand_radius_px: np.ndarray  # [2] pixels
    garment_mask: np.ndarray  # [H, W] uint8 {0, 255}: the garment Gaussians' share > 0.5


def render_frame(body: Any, avatar: GroundTruthAvatar, pose: PoseParams, camera: Camera,
                 renderer: Any, config: SynthConfig, colours: Tensor | None = None
                 ) -> FrameRender:
    """Render the avatar (true geometry) with ``colours`` [N, 3] (default: the true identity)."""
    with torch.no_grad():
        means = posed_means(body, avatar, pose, config.garment)[0]  # [N, 3]
        normals_world = vertex_normals(means, avatar.faces)  # [N, 3]
        normals_cam = normals_world @ camera.R.T  # [N, 3]
        albedo = albedo_colours(avatar) if colours is None else colours
        shaded = albedo * avatar.shading[:, None]
        classes_present = torch.unique(avatar.seg_class)
        onehot = (avatar.seg_class[:, None] == classes_present[None]).float()  # [N, K]
        n = means.shape[0]
        gaussians = Gaussians(means, avatar.scales[:, None].expand(n, 3).contiguous(),
                              torch.ones(n))
        out = renderer.render(gaussians, camera, {
            "rgb": ChannelGroup(shaded), "albedo": ChannelGroup(albedo, False),
            "normal": ChannelGroup(normals_cam, False), "seg": ChannelGroup(onehot, False),
            "garment": ChannelGroup(garment_regions(avatar)["garment"].float()[:, None], False),
        }, RenderSettings(depth=True))
        alpha = out["alpha"][..., 0]  # [H, W]
        valid = alpha > 0.5
        background = config.background
        image = out["rgb"] + background * (1 - out["alpha"])
        albedo_image = out["albedo"] + background * (1 - out["alpha"])
        depth = torch.where(valid, out["depth"][..., 0] / alpha.clamp(min=1e-6), 0.0)
        normal = torch.where(valid[..., None], F.normalize(out["normal"], dim=-1), 0.0)
        labels = classes_present[out["seg"].argmax(dim=-1)]  # [H, W]
        labels = torch.where(valid, labels, class_index("Background"))
        seg = torch.tensor(GOLIATH_PALETTE, dtype=torch.uint8)[labels]
        hand_pixels, hand_radius = _hand_pixels(body, means, avatar, camera, config)
        garment = valid & (out["garment"][..., 0] > 0.5 * alpha)  # [H, W]
    return FrameRender(image.numpy(), albedo_image.numpy(),
                       (valid.numpy() * 255).astype(np.uint8), depth.numpy(), normal.numpy(),
                       seg.numpy(), hand_pixels, hand_radius,
                       (garment.numpy() * 255).astype(np.uint8))


def _hand_pixels(body: Any, means: Tensor, avatar: GroundTruthAvatar, camera: Camera,
                 config: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    centres, radii = [], []
    for side in ("left", "right"):
        hand = torch.isin(avatar.dominant, torch.tensor(
            [_J[f"{side}_wrist"]] + list(range(25, 40) if side == "left" else range(40, 55))))
        centre = means[hand].mean(0) if hand.any() else means.mean(0)
        uv, z = project_points(centre[None], camera, HAND_MIN_DEPTH)  # [1, 2], [1]
        centres.append(uv[0].numpy())
        depth = z[0].clamp(min=HAND_MIN_DEPTH)
        radii.append(float(config.faults.hand_radius * camera.K[0, 0] / depth))
    return np.stack(centres), np.array(radii)


# ----------------------------------------------------------------------------------------------
# Faults
# ----------------------------------------------------------------------------------------------
def pose_distance(full_pose: Tensor, reference: Tensor) -> float:
    """Mean geodesic angle (rad) over the 21 body joints. [55, 3], [55, 3] -> float."""
    from persona.body.lbs import batch_rodrigues

    a = batch_rodrigues(full_pose[BODY_JOINTS].double())  # [21, 3, 3]
    b = batch_rodrigues(reference[BODY_JOINTS].double())
    relative = a.transpose(-1, -2) @ b
    cos = ((relative.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1.0, 1.0)
    return float(torch.arccos(cos).mean())


def drift_for(full_pose: Tensor, input_pose: Tensor, artifacts: float, faults: FaultSettings,
              direction: float) -> Drift:
    """Identity drift growing with the distance from the input pose (0 at the input pose)."""
    strength = artifacts * min(1.0, pose_distance(full_pose, input_pose)
                               / faults.drift_reference_angle)
    return Drift(hue=direction * strength * faults.drift_hue,
                 pattern_phase=strength * faults.drift_pattern_phase,
                 face=strength * faults.drift_face)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of [H, W, C] (replicate border); sigma in pixels."""
    if sigma <= 0.05:
        return image
    radius = max(1, int(math.ceil(3 * sigma)))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = torch.from_numpy(image).permute(2, 0, 1)[:, None]  # [C, 1, H, W]
    x = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x[:, 0].permute(1, 2, 0).numpy()


def swirl(image: np.ndarray, centre: np.ndarray, radius: float, strength: float) -> np.ndarray:
    """Swirl [H, W, C] around ``centre`` (u, v px): rotation strength x (1 - r/R)^2 inside R."""
    if abs(strength) < 1e-6 or radius < 1:
        return image
    h, w = image.shape[:2]
    v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    du, dv = u - float(centre[0]), v - float(centre[1])
    r = torch.sqrt(du * du + dv * dv)
    angle = strength * (1 - r / radius).clamp(min=0) ** 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    src_u = float(centre[0]) + cos * du - sin * dv
    src_v = float(centre[1]) + sin * du + cos * dv
    grid = torch.stack([src_u / w * 2 - 1, src_v / h * 2 - 1], -1)[None]  # [1, H, W, 2]
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    out = F.grid_sample(x, grid.float(), mode="bilinear", padding_mode="border",
                        align_corners=False)
    inside = (r < radius)[..., None].numpy()
    return np.where(inside, out[0].permute(1, 2, 0).numpy(), image)


def apply_image_faults(frame: FrameRender, artifacts: float, faults: FaultSettings,
                       rng: np.random.Generator, width: int) -> np.ndarray:
    """Colour shift (foreground), hand swirls and blur of a rendered frame. -> [H, W, 3]."""
    image = frame.image
    if artifacts <= 0:
        return image
    alpha = (frame.mask[..., None] / 255.0).astype(np.float32)
    gain = 1 + artifacts * rng.normal(0.0, faults.colour_gain_std, 3)
    bias = artifacts * rng.normal(0.0, faults.colour_bias_std, 3)
    image = np.clip(image * (1 + alpha * (gain - 1)) + alpha * bias, 0.0, 1.0).astype(np.float32)
    for side in range(2):
        strength = artifacts * faults.hand_swirl * rng.choice([-1.0, 1.0])
        image = swirl(image, frame.hand_pixels[side], float(frame.hand_radius_px[side]),
                      strength)
    sigma = artifacts * rng.uniform(0.0, faults.blur_sigma_max) * width / \
        motion_lib.VIRTUAL_WIDTH
    return gaussian_blur(image, sigma)


def noisy_pose(pose: PoseParams, artifacts: float, faults: FaultSettings,
               rng: np.random.Generator) -> PoseParams:
    """The SMPL-X parameters written for a generated frame: the rendered pose + small errors."""
    std = np.zeros((NUM_JOINTS, 1))
    std[0] = faults.pose_noise_root
    std[BODY_JOINTS] = faults.pose_noise_body
    std[25:] = faults.pose_noise_hands
    noise = torch.from_numpy(artifacts * rng.normal(size=(NUM_JOINTS, 3)) * std).float()
    transl = torch.from_numpy(artifacts * rng.normal(0.0, faults.transl_noise, 3)).float()
    return PoseParams(pose.full_pose + noise[None], pose.expression.clone(),
                      pose.transl + transl[None])


def geometry_noise(frame: FrameRender, config: SynthConfig, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Mild noise on depth and normals (valid pixels only). -> (depth [H,W], normal [H,W,3])."""
    valid = frame.mask > 0
    depth, normal = frame.depth, frame.normal
    if config.depth_noise > 0:
        depth = depth + valid * rng.normal(0.0, config.depth_noise, depth.shape)
        depth = np.maximum(depth, 0.0)
    if config.normal_noise > 0:
        normal = normal + valid[..., None] * rng.normal(0.0, config.normal_noise, normal.shape)
        length = np.linalg.norm(normal, axis=-1, keepdims=True)
        normal = np.where(valid[..., None], normal / np.maximum(length, 1e-8), 0.0)
    return depth.astype(np.float32), normal.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Cameras and poses
# ----------------------------------------------------------------------------------------------
def front_camera(width: int, height: int) -> Camera:
    """The virtual camera of METHOD.md section 8 at this resolution (R = I, t = 0)."""
    K = torch.from_numpy(motion_lib.virtual_intrinsics(width, height)).float()
    return Camera(K, torch.eye(3), torch.zeros(3), width, height)


def orbit_camera(width: int, height: int, yaw_degrees: float, centre: Tensor) -> Camera:
    """The front camera turned by ``yaw`` about the vertical axis through ``centre`` [3]."""
    angle = math.radians(yaw_degrees)
    c, s = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])  # camera -> world
    camera_centre = centre - rotation @ centre
    R = rotation.T
    front = front_camera(width, height)
    return Camera(front.K, R, -R @ camera_centre, width, height)


def camera_frame_poses(body: Any, identity: Identity, poses: np.ndarray, transl: np.ndarray,
                       num_expression: int) -> PoseParams:
    """Body-frame motion poses -> PoseParams in front of the virtual camera."""
    rest_pelvis = body.rest_joints(identity)[0].detach().numpy()
    cam_poses, cam_transl = motion_lib.place_in_camera(poses, transl, rest_pelvis)
    count = cam_poses.shape[0]
    return PoseParams(torch.from_numpy(cam_poses), torch.zeros(count, num_expression),
                      torch.from_numpy(cam_transl))


def select(pose: PoseParams, i: int) -> PoseParams:
    return PoseParams(pose.full_pose[i:i + 1], pose.expression[i:i + 1], pose.transl[i:i + 1])


def subsample(count: int, wanted: int) -> list[int]:
    """``wanted`` evenly spread indices of ``count`` frames (all when wanted >= count)."""
    if wanted >= count:
        return list(range(count))
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, wanted)})


# ----------------------------------------------------------------------------------------------
# Writing a subject
# ----------------------------------------------------------------------------------------------
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
    betas = 0.5 * torch.randn(body.num_betas, generator=generator)
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
        "generator": "persona.data.synth", "config": jsonable_config(config),
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
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    if preview is not None:
        preview = out / preview.name
    return SynthResult(out, time.perf_counter() - start, num_generated, len(test_items),
                       avatar.num_gaussians, preview)


def jsonable_config(config: SynthConfig) -> dict[str, Any]:
    """The config as meta.json stores it."""
    return _jsonable(asdict(config))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
