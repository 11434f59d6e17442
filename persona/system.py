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
from torch import Tensor

from persona.avatar.deformer import PoseDeformer
from persona.avatar.frame_params import FrameParams
from persona.avatar.gaussians import GaussianAvatar, knn_log_scale, logit
from persona.avatar.template import AvatarTemplate, build_avatar_template
from persona.body.lbs import skin_points
from persona.body.types import Identity, PoseParams
from persona.losses import geometry as geo_losses
from persona.losses import regularizers as reg
from persona.losses.face_patch import crop_camera, crop_image, face_box
from persona.losses.image import image_loss_map, weighted_mean
from persona.losses.seams import detect_seams, positional_colours
from persona.losses.table import LossWeights, pixel_seam_weight, term_weights
from persona.metrics.protocol import EvalProtocol
from persona.ops.mesh import mesh_edges, vertex_normals
from persona.ops.rotations import axis_angle_to_rotation_6d
from persona.render.types import Camera, ChannelGroup, Gaussians, RenderSettings

SMPLX_PATH_ENV = "PERSONA_SMPLX_PATH"  # fallback for model.body.model_path
REGION_CHANNELS = ("hands", "eyes", "face")  # order of the "regions" render channel group
SILHOUETTE_LABELS = {1: "hands", 2: "eyes"}  # face label -> body region (z-buffered silhouettes)
SILHOUETTE_LABEL_OF = {"hand_mask": 1, "eye_mask": 2}  # loss term -> its face label
VISIBILITY_TOLERANCE = 0.02  # m: a Gaussian within this of the rendered depth is visible
VISIBLE_ALPHA = 0.5  # rendered alpha above which a pixel counts as covered (colour unwrapping)


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


@dataclass
class SkinningConfig:
    """Where each Gaussian's skinning weights come from (METHOD.md section 2)."""

    method: Literal["volume", "knn", "template"] = "volume"  # diffused volume | k-NN | fixed
    grid_size: int = 128  # skinning volume resolution per axis
    knn: int = 16  # neighbours for the paper's k-nearest-vertex variant


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


@dataclass
class AvatarState:
    """Everything one pose of the avatar renders from (world space)."""

    means: dict[str, Tensor]  # variant -> [N, 3] posed means ("base", "refined")
    scales: dict[str, Tensor]  # variant -> [N, 3] isotropic standard deviations
    rgb: dict[str, Tensor]  # variant -> [N, 3] colours in [0, 1]
    rgb_aux: Tensor  # [N, 3]
    seg: Tensor  # [N, 3] part-segmentation palette colours
    canonical_base: Tensor  # [N, 3] canonical means (template + mean offset)
    canonical_refined: Tensor  # [N, 3] canonical means + pose-dependent offset


class PersonaSystem(LightningModule):
    """The PERSONA avatar and its training, validation and test steps."""

    def __init__(
        self,
        subdivision_levels: int = 2,  # 1-to-4 triangle splits of the body template
        skinning: SkinningConfig = SkinningConfig(),
        deformer: DeformerConfig = DeformerConfig(),
        losses: LossWeights = LossWeights(),
        optim: OptimConfig = OptimConfig(),
        renderer: str = "auto",  # "torch" (CPU), "gsplat" (CUDA), "auto"
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
        self.subdivision_levels = subdivision_levels
        self.skinning_cfg = skinning
        self.deformer_cfg = deformer
        self.loss_weights = losses
        self.optim_cfg = optim
        self.eval_protocol = eval_protocol
        self.nonfinite_steps = 0
        self.last_visuals: dict[str, Tensor] = {}
        self.last_eval_visuals: dict[str, Tensor] = {}
        self.built = False

    # ------------------------------------------------------------------ building
    def setup(self, stage: str) -> None:
        if not self.built:
            self.build_from_datamodule(self.trainer.datamodule)

    def build_from_datamodule(self, dm: Any) -> None:
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
        sources = [dm.train_dataset()[row] for row in _colour_source_rows(dm.train_frames)]
        self.build(body, dm.identity, dm.train_frames, sources)

    def build(self, body: Any, identity: Identity, train_frames: list,
              colour_sources: list[dict] | None = None) -> None:
        """Create every part and parameter from tensors: body model, identity, the training
        frames (their SMPL-X initialises FrameParams) and frames to unwrap colours from."""
        from persona.body.skinning import SkinningVolumeSettings, cached_skinning_field
        from persona.render import make_renderer

        template = build_avatar_template(body, identity, self.subdivision_levels)
        n = template.num_vertices
        # Not registered as submodules: body files (possibly licensed) and the skinning volume
        # stay out of checkpoints; `_aux_to` moves them with the module.
        self._aux = {"body": body, "template": template, "identity": identity}
        if self.skinning_cfg.method == "volume":
            settings = SkinningVolumeSettings(grid_size=self.skinning_cfg.grid_size)
            v0 = template.num_original_vertices
            self._aux["field"] = cached_skinning_field(
                template.canonical_vertices[:v0], template.lbs_weights[:v0], settings,
                cache_dir=self.hparams.cache_dir)
        faces = template.faces
        self._aux["edges"] = mesh_edges(faces, n)
        self._aux["region_faces"] = {
            "hand_mask": body.faces[body.region_masks["hands"][body.faces].all(1)],
            "eye_mask": body.faces[body.region_masks["eyes"][body.faces].all(1)],
        }
        # per-face labels of the whole mesh for z-buffered silhouettes (0 = rest of the body)
        face_labels = torch.zeros(body.faces.shape[0], dtype=torch.int64)
        for label, region in SILHOUETTE_LABELS.items():
            face_labels[body.region_masks[region][body.faces].all(1).cpu()] = label
        self._aux["face_labels"] = face_labels
        cfg = self.deformer_cfg
        self.avatar = GaussianAvatar(n)
        self.deformer = PoseDeformer(
            mode=cfg.mode, ring_size=cfg.ring_size, triplane_channels=cfg.triplane_channels,
            triplane_resolution=cfg.triplane_resolution, triplane_extent=cfg.triplane_extent,
            hidden_dim=cfg.hidden_dim, num_hidden_layers=cfg.num_hidden_layers,
            norm_groups=cfg.norm_groups, output_scale=cfg.output_scale)
        init_pose = PoseParams(torch.cat([f.pose.full_pose for f in train_frames]),
                               torch.cat([f.pose.expression for f in train_frames]),
                               torch.cat([f.pose.transl for f in train_frames]))
        self.frame_params = FrameParams(init_pose, learnable=self.optim_cfg.optimise_frames)
        self.renderer = make_renderer(self.hparams.renderer)
        from persona.metrics.lpips import load_lpips_distance, load_lpips_loss

        # Frozen LPIPS networks, like the body, stay out of the state dict and checkpoints.
        if self.loss_weights.lpips > 0:
            self._aux["lpips_train"] = load_lpips_loss(self.hparams.lpips_net_train)
        self._aux["lpips_eval"] = load_lpips_distance(self.eval_protocol.lpips_net)
        self.avatar.initialize_(log_scale=knn_log_scale(template.canonical_vertices))
        if colour_sources:
            self._initialise_colours(colour_sources)
        self.built = True

    def _aux_to(self, device: torch.device) -> None:
        aux = self._aux
        if aux["template"].canonical_vertices.device == device:
            return
        aux["template"] = aux["template"].to(device)
        aux["body"] = aux["body"].to(device)
        aux["identity"] = aux["identity"].to(device)
        aux["edges"] = aux["edges"].to(device)
        aux["region_faces"] = {k: v.to(device) for k, v in aux["region_faces"].items()}
        aux["face_labels"] = aux["face_labels"].to(device)
        for key in ("field", "lpips_train", "lpips_eval"):
            if key in aux:
                aux[key] = aux[key].to(device)

    @property
    def template(self) -> AvatarTemplate:
        self._aux_to(self.avatar.rgb.device)
        return self._aux["template"]

    @property
    def body(self) -> Any:
        self._aux_to(self.avatar.rgb.device)
        return self._aux["body"]

    @property
    def identity(self) -> Identity:
        self._aux_to(self.avatar.rgb.device)
        return self._aux["identity"]

    # ------------------------------------------------------------------ colours at step 0
    @torch.no_grad()
    def _initialise_colours(self, sources: list[dict]) -> None:
        """rgb from the input image (else generated video 0), rgb_aux from generated video 0,
        seg from the input image's part segmentation; unseen Gaussians take the colour of the
        nearest seen one in canonical space (METHOD.md section 1's unwrap, without UV maps)."""
        rgb = rgb_aux = seg = None
        for sample in sources:
            colours, visible = self._unwrap(sample, ("image", "seg"))
            if sample["is_input"]:
                rgb, seg = colours["image"], colours["seg"]
                rgb_visible = seg_visible = visible
            elif rgb_aux is None:
                rgb_aux, aux_visible = colours["image"], visible
        if rgb is None and rgb_aux is not None:
            rgb, rgb_visible = rgb_aux, aux_visible
        if rgb is None:
            return
        if rgb_aux is None:
            rgb_aux, aux_visible = rgb, rgb_visible
        canon = self.template.canonical_vertices
        fill = self.hparams.neutral_colour
        self.avatar.initialize_(
            rgb=logit(_fill_unseen(rgb, rgb_visible, canon, fill)),
            rgb_aux=logit(_fill_unseen(rgb_aux, aux_visible, canon, fill)),
            seg=logit(_fill_unseen(seg, seg_visible, canon, fill)) if seg is not None else None)

    def _unwrap(self, sample: dict, keys: tuple[str, ...]) -> tuple[dict[str, Tensor], Tensor]:
        """Colours of the image maps at each visible Gaussian's pixel. Returns ({key: [N, C]},
        visible [N] bool)."""
        batch = {k: (v.unsqueeze(0) if isinstance(v, Tensor) else v) for k, v in sample.items()}
        pose = PoseParams(batch["full_pose"], batch["expression"], batch["transl"])
        gaussians, _ = self.posed_gaussians(pose, "base")
        camera = _batch_camera(batch)
        rendered = self.renderer.render(gaussians, camera, {})
        x_cam = gaussians.means @ camera.R.T + camera.t  # [N, 3]
        z = x_cam[:, 2].clamp(min=1e-6)
        uv = x_cam[:, :2] / z[:, None] * camera.K.diagonal()[:2] + camera.K[:2, 2]  # [N, 2]
        col = uv[:, 0].floor().long()
        row = uv[:, 1].floor().long()
        inside = (col >= 0) & (col < camera.width) & (row >= 0) & (row < camera.height)
        col, row = col.clamp(0, camera.width - 1), row.clamp(0, camera.height - 1)
        depth = rendered["depth"][row, col, 0] / rendered["alpha"][row, col, 0].clamp(min=1e-6)
        covered = rendered["alpha"][row, col, 0] > VISIBLE_ALPHA
        in_mask = sample["mask"][row, col, 0] > VISIBLE_ALPHA
        visible = inside & covered & in_mask & (z <= depth + VISIBILITY_TOLERANCE)
        return {k: sample[k][row, col] for k in keys}, visible

    # ------------------------------------------------------------------ forward
    def posed_state(self, pose: PoseParams, body_pose_6d: Tensor) -> AvatarState:
        """Pose the avatar: pose with batch 1, body_pose_6d [1, 21, 6]."""
        t = self.template
        log_scale = self.avatar.log_scale  # [N, 1]
        canon = t.canonical_vertices + self.avatar.mean_offset  # [N, 3]
        weights = self._skinning_weights(canon, log_scale.detach().exp().squeeze(-1))
        offsets = self.deformer(t.triplane_positions, t.dominant_joint, body_pose_6d,
                                t.region_masks["no_deform"])
        expr = pose.expression[0]
        num_e = min(expr.shape[0], t.exprdirs.shape[-1])
        expr_offset = torch.einsum("nce,e->nc", t.exprdirs[..., :num_e], expr[:num_e])
        transforms = self.body.transforms_from_canonical(self.identity, pose)  # [1, 55, 4, 4]
        base = skin_points(canon + expr_offset, weights, transforms)[0]  # [N, 3]
        refined_canon = canon + offsets.mean_offset[0]
        refined = skin_points(refined_canon + expr_offset, weights, transforms)[0]
        rgb = torch.sigmoid(self.avatar.rgb)
        scale = log_scale.exp().expand(-1, 3)
        rgbs = {"base": rgb, "refined": rgb}
        scales = {"base": scale, "refined": scale}
        if offsets.rgb_offset is not None:  # ablation: pose-dependent colours (refined only)
            rgbs["refined"] = torch.sigmoid(self.avatar.rgb + offsets.rgb_offset[0])
        if offsets.scale_offset is not None:  # ablation: pose-dependent scales (refined only)
            scales["refined"] = (log_scale + offsets.scale_offset[0]).exp().expand(-1, 3)
        return AvatarState(means={"base": base, "refined": refined}, scales=scales, rgb=rgbs,
                           rgb_aux=torch.sigmoid(self.avatar.rgb_aux),
                           seg=torch.sigmoid(self.avatar.seg), canonical_base=canon,
                           canonical_refined=refined_canon)

    def posed_gaussians(self, pose: PoseParams, variant: str = "refined"
                        ) -> tuple[Gaussians, dict[str, Tensor]]:
        """Gaussians and colours ({"rgb", "seg", "rgb_aux"}: [N, 3]) of the avatar in a pose
        (batch 1): what export, animation and evaluation call."""
        body_6d = axis_angle_to_rotation_6d(pose.full_pose[:, 1:22])  # [1, 21, 6]
        state = self.posed_state(pose, body_6d)
        scales = state.scales[variant]
        gaussians = Gaussians(state.means[variant], scales, scales.new_ones(scales.shape[0]))
        return gaussians, {"rgb": state.rgb[variant], "seg": state.seg, "rgb_aux": state.rgb_aux}

    def _skinning_weights(self, canon: Tensor, sigma: Tensor) -> Tensor:
        t = self.template
        keep = t.region_masks["keep_template_weights"]
        method = self.skinning_cfg.method
        if method == "template":
            return t.lbs_weights
        if method == "knn":
            from persona.body.skinning import combine_with_template, knn_skinning_weights

            v0 = t.num_original_vertices
            queried = knn_skinning_weights(canon.detach(), t.canonical_vertices[:v0],
                                           t.lbs_weights[:v0], k=self.skinning_cfg.knn)
            return combine_with_template(queried, t.lbs_weights, keep)
        from persona.body.skinning import field_skinning_weights

        return field_skinning_weights(self._aux["field"], canon.detach(), sigma, t.lbs_weights,
                                      keep)

    # ------------------------------------------------------------------ rendering
    def render_state(self, state: AvatarState, camera: Camera, variant: str,
                     with_aux: bool, with_seams: bool) -> dict[str, Tensor]:
        """One pass: every channel group the losses need for this variant."""
        t = self.template
        means = state.means[variant]
        normals_cam = vertex_normals(means, t.faces) @ camera.R.T  # [N, 3] camera frame
        regions = torch.stack([t.region_masks[k] for k in REGION_CHANNELS], -1).to(means.dtype)
        channels = {
            "rgb": ChannelGroup(state.rgb[variant]),
            "seg": ChannelGroup(state.seg),
            "normal": ChannelGroup(normals_cam),
            "regions": ChannelGroup(regions),
        }
        if with_aux:  # rgb_aux learns colour only: geometry detached (METHOD.md section 6)
            channels["rgb_aux"] = ChannelGroup(state.rgb_aux, geometry_grad=False)
        if with_seams:
            channels["canonical"] = ChannelGroup(
                positional_colours(t.canonical_vertices).detach(), geometry_grad=False)
            channels["rgb_geo_detached"] = ChannelGroup(state.rgb[variant], geometry_grad=False)
            channels["rgb_aux_all_detached"] = ChannelGroup(state.rgb_aux.detach(),
                                                            geometry_grad=False)
        scales = state.scales[variant]
        gaussians = Gaussians(means, scales, scales.new_ones(scales.shape[0]))
        return self.renderer.render(gaussians, camera, channels)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        is_input = bool(batch["is_input"][0])
        weights = term_weights(self.loss_weights, is_input)
        frame_id = batch["frame_id"]
        pose = self.frame_params(frame_id)
        state = self.posed_state(pose, self.frame_params.body_pose_6d(frame_id))
        camera = _batch_camera(batch)
        image = batch["image"][0]  # [H, W, 3]
        # seams exist only on the input image, and only when a term uses them (ablation: off)
        seams_used = is_input and (self.loss_weights.seam_weight != 1.0
                                   or weights["seam_distill"] > 0)
        renders = {variant: self.render_state(
            state, camera, variant, with_aux=(variant == "refined" and not is_input),
            with_seams=(variant == "base" and seams_used)) for variant in ("base", "refined")}
        seam_map = None
        if seams_used:
            base = renders["base"]
            face = base["regions"][..., REGION_CHANNELS.index("face")] > VISIBLE_ALPHA
            seams = detect_seams(base["canonical"], base["alpha"], face)
            base["seams"] = seams
            seam_weight = pixel_seam_weight(self.loss_weights, is_input)
            seam_map = torch.where(seams, seam_weight, 1.0).to(image.dtype)[None, None]
        terms: dict[str, tuple[Tensor, float]] = {}
        for variant in ("base", "refined"):
            r = renders[variant]
            terms.update(self._image_terms(r, batch, variant, weights, seam_map))
            terms.update(self._geometry_terms(r, batch, variant, weights))
        if weights["seam_distill"] > 0 and "seams" in renders["base"]:
            r = renders["base"]
            seam = r["seams"].unsqueeze(-1).to(image.dtype)  # [H, W, 1]
            diff = (r["rgb_geo_detached"] - r["rgb_aux_all_detached"]) * seam
            terms["seam_distill"] = (diff.abs().mean(), weights["seam_distill"])
        terms.update(self._silhouette_terms(renders["base"], pose, camera, weights))
        if is_input and "image_native" in batch and (weights["face_patch_base"] > 0
                                                      or weights["face_patch_refined"] > 0):
            terms.update(self._face_patch_terms(state, batch, camera, weights))
        terms.update(self._regulariser_terms(state, weights))
        loss = sum(value * weight for value, weight in terms.values())
        for name, (value, weight) in terms.items():
            self.log(f"train/loss/{name}", value.detach(), batch_size=1)
            self.log(f"train/weight/{name}", float(weight), batch_size=1)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=1)
        self.last_visuals = self._visuals(batch, renders)
        if not torch.isfinite(loss):
            return self._skip_nonfinite(terms, batch)
        return loss

    def _skip_nonfinite(self, terms: dict, batch: dict) -> None:
        self.nonfinite_steps += 1
        bad = [n for n, (v, _) in terms.items() if not torch.isfinite(v)]
        if self.nonfinite_steps > self.max_nonfinite_steps:
            raise RuntimeError(
                f"{self.nonfinite_steps} training steps had a non-finite loss (last: terms {bad}"
                f" at frame {batch['split'][0]}/{int(batch['index'][0])}); stopping. Lower the "
                "learning rates (model.optim.*) or check the subject with "
                "`persona subject check`.")
        return None  # Lightning skips the optimiser step

    @property
    def max_nonfinite_steps(self) -> int:
        return int(self.hparams.max_nonfinite_steps)

    def _image_loss_map(self, render: Tensor, target: Tensor) -> Tensor:
        """render, target [H, W, 3] -> per-pixel loss [1, 1, H, W]."""
        lw = self.loss_weights
        return image_loss_map(_hwc_to_bchw(render), _hwc_to_bchw(target), l1_weight=lw.l1,
                              ssim_weight=lw.ssim, lpips_weight=lw.lpips,
                              lpips_fn=self._aux.get("lpips_train"))

    def _image_terms(self, r: dict, batch: dict, variant: str, weights: dict,
                     seam_map: Tensor | None) -> dict:
        """Image, albedo and rgb_aux terms; renders composited over the target (METHOD 4)."""
        terms = {}
        image, alpha = batch["image"][0], r["alpha"]
        w = weights[f"image_{variant}"]
        if w > 0:
            loss_map = self._image_loss_map(r["rgb"] + image * (1 - alpha), image)
            terms[f"image_{variant}"] = (weighted_mean(loss_map, seam_map), w)
        w = weights.get(f"albedo_{variant}", 0.0)
        if w > 0 and bool(batch["has_albedo"][0]):
            albedo = batch["albedo"][0]
            loss_map = self._image_loss_map(r["rgb"] + albedo * (1 - alpha), albedo)
            terms[f"albedo_{variant}"] = (weighted_mean(loss_map, seam_map), w)
        w = weights.get(f"rgb_aux_{variant}", 0.0)
        if w > 0 and "rgb_aux" in r:
            loss_map = self._image_loss_map(r["rgb_aux"] + image * (1 - alpha.detach()), image)
            terms[f"rgb_aux_{variant}"] = (weighted_mean(loss_map, None), w)
        return terms

    def _face_patch_terms(self, state: AvatarState, batch: dict, camera: Camera,
                          weights: dict) -> dict:
        """Image loss of the face patch of the input image at native resolution, rendered with
        the crop's own camera (persona/losses/face_patch.py); composited over the target."""
        lw = self.loss_weights
        native = batch["image_native"][0]  # [H, W, 3]
        height, width = native.shape[:2]
        full = Camera(batch["K_native"][0], camera.R, camera.t, width, height)
        with torch.no_grad():
            face = state.means["base"][self.template.region_masks["face"]]  # [P, 3]
            x_cam = face @ full.R.T + full.t
            uv = x_cam[:, :2] / x_cam[:, 2:].clamp(min=1e-6) * full.K.diagonal()[:2] \
                + full.K[:2, 2]  # [P, 2]
        x0, y0, side = face_box(uv, width, height, lw.face_patch_margin)
        patch_camera = crop_camera(full, x0, y0, side, lw.face_patch_size)
        target = crop_image(native, x0, y0, side, lw.face_patch_size)  # [S, S, 3]
        terms = {}
        for variant in ("base", "refined"):
            w = weights[f"face_patch_{variant}"]
            if w <= 0:
                continue
            scales = state.scales[variant]
            gaussians = Gaussians(state.means[variant], scales, scales.new_ones(scales.shape[0]))
            r = self.renderer.render(gaussians, patch_camera,
                                     {"rgb": ChannelGroup(state.rgb[variant])},
                                     RenderSettings(depth=False))
            loss_map = self._image_loss_map(r["rgb"] + target * (1 - r["alpha"]), target)
            terms[f"face_patch_{variant}"] = (weighted_mean(loss_map, None), w)
        return terms

    def _geometry_terms(self, r: dict, batch: dict, variant: str, weights: dict) -> dict:
        terms = {}
        w = weights[f"mask_{variant}"]
        if w > 0:
            terms[f"mask_{variant}"] = (geo_losses.mask_loss(r["alpha"], batch["mask"][0]), w)
        w = weights[f"depth_{variant}"]
        if w > 0:
            terms[f"depth_{variant}"] = (
                geo_losses.silog_depth_loss(r["depth"][..., 0], batch["depth"][0][..., 0]), w)
        w = weights[f"normal_{variant}"]
        if w > 0:
            normal = F.normalize(r["normal"], dim=-1)
            valid = (r["alpha"][..., 0] > VISIBLE_ALPHA) & (batch["normal"][0].norm(dim=-1) > 0.5)
            terms[f"normal_{variant}"] = (
                geo_losses.normal_loss(normal, batch["normal"][0], valid), w)
        w = weights[f"seg_{variant}"]
        if w > 0:
            fg = batch["mask"][0][..., 0] > VISIBLE_ALPHA
            terms[f"seg_{variant}"] = (geo_losses.seg_loss(r["seg"], batch["seg"][0], fg), w)
        return terms

    def _silhouette_terms(self, render: dict, pose: PoseParams, camera: Camera,
                          weights: dict) -> dict:
        """Gaussian hand/eye masks vs the SMPL-X mesh's hand/eye silhouettes (targets only),
        z-buffered against the whole mesh when ``losses.mask_occlusion``."""
        from persona.render.silhouette import rasterize_labels, rasterize_silhouette

        wanted = {k: weights[k] for k in ("hand_mask", "eye_mask") if weights[k] > 0}
        if not wanted:
            return {}
        with torch.no_grad():
            vertices = self.body(self.identity, pose)[0]  # [V, 3] template-weight posing
        terms = {}
        channel = {"hand_mask": REGION_CHANNELS.index("hands"),
                   "eye_mask": REGION_CHANNELS.index("eyes")}
        labels = (rasterize_labels(vertices, self.body.faces, self._aux["face_labels"], camera)
                  if self.loss_weights.mask_occlusion else None)
        for key, w in wanted.items():
            if labels is not None:
                target = (labels == SILHOUETTE_LABEL_OF[key]).float()
            else:
                target = rasterize_silhouette(vertices, self._aux["region_faces"][key], camera)
            pred = render["regions"][..., channel[key]]
            terms[key] = ((pred - target.to(pred.dtype)).abs().mean(), w)
        return terms

    def _regulariser_terms(self, state: AvatarState, weights: dict) -> dict:
        t = self.template
        masks = t.region_masks
        lw = self.loss_weights
        rgb = state.rgb["base"]
        log_scale = self.avatar.log_scale  # [N, 1]
        scale_values = log_scale if lw.lap_scale_on_log else log_scale.exp()
        relative = bool(lw.lap_mean_relative)
        candidates = {
            "lap_mean": lambda: reg.mean_laplacian_loss(
                state.canonical_refined, t.canonical_vertices, t.laplacian, masks,
                lw.lap_face_eye_factor, lw.lap_hand_boundary_factor, relative),
            "lap_mean_base": lambda: reg.mean_laplacian_loss(
                state.canonical_base, t.canonical_vertices, t.laplacian, masks,
                lw.lap_face_eye_factor, lw.lap_hand_boundary_factor, relative),
            "lap_mean_posed": lambda: reg.posed_laplacian_loss(
                state.means["refined"], t.laplacian, masks,
                reference=state.means["base"].detach() if relative else None),
            "lap_scale": lambda: reg.laplacian_energy(scale_values, t.laplacian),
            "lap_scale_original": lambda: reg.laplacian_energy(
                scale_values[: t.num_original_vertices], t.original_laplacian),
            "lap_rgb": lambda: reg.laplacian_energy(rgb, t.laplacian),
            "hand_rgb_tv": lambda: reg.hand_rgb_tv(rgb, self._aux["edges"], masks["hands"]),
            "hand_rgb_aux": lambda: reg.hand_rgb_aux_loss(rgb, state.rgb_aux, masks["hands"]),
            "mouth_rgb": lambda: reg.mouth_rgb_loss(rgb, masks["mouth_interior"],
                                                    masks["mouth_ring"]),
        }
        return {name: (compute(), weights[name]) for name, compute in candidates.items()
                if weights.get(name, 0.0) > 0}

    def _visuals(self, batch: dict, renders: dict) -> dict[str, Tensor]:
        r = renders["refined"]
        image = batch["image"][0]  # the render over the target, as the image loss sees it
        vis = {"target": image, "render": r["rgb"] + image * (1 - r["alpha"]),
               "alpha": r["alpha"], "depth": r["depth"], "normal": r["normal"], "seg": r["seg"]}
        if "seams" in renders["base"]:
            vis["seams"] = renders["base"]["seams"].to(r["alpha"].dtype).unsqueeze(-1)
        return {k: v.detach() for k, v in vis.items()}

    # ------------------------------------------------------------------ evaluation
    def fit_test_pose(self, batch: dict) -> PoseParams:
        """The authors' test-time protocol (METHOD.md section 9): with the avatar frozen, fit
        the frame's SMPL-X (axis-angle pose, expression, translation) to its image and maps
        for `eval_protocol.fit_steps` Adam steps (image L1, mask, depth, normal, weight 1)."""
        steps = self.eval_protocol.fit_steps
        with torch.inference_mode(False), torch.enable_grad():
            frame = {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in batch.items()}
            variables = [frame["full_pose"].clone().requires_grad_(True),
                         frame["expression"].clone().requires_grad_(True),
                         frame["transl"].clone().requires_grad_(True)]
            optimiser = torch.optim.Adam(variables, lr=self.optim_cfg.frame_other,
                                         eps=self.optim_cfg.adam_eps)
            frozen = [p for p in self.parameters() if p.requires_grad]
            for parameter in frozen:
                parameter.requires_grad_(False)
            try:
                camera = _batch_camera(frame)
                image, mask = frame["image"][0], frame["mask"][0]
                for _ in range(steps):
                    pose = PoseParams(*variables)
                    gaussians, colours = self.posed_gaussians(pose, "refined")
                    normals = vertex_normals(gaussians.means, self.template.faces) @ camera.R.T
                    out = self.renderer.render(gaussians, camera,
                                               {"rgb": ChannelGroup(colours["rgb"]),
                                                "normal": ChannelGroup(normals)})
                    composite = out["rgb"] + image * (1 - out["alpha"])
                    valid = ((out["alpha"][..., 0] > VISIBLE_ALPHA)
                             & (frame["normal"][0].norm(dim=-1) > 0.5))
                    loss = ((composite - image).abs().mean()
                            + geo_losses.mask_loss(out["alpha"], mask)
                            + geo_losses.silog_depth_loss(out["depth"][..., 0],
                                                          frame["depth"][0][..., 0])
                            + geo_losses.normal_loss(F.normalize(out["normal"], dim=-1),
                                                     frame["normal"][0], valid))
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
            finally:
                for parameter in frozen:
                    parameter.requires_grad_(True)
        return PoseParams(*(v.detach() for v in variables))

    def render_eval(self, batch: dict, pose: PoseParams | None = None) -> dict[str, Tensor]:
        """Render the refined avatar in `pose` (default: the batch's), composited on the eval
        background."""
        if pose is None:
            pose = PoseParams(batch["full_pose"], batch["expression"], batch["transl"])
        gaussians, colours = self.posed_gaussians(pose, "refined")
        camera = _batch_camera(batch)
        normals = vertex_normals(gaussians.means, self.template.faces) @ camera.R.T
        out = self.renderer.render(gaussians, camera, {"rgb": ChannelGroup(colours["rgb"]),
                                                       "normal": ChannelGroup(normals)})
        background = out["rgb"].new_tensor(self.eval_protocol.background)
        out["rgb_on_background"] = out["rgb"] + background * (1 - out["alpha"])
        return out

    def _eval_step(self, batch: dict, prefix: str) -> dict[str, float]:
        from persona.metrics.protocol import evaluate_frame

        pose = None
        if self.eval_protocol.fit_test_pose and self.eval_protocol.fit_steps > 0:
            pose = self.fit_test_pose(batch)
        with torch.no_grad():
            out = self.render_eval(batch, pose)
        alpha = out["alpha"].clamp(min=1e-6)
        metrics = evaluate_frame(
            out["rgb_on_background"], batch["image"][0], out["alpha"], batch["mask"][0],
            self.eval_protocol, pred_depth=torch.where(out["alpha"] > VISIBLE_ALPHA,
                                                       out["depth"] / alpha, 0.0),
            target_depth=batch["depth"][0], pred_normal=F.normalize(out["normal"], dim=-1),
            target_normal=batch["normal"][0], lpips_fn=self._aux["lpips_eval"])
        for name, value in metrics.items():
            if math.isfinite(value):
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


def _colour_source_rows(frames: list) -> list[int]:
    """Rows of the input image and of the first frame of the first generated split."""
    rows = [i for i, f in enumerate(frames) if f.is_input][:1]
    generated = sorted((f.split, f.index, i) for i, f in enumerate(frames) if not f.is_input)
    return rows + [generated[0][2]] if generated else rows


def _fill_unseen(colours: Tensor, visible: Tensor, positions: Tensor, fill: float) -> Tensor:
    """Unseen rows take the colour of the nearest seen position; all unseen -> fill."""
    colours = colours.clone().float()
    if not bool(visible.any()):
        return torch.full_like(colours, fill)
    if bool(visible.all()):
        return colours
    from scipy.spatial import cKDTree

    tree = cKDTree(positions[visible].cpu().numpy())
    _, nearest = tree.query(positions[~visible].cpu().numpy())
    colours[~visible] = colours[visible][torch.as_tensor(nearest, device=colours.device)]
    return colours


def _hwc_to_bchw(image: Tensor) -> Tensor:
    """[H, W, C] -> [1, C, H, W]."""
    return image.permute(2, 0, 1).unsqueeze(0)


def _batch_camera(batch: dict) -> Camera:
    return Camera(batch["K"][0], batch["R"][0], batch["t"][0], int(batch["width"]),
                  int(batch["height"]))
