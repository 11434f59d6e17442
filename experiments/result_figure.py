"""A figure of a trained avatar on its held-out test split: ground truth (top) over the render
(bottom) for a few test frames, both on white. Used for the README picture.

    .venv/bin/python experiments/result_figure.py --ckpt runs/demo/fit/checkpoints/last.ckpt \
        --out docs/images/demo_result.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

FRAMES_DEFAULT = (0, 3, 6, 8, 9, 11)  # test rows: held-out motion frames, then novel views


def result_grid(ckpt: Path, rows: tuple[int, ...]) -> np.ndarray:
    """uint8 [2 H, len(rows) W, 3]: ground truth on white over the refined render on white."""
    from persona.data.datamodule import collate_frames
    from persona.runs import load_trained_system

    system, dm = load_trained_system(ckpt)
    dataset = dm.test_dataset()
    columns = []
    with torch.no_grad():
        for row in rows:
            if row >= len(dataset):
                continue
            batch = collate_frames([dataset[row]])
            mask = batch["mask"][0]
            target = batch["image"][0] * mask + (1 - mask)
            render = system.render_eval(batch)["rgb_on_background"]
            columns.append(torch.cat([target, render], dim=0))  # [2H, W, 3]
    grid = torch.cat(columns, dim=1).clamp(0, 1)
    return (grid.numpy() * 255 + 0.5).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", type=int, nargs="+", default=list(FRAMES_DEFAULT))
    args = parser.parse_args(argv)
    from persona.atomic import atomic_write

    grid = result_grid(Path(args.ckpt), tuple(args.rows))
    out = atomic_write(Path(args.out), lambda temporary: Image.fromarray(grid).save(
        temporary, format="PNG"))
    print(f"wrote {out} ({grid.shape[1]}x{grid.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
