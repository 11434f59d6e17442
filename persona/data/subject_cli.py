"""`persona subject check DIR`: validate a subject and print every problem found."""

from __future__ import annotations

import argparse

from persona.data.subject import format_report, validate_subject


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="persona subject",
                                     description="Subject tools (docs/SUBJECT_FORMAT.md).")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate a subject; exit 1 on any problem")
    check.add_argument("dir", help="the subject directory")
    check.add_argument("--max-off-palette", type=float, default=0.0,
                       help="share of part-seg pixels allowed off the goliath palette")
    args = parser.parse_args(argv)
    problems = validate_subject(args.dir, max_off_palette_fraction=args.max_off_palette)
    print(format_report(args.dir, problems))
    return 1 if problems else 0
