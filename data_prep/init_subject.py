"""``persona prep init PHOTO SUBJECT``: start a subject folder from one photo.

Writes ``SUBJECT/subject.json`` (format version, name, body model) and the photo as
``SUBJECT/captured/images/0.png`` (RGB). Every later stage reads and adds to this folder
(docs/PREPROCESSING.md). The folder is built under a hidden sibling name and renamed at the
end, so a failure leaves nothing half-made.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from persona.body.loader import BODY_KINDS, BodySpec
from persona.data.subject import FORMAT_VERSION, FramePaths, write_json, write_png

CAPTURED_SPLIT = "captured"  # the input photo is frame 0 of this split (docs/SUBJECT_FORMAT.md)


def read_photo(path: str | Path) -> np.ndarray:
    """A photo (any format PIL reads) -> uint8 [H, W, 3] RGB; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"photo {path} does not exist")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"photo {path}: not a readable image ({error})") from error


def init_subject(photo: str | Path, subject_dir: str | Path, body: BodySpec,
                 name: str | None = None, overwrite: bool = False) -> Path:
    """Create the subject folder; returns its path."""
    # subject.json records which body, not where its files are (that is a training setting)
    replace(body, model_path=body.model_path or "given at training time").validate()
    root = Path(subject_dir)
    if root.exists() and not overwrite:
        raise FileExistsError(f"{root} exists; pass --overwrite to replace it")
    image = read_photo(photo)  # [H, W, 3]
    staging = root.parent / f".{root.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    body_json = {"kind": body.kind, "gender": body.gender, "num_betas": body.num_betas,
                 "num_expression": body.num_expression, "flat_hand_mean": body.flat_hand_mean}
    write_json(staging / "subject.json", {"format_version": FORMAT_VERSION,
                                          "name": name or root.name, "body": body_json,
                                          "source_photo": str(Path(photo).name)})
    write_png(staging / FramePaths(CAPTURED_SPLIT, 0).image, image)
    if root.exists():
        shutil.rmtree(root)
    staging.rename(root)
    return root


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="persona prep init",
                                     description="start a subject folder from one photo")
    parser.add_argument("photo", help="the input photo (one person, whole body)")
    parser.add_argument("subject", help="the subject folder to create")
    parser.add_argument("--body", default="open", choices=BODY_KINDS,
                        help="body model: open (no licence), smplx (your files), procedural")
    parser.add_argument("--gender", default="neutral", choices=("neutral", "male", "female"))
    parser.add_argument("--num-betas", type=int, default=10, help="shape coefficients")
    parser.add_argument("--num-expression", type=int, default=10,
                        help="expression coefficients")
    parser.add_argument("--name", default=None, help="subject name (default: the folder name)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    args = parser.parse_args(argv)
    spec = BodySpec(kind=args.body, gender=args.gender, num_betas=args.num_betas,
                    num_expression=args.num_expression)
    try:
        root = init_subject(args.photo, args.subject, spec, args.name, args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"persona prep init: {error}", file=sys.stderr)
        return 1
    print(f"persona prep init: wrote {root}/subject.json and {root}/captured/images/0.png")
    return 0
