"""Does the training loss prefer the true garment offsets? An oracle check on a trained run.

On the training frames of a synthetic subject where the true pose-dependent garment offset is
largest, the training step's loss terms are evaluated with the run's avatar and per-frame SMPL-X
and three choices of the deformer's output on the garment Gaussians (elsewhere it is the run's):

- learned: the run's deformer;
- oracle: static offset + deformer = the true garment offset in the frame's true pose;
- mean: static offset + deformer = the truth's mean over the training poses (pose-blind);
- none: static offset + deformer = 0 on the garment.

Printed as JSON: each choice's total loss and every weighted term, averaged over the frames. If the
oracle does not score a clearly lower loss than "mean", the losses give the deformer little
reason to learn the pose dependence (a modelling question); if it does, learning it is a
question of optimisation and budget.

`--path K` adds the loss along the straight line from the learned offsets to the oracle, at
K + 1 evenly spaced points (0 = learned, 1 = oracle): whether the way there is downhill.

    .venv/bin/python experiments/deformer_oracle.py RUN_DIR [--frames N] [--path K]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deformer_gradients import captured_terms, load_probe  # noqa: E402

CHOICES = ("learned", "oracle", "mean", "none")


def line_offsets(learned: Tensor, oracle: Tensor, fraction: float) -> Tensor:
    """The point `fraction` of the way along the straight line from learned to oracle [G, 3]."""
    return (1 - fraction) * learned + fraction * oracle


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--subject", type=Path, default=None)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--path", type=int, default=0, metavar="K",
                        help="also the loss at K + 1 points from learned (0) to oracle (1)")
    args = parser.parse_args(argv)
    from persona.avatar.deformer import DeformerOutput
    from persona.data.datamodule import collate_frames

    probe = load_probe(args.run_dir, args.subject)
    system, dataset, rows, garment = probe.system, probe.dataset, probe.rows, probe.garment
    truth, mean_truth, picks = probe.truth, probe.mean_truth, probe.picks
    static = system.avatar.mean_offset.detach()[rows]  # [G, 3]
    original = system.deformer.forward
    # the line's end points are "learned" and "oracle" themselves: only the inside is evaluated
    inside = [k / args.path for k in range(1, args.path)] if args.path > 0 else []
    choices: list[tuple[str, float | None]] = [(c, None) for c in CHOICES]
    choices += [(f"path_{f:g}", f) for f in inside]
    totals: dict[str, dict[str, float]] = {c: {} for c, _ in choices}
    for row, t in picks[:args.frames]:
        batch = collate_frames([dataset[row]])
        # what the deformer adds to the static offset for each choice [G, 3]
        target = {"oracle": truth[t][garment] - static, "mean": mean_truth[garment] - static,
                  "none": -static}
        for choice, fraction in choices:

            def forward(*a: Any, _choice: str = choice, _fraction: float | None = fraction,
                        _target: dict = target, **k: Any) -> DeformerOutput:
                out = original(*a, **k)
                if _choice == "learned":
                    return out
                offset: Tensor = out.mean_offset.detach().clone()
                offset[0, rows] = (_target[_choice] if _fraction is None else
                                   line_offsets(offset[0, rows], _target["oracle"], _fraction))
                return DeformerOutput(offset.requires_grad_(), out.scale_offset, out.rgb_offset)

            system.deformer.forward = forward
            try:
                with torch.no_grad():
                    terms, _ = captured_terms(system, batch)
            finally:
                system.deformer.forward = original
            entry = totals[choice]
            for name, (value, weight) in terms.items():
                entry[name] = entry.get(name, 0.0) + float(value) * float(weight) / args.frames
    if args.path > 0:  # in order along the line
        line = {c: totals.pop(c) for c, f in choices if f is not None}
        totals |= {"path_0": totals["learned"], **line, "path_1": totals["oracle"]}
    report = {}
    for choice, entry in totals.items():
        report[choice] = {"total": sum(entry.values()),
                          "terms": dict(sorted(entry.items(), key=lambda kv: -kv[1]))}
    print(json.dumps({"run": str(args.run_dir), "frames": args.frames, **report}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
