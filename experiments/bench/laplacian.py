"""The uniform Laplacian's two forms, timed: forward + backward of one regulariser-like term.

    .venv/bin/python experiments/bench/laplacian.py [--levels 0 1] [--repeats 30] [--out PATH]
        [--preset garment]

On the demo's open body (the body of `persona synth --preset PRESET`, default garment; tiny:
the procedural body, for the smoke test; `--levels` subdivision levels), the
sparse matrix of persona.ops.mesh.uniform_laplacian (the reference, what the template held before
2026-12-06) and the NeighbourLaplacian gathers of neighbour_laplacian (what it holds now) each
compute mean((L x)^2) for x [N, 3] and its gradient, alternately, --repeats times after a
warm-up; per level the median seconds of each and their ratio (reference / gathers, > 1: the
gathers are faster) are printed as JSON. Ratios compare across machines; seconds do not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

WARMUP = 5  # untimed repeats of each form first


def time_once(laplacian, values: torch.Tensor) -> float:
    from persona.ops.mesh import apply_laplacian

    leaf = values.clone().requires_grad_(True)
    start = time.perf_counter()
    residual = apply_laplacian(laplacian, leaf)
    (residual * residual).mean().backward()
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--preset", default="garment", help="persona synth preset of the body")
    args = parser.parse_args(argv)

    from persona.body.subdivide import subdivide
    from persona.data import synth
    from persona.ops.mesh import neighbour_laplacian, uniform_laplacian

    body = synth.load_synth_body(synth.preset_config(args.preset))
    vertices, faces = body.v_template.detach(), body.faces.long()
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(),
              "preset": args.preset, "repeats": args.repeats, "levels": []}
    generator = torch.Generator().manual_seed(0)
    for level in args.levels:
        level_vertices, level_faces = vertices, faces
        if level > 0:
            level_vertices, level_faces, _ = subdivide(vertices, faces, {}, level)
        count = level_vertices.shape[0]
        forms = {"sparse": uniform_laplacian(level_faces, count),
                 "gathers": neighbour_laplacian(level_faces, count)}
        values = torch.randn(count, 3, generator=generator)
        times: dict[str, list[float]] = {name: [] for name in forms}
        for repeat in range(WARMUP + args.repeats):
            for name, laplacian in forms.items():
                seconds = time_once(laplacian, values)
                if repeat >= WARMUP:
                    times[name].append(seconds)
        medians = {name: statistics.median(t) for name, t in times.items()}
        result["levels"].append({"level": level, "vertices": count,
                                 "median_s": {k: round(v, 6) for k, v in medians.items()},
                                 "sparse_over_gathers": round(medians["sparse"]
                                                              / medians["gathers"], 2)})
    if args.out is not None:
        from persona.atomic import atomic_write_json

        atomic_write_json(args.out, result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
