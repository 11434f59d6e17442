"""`persona synth`: build a ground-truth synthetic subject (persona/data/synth/)."""

from __future__ import annotations

import argparse
from dataclasses import fields, replace

from persona.data.garment import GarmentSettings
from persona.data.synth import PRESETS, preset_config, synthesize
from persona.data.synth.config import FaultSettings
from persona.locks import lock_replaced_folder


def _resolution(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--resolution: expected WxH, got {text!r}") from error
    if width < 8 or height < 8:
        raise argparse.ArgumentTypeError(f"--resolution: at least 8x8, got {text!r}")
    return width, height


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="persona synth", description=__doc__)
    parser.add_argument("--out", required=True, help="the subject directory to write")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                        help="tiny: a procedural body in seconds, for tests; garment: the make "
                             "demo subject in the pose-driven garment (demo: its older name; "
                             "default tiny)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the identity, colours and simulated faults (default 0)")
    parser.add_argument("--artifacts", type=float, default=None,
                        help="strength of the simulated diffusion faults, 0..1 (default 1)")
    parser.add_argument("--motions", nargs="+", default=None,
                        help="built-in motion names or .npz paths, one generated video each")
    parser.add_argument("--test-motion", default=None, help="held-out motion of the test split")
    parser.add_argument("--resolution", type=_resolution, default=None, help="WxH")
    parser.add_argument("--frames", type=int, default=None, help="frames per generated video")
    parser.add_argument("--body", choices=("open", "procedural"), default=None,
                        help="open: the open body model (built once, cached); procedural: "
                             "a built-in body in under a second (default: the preset's)")
    parser.add_argument("--preview", action="store_true", help="also write contact_sheet.png")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--wait", action="store_true",
                        help="wait while another command writes --out (default: stop at once)")
    garment = parser.add_argument_group(
        "garment", "the pose-driven garment (persona/data/garment.py GarmentSettings)")
    for setting in fields(GarmentSettings):
        garment.add_argument(f"--garment.{setting.name}", dest=f"garment_{setting.name}",
                             type=float, default=None, metavar="VALUE",
                             help=f"default {setting.default}")
    faults = parser.add_argument_group(
        "faults", "one simulated diffusion fault at a time (persona/data/synth/config.py "
        "FaultSettings, the values at --artifacts 1; 0 turns that fault off and leaves the "
        "others' random draws unchanged)")
    for setting in fields(FaultSettings):
        faults.add_argument(f"--faults.{setting.name}", dest=f"faults_{setting.name}",
                            type=float, default=None, metavar="VALUE",
                            help=f"default {setting.default}")
    args = parser.parse_args(argv)
    if args.frames is not None and args.frames < 1:
        parser.error("--frames must be >= 1")
    if args.artifacts is not None and not 0.0 <= args.artifacts <= 1.0:
        parser.error("--artifacts must lie in [0, 1]")
    width, height = args.resolution or (None, None)
    config = preset_config(
        args.preset, seed=args.seed, artifacts=args.artifacts,
        motions=tuple(args.motions) if args.motions else None, test_motion=args.test_motion,
        width=width, height=height, frames=args.frames, body=args.body, preview=args.preview)
    changed = {s.name: getattr(args, f"garment_{s.name}") for s in fields(GarmentSettings)}
    faulted = {s.name: getattr(args, f"faults_{s.name}") for s in fields(FaultSettings)}
    try:
        config.garment = replace(config.garment, **{k: v for k, v in changed.items()
                                                    if v is not None})
        config.faults = replace(config.faults, **{k: v for k, v in faulted.items()
                                                  if v is not None})
    except ValueError as error:
        parser.error(str(error))
    with lock_replaced_folder(args.out, "persona synth", wait=args.wait or None):
        result = synthesize(args.out, config, overwrite=args.overwrite)
    print(f"wrote {result.root}: {result.num_generated} generated + {result.num_test} test "
          f"frames, {result.num_gaussians} Gaussians, {result.seconds:.1f} s")
    if result.preview is not None:
        print(f"contact sheet: {result.preview}")
    return 0
