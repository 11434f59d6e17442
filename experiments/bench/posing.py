"""The body's posing transforms, two ways: aten operators, host synchronisations and CPU time.

    .venv/bin/python experiments/bench/posing.py [--preset garment] [--batch 1]
        [--repeats 50] [--out PATH]

On the body of `persona synth --preset PRESET` (default garment; tiny: the procedural body, for
the smoke test), `BodyModel.transforms_from_canonical` (big-pose points to a posed frame: what
every training step and animation frame calls) is run

- "depth": as the body does it, the pose and the big pose as one batch through
  persona.body.lbs.rigid_chain (one product per tree depth, 11 for SMPL-X);
- "joints": the reference, the pose and the big pose chained separately and joint by joint
  (persona.body.lbs.rigid_chain_reference: 54 products each), as before 2026-12-06 (the
  parents as a Python list: before, each call read them from the device, one more host
  synchronisation on a GPU; the input checks are today's in both).

For each: the aten operators of one call (all, and those launched at the top level, which is
what a GPU pays a kernel launch for, about), the host synchronisations
(`aten::_local_scalar_dense`: a GPU waits for its queue at each), the median CPU seconds over
--repeats calls, and the ratio joints / depth (> 1: the depth walk is faster). Ratios compare
across machines; seconds do not. The two forms are checked to agree first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

WARMUP = 5  # untimed calls of each form first
AGREEMENT_ATOL = 1e-5  # the two forms' transforms must agree to this (float32)


def reference_transforms(body, identity, pose):
    """transforms_from_canonical with the joint-by-joint chain, pose and big pose chained apart."""
    from persona.body.lbs import invert_rigid, rigid_chain_reference
    from persona.ops.rotations import axis_angle_to_matrix

    body.check_inputs(identity, pose)
    rest = body.rest_joints(identity, check=False)
    parents = body.parent_list

    def chained(full_pose: torch.Tensor) -> torch.Tensor:
        rotations = axis_angle_to_matrix(full_pose + body.pose_mean)
        joints = rest.expand(full_pose.shape[0], -1, -1)
        return rigid_chain_reference(rotations, joints, parents)[1]

    transforms = chained(pose.full_pose) @ invert_rigid(chained(body.big_pose()[None]))
    translation = torch.zeros_like(transforms)
    translation[..., :3, 3] = pose.transl[:, None, :]
    return transforms + translation


def profile_call(fn: Callable[[], torch.Tensor]) -> dict[str, int]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        fn()
    events = profile.events()
    return {"aten_ops": sum(e.name.startswith("aten::") for e in events),
            "top_level_ops": sum(e.cpu_parent is None for e in events),
            "host_syncs": sum(e.name == "aten::_local_scalar_dense" for e in events)}


def median_seconds(fn: Callable[[], torch.Tensor], repeats: int) -> float:
    times = []
    for repeat in range(WARMUP + repeats):
        start = time.perf_counter()
        fn()
        if repeat >= WARMUP:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="garment", help="persona synth preset of the body")
    parser.add_argument("--batch", type=int, default=1, help="poses per call")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from persona.body.types import Identity, PoseParams
    from persona.data import synth

    body = synth.load_synth_body(synth.preset_config(args.preset))
    generator = torch.Generator().manual_seed(0)
    identity = Identity(0.5 * torch.randn(body.num_betas, generator=generator))
    pose = PoseParams(0.3 * torch.randn(args.batch, 55, 3, generator=generator),
                      torch.zeros(args.batch, body.num_expression),
                      torch.randn(args.batch, 3, generator=generator))
    forms = {"depth": lambda: body.transforms_from_canonical(identity, pose),
             "joints": lambda: reference_transforms(body, identity, pose)}
    with torch.no_grad():
        error = float((forms["depth"]() - forms["joints"]()).abs().max())
        if error > AGREEMENT_ATOL:
            raise SystemExit(f"posing bench: the two forms differ by {error:.3g} "
                             f"(> {AGREEMENT_ATOL})")
        result = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                  "preset": args.preset, "batch": args.batch, "repeats": args.repeats,
                  "max_abs_difference": error, "forms": {}}
        for name, fn in forms.items():
            result["forms"][name] = {**profile_call(fn),
                                     "median_s": round(median_seconds(fn, args.repeats), 6)}
    forms_out = result["forms"]
    result["joints_over_depth"] = {
        "median_s": round(forms_out["joints"]["median_s"] / forms_out["depth"]["median_s"], 2),
        "top_level_ops": round(forms_out["joints"]["top_level_ops"]
                               / forms_out["depth"]["top_level_ops"], 2)}
    if args.out is not None:
        from persona.atomic import atomic_write_json

        atomic_write_json(args.out, result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
