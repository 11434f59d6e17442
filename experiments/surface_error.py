"""How far the garment Gaussians are from the true garment's surface, not from their own true
positions: the world error of persona test split along the true surface normal and across it.

metrics.json's ``world_error_mm`` compares each avatar Gaussian with the same Gaussian of the
truth. A Gaussian that slides along the surface inside a patch of one colour is wrong there but
invisible to every image and mask loss. This splits, per garment part, in the test and the
training poses, the displacement d = X - P of the avatar's posed Gaussian X from its true posed
position P into its component along the true posed vertex normal n_P (``normal_mm``: mean
|d . n_P|) and the rest (``tangential_mm``), and measures ``surface_mm``: the distance from X to
the true posed surface (point to plane of the nearest true posed vertex, any of the body's). For
X: the avatar (``avatar``: refined means, as world_error_mm), the avatar without its deformer
(``static_only``: base means) and the true body without the garment (``zero_offset``).

    .venv/bin/python experiments/surface_error.py RUN_DIR [--poses 20]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deformer_diagnostics import load_with_truth, parse_run_and_poses  # noqa: E402

from persona.metrics.deformation import MM_PER_M, model_posed, stack_poses, synth_config  # noqa: E402
from persona.ops.mesh import vertex_normals  # noqa: E402

NEAREST_CHUNK = 512  # avatar Gaussians per distance block of the nearest-vertex search


def split_displacement(x: Tensor, p: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
    """(|normal component|, |tangential component|) of d = x - p along unit normals n, each
    [..., G] from x, p, n [..., G, 3]."""
    d = x - p
    along = (d * n).sum(-1, keepdim=True)
    return along.squeeze(-1).abs(), (d - along * n).norm(dim=-1)


def point_to_surface(x: Tensor, surface: Tensor, normals: Tensor) -> Tensor:
    """Distance [G] from points x [G, 3] to the plane of their nearest surface vertex
    (surface [V, 3] with unit normals [V, 3])."""
    out = []
    for chunk in x.split(NEAREST_CHUNK):
        nearest = torch.cdist(chunk, surface).argmin(dim=1)  # [g]
        out.append(((chunk - surface[nearest]) * normals[nearest]).sum(-1).abs())
    return torch.cat(out)


def surface_report(candidates: dict[str, Tensor], true_posed: Tensor, true_normals: Tensor,
                   surface: Tensor, surface_normals: Tensor, regions: dict[str, Tensor]
                   ) -> dict[str, dict[str, dict[str, float]]]:
    """candidates: name -> posed garment Gaussians [T, M, 3]; true_posed [T, M, 3] and
    true_normals [T, M, 3] the same Gaussians of the truth; surface, surface_normals [T, V, 3]
    the whole true posed body; regions: name -> mask [M]. Returns region -> candidate ->
    {world_mm, normal_mm, tangential_mm, surface_mm}. Each distance is computed once per
    candidate over all M Gaussians; the regions (which overlap: garment = its parts) only
    average it."""
    per_candidate = {}
    for label, x in candidates.items():
        normal, tangential = split_displacement(x, true_posed, true_normals)  # [T, M] each
        per_candidate[label] = {
            "world_mm": (x - true_posed).norm(dim=-1), "normal_mm": normal,
            "tangential_mm": tangential,
            "surface_mm": torch.stack([point_to_surface(x[t], surface[t], surface_normals[t])
                                       for t in range(x.shape[0])])}  # [T, M]
    report: dict[str, dict[str, dict[str, float]]] = {}
    for name, mask in regions.items():
        report[name] = {label: {key: float(values[:, mask].mean()) * MM_PER_M
                                for key, values in distances.items()}
                        for label, distances in per_candidate.items()}
    return report


def main(argv: list[str]) -> int:
    args = parse_run_and_poses(argv, __doc__.splitlines()[0])
    from persona.data import synth

    loaded = load_with_truth(args.run_dir, max_poses=args.poses)
    run, system, truth, index = loaded.run, loaded.system, loaded.truth, loaded.index
    config = synth_config(loaded.subject)
    body = synth.load_synth_body(config)
    avatar = synth.build_avatar(body, synth.subject_identity(body, config.seed), config)
    garment = truth.garment
    out = {"run": str(run), "poses": args.poses, "sets": {}}
    with torch.no_grad():
        for pose_set in ("test", "train"):
            chosen = truth.poses[pose_set]
            surface = synth.posed_means(body, avatar, stack_poses(chosen),
                                        config.garment).float()  # [T, N, 3]
            normals = vertex_normals(surface, avatar.faces)  # [T, N, 3]
            _, refined, base = model_posed(system, chosen, index)
            candidates = {"avatar": refined, "static_only": base,
                          "zero_offset": truth.bare[pose_set]}
            out["sets"][pose_set] = surface_report(
                candidates, surface[:, garment], normals[:, garment], surface, normals,
                truth.regions)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
