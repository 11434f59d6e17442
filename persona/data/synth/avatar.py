"""The ground-truth avatar of a synthetic subject: one isotropic Gaussian per body vertex with a
procedural texture (skin, hair, eyes, brows, lips, a top with a star logo and stripes, a checked
skirt over leggings, shoes), its texture regions and Goliath part classes, the garment's
Gaussians, and its posing (the known garment offset, then LBS with the template weights)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from persona.body.lbs import skin_points
from persona.body.types import (
    LEFT_HAND_JOINTS,
    NUM_JOINTS,
    RIGHT_HAND_JOINTS,
    SMPLX_JOINT_NAMES,
    Identity,
    PoseParams,
)
from persona.data.garment import GarmentField, GarmentSettings, arm_progress, garment_field
from persona.data.garment import garment_offsets as _garment_offsets
from persona.data.palette import class_index
from persona.data.synth.config import SynthConfig
from persona.ops.mesh import vertex_normals

_J = {name: i for i, name in enumerate(SMPLX_JOINT_NAMES)}

# Face proportions of the texture regions, in interocular distances (io) from the eye joints.
NECK_HEAD_BELOW_EYES = 1.6  # io: neck Gaussians higher than this below the eyes are head
FACE_FRONT_BEHIND_EYES = 0.35  # io: the face front starts this far behind the eyes (z)
HAIR_ABOVE_EYES = 0.9  # io: the head above this height over the eyes is hair
HAIR_BEHIND_EYES = 1.3  # io: the head further than this behind the eyes is hair ...
HAIR_BACK_BELOW_EYES = 1.5  # io: ... down to this far below the eyes
EYE_REGION_RADIUS = 0.22  # io: planar radius of the eye region around each eye joint
BROW_HALF_WIDTH = 0.36  # io: horizontal half-width of a brow about its eye
BROW_BOTTOM_ABOVE_EYE = 0.3  # io: lower edge of a brow above its eye
BROW_TOP_ABOVE_EYE = 0.48  # io: upper edge of a brow above its eye
MOUTH_BELOW_EYES = 1.15  # io: centre of the lips below the eyes
LIPS_HALF_WIDTH = 0.42  # io: horizontal semi-axis of the lips' ellipse
LIPS_HALF_HEIGHT = 0.13  # io: vertical semi-axis of the lips' ellipse
PUPIL_RADIUS = 0.06  # io: planar radius of the dark pupil around the eye joint
IRIS_RADIUS = 0.12  # io: planar radius of the coloured iris (white sclera beyond it)

# Body proportions of the clothes and their patterns (m, rest pose).
SHOE_TOP_ABOVE_ANKLES = 0.03  # m: the shoes reach this far above the mean ankle height
SOLE_BELOW_ANKLES = 0.04  # m: the white sole starts this far below the mean ankle height
LOGO_BELOW_CHEST = 0.02  # m: the star logo's centre lies this far below the spine3 joint
LOGO_RADIUS = 0.065  # m: tip radius of the chest star logo
STRIPE_UNIT = 0.03  # m: unit of the stripe pattern on the top, measured up from the hips
STRIPE_CYCLE = 2.0  # units: period of the stripe pattern (one stripe and one gap)
STRIPE_WIDTH = 0.6  # units: width of one stripe within its cycle
STRIPES_ABOVE_HIPS = 0.1  # m: the stripes cover the top up to this height above the hips
CHECK_PERIOD = 0.07  # m: skirt check size
CHECK_LINE_WIDTH = 0.15  # check periods: thin vertical line at the start of each skirt check
FRONT_FACING_COSINE = 0.5  # the chest logo is printed where the rest normal is within 60 deg of +z

# Base albedo colours of the identity (linear-ish RGB in [0, 1]).
SKIN = (0.87, 0.66, 0.52)
HAIR = (0.22, 0.13, 0.07)
IRIS = (0.18, 0.35, 0.55)
PUPIL = (0.05, 0.05, 0.05)
SCLERA = (0.95, 0.95, 0.95)
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
# Avatar, regions and colours
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
    head = head | (_in_joints(dominant, ("neck",))
                   & (y > eye_y - NECK_HEAD_BELOW_EYES * interocular))
    front = z > eye_z - FACE_FRONT_BEHIND_EYES * interocular
    hair = head & ((y > eye_y + HAIR_ABOVE_EYES * interocular)
                   | ((z < eye_z - HAIR_BEHIND_EYES * interocular)
                      & (y > eye_y - HAIR_BACK_BELOW_EYES * interocular)))
    near_eye = torch.zeros_like(x, dtype=torch.bool)
    brows = torch.zeros_like(near_eye)
    for side in range(2):
        ex, ey = lm.eyes[side, 0], lm.eyes[side, 1]
        planar = torch.sqrt((x - ex) ** 2 + (y - ey) ** 2)
        near_eye = near_eye | (head & front & (planar < EYE_REGION_RADIUS * interocular))
        brows = brows | (head & front & ((x - ex).abs() < BROW_HALF_WIDTH * interocular)
                         & (y > ey + BROW_BOTTOM_ABOVE_EYE * interocular)
                         & (y < ey + BROW_TOP_ABOVE_EYE * interocular))
    eyes = (eye_mask | near_eye) & ~hair
    mouth_y = eye_y - MOUTH_BELOW_EYES * interocular
    lips = head & front & (((x / (LIPS_HALF_WIDTH * interocular)) ** 2
                            + ((y - mouth_y) / (LIPS_HALF_HEIGHT * interocular)) ** 2) < 1.0)
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
    shoes = feet & (y < ankle_y + SHOE_TOP_ABOVE_ANKLES)
    trousers = (lower_body | feet) & ~skirt & ~shoes  # leggings below the skirt
    chest_x, chest_y = x, y - (lm.chest[1] - LOGO_BELOW_CHEST)
    facing_front = rest_normals[:, 2] > FRONT_FACING_COSINE
    logo = top & torso & facing_front & star_inside(chest_x, chest_y, LOGO_RADIUS)
    stripe_phase = torch.remainder((y - hip_y) / STRIPE_UNIT, STRIPE_CYCLE)
    stripes = top & (y < hip_y + STRIPES_ABOVE_HIPS) & (stripe_phase < STRIPE_WIDTH)
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
    for joint in LEFT_HAND_JOINTS:
        names[joint] = "Left_Hand"
    for joint in RIGHT_HAND_JOINTS:
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
    eye_colour = torch.where((planar < PUPIL_RADIUS)[:, None], torch.tensor(PUPIL),
                             torch.where((planar < IRIS_RADIUS)[:, None], face(IRIS),
                                         torch.tensor(SCLERA)))
    rgb = torch.where(regions["eyes"][:, None], eye_colour, rgb)
    rgb = paint(regions["hair"], HAIR, rgb)
    # clothes (their hue drifts)
    top = torch.tensor(TOP)
    top_colour = torch.where(regions["stripes"][:, None], torch.tensor(STRIPE), top)
    top_colour = torch.where(regions["logo"][:, None], torch.tensor(LOGO), top_colour)
    phase = drift.pattern_phase
    check = ((torch.floor(x / CHECK_PERIOD + phase) + torch.floor(y / CHECK_PERIOD + phase))
             .remainder(2) == 0)
    thin_line = (torch.remainder(x / CHECK_PERIOD + phase, 1.0) < CHECK_LINE_WIDTH)
    skirt_colour = torch.where((check | thin_line)[:, None], torch.tensor(SKIRT_CHECK),
                               torch.tensor(SKIRT))
    sole = y < lm.ankles[:, 1].mean() - SOLE_BELOW_ANKLES
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
