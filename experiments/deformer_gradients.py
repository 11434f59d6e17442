"""Which loss terms move the pose deformer towards the true garment offsets, and which away.

For a trained (or step-0) run on a synthetic subject, on generated frames of the training set:
each loss term's gradient with respect to the deformer's output (the pose-dependent canonical
offset of every Gaussian) is compared with the direction the deformer should move, the true
pose-dependent offset (truth in the frame's true pose minus its mean over the training poses)
minus what the deformer predicts now, over the garment Gaussians. Also for the static offset
(avatar.mean_offset) against (truth's training mean - static offset). Printed as JSON per term:

- norm: |gradient| over the garment Gaussians (the term's pull, weight included);
- along: -gradient . unit(wanted) (> 0: the term pushes towards the truth; its share of the sum
  of |along| is `share`);
- cosine: cos(-gradient, wanted).

    .venv/bin/python experiments/deformer_gradients.py RUN_DIR [--frames N]

`--parameters` asks the same in the deformer's parameter space (triplane and MLP), where a fit
actually moves: per frame, the descent direction of the training loss is compared with the
descent direction of a 3D loss, 1/2 |deformer output - (truth in the frame's true pose - static
offset)|^2 over the garment Gaussians (what 3D supervision would teach the deformer given the
run's static offset). Printed: the cosine of the two directions summed over the frames (what a
full-batch step follows), their mean cosine frame by frame (what a one-frame step follows), the
coherence |sum of the loss directions| / sum of their norms (1: every frame agrees), and each
term's summed direction against the summed 3D one. `--frames 0` takes every generated frame.

    .venv/bin/python experiments/deformer_gradients.py RUN_DIR --parameters [--frames 0]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deformer_diagnostics as diag  # noqa: E402  (run and subject loading, truth)


def captured_terms(system: Any, batch: dict) -> tuple[dict, Tensor]:
    """(terms {name: (value, weight)}, the deformer's output [1, N, 3]) of one training step."""
    from persona.losses import terms as loss_terms

    captured: dict[str, Any] = {}
    original_total = loss_terms.total_loss
    original_forward = system.deformer.forward

    def total(terms: dict) -> Tensor:
        captured["terms"] = terms
        return original_total(terms)

    def forward(*args: Any, **kwargs: Any) -> Any:
        out = original_forward(*args, **kwargs)
        captured["offsets"] = out.mean_offset
        return out

    loss_terms.total_loss = total
    system.deformer.forward = forward
    system.log = lambda *a, **k: None
    try:
        system.training_step(batch, 0)
    finally:
        loss_terms.total_loss = original_total
        system.deformer.forward = original_forward
    return captured["terms"], captured["offsets"]


def term_report(terms: dict, target: Tensor, wanted: Tensor, rows: Tensor) -> dict[str, Any]:
    """Per term: gradient wrt ``target`` restricted to ``rows``, against ``wanted`` [M, 3]."""
    unit = wanted / wanted.norm().clamp(min=1e-12)
    report = {}
    for name, (value, weight) in terms.items():
        if weight == 0 or not value.requires_grad:
            continue
        grad, = torch.autograd.grad(value * weight, target, retain_graph=True,
                                    allow_unused=True)
        if grad is None:
            continue
        g = grad.reshape(-1, 3)[rows]  # [M, 3]
        norm = float(g.norm())
        if norm == 0:
            continue
        report[name] = {"norm": norm, "along": float(-(g * unit).sum()),
                        "cosine": float(-(g * wanted).sum() / (norm * wanted.norm()))}
    total = sum(abs(r["along"]) for r in report.values()) or 1.0
    for r in report.values():
        r["share"] = r["along"] / total
    return dict(sorted(report.items(), key=lambda kv: -abs(kv[1]["along"])))


class Probe(NamedTuple):
    """A trained run on a synthetic subject, with the truth its probes compare against."""

    system: Any  # PersonaSystem in train mode
    dataset: Any  # the training frames
    truth: Tensor  # [T, N, 3] true garment offsets in the T true training poses
    mean_truth: Tensor  # [N, 3] their mean over the poses
    garment: Tensor  # [N] bool: the true garment Gaussians
    rows: Tensor  # [G] the avatar rows of the garment Gaussians
    picks: list[tuple[int, int]]  # (dataset row, pose t), largest pose-dependent truth first
    subject: Path  # the subject folder


def load_probe(run_dir: Path, subject: Path | None) -> Probe:
    """Load the run, rebuild the truth, and rank its generated frames by the mean magnitude of
    the true pose-dependent offset over the garment."""
    from persona.data import synth

    loaded = diag.load_synth_run(run_dir, subject)
    system, config, body = loaded.system, loaded.config, loaded.body
    system.train()
    truth_avatar = synth.build_avatar(body, loaded.identity, config)
    train_poses, lengths = diag.true_training_poses(body, loaded.identity, config)
    with torch.no_grad():
        truth = synth.garment_offsets(body, truth_avatar, train_poses, config.garment)
    mean_truth = truth.mean(0)  # [N, 3]
    garment = synth.garment_regions(truth_avatar)["garment"]
    index, _ = diag.match_gaussians(diag.avatar_canonical(system).detach(), truth_avatar.canonical)
    dataset = loaded.dm.train_dataset()
    # (generated row, its pose's index in true_training_poses)
    picks = list(zip(diag.generated_rows(dataset.frames, lengths), range(sum(lengths)),
                     strict=True))
    magnitude = (truth - mean_truth)[:, garment].norm(dim=-1).mean(-1)  # [T]
    picks.sort(key=lambda p: -float(magnitude[p[1]]))
    return Probe(system, dataset, truth, mean_truth, garment, index[garment], picks,
                 loaded.subject)


def flat_grad(value: Tensor, params: list[Tensor]) -> Tensor:
    """d value / d params, flattened into one vector (zeros for an unused parameter)."""
    grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                      for g, p in zip(grads, params, strict=True)])


def coherence(dirs: Tensor) -> float:
    """dirs [F, P]: |sum of the directions| / sum of their norms (1: every frame agrees)."""
    return float(dirs.sum(0).norm() / dirs.norm(dim=1).sum().clamp(min=1e-30))


def direction_summary(loss_dirs: Tensor, truth_dirs: Tensor) -> dict[str, float]:
    """loss_dirs, truth_dirs [F, P]: per-frame descent directions of the training loss and of
    the 3D loss. -> cosine of their sums, mean per-frame cosine, coherence of the loss's."""
    cos = torch.nn.functional.cosine_similarity
    return {"cosine_summed": float(cos(loss_dirs.sum(0), truth_dirs.sum(0), dim=0)),
            "cosine_per_frame_mean": float(cos(loss_dirs, truth_dirs, dim=1).mean()),
            "coherence": coherence(loss_dirs)}


def loss_3d(offsets: Tensor, target: Tensor) -> Tensor:
    """1/2 |offsets - target|^2 summed: the 3D loss whose descent `--parameters` compares."""
    return 0.5 * ((offsets - target) ** 2).sum()


def frame_directions(probe: Probe, pick: tuple[int, int], params: list[Tensor]
                     ) -> tuple[dict[str, Tensor], Tensor, float]:
    """One generated frame (dataset row, pose t): the descent direction [P] in `params` of each
    weighted loss term that reaches them, and of the 3D loss towards (truth in the frame's true
    pose - the run's static offset) over the garment Gaussians. The training loss's direction
    is the sum of the terms' (total_loss is their weighted sum). Also the 3D loss's value."""
    from persona.data.datamodule import collate_frames

    row, t = pick
    terms, offsets = captured_terms(probe.system, collate_frames([probe.dataset[row]]))
    static = probe.system.avatar.mean_offset.detach()[probe.rows]  # [G, 3]
    target = probe.truth[t][probe.garment] - static  # [G, 3] what the deformer should add
    truth_loss = loss_3d(offsets[0, probe.rows], target)
    truth_dir = -flat_grad(truth_loss, params)
    term_dirs = {name: -flat_grad(value * weight, params)
                 for name, (value, weight) in terms.items()
                 if float(weight) != 0 and value.requires_grad}
    return term_dirs, truth_dir, float(truth_loss)


def parameter_report(probe: Probe, frames: int) -> dict[str, Any]:
    """The module docstring's `--parameters` report over the first `frames` picks."""
    params = [p for p in probe.system.deformer.parameters() if p.requires_grad]
    loss_dirs, truth_dirs, per_term = [], [], {}
    for pick in probe.picks[:frames]:
        term_dirs, truth_dir, _ = frame_directions(probe, pick, params)
        loss_dirs.append(sum(term_dirs.values(), torch.zeros_like(truth_dir)))
        truth_dirs.append(truth_dir)
        for name, direction in term_dirs.items():
            per_term[name] = per_term.get(name, 0.0) + direction
    loss_stack, truth_stack = torch.stack(loss_dirs), torch.stack(truth_dirs)
    truth_sum = truth_stack.sum(0)
    cos = torch.nn.functional.cosine_similarity
    terms_out = {name: {"norm": float(d.norm()), "cosine": float(cos(d, truth_sum, dim=0))}
                 for name, d in per_term.items() if float(d.norm()) > 0}
    return {"frames": frames, **direction_summary(loss_stack, truth_stack),
            "truth_coherence": coherence(truth_stack),
            "terms": dict(sorted(terms_out.items(), key=lambda kv: -kv[1]["norm"]))}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--subject", type=Path, default=None)
    parser.add_argument("--frames", type=int, default=6,
                        help="generated frames to average, largest true pose part first "
                             "(0 = all)")
    parser.add_argument("--parameters", action="store_true",
                        help="compare the directions in the deformer's parameter space")
    args = parser.parse_args(argv)
    from persona.data.datamodule import collate_frames

    probe = load_probe(args.run_dir, args.subject)
    if args.frames <= 0:
        args.frames = len(probe.picks)
    if args.parameters:
        result = parameter_report(probe, args.frames)
        print(json.dumps({"run": str(args.run_dir), **result}, indent=1))
        return 0
    system, dataset, rows, garment = probe.system, probe.dataset, probe.rows, probe.garment
    train_truth, mean_truth = probe.truth, probe.mean_truth
    picks = probe.picks
    totals: dict[str, dict[str, float]] = {"deformer": {}, "static": {}}
    for row, t in picks[:args.frames]:
        batch = collate_frames([dataset[row]])
        terms, offsets = captured_terms(system, batch)
        wanted_deformer = (train_truth[t] - mean_truth)[garment] - offsets[0, rows].detach()
        static = system.avatar.mean_offset
        wanted_static = mean_truth[garment] - static[rows].detach()
        for key, target, wanted in (("deformer", offsets, wanted_deformer),
                                    ("static", static, wanted_static)):
            for name, r in term_report(terms, target, wanted, rows).items():
                entry = totals[key].setdefault(name, {"along": 0.0, "norm": 0.0, "cosine": 0.0})
                for field in entry:
                    entry[field] += r[field] / args.frames
    for key in totals:
        total = sum(abs(v["along"]) for v in totals[key].values()) or 1.0
        for v in totals[key].values():
            v["share"] = v["along"] / total
        totals[key] = dict(sorted(totals[key].items(), key=lambda kv: -abs(kv[1]["along"])))
    print(json.dumps({"run": str(args.run_dir), "frames": args.frames, **totals}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
