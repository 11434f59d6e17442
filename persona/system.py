"""PersonaSystem: the LightningModule that wires body, avatar, deformer, renderer and losses.

One training step (batch size 1, METHOD.md sections 3-7):
  frame SMPL-X (optimised) -> canonical means (+ mean offset) -> skinning weights (field)
  -> "base" means and "refined" means (+ pose-deformer offset) -> + expression -> LBS -> world
  -> two render passes (base, refined), each rendering every channel group at once
  -> the geometry-weighted loss table (persona/losses/table.py) -> Adam.
The data module reads the subject; the body and skinning volume come from their loaders (cached
on disk); nothing in this module opens a file itself.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from persona.avatar import colour_init
from persona.avatar import posing as posing_lib
from persona.avatar.deformer import PoseDeformer
from persona.avatar.frame_params import FrameParams
from persona.avatar.gaussians import GaussianAvatar, knn_log_scale, logit
from persona.avatar.posing import AvatarState, SkinningConfig
from persona.avatar.template import FACE_GAUSSIANS, AvatarTemplate, build_avatar_template
from persona.body.types import Identity, PoseParams
from persona.losses import regularizers as reg
from persona.losses import terms as loss_terms
from persona.losses.seams import positional_colours
from persona.losses.table import LossWeights, term_weights
from persona.metrics.protocol import EvalProtocol
from persona.ops.mesh import vertex_normals
from persona.render.types import Camera, ChannelGroup, Gaussians, Renderer, RenderSettings
from persona.system_parts import FrozenParts, batch_camera, to_batch, to_device

__all__ = ["AvatarState", "BodyOverrides", "DeformerConfig", "OptimConfig", "PersonaSystem",
           "SkinningConfig"]

SMPLX_PATH_ENV = "PERSONA_SMPLX_PATH"  # fallback for model.body.model_path
EVAL_DEPTH_ALPHA = 0.5  # rendered alpha above which the eval depth is scored (else 0)
MIN_ALPHA = 1e-6  # alpha is clamped to this when normalising the rendered depth
SEAM_TERM = {"base": "seam_distill", "refined": "seam_distill_refined"}  # variant -> its term
HAND_REGIONS = ("right_hand", "left_hand")
CAMERA_KEYS = ("K", "R", "t", "width", "height")  # batch entries of a frame's camera  # each hand rendered alone for the colour TV

@dataclass
class DeformerConfig:
    """The pose-driven deformer (METHOD.md section 3); every paper ablation is a value here."""

    mode: Literal["off", "mean", "mean_scale", "mean_rgb"] = "mean"  # offsets it predicts
    ring_size: int | None = 4  # joints within this many tree steps feed the MLP; None = all
    triplane_channels: int = 32  # features per plane
    triplane_resolution: int = 128  # plane side in texels
    triplane_extent: float = 2.0  # metres covered by the triplane cube
    hidden_dim: int = 128  # MLP width
    num_hidden_layers: int = 3  # MLP depth
    norm_groups: int = 4  # GroupNorm groups per hidden layer
    output_scale: float = 0.01  # the MLP output is divided by 100
    # Face part of the zero-offset mask: "face_expr" (authors: the frontal expression face; the
    # scalp, hair and back of the head get offsets) or "face" (the whole FLAME head; ours before).
    zero_face: Literal["face_expr", "face"] = "face_expr"


@dataclass
class BodyOverrides:
    """Settings of the subject's body (its subject.json names the kind) a run may override."""

    model_path: str | None = None  # SMPL-X folder (smplx/SMPLX_*.npz); else $PERSONA_SMPLX_PATH
    gender: str | None = None  # neutral | male | female; None keeps the subject's


@dataclass
class OptimConfig:
    """Adam with per-group learning rates and one step decay (METHOD.md section 7)."""

    mean_offset: float = 1e-3  # lr of the canonical mean offsets
    log_scale: float = 1e-2  # lr of the log-scales
    colour: float = 1e-2  # lr of rgb, rgb_aux and seg
    triplane: float = 1e-3  # lr of the deformer's triplane
    mlp: float = 1e-3  # lr of the deformer's MLP
    frame_other: float = 1e-3  # lr of per-frame SMPL-X (root, body, jaw, eyes, expr, transl)
    frame_hands: float = 1e-4  # lr of per-frame hand poses
    adam_eps: float = 1e-15  # Adam epsilon
    decay_at: float = 0.75  # fraction of the steps after which every lr is multiplied by ...
    decay_factor: float = 0.1  # ... this factor
    optimise_frames: bool = True  # optimise per-frame SMPL-X jointly with the avatar



def build_deformer(config: DeformerConfig) -> PoseDeformer:
    """The pose deformer of a DeformerConfig."""
    settings = dataclasses.asdict(config)
    settings.pop("zero_face")  # a template setting (build_avatar_template's no_deform_face)
    return PoseDeformer(**settings)


def class_path_of(value: Any) -> dict[str, str]:
    """{"class_path": ...} of an object given in place of a config (for hparams/checkpoints)."""
    return {"class_path": f"{type(value).__module__}.{type(value).__qualname__}"}


class PersonaSystem(LightningModule):
    """The PERSONA avatar and its training, validation and test steps (wiring only: posing is
    persona/avatar/posing.py, colour initialisation persona/avatar/colour_init.py, the loss
    terms persona/losses/terms.py, the fixed state persona/system_parts.py)."""

    def __init__(
        self,
        subdivision_levels: int = 2,  # 1-to-4 triangle splits of the body template
        skinning: SkinningConfig = SkinningConfig(),  # noqa: B008 (frozen-like dataclass)
        deformer: DeformerConfig = DeformerConfig(),
        losses: LossWeights = LossWeights(),
        optim: OptimConfig = OptimConfig(),
        renderer: str | Renderer = "auto",  # "torch" (CPU), "gsplat" (CUDA), "auto"; or class_path
        lpips_net_train: Literal["vgg", "alex"] = "vgg",  # LPIPS backbone of the training loss
        eval_protocol: EvalProtocol = EvalProtocol(),  # how test frames are scored
        body: BodyOverrides = BodyOverrides(),  # model.body.model_path / model.body.gender
        cache_dir: str | None = None,  # body + skinning-volume cache; None: $PERSONA_CACHE_DIR
        max_nonfinite_steps: int = 20,  # stop with a clear error after this many skipped steps
        neutral_colour: float = 0.5,  # colour of Gaussians no image sees at initialisation
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        for key, value in list(self.hparams.items()):  # plain dicts: checkpoints stay loadable
            if dataclasses.is_dataclass(value):  # with weights_only=True, W&B config nests
                self.hparams[key] = dataclasses.asdict(value)
        if not isinstance(self.hparams.get("renderer"), (str, dict)):  # an object, not the CLI
            self.hparams["renderer"] = class_path_of(renderer)
        self.subdivision_levels = subdivision_levels
        self.skinning_cfg = skinning
        self.deformer_cfg = deformer
        self.renderer_choice = renderer
        self.loss_weights = losses
        self.optim_cfg = optim
        self.eval_protocol = eval_protocol
        self.nonfinite_steps = 0
        self.last_visuals: dict[str, Tensor] = {}
        self.last_eval_visuals: dict[str, Tensor] = {}
        self.built = False

    # ------------------------------------------------------------------ building
    def setup(self, stage: str) -> None:
        if not self.built:  # placed on the run's device before colours are rendered
            self.build_from_datamodule(self.trainer.datamodule,
                                       device=self.trainer.strategy.root_device)

    def build_from_datamodule(self, dm: Any, device: torch.device | str | None = None) -> None:
        """Load the subject's body (cached) and build every part from the subject."""
        from persona.body.loader import load_body

        dm.setup("fit")
        spec = dm.body_spec
        overrides = self.hparams.body
        if overrides["model_path"] is not None:
            spec.model_path = overrides["model_path"]
        elif spec.kind == "smplx" and not spec.model_path:
            spec.model_path = os.environ.get(SMPLX_PATH_ENV)
        if overrides["gender"] is not None:
            spec.gender = overrides["gender"]
        if self.hparams.cache_dir is not None:
            spec.cache_dir = self.hparams.cache_dir
        body = load_body(spec)
        rows = colour_init.colour_source_rows(dm.train_frames)
        sources = [dm.train_dataset()[row] for row in rows]
        self.build(body, dm.identity, dm.train_frames, sources, device=device)

    def build(self, body: Any, identity: Identity, train_frames: list,
              colour_sources: list[dict] | None = None,
              device: torch.device | str | None = None) -> None:
        """Create every part and parameter from tensors: body model, identity, the training
        frames (their SMPL-X initialises FrameParams) and frames to unwrap colours from. With
        `device`, the module is placed there before the colour initialisation renders."""
        from persona.body.skinning import SkinningVolumeSettings, cached_skinning_field
        from persona.metrics.lpips import load_lpips_distance, load_lpips_loss
        from persona.render import make_renderer

        template = build_avatar_template(body, identity, self.subdivision_levels,
                                         no_deform_face=self.deformer_cfg.zero_face)
        field = None
        if self.skinning_cfg.method == "volume":
            settings = SkinningVolumeSettings(grid_size=self.skinning_cfg.grid_size)
            v0 = template.num_original_vertices
            field = cached_skinning_field(
                template.canonical_vertices[:v0], template.lbs_weights[:v0], settings,
                cache_dir=self.hparams.cache_dir)
        # Frozen LPIPS networks, like the body, stay out of the state dict and checkpoints.
        lpips_train = (load_lpips_loss(self.hparams.lpips_net_train)
                       if self.loss_weights.lpips > 0 else None)
        lpips_eval = load_lpips_distance(self.eval_protocol.lpips_net)
        self.frozen = FrozenParts(body, template, identity, field, lpips_train, lpips_eval)
        self.avatar = GaussianAvatar(template.num_vertices)
        self.deformer = build_deformer(self.deformer_cfg)
        init_pose = PoseParams(torch.cat([f.pose.full_pose for f in train_frames]),
                               torch.cat([f.pose.expression for f in train_frames]),
                               torch.cat([f.pose.transl for f in train_frames]))
        self.frame_params = FrameParams(init_pose, learnable=self.optim_cfg.optimise_frames)
        self.renderer = make_renderer(self.renderer_choice)
        self.avatar.initialize_(log_scale=knn_log_scale(template.canonical_vertices))
        if device is not None:
            self.to(device)
        self.built = True
        if colour_sources:
            self._initialise_colours(colour_sources)
        else:
            rank_zero_warn("PersonaSystem: no colour source frame (input image or generated "
                           f"video); every Gaussian starts at neutral_colour "
                           f"{self.hparams.neutral_colour}.")

    @property
    def template(self) -> AvatarTemplate:
        return self.frozen.template

    @property
    def body(self) -> Any:
        return self.frozen.body

    @property
    def identity(self) -> Identity:
        return self.frozen.identity

    # ------------------------------------------------------------------ colours at step 0
    @torch.no_grad()
    def _initialise_colours(self, sources: list[dict]) -> None:
        """Unwrap each source frame onto the base avatar in its pose (persona/avatar/
        colour_init.py); unseen Gaussians take the nearest seen one's colour."""
        device = self.frozen.device
        unwrapped = []
        for sample in sources:
            batch = to_batch(sample, device)
            pose = PoseParams(batch["full_pose"], batch["expression"], batch["transl"])
            gaussians, _ = self.posed_gaussians(pose, "base")
            camera = batch_camera(batch)
            rendered = self.renderer.render(gaussians, camera, {})
            colours, visible = colour_init.unwrap_colours(to_device(sample, device), gaussians,
                                                          rendered, camera)
            unwrapped.append(colour_init.Unwrapped(bool(sample["is_input"]), colours, visible))
        fill = self.hparams.neutral_colour
        colours = colour_init.initial_colours(unwrapped, self.template.canonical_vertices, fill)
        if colours is None:
            rank_zero_warn("PersonaSystem: the colour source frames gave no colours; every "
                           f"Gaussian starts at neutral_colour {fill}.")
            return
        self.avatar.initialize_(**{k: (logit(v) if v is not None else None)
                                   for k, v in colours.items()})
        self.frozen.rgb_init = torch.sigmoid(self.avatar.rgb.detach()).clone()  # [N, 3]

    # ------------------------------------------------------------------ forward
    def posed_state(self, pose: PoseParams, body_pose_6d: Tensor) -> AvatarState:
        """Pose the avatar: pose with batch 1, body_pose_6d [1, 21, 6]."""
        return posing_lib.posed_state(self.template, self.avatar, self.deformer, self.body,
                                      self.identity, pose, body_pose_6d, self.skinning_cfg,
                                      self.frozen.field)

    def posed_gaussians(self, pose: PoseParams, variant: str = "refined"
                        ) -> tuple[Gaussians, dict[str, Tensor]]:
        """Gaussians and colours ({"rgb", "seg", "rgb_aux"}: [N, 3]) of the avatar in a pose
        (batch 1): what export, animation and evaluation call."""
        state = self.posed_state(pose, posing_lib.body_pose_6d(pose))
        return (posing_lib.state_gaussians(state, variant),
                posing_lib.state_colours(state, variant))

    # ------------------------------------------------------------------ rendering
    def render_state(self, state: AvatarState, camera: Camera, variant: str,
                     with_aux: bool, with_seams: bool, with_face_init: bool = False
                     ) -> dict[str, Tensor]:
        """One pass: every channel group the losses need for this variant."""
        t = self.template
        means = state.means[variant]
        normals_cam = vertex_normals(means, t.faces) @ camera.R.T  # [N, 3] camera frame
        regions = torch.stack([t.region_masks[k] for k in loss_terms.REGION_CHANNELS],
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
        if with_face_init:  # face Gaussians in their frozen initial colours, the rest black
            face = t.region_masks[FACE_GAUSSIANS][:, None].to(means.dtype)  # [N, 1]
            channels["face_init"] = ChannelGroup(self.frozen.rgb_init * face)
        return self.renderer.render(posing_lib.state_gaussians(state, variant), camera, channels)

    def render_hands(self, state: AvatarState, camera: Camera) -> list[dict[str, Tensor]]:
        """Each hand's Gaussians alone (geometry detached, on black): rgb and alpha, for the
        authors' hand colour TV."""
        renders = []
        for region in HAND_REGIONS:
            mask = self.template.region_masks[region]  # [N] bool
            if not bool(mask.any()):
                continue
            scales = state.scales["base"][mask].detach()  # [P, 3]
            gaussians = Gaussians(state.means["base"][mask].detach(), scales,
                                  scales.new_ones(scales.shape[0]))
            renders.append(self.renderer.render(
                gaussians, camera, {"rgb": ChannelGroup(state.rgb["base"][mask])},
                RenderSettings(depth=False)))
        return renders

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        is_input = bool(batch["is_input"][0])
        lw = self.loss_weights
        t = self.template
        weights = reg.level_scaled_weights(term_weights(lw, is_input), t.median_edge_length,
                                           t.original_median_edge_length,
                                           lw.lap_reference_edge, lw.lap_level_exponent)
        frame_id = batch["frame_id"]
        pose = self.frame_params(frame_id)
        state = self.posed_state(pose, self.frame_params.body_pose_6d(frame_id))
        camera = batch_camera(batch)
        image = batch["image"][0]  # [H, W, 3]
        # seams exist only on the input image, and only when a term uses them (ablation: off)
        seams_for = {v: is_input and (lw.seam_weight != 1.0 or weights[SEAM_TERM[v]] > 0)
                     for v in posing_lib.VARIANTS}
        face_init = is_input and weights["face_geo"] > 0 and self.frozen.rgb_init is not None
        renders = {variant: self.render_state(
            state, camera, variant, with_aux=(variant == "refined" and not is_input),
            with_seams=seams_for[variant], with_face_init=(variant == "base" and face_init))
            for variant in posing_lib.VARIANTS}
        loss_map = loss_terms.image_loss_fn(lw, self.frozen.lpips_train)
        terms: loss_terms.Terms = {}
        for variant in posing_lib.VARIANTS:
            r = renders[variant]
            seam_map = None
            if seams_for[variant]:
                r["seams"], seam_map = loss_terms.seams_and_pixel_weights(r, lw, is_input,
                                                                          image.dtype)
                terms.update(loss_terms.seam_distill_terms(
                    r, image, r["seams"], SEAM_TERM[variant], weights[SEAM_TERM[variant]],
                    loss_map))
            terms.update(loss_terms.image_terms(r, batch, variant, weights, seam_map, loss_map))
            terms.update(loss_terms.geometry_terms(r, batch, variant, weights,
                                                   bool(lw.geometry_mean_over_valid)))
        if face_init:
            terms.update(loss_terms.face_geo_terms(renders["base"], image, weights["face_geo"]))
        terms.update(self._silhouette_terms(renders["base"], pose, camera, weights))
        if is_input and "image_native" in batch:
            terms.update(self._face_patch_terms(state, pose, batch, camera, weights, loss_map))
        if weights["hand_rgb_tv"] > 0 and not lw.hand_rgb_tv_on_mesh:
            terms.update(loss_terms.hand_colour_terms(self.render_hands(state, camera),
                                                      weights["hand_rgb_tv"]))
        terms.update(loss_terms.regulariser_terms(state, t, self.avatar.log_scale,
                                                  self.frozen.edges, weights, lw))
        loss = loss_terms.total_loss(terms)
        for name, (value, weight) in terms.items():
            self.log(f"train/loss/{name}", value.detach(), batch_size=1)
            self.log(f"train/weight/{name}", float(weight), batch_size=1)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=1)
        self.last_visuals = self._visuals(batch, renders)
        if not torch.isfinite(loss):
            return self._skip_nonfinite(terms, batch)
        return loss

    def _face_patch_terms(self, state: AvatarState, pose: PoseParams, batch: dict,
                          camera: Camera, weights: dict, loss_map: loss_terms.LossMapFn
                          ) -> loss_terms.Terms:
        """The face patch of the input image at native resolution: the authors' terms, or
        with losses.face_patch_whole_avatar ours (whole avatar, base and refined)."""
        lw = self.loss_weights
        face = self.template.region_masks[FACE_GAUSSIANS]
        if lw.face_patch_whole_avatar:
            if weights["face_patch_base"] <= 0 and weights["face_patch_refined"] <= 0:
                return {}
            return loss_terms.face_patch_terms(state, batch, camera, weights, lw, face,
                                               self.renderer, loss_map)
        from persona.losses.face_terms import authors_face_patch_terms, face_silhouettes

        v0 = self.template.num_original_vertices
        body_masks = {k: m[:v0] for k, m in self.template.region_masks.items()}

        def mesh_face(patch_camera: Camera) -> tuple[Tensor, Tensor]:
            with torch.no_grad():
                vertices = self.body(self.identity, pose)[0]  # [V0, 3] template-weight posing
            return face_silhouettes(vertices, self.body.faces, body_masks, patch_camera)

        return authors_face_patch_terms(state, batch, camera, weights, lw, face,
                                        self.frozen.rgb_init, self.renderer, loss_map, mesh_face)

    def _skip_nonfinite(self, terms: loss_terms.Terms, batch: dict) -> None:
        self.nonfinite_steps += 1
        bad = loss_terms.nonfinite_terms(terms)
        where = f"frame {batch['split'][0]}/{int(batch['index'][0])}"
        if self.nonfinite_steps > self.max_nonfinite_steps:
            raise RuntimeError(
                f"{self.nonfinite_steps} training steps had a non-finite loss (last: terms {bad}"
                f" at {where}); stopping. Lower the learning rates (model.optim.*) or check the "
                "subject with `persona subject check`.")
        rank_zero_warn(f"PersonaSystem: skipped a training step with a non-finite loss (terms "
                       f"{bad} at {where}; {self.nonfinite_steps} of at most "
                       f"{self.max_nonfinite_steps}).")
        return None  # Lightning skips the optimiser step

    @property
    def max_nonfinite_steps(self) -> int:
        return int(self.hparams.max_nonfinite_steps)

    def _silhouette_terms(self, render: dict, pose: PoseParams, camera: Camera,
                          weights: dict) -> loss_terms.Terms:
        """Gaussian hand/eye masks vs the SMPL-X mesh's hand/eye silhouettes (targets only),
        z-buffered against the whole mesh when ``losses.mask_occlusion``."""
        wanted = loss_terms.silhouette_weights(weights)
        if not wanted:
            return {}
        with torch.no_grad():
            vertices = self.body(self.identity, pose)[0]  # [V, 3] template-weight posing
        targets = loss_terms.silhouette_targets(
            vertices, self.body.faces, self.frozen.face_labels, self.frozen.region_faces,
            camera, list(wanted), bool(self.loss_weights.mask_occlusion))
        return loss_terms.silhouette_terms(render, targets, wanted)

    def _visuals(self, batch: dict, renders: dict) -> dict[str, Tensor]:
        r = renders["refined"]
        image = batch["image"][0]  # the render over the target, as the image loss sees it
        vis = {"target": image, "render": r["rgb"] + image * (1 - r["alpha"]),
               "alpha": r["alpha"], "depth": r["depth"], "normal": r["normal"], "seg": r["seg"]}
        if "seams" in renders["base"]:
            vis["seams"] = renders["base"]["seams"].to(r["alpha"].dtype).unsqueeze(-1)
        return {k: v.detach() for k, v in vis.items()}

    # ------------------------------------------------------------------ evaluation
    def fit_test_pose(self, batch: dict, protocol: EvalProtocol | None = None) -> PoseParams:
        """The authors' test-time protocol (METHOD.md sections 9 and 12; persona/metrics/
        test_pose.py): with the avatar frozen, fit the frame's SMPL-X (6D rotations, hands at
        lr / 10) to its image and maps with the full image loss on base and refined + mask +
        0.01 depth + normal + seg."""
        from persona.metrics import test_pose

        protocol = protocol or self.eval_protocol

        def render_fn(pose: PoseParams) -> dict[str, dict[str, Tensor]]:
            # called with inference mode off: clones of the (inference) batch camera can join
            # the autograd graph
            camera = batch_camera({k: (v.clone() if isinstance(v, Tensor) else v)
                                   for k, v in batch.items() if k in CAMERA_KEYS})
            state = self.posed_state(pose, posing_lib.body_pose_6d(pose))
            return {v: self.render_state(state, camera, v, with_aux=False, with_seams=False)
                    for v in posing_lib.VARIANTS}

        frame = {k: batch[k][0] for k in ("image", "mask", "depth", "normal", "seg")}
        init = PoseParams(batch["full_pose"], batch["expression"], batch["transl"])
        return test_pose.fit_test_pose(render_fn, frame, init, protocol.fit_settings(),
                                       lpips_fn=self.frozen.lpips_train,
                                       frozen_parameters=list(self.parameters()))

    def render_eval(self, batch: dict, pose: PoseParams | None = None) -> dict[str, Tensor]:
        """Render the refined avatar in `pose` (default: the batch's), composited on the eval
        background."""
        if pose is None:
            pose = PoseParams(batch["full_pose"], batch["expression"], batch["transl"])
        gaussians, colours = self.posed_gaussians(pose, "refined")
        camera = batch_camera(batch)
        normals = vertex_normals(gaussians.means, self.template.faces) @ camera.R.T
        out = self.renderer.render(gaussians, camera, {"rgb": ChannelGroup(colours["rgb"]),
                                                       "normal": ChannelGroup(normals)})
        background = out["rgb"].new_tensor(self.eval_protocol.background)
        out["rgb_on_background"] = out["rgb"] + background * (1 - out["alpha"])
        return out

    def _eval_step(self, batch: dict, prefix: str) -> dict[str, float]:
        from persona.metrics.protocol import FLAG_KEYS, evaluate_frame

        # validation during fit is cheap by default (no test-pose fitting): validation_protocol
        protocol = (self.eval_protocol if prefix == "test"
                    else self.eval_protocol.validation_protocol())
        pose = self.fit_test_pose(batch, protocol) if protocol.fit_test_pose else None
        with torch.no_grad():
            out = self.render_eval(batch, pose)
        alpha = out["alpha"].clamp(min=MIN_ALPHA)
        metrics = evaluate_frame(
            out["rgb_on_background"], batch["image"][0], out["alpha"], batch["mask"][0],
            protocol, pred_depth=torch.where(out["alpha"] > EVAL_DEPTH_ALPHA,
                                                       out["depth"] / alpha, 0.0),
            target_depth=batch["depth"][0], pred_normal=F.normalize(out["normal"], dim=-1),
            target_normal=batch["normal"][0], lpips_fn=self.frozen.lpips_eval)
        for name, value in metrics.items():
            if name not in FLAG_KEYS and math.isfinite(value):
                self.log(f"{prefix}/{name}", value, batch_size=1, on_epoch=True, on_step=False)
        mask = batch["mask"][0]
        background = out["rgb"].new_tensor(self.eval_protocol.background)
        target_on_background = batch["image"][0] * mask + background * (1 - mask)  # for views
        self.last_eval_visuals = {"target": target_on_background,
                                  "render": out["rgb_on_background"], "alpha": out["alpha"]}
        if prefix == "val":
            self.last_visuals = dict(self.last_eval_visuals)
        return metrics

    def validation_step(self, batch: dict, batch_idx: int) -> dict[str, float]:
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> dict[str, float]:
        return self._eval_step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Any]:
        """Renders of the refined avatar in the batch's pose (`persona predict`): rgb on the
        protocol background, alpha and depth, [H, W, C] each, with the frame's split/index."""
        with torch.no_grad():
            out = self.render_eval(batch)
        return {"split": batch["split"][0], "index": int(batch["index"][0]),
                "rgb": out["rgb_on_background"], "alpha": out["alpha"], "depth": out["depth"]}

    # ------------------------------------------------------------------ optimiser
    def configure_optimizers(self) -> dict:
        o = self.optim_cfg
        groups = [
            {"params": [self.avatar.mean_offset], "lr": o.mean_offset, "name": "mean_offset"},
            {"params": [self.avatar.log_scale], "lr": o.log_scale, "name": "log_scale"},
            {"params": [self.avatar.rgb, self.avatar.rgb_aux, self.avatar.seg],
             "lr": o.colour, "name": "colour"},
        ]
        triplane = [p for n, p in self.deformer.named_parameters() if "triplane" in n]
        mlp = [p for n, p in self.deformer.named_parameters() if "triplane" not in n]
        if triplane:
            groups.append({"params": triplane, "lr": o.triplane, "name": "triplane"})
        if mlp:
            groups.append({"params": mlp, "lr": o.mlp, "name": "mlp"})
        if o.optimise_frames:
            frame_groups = self.frame_params.parameter_groups()
            groups.append({"params": frame_groups["frame_other"], "lr": o.frame_other,
                           "name": "frame_other"})
            groups.append({"params": frame_groups["frame_hands"], "lr": o.frame_hands,
                           "name": "frame_hands"})
        optimiser = torch.optim.Adam(groups, eps=o.adam_eps)
        total = int(self.trainer.estimated_stepping_batches)
        milestone = max(1, math.floor(o.decay_at * total))
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimiser, [milestone], o.decay_factor)
        return {"optimizer": optimiser,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

