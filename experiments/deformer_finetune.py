"""Can the training losses teach the pose deformer the garment when nothing else can move?

Issue 12's fits never learn the skirt's pose dependence, and the static offset, colours and
per-frame SMPL-X are trained jointly with the deformer, so they may absorb what the deformer
should explain. This separates the two: a trained run on a synthetic subject is loaded, every
parameter but the deformer's is frozen (avatar, per-frame SMPL-X), optionally the static offset
of the garment Gaussians is set to the truth's training mean (`--static truth`) and the
deformer's output layer to zero (`--reset`), and the deformer alone is trained for `--steps`
Adam steps on the generated frames with the run's own training loss (or only the terms named in
`--terms`). Every `--every` steps (and at the end) the deformation metrics of `persona test`
(persona/metrics/deformation.py) are recorded on the test and training poses.

If the deformer learns the pose dependence here (its correlation with the pose-dependent truth
rises, its world error in the held-out poses falls below the static-only one), the joint
optimisation is what hides it in a fit; if it does not, the losses do not carry the signal.

`--per-frame N` asks the same of a single frame with no deformer at all: on each of the N
generated frames with the largest true pose-dependent offset, a free canonical offset per garment
Gaussian (in place of the deformer's output, starting at 0, static offset as chosen) is optimised
on that frame alone for `--steps` steps, with Adam at `--lr` (the per-coordinate step the fits
use) or `--optimiser normalised` (gradient descent whose largest per-Gaussian step is `--lr`
metres). Recorded every `--every` steps: its mean distance (mm) to the truth's pose-dependent
offset in that frame and its cosine with it.

    .venv/bin/python experiments/deformer_finetune.py RUN_DIR [--static truth] [--reset]
        [--steps 200] [--every 50] [--terms image_refined,mask_refined] [--lr-scale 1]
        [--out curve.json]
    .venv/bin/python experiments/deformer_finetune.py RUN_DIR --static truth --per-frame 3
        [--optimiser adam|normalised] [--lr 1e-3] [--steps 150] [--terms ...]

Prints (and writes to --out; rewritten after every evaluation with "complete": false until the
last, so a run stopped early keeps its curve) JSON: the settings and, per evaluation step, the
garment, skirt and sleeve sections' world_error_mm / world_static_only_error_mm /
world_zero_offset_error_mm (test poses), their train_* counterparts and the deformer
correlation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deformer_diagnostics import write_result  # noqa: E402
from deformer_gradients import load_probe  # noqa: E402

from persona.atomic import atomic_write_json  # noqa: E402

MASK_THRESHOLD = 0.5  # the own render's alpha above this is the target mask
REPORT_KEYS = ("world_error_mm", "world_static_only_error_mm", "world_zero_offset_error_mm",
               "total_error_mm", "deformer_error_mm", "deformer_zero_error_mm",
               "deformer_correlation")


def test_poses(subject: Path, num_expression: int) -> list:
    """The poses of the subject's test split (batch 1 each)."""
    from persona.data.subject import read_frame_records

    return [r.pose for r in read_frame_records(subject, ["test"], num_expression)]


def compact(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The sections of a deformation report, restricted to REPORT_KEYS, rounded."""
    return {section: {k: round(float(v[k]), 3) for k in REPORT_KEYS if k in v}
            for section, v in report.items() if isinstance(v, dict)}


def freeze_all_but_deformer(system: Any) -> list[torch.nn.Parameter]:
    """requires_grad False on every parameter outside system.deformer; its parameters."""
    for p in system.parameters():
        p.requires_grad_(False)
    params = list(system.deformer.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--subject", type=Path, default=None)
    parser.add_argument("--static", choices=("learned", "truth", "zero"), default="learned",
                        help="static offset of the garment Gaussians: the run's, the truth's "
                             "training mean, or 0")
    parser.add_argument("--reset", action="store_true", help="zero the deformer's output layer")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--terms", default="", help="comma-separated terms to keep (default all)")
    parser.add_argument("--lr-scale", type=float, default=1.0,
                        help="x the run's triplane / MLP learning rates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-frames", type=int, default=1, metavar="K",
                        help="generated frames whose gradients each step sums (0 = all of them)")
    parser.add_argument("--per-frame", type=int, default=0, metavar="N",
                        help="free per-frame offsets on the N frames with the largest truth")
    parser.add_argument("--optimiser", choices=("adam", "normalised"), default="adam")
    parser.add_argument("--lr", type=float, default=1e-3, help="--per-frame step size")
    parser.add_argument("--own-render", action="store_true",
                        help="--per-frame: fit the avatar's own render with the true offsets "
                             "(image and mask) instead of the frame")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    from persona.data.datamodule import collate_frames
    from persona.losses import terms as loss_terms
    from persona.metrics import deformation as D

    probe = load_probe(args.run_dir, args.subject)
    system, dataset = probe.system, probe.dataset
    subject = probe.subject
    truth = D.build_truth(subject, test_poses(subject, system.body.num_expression),
                          max_poses=24)
    matched = D.match_system(system, truth)
    with torch.no_grad():
        if args.static != "learned":
            target = probe.mean_truth[probe.garment] if args.static == "truth" else 0.0
            system.avatar.mean_offset[probe.rows] = target
        if args.reset:
            system.deformer.output_layer.weight.zero_()
            system.deformer.output_layer.bias.zero_()
    params = freeze_all_but_deformer(system)
    keep = {t for t in args.terms.split(",") if t}
    if args.per_frame:
        for p in params:
            p.requires_grad_(False)
        frames = per_frame_fits(probe, keep, args.per_frame, args.steps, args.every,
                                args.optimiser, args.lr, system.optim_cfg.adam_eps,
                                args.own_render)
        return write_result({"run": str(args.run_dir), "static": args.static,
                             "per_frame": frames, "optimiser": args.optimiser, "lr": args.lr,
                             "own_render": args.own_render,
                             "steps": args.steps, "terms": sorted(keep) or "all"}, args.out)
    lr = system.optim_cfg.mlp * args.lr_scale
    optimiser = torch.optim.Adam(params, lr=lr, eps=system.optim_cfg.adam_eps)
    original_total = loss_terms.total_loss
    total = kept_total(keep, original_total)

    generated = [row for row, rec in enumerate(dataset.frames) if not rec.is_input]
    generator = torch.Generator().manual_seed(args.seed)
    system.log = lambda *a, **k: None
    curve = []

    settings = {"run": str(args.run_dir), "static": args.static, "reset": args.reset,
                "steps": args.steps, "terms": sorted(keep) or "all", "lr": lr,
                "batch_frames": args.batch_frames}

    def evaluate(step: int) -> None:
        system.eval()
        entry = {"step": step, **compact(D.deformation_report(system, truth, matched))}
        system.train()
        curve.append(entry)
        if args.out is not None and step < args.steps:  # a stopped run keeps its curve so far
            atomic_write_json(args.out, {**settings, "complete": False, "curve": curve})
        g, tg = entry.get("garment", {}), entry.get("train_garment", {})
        print(f"step {step}: garment world test {g.get('world_error_mm')} "
              f"(static-only {g.get('world_static_only_error_mm')}, zero "
              f"{g.get('world_zero_offset_error_mm')}), train {tg.get('world_error_mm')}, "
              f"corr test {g.get('deformer_correlation')} train "
              f"{tg.get('deformer_correlation')}", file=sys.stderr, flush=True)

    evaluate(0)
    loss_terms.total_loss = total
    try:
        for step in range(1, args.steps + 1):
            optimiser.zero_grad(set_to_none=True)
            for row in draw_rows(generated, args.batch_frames, generator):
                system.training_step(collate_frames([dataset[row]]), step).backward()
            optimiser.step()
            if step % args.every == 0 or step == args.steps:
                loss_terms.total_loss = original_total
                evaluate(step)
                loss_terms.total_loss = total
    finally:
        loss_terms.total_loss = original_total
    return write_result({**settings, "complete": True, "curve": curve}, args.out)


def draw_rows(rows: list[int], count: int, generator: torch.Generator) -> list[int]:
    """`count` of `rows` drawn without replacement (all of them when count is 0 or more)."""
    if count <= 0 or count >= len(rows):
        return list(rows)
    if count == 1:  # the draw of the single-frame runs in docs/ABLATIONS.md
        return [rows[int(torch.randint(len(rows), (1,), generator=generator))]]
    return [rows[int(i)] for i in torch.randperm(len(rows), generator=generator)[:count]]


def kept_total(keep: set[str], original: Any) -> Any:
    """total_loss over only the terms in `keep` (all when empty)."""
    def total(terms: dict) -> torch.Tensor:
        return original({k: v for k, v in terms.items() if not keep or k in keep})
    return total


def self_target(system: Any, batch: dict, forward: Any) -> dict:
    """The batch with its image and mask replaced by the system's own refined render when the
    deformer's forward is `forward` (composited over the image as the image loss does)."""
    original = system.deformer.forward
    system.deformer.forward = forward
    try:
        with torch.no_grad():
            system.training_step(batch, 0)
    finally:
        system.deformer.forward = original
    visuals = system.last_visuals
    return {**batch, "image": visuals["render"][None].clone(),
            "mask": (visuals["alpha"] > MASK_THRESHOLD).to(batch["mask"].dtype)[None]}


def offsets_forward(original: Any, rows: torch.Tensor, values: torch.Tensor) -> Any:
    """A deformer forward whose mean offsets are `values` [G, 3] on the Gaussians `rows` [G]
    and 0 elsewhere (scale and colour offsets as `original` gives them)."""
    from persona.avatar.deformer import DeformerOutput

    def forward(*args: Any, **kwargs: Any) -> DeformerOutput:
        out = original(*args, **kwargs)
        offset = torch.zeros_like(out.mean_offset).index_put(
            (torch.zeros_like(rows), rows), values)  # [1, N, 3]
        return DeformerOutput(offset, out.scale_offset, out.rgb_offset)

    return forward


def per_frame_fits(probe: Any, keep: set[str], frames: int, steps: int, every: int,
                   optimiser: str, lr: float, eps: float, own_render: bool = False
                   ) -> list[dict[str, Any]]:
    """Free offsets of the garment Gaussians fitted to single frames (the module docstring);
    own_render: to the avatar's own render with the true offsets instead of the frame."""
    from persona.data.datamodule import collate_frames
    from persona.losses import terms as loss_terms

    system, rows, garment = probe.system, probe.rows, probe.garment
    system.log = lambda *a, **k: None
    original_forward, original_total = system.deformer.forward, loss_terms.total_loss
    results = []
    for row, t in probe.picks[:frames]:
        wanted = (probe.truth[t] - probe.mean_truth)[garment]  # [G, 3] the pose part
        free = torch.zeros_like(wanted, requires_grad=True)
        adam = torch.optim.Adam([free], lr=lr, eps=eps) if optimiser == "adam" else None

        forward = offsets_forward(original_forward, rows, free)
        true_forward = offsets_forward(original_forward, rows, wanted)

        batch = collate_frames([probe.dataset[row]])
        if own_render:
            batch = self_target(system, batch, true_forward)
        trace = []
        loss_terms.total_loss = kept_total(keep, original_total)
        try:
            system.deformer.forward = true_forward
            with torch.no_grad():
                true_loss = float(system.training_step(batch, 0))
            system.deformer.forward = forward
            for step in range(steps + 1):
                loss = system.training_step(batch, 0)
                if step % every == 0 or step == steps:
                    with torch.no_grad():
                        trace.append({"step": step, "error_mm": mean_mm_of(free - wanted),
                                      "cosine": float(torch.nn.functional.cosine_similarity(
                                          free.flatten(), wanted.flatten(), dim=0)),
                                      "offset_mm": mean_mm_of(free), "loss": float(loss)})
                if step == steps:
                    break
                free.grad = None
                loss.backward()
                if adam is not None:
                    adam.step()
                else:
                    with torch.no_grad():
                        largest = free.grad.norm(dim=-1).max().clamp(min=1e-30)
                        free -= lr * free.grad / largest
        finally:
            system.deformer.forward = original_forward
            loss_terms.total_loss = original_total
        results.append({"row": row, "pose": t, "truth_pose_part_mm": mean_mm_of(wanted),
                        "loss_at_truth": true_loss, "trace": trace})
        print(f"frame {row}: truth pose part {mean_mm_of(wanted):.2f} mm, loss at the truth "
              f"{true_loss:.5f} -> " + ", ".join(
                  f"{e['step']}: {e['error_mm']:.2f} mm (cos {e['cosine']:+.3f}, loss "
                  f"{e['loss']:.5f})" for e in trace), file=sys.stderr, flush=True)
    return results


def mean_mm_of(vectors: torch.Tensor) -> float:
    from persona.metrics.deformation import mean_mm

    return mean_mm(vectors.detach())


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
