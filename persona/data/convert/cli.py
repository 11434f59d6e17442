"""`persona convert xhumans|neuman SRC --out DIR`: a benchmark sequence -> a subject folder."""

from __future__ import annotations

import argparse
import sys

from persona.data.convert.common import INPUT_ANNOTATIONS, write_subject
from persona.data.convert.neuman import SMPL_TYPES, SMPLX_SOURCES, convert_neuman
from persona.data.convert.xhumans import convert_xhumans

BODY_KINDS = ("smplx", "open")  # the benchmarks ship SMPL-X parameters
GENDERS = ("neutral", "male", "female")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="the dataset folder (see docs/BENCHMARKS.md)")
    parser.add_argument("--out", required=True, help="the subject folder to write")
    parser.add_argument("--input-annotations", default="none", choices=INPUT_ANNOTATIONS,
                        help="none (the paper: the input photo only; persona prep fits it) or "
                             "dataset (also its mask, camera, SMPL-X and betas: an oracle)")
    parser.add_argument("--body", default="smplx", choices=BODY_KINDS,
                        help="subject.json body kind")
    parser.add_argument("--gender", default="neutral", choices=GENDERS,
                        help="subject.json body gender")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="persona convert",
                                     description="Convert a benchmark (docs/BENCHMARKS.md).")
    commands = parser.add_subparsers(dest="dataset", required=True)
    xh = commands.add_parser("xhumans", help="one X-Humans subject (paper Table 2)")
    _common(xh)
    xh.add_argument("--subject", default=None, help="subject ID when SRC is the dataset root")
    xh.add_argument("--take", default=None,
                    help="train take of the input photo (default: ExAvatar's take for 00028, "
                         "00034, 00087, else the first)")
    xh.add_argument("--frame", type=int, default=None,
                    help="frame number of the input photo (default: the take's first)")
    xh.add_argument("--test-takes", nargs="+", default=None,
                    help="test takes to convert (default: all, as the paper)")
    nm = commands.add_parser("neuman", help="one NeuMan sequence (paper Table 3)")
    _common(nm)
    nm.add_argument("--input-frame", type=int, default=None,
                    help="frame number of the input photo (default: the train frame with the "
                         "largest person mask)")
    nm.add_argument("--smplx", default="auto", choices=SMPLX_SOURCES,
                    help="authors: their SMPL-X fits; smpl: NeuMan's SMPL mapped to SMPL-X; "
                         "auto: authors' when present")
    nm.add_argument("--smpl-type", default="optimized", choices=SMPL_TYPES,
                    help="which smpl_output_<type>.pkl (--smplx smpl)")
    nm.add_argument("--masks", default="auto", choices=("auto", "authors", "segmentations"),
                    help="authors' masks/ (SAM) or NeuMan's segmentations/")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.dataset == "xhumans":
        subject = convert_xhumans(args.src, args.subject, args.take, args.frame,
                                  args.test_takes, args.input_annotations, args.body,
                                  args.gender)
    else:
        subject = convert_neuman(args.src, args.input_frame, args.smplx, args.smpl_type,
                                 args.input_annotations, args.masks, args.body, args.gender)

    def log(line: str) -> None:
        print(f"persona convert {args.dataset}: {line}", file=sys.stderr)

    root = write_subject(subject, args.out, args.overwrite, log)
    print(f"persona convert {args.dataset}: wrote {root} (input {subject.source['input_frame']}, "
          f"{len(subject.test_frames)} test frames); next: docs/BENCHMARKS.md")
    return 0
