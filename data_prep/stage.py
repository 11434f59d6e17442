"""The preprocessing framework: a stage is a Lightning ``predict`` over the frames of a subject.

- :class:`SubjectFrames` lists the ``(split, index)`` frames of a subject and loads each one
  (image, and the mask and keypoints when they exist).
- :class:`PrepStage` is a ``LightningModule`` whose subclasses implement ``process(item)`` and
  return ``{subject-relative output path: payload}``.
- :class:`SubjectWriter` (a ``BasePredictionWriter``) writes every returned payload atomically
  into the subject folder; :class:`PrepData` is the data module.

Multi-GPU runs are plain DDP: Lightning gives ``predict`` an ``UnrepeatedDistributedSampler``,
which deals every item to exactly one rank without padding (ranks may get one item more than
others). Writes are atomic renames from a per-process temporary name, so even a file written by
two processes (identical content) never appears half-written. docs/prep/framework_and_sam.md.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from persona.atomic import TEMPORARY_NAME
from persona.data.subject import (
    FRAME_LIST_NAME,
    FramePaths,
    list_splits,
    read_identity,
    read_subject_config,
    write_frame_list,
    write_json,
    write_npy,
    write_png,
)

KEYPOINTS_FORMAT = "coco_wholebody_133"  # PREPROCESSING.md §4.2 (COCO-WholeBody order)
NUM_KEYPOINTS = 133  # PREPROCESSING.md §4.2
KEYPOINT_COLUMNS = 3  # x, y (pixels, centres at integer + 0.5), score
MASK_ON = 255  # docs/SUBJECT_FORMAT.md: masks are mode L, 255 = person
MASK_THRESHOLD = 128  # an 8-bit mask pixel >= this reads as person
IMAGE_GLOB = "*.png"  # docs/SUBJECT_FORMAT.md: images/{i}.png
SHAPE_RELPATH = "smplx_optimized/shape_param.json"  # the fitted shape (fit stage)


# ----------------------------------------------------------------------------------------------
# Frames and keypoints on disk
# ----------------------------------------------------------------------------------------------
def keypoints_relpath(split: str, index: int) -> str:
    """Subject-relative path of a frame's keypoints file."""
    return f"{split}/keypoints/{index}.json"


def split_frame_indices(root: str | Path, split: str) -> list[int]:
    """The frames of a split: ``frame_idx_list.txt`` when the split has one, else every
    ``images/<int>.png`` in numeric order."""
    split_dir = Path(root) / split
    frame_list = split_dir / FRAME_LIST_NAME
    if frame_list.is_file():
        text = frame_list.read_text()
        try:
            return [int(token) for token in text.split()]
        except ValueError as error:
            raise ValueError(f"{frame_list}: not one integer frame index per line") from error
    indices = [int(path.stem) for path in (split_dir / "images").glob(IMAGE_GLOB)
               if re.fullmatch(r"\d+", path.stem)]
    return sorted(indices)


class KeypointsError(ValueError):
    """An invalid keypoints file; the message names the file and the field."""

    def __init__(self, path: str | Path, field: str, message: str):
        self.path, self.field = str(path), field
        super().__init__(f"{path}: [{field}] {message}")


def keypoints_to_json(keypoints: np.ndarray) -> dict[str, Any]:
    """float [133, 3] (x, y, score) -> the keypoints JSON object."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.shape != (NUM_KEYPOINTS, KEYPOINT_COLUMNS):
        raise ValueError(f"keypoints must be [{NUM_KEYPOINTS}, {KEYPOINT_COLUMNS}], "
                         f"got {list(keypoints.shape)}")
    if not np.isfinite(keypoints).all():
        raise ValueError("keypoints must be finite")
    return {"format": KEYPOINTS_FORMAT, "keypoints": keypoints.tolist()}


def write_keypoints(path: str | Path, keypoints: np.ndarray) -> None:
    """Atomically write [133, 3] keypoints (x, y, score; pixel centres at integer + 0.5)."""
    write_json(path, keypoints_to_json(keypoints))


def keypoints_from_json(data: Any, path: str | Path = "<keypoints>") -> np.ndarray:
    """The keypoints JSON object -> float32 [133, 3]; errors name the file and the field."""
    if not isinstance(data, dict):
        raise KeypointsError(path, "file", "expected a JSON object")
    if "format" not in data:
        raise KeypointsError(path, "format", "missing field")
    if data["format"] != KEYPOINTS_FORMAT:
        raise KeypointsError(path, "format",
                             f"expected {KEYPOINTS_FORMAT!r}, got {data['format']!r}")
    if "keypoints" not in data:
        raise KeypointsError(path, "keypoints", "missing field")
    try:
        array = np.asarray(data["keypoints"], dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise KeypointsError(path, "keypoints", f"not a numeric array ({error})") from error
    if array.shape != (NUM_KEYPOINTS, KEYPOINT_COLUMNS):
        raise KeypointsError(path, "keypoints", f"expected shape [{NUM_KEYPOINTS}, "
                             f"{KEYPOINT_COLUMNS}] (x, y, score), got {list(array.shape)}")
    if not np.isfinite(array).all():
        raise KeypointsError(path, "keypoints", "values must be finite")
    return array.astype(np.float32)


def read_keypoints(path: str | Path) -> np.ndarray:
    """Read a keypoints file -> float32 [133, 3]."""
    try:
        with open(path) as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise KeypointsError(path, "file", f"not valid JSON ({error})") from error
    return keypoints_from_json(data, path)


def read_rgb_uint8(path: str | Path) -> np.ndarray:
    """PNG -> uint8 [H, W, 3] RGB (alpha dropped)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def read_mask_bool(path: str | Path) -> np.ndarray:
    """8-bit mask PNG -> bool [H, W] (pixel >= 128 is person)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8) >= MASK_THRESHOLD


def load_subject_body(root: str | Path) -> tuple[Any, Any, dict[str, Any]]:
    """The subject's body (``subject.json``) and fitted identity
    (``smplx_optimized/shape_param.json``): (BodyModel, Identity, subject.json's body section).
    A missing file is an error naming it and the stage that writes it."""
    from persona.body.loader import load_body

    root = Path(root)
    for needed, writer in ((SHAPE_RELPATH, "configs/prep/fit.yaml"),
                           ("subject.json", "`persona prep init`")):
        if not (root / needed).is_file():
            raise FileNotFoundError(f"{root / needed} is missing: run {writer} first "
                                    "(docs/PREPROCESSING.md)")
    body_config = read_subject_config(root).get("body", {})
    spec = subject_body_spec(body_config, root / "subject.json")
    return load_body(spec), read_identity(root), body_config


def subject_body_spec(body_config: dict[str, Any], where: str | Path) -> Any:
    """subject.json's body section -> BodySpec. subject.json names the body, not where its
    files are: an SMPL-X body without a folder takes $PERSONA_SMPLX_PATH (as `persona fit`
    does); with neither, the error names the variable and ``where``."""
    from persona.data.datamodule import body_spec_from_config
    from persona.system_config import SMPLX_PATH_ENV

    spec = body_spec_from_config(body_config)
    if spec.kind == "smplx" and not spec.model_path:
        spec.model_path = os.environ.get(SMPLX_PATH_ENV)
        if not spec.model_path:
            raise ValueError(f"{where}: body kind 'smplx' needs the SMPL-X files: set "
                             f"${SMPLX_PATH_ENV} to the folder holding "
                             f"smplx/SMPLX_{spec.gender.upper()}.npz (docs/REAL_DATA.md)")
    return spec


def stale_temporaries(root: str | Path) -> list[Path]:
    """The temporary files of atomic writes under ``root`` that never reached their rename:
    names persona.atomic.TEMPORARY_NAME matches whole, ".{name}.tmp-{pid}-{random}{suffix}" (and
    the earlier writers' ".{name}.tmp-{pid}")."""
    return sorted(path for path in Path(root).rglob(".*")
                  if path.is_file() and TEMPORARY_NAME.fullmatch(path.name))


def remove_stale_temporaries(root: str | Path) -> list[Path]:
    """Remove what killed writes left under ``root`` (call it holding the subject's lock: no
    other process is writing there); the removed paths."""
    removed = stale_temporaries(root)
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def output_relpath(template: str, split: str, index: int) -> str:
    """Fill a relative path template such as ``"{split}/masks/{index}.png"``."""
    return template.format(split=split, index=index)


# ----------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------
class SubjectFrames(Dataset):
    """The ``(split, index)`` frames of a subject.

    Items are ``{"split", "index", "image": uint8 [H, W, 3] RGB}`` plus ``"mask"`` (bool [H, W])
    when ``<split>/masks/{i}.png`` exists and ``"keypoints"`` (float32 [133, 3]) when
    ``<split>/keypoints/{i}.json`` exists. With ``skip_if_exists`` (relative path templates with
    ``{split}`` and ``{index}``) a frame whose outputs all exist already is left out, unless
    ``overwrite``. The list is fixed at construction.
    """

    def __init__(self, subject_dir: str | Path, splits: Sequence[str] | None = None,
                 skip_if_exists: Sequence[str] = (), overwrite: bool = False,
                 load_masks: bool = True, load_keypoints: bool = True):
        self.root = Path(subject_dir)
        if not self.root.is_dir():
            raise FileNotFoundError(f"subject folder {self.root} does not exist "
                                    "(setting data.subject_dir)")
        self.splits = list(list_splits(self.root) if splits is None else splits)
        for split in self.splits:
            if not (self.root / split).is_dir():
                raise FileNotFoundError(f"{self.root}: split {split!r} does not exist "
                                        "(setting data.splits)")
        self.skip_if_exists = list(skip_if_exists)
        self.overwrite = overwrite
        self.load_masks, self.load_keypoints = load_masks, load_keypoints
        all_items = [(split, index) for split in self.splits
                     for index in split_frame_indices(self.root, split)]
        self.items = [item for item in all_items if not self._done(*item)]
        self.num_skipped = len(all_items) - len(self.items)

    def _done(self, split: str, index: int) -> bool:
        if self.overwrite or not self.skip_if_exists:
            return False
        return all((self.root / output_relpath(t, split, index)).is_file()
                   for t in self.skip_if_exists)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        split, index = self.items[i]
        paths = FramePaths(split, index)
        item: dict[str, Any] = {
            "split": split, "index": index,
            "image": torch.from_numpy(read_rgb_uint8(self.root / paths.image)),  # [H, W, 3]
        }
        mask_path = self.root / paths.mask
        if self.load_masks and mask_path.is_file():
            item["mask"] = torch.from_numpy(read_mask_bool(mask_path))  # [H, W]
        keypoints_path = self.root / keypoints_relpath(split, index)
        if self.load_keypoints and keypoints_path.is_file():
            item["keypoints"] = torch.from_numpy(read_keypoints(keypoints_path))  # [133, 3]
        return item


def collate_items(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep a batch as the list of item dicts (frames may differ in size and keys)."""
    return list(batch)


# ----------------------------------------------------------------------------------------------
# Writing payloads
# ----------------------------------------------------------------------------------------------
def _to_numpy(payload: Any) -> np.ndarray:
    if isinstance(payload, torch.Tensor):
        return payload.detach().cpu().numpy()
    return np.asarray(payload)


def check_relpath(relpath: str) -> PurePosixPath:
    """A subject-relative output path: relative, no ``..``, with a known suffix."""
    path = PurePosixPath(relpath)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"output path {relpath!r} must be relative to the subject, without '..'")
    if path.suffix not in (".png", ".npy", ".json", ".txt"):
        raise ValueError(f"output path {relpath!r}: unknown suffix (use .png, .npy, .json or "
                         ".txt)")
    return path


def write_payload(path: str | Path, payload: Any) -> None:
    """Write one payload atomically, by suffix.

    ``.png``: uint8 [H, W, 3] RGB, or bool / uint8 [H, W] (a mode-L mask; bool -> 0 / 255).
    ``.npy``: float32 array. ``.json``: a JSON-able object. ``.txt``: a list of frame indices
    (``frame_idx_list.txt``, one per line).
    """
    suffix = Path(path).suffix
    if suffix == ".json":
        write_json(path, payload)
        return
    if suffix == ".txt":
        write_frame_list(path, [int(i) for i in payload])
        return
    array = _to_numpy(payload)
    if suffix == ".png":
        if array.dtype == np.bool_ and array.ndim == 2:
            array = array.astype(np.uint8) * MASK_ON
        if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3
                                                                and array.shape[2] == 3)):
            raise ValueError(f"{path}: PNG payload must be uint8 [H, W, 3] or bool/uint8 "
                             f"[H, W], got {array.dtype} {list(array.shape)}")
        write_png(path, np.ascontiguousarray(array))
    elif suffix == ".npy":
        if array.dtype != np.float32:
            raise ValueError(f"{path}: .npy payload must be float32, got {array.dtype}")
        write_npy(path, array)
    else:
        raise ValueError(f"{path}: unknown suffix {suffix!r} (use .png, .npy or .json)")


class SubjectWriter(BasePredictionWriter):
    """Writes every ``{relpath: payload}`` a stage returns atomically under the subject folder.

    ``subject_dir=None`` takes the folder from the trainer's data module (``PrepData``).
    ``written`` lists the relative paths this process wrote, in order.
    """

    def __init__(self, subject_dir: str | Path | None = None):
        super().__init__(write_interval="batch")
        self.subject_dir = None if subject_dir is None else Path(subject_dir)
        self.written: list[str] = []

    def _root(self, trainer: Trainer) -> Path:
        if self.subject_dir is not None:
            return self.subject_dir
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "subject_dir"):
            raise ValueError("SubjectWriter needs subject_dir, or a data module with one")
        return Path(datamodule.subject_dir)

    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule,
                           prediction: Any, batch_indices: Sequence[int] | None, batch: Any,
                           batch_idx: int, dataloader_idx: int) -> None:
        root = self._root(trainer)
        for output in prediction:
            for relpath, payload in output["files"].items():
                write_payload(root / check_relpath(relpath), payload)
                self.written.append(relpath)


# ----------------------------------------------------------------------------------------------
# Stage and data module
# ----------------------------------------------------------------------------------------------
class PrepStage(LightningModule):
    """A preprocessing stage. Subclasses implement :meth:`process` and list the files they write
    in ``output_templates`` (used to skip frames that are done)."""

    output_templates: tuple[str, ...] = ()

    def make_dataset(self, data: PrepData) -> Dataset:
        """The items this stage processes: by default the frames of ``data``'s splits (a stage
        whose items are something else, e.g. the motions of the generation stage, overrides
        this). Frames whose ``output_templates`` all exist are skipped unless overwrite."""
        return SubjectFrames(data.subject_dir, data.splits, data.templates(self),
                             data.overwrite)

    def process(self, item: dict[str, Any]) -> dict[str, Any]:
        """One item -> ``{subject-relative output path: payload}``."""
        raise NotImplementedError(f"{type(self).__name__} must implement process(item) or "
                                  "process_batch(items)")

    def process_batch(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Several items -> one output dict each. Override to batch the model (e.g. Sapiens)."""
        return [self.process(item) for item in items]

    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int = 0,
                     dataloader_idx: int = 0) -> list[dict[str, Any]]:
        files = self.process_batch(batch)
        return [{"split": item["split"], "index": int(item["index"]), "files": out}
                for item, out in zip(batch, files, strict=True)]

    def configure_callbacks(self) -> list[Callback]:
        """Every stage writes through a SubjectWriter (one given to the Trainer replaces it)."""
        return [SubjectWriter()]


class PrepData(LightningDataModule):
    """The frames of a subject for ``predict``.

    ``skip_if_exists=None`` skips frames whose ``model.output_templates`` all exist;
    ``overwrite=True`` processes every frame.
    """

    def __init__(self, subject_dir: str, splits: list[str] | None = None,
                 skip_if_exists: list[str] | None = None, overwrite: bool = False,
                 batch_size: int = 1, num_workers: int = 0):
        super().__init__()
        self.subject_dir = subject_dir
        self.splits = splits
        self.skip_if_exists = skip_if_exists
        self.overwrite = overwrite
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.frames: Dataset | None = None  # the items (SubjectFrames unless the stage says)

    def templates(self, module: Any) -> list[str]:
        """Output templates that mark an item as done (``skip_if_exists`` or the stage's)."""
        if self.skip_if_exists is not None:
            return list(self.skip_if_exists)
        return list(getattr(module, "output_templates", ()))

    def setup(self, stage: str | None = None) -> None:
        # Runs on every rank between Lightning's pre/post-setup barriers, before any writing,
        # so all ranks see the same list.
        trainer = self.trainer
        module = trainer.lightning_module if trainer is not None else None
        if isinstance(module, PrepStage):
            self.frames = module.make_dataset(self)
        else:
            self.frames = SubjectFrames(self.subject_dir, self.splits, self.templates(module),
                                        self.overwrite)

    def predict_dataloader(self) -> DataLoader:
        if self.frames is None:
            self.setup("predict")
        assert self.frames is not None
        return DataLoader(self.frames, batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, collate_fn=collate_items)

