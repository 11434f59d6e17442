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
    static = system.avatar.mean_offset.detach()
    original = system.deformer.forward
    fractions = [k / args.path for k in range(args.path + 1)] if args.path > 0 else []
    choices = [*CHOICES, *(f"path_{f:g}" for f in fractions)]
    totals: dict[str, dict[str, float]] = {c: {} for c in choices}
    for row, t in picks[:args.frames]:
        batch = collate_frames([dataset[row]])
        wanted = {"oracle": truth[t][garment], "mean": mean_truth[garment],
                  "none": torch.zeros_like(mean_truth[garment])}
        for choice in choices:
            fraction = float(choice.removeprefix("path_")) if choice.startswith("path_") else None

            def forward(*a: Any, _choice: str = choice, _wanted: dict = wanted,
                        _fraction: float | None = fraction, **k: Any) -> DeformerOutput:
                out = original(*a, **k)
                if _choice == "learned":
                    return out
                offset: Tensor = out.mean_offset.detach().clone()
                oracle = _wanted["oracle"] - static[rows]
                if _fraction is None:
                    offset[0, rows] = _wanted[_choice] - static[rows]
                else:  # the straight line from the learned offsets to the oracle's
                    offset[0, rows] = (1 - _fraction) * offset[0, rows] + _fraction * oracle
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
    report = {}
    for choice, entry in totals.items():
        report[choice] = {"total": sum(entry.values()),
                          "terms": dict(sorted(entry.items(), key=lambda kv: -kv[1]))}
    print(json.dumps({"run": str(args.run_dir), "frames": args.frames, **report}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
