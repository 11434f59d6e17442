"""`persona body check|build|show`: check a SMPL-X folder against smplx, build (and cache) the
open body with its skinning volume, draw a body in a few poses."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from persona.body.types import SMPLX_JOINT_NAMES, Identity, PoseParams

# Tolerance of the LBS comparison with smplx (the acceptance figure), metres.
CHECK_TOLERANCE = 1e-5
_J = {name: i for i, name in enumerate(SMPLX_JOINT_NAMES)}


def demo_poses() -> dict[str, torch.Tensor]:
    """Three recognisable poses [55, 3] (axis-angle) besides the canonical big pose."""
    walk = torch.zeros(55, 3)
    walk[_J["left_hip"], 0], walk[_J["right_hip"], 0] = -0.5, 0.35
    walk[_J["left_knee"], 0], walk[_J["right_knee"], 0] = 0.7, 0.2
    walk[_J["left_shoulder"], 2], walk[_J["right_shoulder"], 2] = -1.2, 1.2
    walk[_J["left_elbow"], 1], walk[_J["right_elbow"], 1] = 0.4, -0.4
    wave = torch.zeros(55, 3)
    wave[_J["left_shoulder"], 2], wave[_J["left_elbow"], 1] = 0.5, -1.2
    wave[_J["right_shoulder"], 2], wave[_J["head"], 1] = 1.25, 0.3
    wave[_J["jaw"], 0] = 0.25
    for finger in ("index", "middle", "ring", "pinky"):  # right fist
        for k in (1, 2, 3):
            wave[_J[f"right_{finger}{k}"], 2] = 1.2
    squat = torch.zeros(55, 3)
    squat[_J["left_hip"], 0] = squat[_J["right_hip"], 0] = -1.6
    squat[_J["left_knee"], 0] = squat[_J["right_knee"], 0] = 2.1
    squat[_J["left_ankle"], 0] = squat[_J["right_ankle"], 0] = -0.3
    squat[_J["spine1"], 0] = 0.3
    squat[_J["left_shoulder"], 1], squat[_J["right_shoulder"], 1] = -1.0, 1.0
    return {"walk": walk, "wave, fist, jaw open": wave, "squat": squat}


def _spec(args: argparse.Namespace):
    from persona.body.loader import BodySpec

    return BodySpec(kind=args.kind, model_path=getattr(args, "model_path", None),
                    gender=args.gender, num_betas=args.num_betas,
                    num_expression=args.num_expression, cache_dir=args.cache_dir)


def run_check(args: argparse.Namespace) -> int:
    from persona.body.loader import BodySpec, body_from_file
    from persona.body.reference import compare_with_smplx
    from persona.body.smplx_format import build_smplx_layer, resolve_model_file

    spec = BodySpec(kind="smplx", model_path=args.model_path, gender=args.gender,
                    num_betas=args.num_betas, num_expression=args.num_expression,
                    flat_hand_mean=args.flat_hand_mean)
    spec.validate()
    path = resolve_model_file(args.model_path, args.gender)
    body = body_from_file(path, spec, name=path.name)
    layer = build_smplx_layer(path, body.num_betas, body.num_expression, args.flat_hand_mean,
                              args.gender)
    result = compare_with_smplx(body, layer, num_samples=args.samples)
    print(f"{path}: {body.num_vertices} vertices, {body.num_betas} betas, "
          f"{body.num_expression} expressions, region masks {body.region_mask_source}")
    print(f"max vertex error vs smplx over {args.samples} random poses and betas (pose "
          f"correctives zeroed, expression zero): {result.max_error:.3e} m "
          f"(mean {result.mean_error:.3e} m)")
    with_expression = compare_with_smplx(body, layer, num_samples=args.samples,
                                         with_expression=True)
    print(f"with random expressions: {with_expression.max_error:.3e} m (smplx regresses the "
          f"joints from the expression-displaced mesh, PERSONA from the identity mesh)")
    ok = result.max_error <= CHECK_TOLERANCE
    print("OK" if ok else f"FAIL: above {CHECK_TOLERANCE:g} m")
    return 0 if ok else 1


def run_build(args: argparse.Namespace) -> int:
    from persona.body.loader import load_body
    from persona.body.skinning import SkinningVolumeSettings, cached_skinning_field
    from persona.body.subdivide import subdivide

    timings: dict[str, float] = {}
    started = time.perf_counter()
    body = load_body(_spec(args))
    timings["body_load_seconds"] = time.perf_counter() - started
    step = time.perf_counter()
    identity = body.zero_identity()
    canonical = body.canonical(identity)
    masks = {k: v for k, v in body.region_masks.items()}
    vertices, faces, attributes = subdivide(
        canonical.vertices, body.faces, {"weights": body.lbs_weights, **masks},
        levels=args.levels, binary=set(masks))
    timings["canonical_and_subdivide_seconds"] = time.perf_counter() - step
    field = cached_skinning_field(canonical.vertices, body.lbs_weights,
                                  SkinningVolumeSettings(grid_size=args.grid_size),
                                  cache_dir=args.cache_dir, timings=timings)
    timings["total_seconds"] = time.perf_counter() - started
    print(f"body {body.name}: {body.num_vertices} vertices -> {vertices.shape[0]} after "
          f"{args.levels} subdivision levels ({faces.shape[0]} faces); skinning volume "
          f"{args.grid_size}^3 x 55")
    for key, value in timings.items():
        print(f"  {key:<36} {value:8.2f}")
    if args.benchmark_query:
        for count in (50_000, 170_000):
            points = vertices[torch.randint(0, vertices.shape[0], (count,))]
            step = time.perf_counter()
            field.query(points, torch.full((count,), 0.005))
            print(f"  13-point query of {count} points       {time.perf_counter() - step:8.2f}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from persona.body.loader import load_body
    from persona.body.preview import save_views

    body = load_body(_spec(args))
    identity = Identity(torch.zeros(body.num_betas))
    faces = body.faces.numpy()
    panels = [(body.canonical(identity).vertices.detach().numpy(), faces, 0.0,
               "canonical (big pose)")]
    yaws = {"walk": 0.5, "wave, fist, jaw open": -0.3, "squat": 0.9}
    for name, pose in demo_poses().items():
        params = PoseParams(pose[None], torch.zeros(1, body.num_expression), torch.zeros(1, 3))
        vertices = body(identity, params)[0].detach().numpy()
        panels.append((vertices, faces, yaws[name], name))
    path = save_views(args.out, panels)
    print(f"wrote {path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="persona body", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="compare PERSONA's LBS with smplx on a SMPL-X folder")
    check.add_argument("--model-path", required=True,
                       help="folder with smplx/SMPLX_{GENDER}.npz (model.body.model_path)")
    check.add_argument("--samples", type=int, default=20, help="random poses and betas")
    check.add_argument("--flat-hand-mean", action="store_true",
                       help="the hands' rest pose is flat (smplx's flat_hand_mean) instead of "
                            "the model's mean hand pose")
    for sub, kinds in ((check, None), (commands.add_parser("build", help="build/cache a body "
                        "with its subdivision and skinning volume; print timings"), "open"),
                       (commands.add_parser("show", help="draw a body in four poses"), "open")):
        sub.add_argument("--gender", default="neutral", help="neutral | male | female")
        sub.add_argument("--num-betas", type=int, default=10, help="shape coefficients")
        sub.add_argument("--num-expression", type=int, default=10,
                         help="expression coefficients")
        sub.add_argument("--cache-dir", default=None,
                         help="default: $PERSONA_CACHE_DIR or ~/.cache/persona")
        if kinds is not None:
            sub.add_argument("--kind", default=kinds, choices=("open", "smplx", "procedural"),
                             help="open: the open body model; smplx: SMPL-X from --model-path; "
                                  "procedural: the built-in test body (default open)")
            sub.add_argument("--model-path", default=None, help="for --kind smplx")
    build = commands.choices["build"]
    build.add_argument("--levels", type=int, default=2, help="subdivision levels")
    build.add_argument("--grid-size", type=int, default=128, help="skinning volume voxels/axis")
    build.add_argument("--benchmark-query", action="store_true",
                       help="also time the 13-point lookup for 50k and 170k points")
    commands.choices["show"].add_argument("--out", required=True, help="PNG to write")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    handlers = {"check": run_check, "build": run_build, "show": run_show}
    try:
        return handlers[args.command](args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"persona body {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
