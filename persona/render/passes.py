"""The system's render passes, as pure functions of the template, a posed AvatarState, a camera
and a renderer: the training pass of one variant (every channel group the losses read), each
hand alone (the authors' hand colour TV), the evaluation render on a background, and the
colour-source frames unwrapped onto the avatar at step 0.

Not imported by persona/render/__init__.py (it depends on persona.avatar and persona.losses).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from persona.avatar import colour_init
from persona.avatar import posing as posing_lib
from persona.avatar.posing import AvatarState
from persona.avatar.template import FACE_GAUSSIANS, AvatarTemplate
from persona.body.types import PoseParams
from persona.losses.seams import positional_colours
from persona.losses.terms import REGION_CHANNELS
from persona.ops.mesh import vertex_normals
from persona.render.types import Camera, ChannelGroup, Gaussians, Renderer, RenderSettings
from persona.system_parts import batch_camera, to_batch, to_device

HAND_REGIONS = ("right_hand", "left_hand")  # each hand rendered alone for the colour TV


def render_state(template: AvatarTemplate, state: AvatarState, camera: Camera,
                 renderer: Renderer, variant: str, with_aux: bool, with_seams: bool,
                 rgb_init: Tensor | None = None) -> dict[str, Tensor]:
    """One training pass of `variant` ("base" | "refined"): rgb, seg, camera-frame normals and
    the region masks; with_aux adds rgb_aux (geometry detached), with_seams the canonical
    positions and geometry-detached colours of the seam terms; `rgb_init` [N, 3] adds the face
    Gaussians in their frozen initial colours (the rest black) as "face_init"."""
    means = state.means[variant]  # [N, 3]
    normals_cam = vertex_normals(means, template.faces) @ camera.R.T  # [N, 3] camera frame
    regions = torch.stack([template.region_masks[k] for k in REGION_CHANNELS],
                          -1).to(means.dtype)  # [N, 3]
    channels = {
        "rgb": ChannelGroup(state.rgb[variant]),
        "seg": ChannelGroup(state.seg),
        "normal": ChannelGroup(normals_cam),
        "regions": ChannelGroup(regions),
    }
    if with_aux:  # rgb_aux learns colour only: geometry detached (METHOD.md section 6)
        channels["rgb_aux"] = ChannelGroup(state.rgb_aux, geometry_grad=False)
    if with_seams:  # this variant's canonical positions (METHOD.md section 12)
        canonical = state.canonical_base if variant == "base" else state.canonical_refined
        channels["canonical"] = ChannelGroup(positional_colours(canonical).detach(),
                                             geometry_grad=False)
        channels["rgb_geo_detached"] = ChannelGroup(state.rgb[variant], geometry_grad=False)
        channels["rgb_aux_all_detached"] = ChannelGroup(state.rgb_aux.detach(),
                                                        geometry_grad=False)
    if rgb_init is not None:
        face = template.region_masks[FACE_GAUSSIANS][:, None].to(means.dtype)  # [N, 1]
        channels["face_init"] = ChannelGroup(rgb_init * face)
    return renderer.render(posing_lib.state_gaussians(state, variant), camera, channels)


def render_hands(template: AvatarTemplate, state: AvatarState, camera: Camera,
                 renderer: Renderer) -> list[dict[str, Tensor]]:
    """Each hand's base Gaussians alone (geometry detached, on black): rgb and alpha, for the
    authors' hand colour TV. A hand without Gaussians is left out."""
    renders = []
    for region in HAND_REGIONS:
        rows = template.region_rows[region]  # [P]
        if rows.numel() == 0:
            continue
        scales = state.scales["base"].index_select(0, rows).detach()  # [P, 3]
        gaussians = Gaussians(state.means["base"].index_select(0, rows).detach(), scales,
                              scales.new_ones(scales.shape[0]))
        renders.append(renderer.render(
            gaussians, camera, {"rgb": ChannelGroup(state.rgb["base"].index_select(0, rows))},
            RenderSettings(depth=False)))
    return renders


def render_eval(gaussians: Gaussians, colours: dict[str, Tensor], faces: Tensor,
                camera: Camera, renderer: Renderer, background: Sequence[float]
                ) -> dict[str, Tensor]:
    """rgb, camera-frame normals, alpha and depth of posed Gaussians, plus
    "rgb_on_background" [H, W, 3]: the rgb composited on `background`."""
    normals = vertex_normals(gaussians.means, faces) @ camera.R.T  # [N, 3] camera frame
    out = renderer.render(gaussians, camera, {"rgb": ChannelGroup(colours["rgb"]),
                                              "normal": ChannelGroup(normals)})
    on = out["rgb"].new_tensor(background)  # [3]
    out["rgb_on_background"] = out["rgb"] + on * (1 - out["alpha"])
    return out


def training_visuals(batch: dict, renders: dict[str, dict[str, Tensor]]) -> dict[str, Tensor]:
    """The step's views (detached, [H, W, C]): target, the refined render over the target (as
    the image loss sees it), alpha, depth, normal, seg, and the base seams when detected."""
    r = renders["refined"]
    image = batch["image"][0]  # [H, W, 3]
    vis = {"target": image, "render": r["rgb"] + image * (1 - r["alpha"]),
           "alpha": r["alpha"], "depth": r["depth"], "normal": r["normal"], "seg": r["seg"]}
    if "seams" in renders["base"]:
        vis["seams"] = renders["base"]["seams"].to(r["alpha"].dtype).unsqueeze(-1)
    return {k: v.detach() for k, v in vis.items()}


@torch.no_grad()
def unwrap_sources(sources: list[dict], device: torch.device,
                   posed_gaussians: Callable[[PoseParams], Gaussians], renderer: Renderer
                   ) -> list[colour_init.Unwrapped]:
    """Each colour-source sample (a dataset item) unwrapped onto the Gaussians posed in its
    SMPL-X (persona/avatar/colour_init.py): its colours and which Gaussians it sees."""
    unwrapped = []
    for sample in sources:
        batch = to_batch(sample, device)
        gaussians = posed_gaussians(PoseParams(batch["full_pose"], batch["expression"],
                                               batch["transl"]))
        camera = batch_camera(batch)
        rendered = renderer.render(gaussians, camera, {})
        colours, visible = colour_init.unwrap_colours(to_device(sample, device), gaussians,
                                                      rendered, camera)
        unwrapped.append(colour_init.Unwrapped(bool(sample["is_input"]), colours, visible))
    return unwrapped
