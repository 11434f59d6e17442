"""The training step's loss terms that combine several inputs: both variants' render-pass terms
(seams, image, geometry), the mesh-silhouette terms and the face-patch terms. Pure functions of
renders, the batch, weights and the posed body mesh (given as a function, so the mesh is posed
only when a term needs it); persona/system.py wires them. Term order is the order the step adds
them (the total loss sums in that order).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from persona.avatar.posing import VARIANTS, AvatarState
from persona.avatar.template import FACE_GAUSSIANS, AvatarTemplate
from persona.losses import terms as loss_terms
from persona.losses.table import LossWeights
from persona.render.types import Camera, Renderer

SEAM_TERM = {"base": "seam_distill", "refined": "seam_distill_refined"}  # variant -> its term
NEUTRAL_SEAM_WEIGHT = 1.0  # a seam pixel weight of 1 changes no image term

MeshVerticesFn = Callable[[], Tensor]  # () -> [V0, 3] the posed body mesh, no gradient


def seam_variants(weights: dict, loss_weights: LossWeights, is_input: bool) -> dict[str, bool]:
    """Per variant whether its seams are detected: only on the input image, and only when a
    term uses them (a seam pixel weight other than 1, or that variant's seam distillation)."""
    return {v: is_input and (loss_weights.seam_weight != NEUTRAL_SEAM_WEIGHT
                             or weights[SEAM_TERM[v]] > 0) for v in VARIANTS}


def render_pass_terms(renders: dict[str, dict], batch: dict, weights: dict,
                      loss_weights: LossWeights, is_input: bool, seams_for: dict[str, bool],
                      loss_map: loss_terms.LossMapFn) -> loss_terms.Terms:
    """Per variant (base, refined): its seam distillation, image and geometry terms. A variant
    with seams gets renders[variant]["seams"] [H, W] bool (set here; the views show it)."""
    image = batch["image"][0]  # [H, W, 3]
    terms: loss_terms.Terms = {}
    for variant in VARIANTS:
        r = renders[variant]
        seam_map = None
        if seams_for[variant]:
            r["seams"], seam_map = loss_terms.seams_and_pixel_weights(r, loss_weights, is_input,
                                                                      image.dtype)
            terms.update(loss_terms.seam_distill_terms(
                r, image, r["seams"], SEAM_TERM[variant], weights[SEAM_TERM[variant]],
                loss_map))
        terms.update(loss_terms.image_terms(r, batch, variant, weights, seam_map, loss_map))
        terms.update(loss_terms.geometry_terms(
            r, batch, variant, weights, bool(loss_weights.geometry_mean_over_valid),
            (loss_weights.coarse_sigma, int(loss_weights.coarse_levels))))
    return terms


def mesh_silhouette_terms(render: dict, mesh_vertices: MeshVerticesFn, body_faces: Tensor,
                          face_labels: Tensor, region_faces: dict[str, Tensor], camera: Camera,
                          weights: dict, occlusion: bool) -> loss_terms.Terms:
    """Gaussian hand/eye masks of a render vs the posed mesh's hand/eye silhouettes (targets
    only), z-buffered against the whole mesh (face_labels [F]) when `occlusion`."""
    wanted = loss_terms.silhouette_weights(weights)
    if not wanted:
        return {}
    targets = loss_terms.silhouette_targets(mesh_vertices(), body_faces, face_labels,
                                            region_faces, camera, list(wanted), occlusion)
    return loss_terms.silhouette_terms(render, targets, wanted)


def face_patch_step_terms(state: AvatarState, batch: dict, camera: Camera, weights: dict,
                          loss_weights: LossWeights, template: AvatarTemplate,
                          mesh_vertices: MeshVerticesFn, body_faces: Tensor,
                          rgb_init: Tensor | None, renderer: Renderer,
                          loss_map: loss_terms.LossMapFn) -> loss_terms.Terms:
    """The face patch of the input image at native resolution: the authors' terms, or with
    losses.face_patch_whole_avatar ours (whole avatar, base and refined)."""
    lw = loss_weights
    face = template.region_masks[FACE_GAUSSIANS]  # [N] bool
    if lw.face_patch_whole_avatar:
        if weights["face_patch_base"] <= 0 and weights["face_patch_refined"] <= 0:
            return {}
        return loss_terms.face_patch_terms(state, batch, camera, weights, lw, face, renderer,
                                           loss_map)
    from persona.losses.face_terms import authors_face_patch_terms, face_silhouettes

    v0 = template.num_original_vertices
    body_masks = {k: m[:v0] for k, m in template.region_masks.items()}  # [V0] bool each

    def mesh_face(patch_camera: Camera) -> tuple[Tensor, Tensor]:
        return face_silhouettes(mesh_vertices(), body_faces, body_masks, patch_camera)

    return authors_face_patch_terms(state, batch, camera, weights, lw, face, rgb_init,
                                    renderer, loss_map, mesh_face)


def nonfinite_report(terms: loss_terms.Terms, batch: dict, count: int, limit: int
                     ) -> tuple[bool, str]:
    """(stop, message) after `count` steps with a non-finite loss: stop once past `limit`."""
    bad = loss_terms.nonfinite_terms(terms)
    where = f"frame {batch['split'][0]}/{int(batch['index'][0])}"
    if count > limit:
        return True, (f"{count} training steps had a non-finite loss (last: terms {bad} at "
                      f"{where}); stopping. Lower the learning rates (model.optim.*) or check "
                      "the subject with `persona subject check`.")
    return False, (f"PersonaSystem: skipped a training step with a non-finite loss (terms "
                   f"{bad} at {where}; {count} of at most {limit}).")
