"""PersonaSystem: the LightningModule that wires body, avatar, deformer, renderer and losses.

One training step (batch size 1, METHOD.md sections 3-7):
  frame SMPL-X (optimised) -> canonical means (+ mean offset) -> skinning weights (field)
  -> "base" means and "refined" means (+ pose-deformer offset) -> + expression -> LBS -> world
  -> two render passes (base, refined), each rendering every channel group at once
  -> the geometry-weighted loss table (persona/losses/table.py) -> Adam.
The data module reads the subject; the body and skinning volume come from their loaders (cached
on disk); nothing in this module opens a file itself. The settings and the pure functions that
build parts from them are persona/system_config.py; the render passes persona/render/passes.py.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from persona import system_config
from persona.avatar import colour_init
from persona.avatar import posing as posing_lib
from persona.avatar.frame_params import FrameParams
from persona.avatar.gaussians import GaussianAvatar, knn_log_scale, logit
from persona.avatar.posing import AvatarState, SkinningConfig
from persona.avatar.template import AvatarTemplate, build_avatar_template
from persona.body.types import Identity, PoseParams
from persona.data.datamodule import host_flag
from persona.losses import regularizers as reg
from persona.losses import step_terms
from persona.losses import terms as loss_terms
from persona.losses.table import LossWeights, term_weights, without_missing_maps
from persona.metrics.protocol import EvalProtocol
from persona.metrics.test_pose import TestPoseFitSettings
from persona.render import passes
from persona.render.types import Gaussians, Renderer
from persona.system_config import BodyOverrides, DeformerConfig, DeformerFactory, OptimConfig
from persona.system_parts import FrozenParts, batch_camera

__all__ = ["AvatarState", "BodyOverrides", "DeformerConfig", "OptimConfig", "PersonaSystem",
           "SkinningConfig"]

CAMERA_KEYS = ("K", "R", "t", "width", "height")  # batch entries of a frame's camera
FACTORY_HPARAMS = ("renderer", "deformer_class")  # objects given in place of a config
# checkpoint entry: training steps skipped for a non-finite loss so far (a resumed fit keeps
# counting; `persona test` reports it in metrics.json)
NONFINITE_STEPS_KEY = "persona_nonfinite_steps"


class PersonaSystem(LightningModule):
    """The PERSONA avatar and its training, validation and test steps (wiring only: posing is
    persona/avatar/posing.py, colour initialisation persona/avatar/colour_init.py, the loss
    terms persona/losses/terms.py, the fixed state persona/system_parts.py)."""

    def __init__(
        self,
        subdivision_levels: int = 2,  # 1-to-4 triangle splits of the body template
        skinning: SkinningConfig = SkinningConfig(),
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
        # A deformer class (class_path + init_args) built in build() in place of `deformer`'s
        # PoseDeformer; deformer.zero_face still applies (docs/EXTENDING.md).
        deformer_class: DeformerFactory | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        for key, value in list(self.hparams.items()):  # plain dicts: checkpoints stay loadable
            if dataclasses.is_dataclass(value):  # with weights_only=True, W&B config nests
                self.hparams[key] = dataclasses.asdict(value)
            elif key in FACTORY_HPARAMS and not isinstance(value, (str, dict, type(None))):
                self.hparams[key] = system_config.class_path_of(value)  # not the CLI: an object
        self.subdivision_levels = subdivision_levels
        self.skinning_cfg = skinning
        self.deformer_cfg = deformer
        self.deformer_factory = deformer_class
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
        self.loss_weights, off = without_missing_maps(self.loss_weights,
                                                      getattr(dm, "missing", ()))
        if off:
            rank_zero_info(f"subject {dm.subject_dir}: subject.json declares no "
                           f"{', '.join(off)} maps (\"missing\"); their loss terms are off ("
                           + ", ".join(f"model.losses.{name} = 0" for name in off) + ")")
        spec = system_config.resolve_body_spec(dm.body_spec, self.hparams.body,
                                               self.hparams.cache_dir)
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
        from persona.metrics.lpips import load_lpips_distance, load_lpips_loss
        from persona.render import make_renderer

        template = build_avatar_template(body, identity, self.subdivision_levels,
                                         no_deform_face=self.deformer_cfg.zero_face,
                                         triplane_centre=self.deformer_cfg.triplane_centre)
        field = system_config.skinning_field(template, self.skinning_cfg, self.hparams.cache_dir)
        # Frozen LPIPS networks, like the body, stay out of the state dict and checkpoints.
        # Order matters: they are built before the deformer (random-number use, reproducibility).
        lpips_train = (load_lpips_loss(self.hparams.lpips_net_train)
                       if self.loss_weights.lpips > 0 else None)
        lpips_eval = load_lpips_distance(self.eval_protocol.lpips_net)
        self.frozen = FrozenParts(body, template, identity, field, lpips_train, lpips_eval)
        self.avatar = GaussianAvatar(template.num_vertices)
        self.deformer = system_config.build_deformer(self.deformer_cfg, self.deformer_factory)
        self.frame_params = FrameParams(system_config.stacked_pose(train_frames),
                                        learnable=self.optim_cfg.optimise_frames)
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
            self._neutral_colours()

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
        unwrapped = passes.unwrap_sources(sources, self.frozen.device,
                                          lambda pose: self.posed_gaussians(pose, "base")[0],
                                          self.renderer)
        fill = self.hparams.neutral_colour
        colours = colour_init.initial_colours(unwrapped, self.template.canonical_vertices, fill)
        if colours is None:
            rank_zero_warn("PersonaSystem: the colour source frames gave no colours; every "
                           f"Gaussian starts at neutral_colour {fill}.")
            self._neutral_colours()
            return
        self.avatar.initialize_(**{k: (logit(v) if v is not None else None)
                                   for k, v in colours.items()})
        self.frozen.rgb_init = torch.sigmoid(self.avatar.rgb.detach()).clone()  # [N, 3]

    @torch.no_grad()
    def _neutral_colours(self) -> None:
        """rgb and rgb_aux at neutral_colour (no colour source)."""
        fill = torch.full_like(self.avatar.rgb, self.hparams.neutral_colour)  # [N, 3]
        self.avatar.initialize_(rgb=logit(fill), rgb_aux=logit(fill))

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

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        try:
            return self._training_step(batch, batch_idx)
        except RuntimeError as error:  # an op without a half kernel names the setting to change
            precision = str(getattr(self._trainer, "precision", "")) if self._trainer else ""
            if "mixed" not in precision:
                raise
            raise RuntimeError(f"trainer.precision={precision}: the training step failed in mixed "
                               f"precision ({error}); train with trainer.precision 32-true (the "
                               f"default)") from error

    def _training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        is_input = host_flag(batch, "is_input")  # no device synchronisation
        lw, t, frozen = self.loss_weights, self.template, self.frozen
        on_reference = bool(lw.lap_level_on_reference)  # the level rule (docs: item 5)
        weights = reg.level_scaled_weights(
            term_weights(lw, is_input), t.median_edge_length, t.original_median_edge_length,
            lw.lap_reference_edge, lw.lap_level_exponent,
            skip=reg.MEAN_LAPLACIAN_TERMS if on_reference else ())
        share = (reg.level_template_share(t.median_edge_length, lw.lap_reference_edge,
                                          lw.lap_level_exponent) if on_reference else 1.0)
        frame_id, rows = batch["frame_id"], batch.get("frame_id_host")  # rows: no host sync
        pose = self.frame_params(frame_id, rows)
        state = self.posed_state(pose, self.frame_params.body_pose_6d(frame_id, rows))
        camera = batch_camera(batch)
        seams_for = step_terms.seam_variants(weights, lw, is_input)
        face_init = is_input and weights["face_geo"] > 0 and frozen.rgb_init is not None
        renders = {variant: passes.render_state(
            t, state, camera, self.renderer, variant,
            with_aux=(variant == "refined" and not is_input), with_seams=seams_for[variant],
            rgb_init=frozen.rgb_init if variant == "base" and face_init else None)
            for variant in posing_lib.VARIANTS}
        loss_map = loss_terms.image_loss_fn(lw, frozen.lpips_train)
        terms = step_terms.render_pass_terms(renders, batch, weights, lw, is_input, seams_for,
                                             loss_map)
        if face_init:
            terms.update(loss_terms.face_geo_terms(renders["base"], batch["image"][0],
                                                   weights["face_geo"]))
        # the body mesh in the frame's pose, posed at most once a step (silhouettes, face patch)
        posed_mesh = functools.cache(lambda: self.mesh_vertices(pose))
        terms.update(step_terms.mesh_silhouette_terms(
            renders["base"], posed_mesh, self.body.faces,
            frozen.face_labels, frozen.region_faces, camera, weights, bool(lw.mask_occlusion)))
        if is_input and "image_native" in batch:
            terms.update(step_terms.face_patch_step_terms(
                state, batch, camera, weights, lw, t, posed_mesh,
                self.body.faces, frozen.rgb_init, self.renderer, loss_map))
        if weights["hand_rgb_tv"] > 0 and not lw.hand_rgb_tv_on_mesh:
            hands = passes.render_hands(t, state, camera, self.renderer)
            terms.update(loss_terms.hand_colour_terms(hands, weights["hand_rgb_tv"]))
        terms.update(loss_terms.regulariser_terms(state, t, self.avatar.log_scale,
                                                  frozen.edges, weights, lw, share))
        loss = loss_terms.total_loss(terms)
        for name, (value, weight) in terms.items():
            self.log(f"train/loss/{name}", value.detach(), batch_size=1)
            self.log(f"train/weight/{name}", float(weight), batch_size=1)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=1)
        self.last_visuals = passes.training_visuals(batch, renders)
        if not torch.isfinite(loss):
            return self._skip_nonfinite(terms, batch)
        return loss

    def mesh_vertices(self, pose: PoseParams) -> Tensor:
        """[V0, 3] the body mesh in a pose (batch 1; template-weight posing), no gradient."""
        with torch.no_grad():
            return self.body(self.identity, pose)[0]

    def _skip_nonfinite(self, terms: loss_terms.Terms, batch: dict) -> None:
        self.nonfinite_steps += 1
        stop, message = step_terms.nonfinite_report(terms, batch, self.nonfinite_steps,
                                                    self.max_nonfinite_steps)
        if stop:
            raise RuntimeError(message)
        rank_zero_warn(message)
        return None  # Lightning skips the optimiser step

    @property
    def max_nonfinite_steps(self) -> int:
        return int(self.hparams.max_nonfinite_steps)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[NONFINITE_STEPS_KEY] = int(self.nonfinite_steps)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.nonfinite_steps = int(checkpoint.get(NONFINITE_STEPS_KEY, 0))  # older: none

    # ------------------------------------------------------------------ evaluation
    def fit_test_pose(self, batch: dict, protocol: EvalProtocol | None = None,
                      settings: TestPoseFitSettings | None = None) -> PoseParams:
        """The authors' test-time protocol (METHOD.md sections 9 and 12; persona/metrics/
        test_pose.py): with the avatar frozen, fit the frame's SMPL-X (6D rotations, hands at
        lr / 10) to its image and maps with the full image loss on base and refined + mask +
        0.01 depth + normal + seg. settings: instead of the protocol's (studies)."""
        from persona.metrics import test_pose

        protocol = protocol or self.eval_protocol
        settings = settings or protocol.fit_settings()

        def render_fn(pose: PoseParams) -> dict[str, dict[str, Tensor]]:
            # called with inference mode off: clones of the (inference) batch camera can join
            # the autograd graph
            camera = batch_camera({k: (v.clone() if isinstance(v, Tensor) else v)
                                   for k, v in batch.items() if k in CAMERA_KEYS})
            state = self.posed_state(pose, posing_lib.body_pose_6d(pose))
            return {v: passes.render_state(self.template, state, camera, self.renderer, v,
                                           with_aux=False, with_seams=False)
                    for v in posing_lib.VARIANTS}

        frame = {k: batch[k][0] for k in ("image", "mask", "depth", "normal", "seg")}
        init = PoseParams(batch["full_pose"], batch["expression"], batch["transl"])
        return test_pose.fit_test_pose(render_fn, frame, init, settings,
                                       lpips_fn=self.frozen.lpips_train,
                                       frozen_parameters=list(self.parameters()),
                                       view_axis=batch["R"][0, 2].detach())

    def render_eval(self, batch: dict, pose: PoseParams | None = None) -> dict[str, Tensor]:
        """Render the refined avatar in `pose` (default: the batch's), composited on the eval
        background."""
        if pose is None:
            pose = PoseParams(batch["full_pose"], batch["expression"], batch["transl"])
        gaussians, colours = self.posed_gaussians(pose, "refined")
        return passes.render_eval(gaussians, colours, self.template.faces, batch_camera(batch),
                                  self.renderer, self.eval_protocol.background)

    def _eval_step(self, batch: dict, prefix: str) -> dict[str, float]:
        from persona.metrics.eval_render import eval_visuals, score_eval_render
        from persona.metrics.protocol import FLAG_KEYS

        # validation during fit is cheap by default (no test-pose fitting): validation_protocol
        protocol = (self.eval_protocol if prefix == "test"
                    else self.eval_protocol.validation_protocol())
        pose = self.fit_test_pose(batch, protocol) if protocol.fit_test_pose else None
        with torch.no_grad():
            out = self.render_eval(batch, pose)
        metrics = score_eval_render(out, batch, protocol, self.frozen.lpips_eval)
        for name, value in metrics.items():
            if name not in FLAG_KEYS and math.isfinite(value):
                self.log(f"{prefix}/{name}", value, batch_size=1, on_epoch=True, on_step=False)
        self.last_eval_visuals = eval_visuals(out, batch, self.eval_protocol.background)
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
    def configure_callbacks(self) -> list:
        """The optimiser settings' callbacks (system_config.optimiser_callbacks): the deformer's
        gradient accumulation and the weight average."""
        return system_config.optimiser_callbacks(self.optim_cfg)

    def configure_optimizers(self) -> dict:
        groups = system_config.optimizer_groups(self.avatar, self.deformer, self.frame_params,
                                                self.optim_cfg)
        return system_config.optimizer_and_schedule(groups, self.optim_cfg,
                                                    int(self.trainer.estimated_stepping_batches))
