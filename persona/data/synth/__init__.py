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

Layout: config.py (SynthConfig, FaultSettings, presets), avatar.py (the ground-truth avatar, its
regions, colours and posing; the garment maths lives in persona/data/garment.py), cameras.py,
render.py (one frame), displacement.py (meta.json garment_displacement), faults.py (simulated
diffusion faults), writer.py (the subject folder, `synthesize`).
"""

from persona.data.garment import GarmentSettings
from persona.data.subject import generated_split  # experiments/deformer_gradients.py
from persona.data.synth.avatar import (
    _J as _J,  # joint name -> index (tests/data/test_garment.py)
)
from persona.data.synth.avatar import (
    BROWS,
    CHECK_PERIOD,
    FRONT_FACING_COSINE,
    HAIR,
    IRIS,
    LIPS,
    LOGO,
    SHOES,
    SKIN,
    SKIRT,
    SKIRT_CHECK,
    SOLE,
    STRIPE,
    TOP,
    TROUSERS,
    Drift,
    GroundTruthAvatar,
    Landmarks,
    albedo_colours,
    build_avatar,
    define_regions,
    garment_offsets,
    garment_regions,
    mean_edge_length,
    posed_means,
    rotate_hue,
    segmentation_classes,
    star_inside,
)
from persona.data.synth.cameras import (
    HAND_MIN_DEPTH,
    camera_frame_poses,
    front_camera,
    orbit_camera,
    select,
    subsample,
)
from persona.data.synth.config import (
    PRESETS,
    FaultSettings,
    SynthConfig,
    jsonable_config,
    preset_config,
)
from persona.data.synth.displacement import (
    CM_PER_M,
    MIN_EDGE_M,
    garment_displacement,
    motion_displacements,
)
from persona.data.synth.faults import (
    BODY_JOINTS,
    apply_image_faults,
    drift_for,
    gaussian_blur,
    geometry_noise,
    noisy_pose,
    pose_distance,
    swirl,
)
from persona.data.synth.render import FrameRender, render_frame
from persona.data.synth.writer import (
    SynthResult,
    load_synth_body,
    subject_identity,
    synthesize,
    write_frame,
)

__all__ = [
    "BODY_JOINTS", "BROWS", "CHECK_PERIOD", "CM_PER_M", "FRONT_FACING_COSINE", "HAIR",
    "HAND_MIN_DEPTH", "IRIS", "LIPS", "LOGO", "MIN_EDGE_M", "PRESETS", "SHOES", "SKIN", "SKIRT",
    "SKIRT_CHECK", "SOLE", "STRIPE", "TOP", "TROUSERS", "Drift", "FaultSettings", "FrameRender",
    "GarmentSettings", "GroundTruthAvatar", "Landmarks", "SynthConfig", "SynthResult",
    "albedo_colours", "apply_image_faults", "build_avatar", "camera_frame_poses", "define_regions",
    "drift_for", "front_camera", "garment_displacement", "garment_offsets", "garment_regions",
    "gaussian_blur", "generated_split", "geometry_noise", "jsonable_config", "load_synth_body",
    "mean_edge_length", "motion_displacements", "noisy_pose", "orbit_camera", "pose_distance",
    "posed_means", "preset_config", "render_frame", "rotate_hue", "segmentation_classes", "select",
    "star_inside", "subject_identity", "subsample", "swirl", "synthesize", "write_frame",
]
