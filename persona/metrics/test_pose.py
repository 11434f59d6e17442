"""The authors' test-pose fit (METHOD.md sections 9 and 12) as a pure function.

Before scoring a test frame, the authors freeze the avatar and fit only that frame's SMPL-X:
6D rotations (fingers at lr / 10), expression and translation, one Adam parameter each, with the
training image loss (0.8 L1 + 0.2 (1 - SSIM) + LPIPS-VGG) on the base AND refined renders
composited over the frame's image, plus, per variant, mask L1 + 0.01 SILog depth + normal + seg,
every term weight 1 (their `--fit_pose_to_test` run of `train.py`).

Their schedule, read from the release (`main/train.py`, `common/base.py`,
`tools/prepare_fit_pose_to_test.py`, `data/dataset.py`): the trained snapshot's epoch is reset to
0 and training resumes at epoch 1 of 5, so the fit runs 4 epochs; the test frame list is
repeated 10 times per epoch (10 passes); a fresh Adam (eps 1e-15, lr 1e-3, finger poses 1e-4)
sees only the test frames' parameters; every lr is divided by 10 once, at iteration
int(0.75 x 5 epochs) of the whole run, i.e. after 2.75 of the 4 fitted epochs. Every frame has
its own Parameters and Adam state, so a frame's fit depends on the other frames only through
where its steps fall relative to that decay: this function fits one frame for
epochs x passes = 40 steps and decays after `decay_at` = 2.75 / 4 of them (27 steps), the
expected position under their shuffled order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from persona.avatar.frame_params import FrameParams
from persona.avatar.posing import VARIANTS
from persona.body.types import PoseParams
from persona.losses import geometry as geo_losses
from persona.losses.image import image_loss_map

# Rendered alpha above which a pixel's normal is scored (as in training, persona/system.py).
NORMAL_VALID_ALPHA = 0.5
# Ground-truth mask value above which a pixel is foreground for the seg loss (as in training).
FOREGROUND_MASK = 0.5
# Length above which a ground-truth normal counts as valid (invalid normals are all zero).
VALID_NORMAL_LENGTH = 0.5

# render_fn(pose) -> {"base": maps, "refined": maps}; maps: "rgb" [H, W, 3] composited on black,
# "alpha" [H, W, 1], "depth" [H, W, 1], "normal" [H, W, 3] camera frame, "seg" [H, W, 3].
RenderFn = Callable[[PoseParams], dict[str, dict[str, Tensor]]]
# lpips_fn(render, target) on [1, 3, H, W] in [0, 1]: the training LPIPS-VGG, as
# persona.losses.image.image_loss_map takes it (its default adds the scalar distance per pixel).
LpipsFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class TestPoseFitSettings:
    """The authors' test-pose fit (see the module docstring)."""

    __test__ = False  # not a pytest test class

    steps: int = 40  # Adam steps for the frame: 4 epochs x 10 passes over the test set
    lr: float = 1e-3  # 6D rotations, expression and translation
    hand_lr_factor: float = 0.1  # finger rotations at lr x this
    decay_at: float = 2.75 / 4  # after this fraction of the steps every lr x decay_factor
    decay_factor: float = 0.1  # the authors' one-time lr / 10
    adam_eps: float = 1e-15  # the authors' Adam epsilon
    l1_weight: float = 0.8  # image loss: L1 part
    ssim_weight: float = 0.2  # image loss: (1 - SSIM) part
    lpips_weight: float = 1.0  # image loss: LPIPS part (used only when an lpips_fn is given)
    mask_weight: float = 1.0  # |alpha - mask|
    depth_weight: float = 0.01  # SILog depth
    normal_weight: float = 1.0  # normal loss
    seg_weight: float = 1.0  # part-segmentation palette L1
    # Study switches (experiments/pose_refinement.py; 0 / False: the authors' fit):
    pose_prior: float = 0.0  # x mean squared change of the body joints' 6D rotations from start
    hold_depth: bool = False  # translation gradient along the camera's viewing axis removed

    def __post_init__(self) -> None:
        if self.steps < 0 or self.lr <= 0 or self.hand_lr_factor < 0:
            raise ValueError(f"TestPoseFitSettings: need steps >= 0, lr > 0, hand_lr_factor "
                             f">= 0; got {self.steps}, {self.lr}, {self.hand_lr_factor}")
        if not 0.0 <= self.decay_at <= 1.0:
            raise ValueError(f"TestPoseFitSettings: decay_at must be in [0, 1], "
                             f"got {self.decay_at}")

    @property
    def decay_step(self) -> int:
        """First step run at the decayed learning rates."""
        return int(self.decay_at * self.steps)


def _bchw(image: Tensor) -> Tensor:
    """[H, W, C] -> [1, C, H, W]."""
    return image.permute(2, 0, 1)[None]


def variant_loss(maps: dict[str, Tensor], frame: dict[str, Tensor],
                 settings: TestPoseFitSettings, lpips_fn: LpipsFn | None = None
                 ) -> dict[str, Tensor]:
    """The fit's terms for one rendered variant, weighted, as scalars.

    maps: a render (see RenderFn); frame: "image" [H, W, 3], "mask" [H, W, 1], "depth"
    [H, W, 1] (0 invalid), "normal" [H, W, 3] (0 invalid), "seg" [H, W, 3]. A term of weight 0
    is skipped (its maps need not exist).
    """
    s = settings
    image, alpha = frame["image"], maps["alpha"]
    composite = maps["rgb"] + image * (1.0 - alpha)  # the render over the frame's own image
    lpips_weight = s.lpips_weight if lpips_fn is not None else 0.0
    terms = {"image": image_loss_map(_bchw(composite), _bchw(image), l1_weight=s.l1_weight,
                                     ssim_weight=s.ssim_weight, lpips_weight=lpips_weight,
                                     lpips_fn=lpips_fn).mean()}
    if s.mask_weight:
        terms["mask"] = s.mask_weight * geo_losses.mask_loss(alpha, frame["mask"])
    if s.depth_weight:
        terms["depth"] = s.depth_weight * geo_losses.silog_depth_loss(
            maps["depth"][..., 0], frame["depth"][..., 0])
    if s.normal_weight:
        valid = ((alpha[..., 0] > NORMAL_VALID_ALPHA)
                 & (frame["normal"].norm(dim=-1) > VALID_NORMAL_LENGTH))
        terms["normal"] = s.normal_weight * geo_losses.normal_loss(
            F.normalize(maps["normal"], dim=-1), frame["normal"], valid)
    if s.seg_weight:
        foreground = frame["mask"][..., 0] > FOREGROUND_MASK
        terms["seg"] = s.seg_weight * geo_losses.seg_loss(maps["seg"], frame["seg"], foreground)
    return terms


def test_pose_loss(renders: dict[str, dict[str, Tensor]], frame: dict[str, Tensor],
                   settings: TestPoseFitSettings, lpips_fn: LpipsFn | None = None) -> Tensor:
    """Sum of `variant_loss` over the base and refined renders (a scalar)."""
    return sum(value for variant in VARIANTS
               for value in variant_loss(renders[variant], frame, settings, lpips_fn).values())


test_pose_loss.__test__ = False  # not a pytest test function


def _clone(value: object) -> object:
    """A normal (not inference-mode) copy of a tensor; other values unchanged."""
    return value.detach().clone() if isinstance(value, Tensor) else value


def fit_test_pose(render_fn: RenderFn, frame: dict[str, Tensor], init_pose: PoseParams,
                  settings: TestPoseFitSettings = TestPoseFitSettings(),
                  lpips_fn: LpipsFn | None = None,
                  frozen_parameters: Iterable[nn.Parameter] = (),
                  view_axis: Tensor | None = None) -> PoseParams:
    """Fit one test frame's SMPL-X (batch 1) with everything else frozen; returns the fitted
    pose, detached.

    render_fn renders base and refined for a pose (see RenderFn); frame holds the frame's
    targets (see `variant_loss`). frozen_parameters (e.g. the avatar's) have requires_grad
    switched off during the fit and restored after, so no gradient reaches them. Works inside
    Lightning's test loop (inference mode and no_grad are lifted for the fit). view_axis [3]:
    the camera's viewing direction in the world (unit), needed by settings.hold_depth.
    """
    if init_pose.batch_size != 1:
        raise ValueError(f"fit_test_pose: one frame at a time, got a batch of "
                         f"{init_pose.batch_size}")
    if settings.hold_depth and view_axis is None:
        raise ValueError("fit_test_pose: settings.hold_depth needs the camera's view_axis")
    with torch.inference_mode(False), torch.enable_grad():
        frame = {key: _clone(value) for key, value in frame.items()}
        start = PoseParams(*(_clone(t) for t in (init_pose.full_pose, init_pose.expression,
                                                  init_pose.transl)))
        params = FrameParams(start).to(start.transl.device)
        start_body = params.body[0].detach().clone()  # [21, 6] for settings.pose_prior
        groups = params.parameter_groups()
        optimiser = torch.optim.Adam(
            [{"params": groups["frame_other"], "lr": settings.lr},
             {"params": groups["frame_hands"], "lr": settings.lr * settings.hand_lr_factor}],
            eps=settings.adam_eps)
        frame_id = torch.zeros(1, dtype=torch.long, device=start.transl.device)
        frozen = [p for p in frozen_parameters if p.requires_grad]
        for parameter in frozen:
            parameter.requires_grad_(False)
        try:
            for step in range(settings.steps):
                if step == settings.decay_step:
                    for group in optimiser.param_groups:
                        group["lr"] *= settings.decay_factor
                optimiser.zero_grad(set_to_none=True)
                loss = test_pose_loss(render_fn(params(frame_id)), frame, settings, lpips_fn)
                if settings.pose_prior:
                    loss = loss + settings.pose_prior * ((params.body[0] - start_body) ** 2).mean()
                loss.backward()
                grad = params.transl[0].grad
                if settings.hold_depth and grad is not None:
                    axis = view_axis.to(grad)
                    grad.sub_((grad @ axis) * axis)
                optimiser.step()
        finally:
            for parameter in frozen:
                parameter.requires_grad_(True)
        with torch.no_grad():
            fitted = params(frame_id)
    return PoseParams(fitted.full_pose.to(init_pose.full_pose.dtype),
                      fitted.expression.to(init_pose.expression.dtype),
                      fitted.transl.to(init_pose.transl.dtype))


fit_test_pose.__test__ = False  # not a pytest test function


__all__ = ["RenderFn", "TestPoseFitSettings", "fit_test_pose", "test_pose_loss", "variant_loss"]
