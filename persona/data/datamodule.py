"""`PersonaDataModule`: a subject on disk -> batches (docs/INTERFACES.md "Subjects and batches").

Training draws from the captured (input) frame and the generated frames with `BalancedSampler`;
validation and test iterate the `test` split in order, with its ground-truth maps. Maps are
resized by ``resolution_scale`` (images and masks with area averaging, depth, normals and part-seg
with nearest neighbour so that invalid zeros and palette colours stay exact) and the cameras are
scaled with them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from persona.body.types import Identity
from persona.data.sampler import BalancedSampler
from persona.data.subject import (
    CAPTURED_SPLIT,
    TEST_SPLIT,
    FrameRecord,
    declared_missing,
    is_generated,
    list_splits,
    read_frame_maps,
    read_frame_records,
    read_identity,
    read_subject_config,
    require_valid_subject,
)
from persona.render.types import Camera


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """(width, height) after resizing by ``scale`` (at least 1 pixel)."""
    return max(1, round(width * scale)), max(1, round(height * scale))


def scale_camera(camera: Camera, width: int, height: int) -> Camera:
    """The camera of the same view rendered at ``width`` x ``height``.

    With pixel centres at integer + 0.5, resizing maps a continuous pixel coordinate u to
    u * (new / old), so fx and cx scale by new_w / old_w and fy and cy by new_h / old_h.
    """
    sx, sy = width / camera.width, height / camera.height
    K = camera.K.clone()
    K[0, 0] *= sx
    K[0, 2] *= sx
    K[1, 1] *= sy
    K[1, 2] *= sy
    return Camera(K, camera.R.clone(), camera.t.clone(), width, height, camera.near, camera.far)


def resize_map(array: np.ndarray, width: int, height: int, mode: str) -> Tensor:
    """[H, W] or [H, W, C] numpy -> float tensor [h, w, C] ("area" or "nearest")."""
    tensor = torch.from_numpy(np.ascontiguousarray(array)).float()
    if tensor.ndim == 2:
        tensor = tensor[..., None]
    if tensor.shape[:2] == (height, width):
        return tensor
    chw = tensor.permute(2, 0, 1)[None]  # [1, C, H, W]
    if mode == "area":
        out = F.interpolate(chw, size=(height, width), mode="area")
    else:
        out = F.interpolate(chw, size=(height, width), mode="nearest-exact")
    return out[0].permute(1, 2, 0).contiguous()


class SubjectFrames(Dataset):
    """One sample per frame record: every map at the scaled size, camera and SMPL-X (unbatched)."""

    def __init__(self, root: str | Path, frames: list[FrameRecord], resolution_scale: float,
                 num_expression: int, keep_input: bool = False,
                 missing: frozenset[str] = frozenset()) -> None:
        """keep_input: decode the input (captured) frame once and keep its sample (each
        DataLoader worker keeps its own copy); the balanced sampler draws it half the time.
        missing: maps subject.json declares absent (zero maps, persona.data.subject)."""
        self.root = Path(root)
        self.missing = missing
        self.frames = frames
        self.resolution_scale = resolution_scale
        self.num_expression = num_expression
        self.keep_input = keep_input
        self._kept: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, row: int) -> dict[str, Any]:
        if row in self._kept:
            return dict(self._kept[row])  # a new dict: callers may add keys
        sample = self._read(row)
        if self.keep_input and self.frames[row].is_input:
            self._kept[row] = sample
            return dict(sample)
        return sample

    def _read(self, row: int) -> dict[str, Any]:
        """Decode and resize every map of frame `row`."""
        record = self.frames[row]
        maps = (read_frame_maps(self.root, record.split, record.index, self.missing)
                if self.missing else read_frame_maps(self.root, record.split, record.index))
        native_h, native_w = maps["image"].shape[:2]
        width, height = scaled_size(native_w, native_h, self.resolution_scale)
        camera = scale_camera(record.camera, width, height)
        has_albedo = "albedo" in maps
        albedo = (resize_map(maps["albedo"], width, height, "area") if has_albedo
                  else torch.zeros(height, width, 3))
        expression = record.pose.expression[0]
        if expression.numel() != self.num_expression:
            raise ValueError(f"{record.paths.smplx}: expression has {expression.numel()} "
                             f"coefficients, subject.json says {self.num_expression}")
        sample = {
            "image": resize_map(maps["image"], width, height, "area"),  # [h, w, 3]
            "mask": resize_map(maps["mask"], width, height, "area"),  # [h, w, 1]
            "depth": resize_map(maps["depth"], width, height, "nearest"),  # [h, w, 1]
            "normal": resize_map(maps["normal"], width, height, "nearest"),  # [h, w, 3]
            "seg": resize_map(maps["seg"].astype(np.float32) / 255.0, width, height,
                              "nearest"),  # [h, w, 3]
            "albedo": albedo,  # [h, w, 3]
            "has_albedo": torch.tensor(has_albedo),
            "K": camera.K,  # [3, 3]
            "R": camera.R,  # [3, 3]
            "t": camera.t,  # [3]
            "full_pose": record.pose.full_pose[0],  # [55, 3]
            "expression": expression,  # [E]
            "transl": record.pose.transl[0],  # [3]
            "is_input": torch.tensor(record.is_input),
            "frame_id": torch.tensor(row, dtype=torch.long),
            "split": record.split,
            "index": torch.tensor(record.index, dtype=torch.long),
            "height": height,
            "width": width,
        }
        if record.is_input:  # the face patch loss crops the input image at native resolution
            sample["image_native"] = torch.from_numpy(np.ascontiguousarray(maps["image"])
                                                      ).float()  # [H, W, 3]
            sample["K_native"] = record.camera.K  # [3, 3]
        return sample


# Training on the input image alone (subject.json "missing": ["generated"]): every draw is the
# input frame, and an epoch is this many draws unless data.epoch_length says otherwise.
CAPTURED_ONLY_EPOCH_LENGTH = 100


# Per-frame flags also kept as Python bools ("<flag>_host"): Lightning moves tensors to the
# device, and reading a flag there would wait for the device on every step.
HOST_FLAGS = ("is_input", "has_albedo")
# Per-frame indices also kept as Python ints ("<name>_host"), for the same reason.
HOST_INDICES = ("frame_id",)


def host_flag(batch: dict[str, Any], name: str) -> bool:
    """A flag of the first frame of a batch, read from its host copy when collate made one."""
    host = batch.get(f"{name}_host")
    return bool(host[0]) if host is not None else bool(batch[name][0])


def collate_frames(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors along a new batch dim; ``split`` becomes a list; height/width stay ints;
    HOST_FLAGS are also kept as lists of Python bools and HOST_INDICES as lists of ints
    ("<name>_host")."""
    batch: dict[str, Any] = {}
    for flag in HOST_FLAGS:
        if flag in samples[0]:
            batch[f"{flag}_host"] = [bool(s[flag]) for s in samples]
    for name in HOST_INDICES:
        if name in samples[0]:
            batch[f"{name}_host"] = [int(s[name]) for s in samples]
    for key, value in samples[0].items():
        if isinstance(value, Tensor):
            batch[key] = torch.stack([s[key] for s in samples])
        elif key == "split":
            batch[key] = [s[key] for s in samples]
        else:
            values = {s[key] for s in samples}
            if len(values) != 1:
                raise ValueError(f"cannot batch frames with different {key}: {sorted(values)}")
            batch[key] = value
    return batch


class PersonaDataModule(pl.LightningDataModule):
    """A subject on disk as training and evaluation batches (batch size 1).

    After ``setup()``: ``train_frames`` (captured + generated_*), ``test_frames`` (test split),
    ``identity``, ``body_spec`` and ``subject_config``. ``frame_id`` in a batch is the row of the
    frame in ``train_frames`` (training) or ``test_frames`` (validation/test).
    """

    def __init__(
        self,
        subject_dir: str,
        input_ratio: float = 0.5,  # share of training draws that are the input image (1:1)
        epoch_length: int | None = None,  # training draws per epoch; None = 2 x generated frames
        resolution_scale: float = 1.0,  # resize every map by this; cameras are scaled with it
        seed: int = 0,  # sampling seed (with the epoch)
        num_workers: int = 0,  # DataLoader worker processes
        pin_memory: bool | None = None,  # page-locked batches; None: when training on CUDA
        keep_input_frame: bool = True,  # decode the input frame once and keep it (training)
        validate_subject: bool = True,  # run the validator in setup() and refuse invalid subjects
        val_every_kth_test_frame: int = 1,  # validation uses every k-th test frame (test: all)
        max_off_palette_fraction: float = 0.0,  # part-seg pixels allowed off the palette
    ) -> None:
        super().__init__()
        if resolution_scale <= 0:
            raise ValueError(f"resolution_scale must be > 0, got {resolution_scale}")
        if val_every_kth_test_frame < 1:
            raise ValueError(f"val_every_kth_test_frame must be >= 1, got "
                             f"{val_every_kth_test_frame}")
        self.subject_dir = subject_dir
        self.input_ratio = input_ratio
        self.epoch_length = epoch_length
        self.resolution_scale = resolution_scale
        self.seed = seed
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.keep_input_frame = keep_input_frame
        self.validate_subject = validate_subject
        self.val_every_kth_test_frame = val_every_kth_test_frame
        self.max_off_palette_fraction = max_off_palette_fraction
        self.train_frames: list[FrameRecord] = []
        self.test_frames: list[FrameRecord] = []
        self.identity: Identity | None = None
        self.body_spec: Any = None
        self.subject_config: dict[str, Any] = {}
        self.missing: frozenset[str] = frozenset()  # subject.json "missing"
        self._is_set_up = False

    def setup(self, stage: str | None = None) -> None:
        if self._is_set_up:
            return
        root = Path(self.subject_dir)
        if self.validate_subject:
            from persona.data.subject import validate_subject

            require_valid_subject(root, lambda r: validate_subject(
                r, max_off_palette_fraction=self.max_off_palette_fraction))
        elif not (root / "subject.json").is_file():
            raise FileNotFoundError(f"{root / 'subject.json'}: not a subject directory")
        self.subject_config = read_subject_config(root)
        body = self.subject_config["body"]
        self.num_expression = int(body["num_expression"])
        self.body_spec = body_spec_from_config(body)
        self.identity = read_identity(root)
        splits = list_splits(root)
        train_splits = [s for s in splits if s == CAPTURED_SPLIT or is_generated(s)]
        self.train_frames = read_frame_records(root, train_splits, self.num_expression)
        self.test_frames = (read_frame_records(root, [TEST_SPLIT], self.num_expression)
                            if TEST_SPLIT in splits else [])
        self.missing = declared_missing(self.subject_config)
        self._report_missing(root)
        self._is_set_up = True

    def _report_missing(self, root: Path) -> None:
        """Say what training does without generated frames (the system switches off the loss
        terms of missing maps: persona.losses.table.without_missing_maps)."""
        from lightning.pytorch.utilities import rank_zero_info

        if not self.generated_rows:
            rank_zero_info(f"subject {root}: no generated frames; training on the input image "
                           f"alone (input_ratio 1, {self._epoch_length()} draws per epoch; "
                           "unseen sides are only regularised: docs/REAL_DATA.md)")

    def _input_ratio(self) -> float:
        """All draws are the input frame when there is no generated frame."""
        return 1.0 if not self.generated_rows else self.input_ratio

    def _epoch_length(self) -> int | None:
        if self.epoch_length is None and not self.generated_rows:
            return CAPTURED_ONLY_EPOCH_LENGTH
        return self.epoch_length

    @property
    def input_rows(self) -> list[int]:
        return [row for row, f in enumerate(self.train_frames) if f.is_input]

    @property
    def generated_rows(self) -> list[int]:
        return [row for row, f in enumerate(self.train_frames) if not f.is_input]

    def make_sampler(self, num_replicas: int = 1, rank: int = 0) -> BalancedSampler:
        return BalancedSampler(self.input_rows, self.generated_rows, self._input_ratio(),
                               self._epoch_length(), self.seed, num_replicas, rank)

    def _replicas(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def _pin(self) -> bool:
        if self.pin_memory is not None:
            return self.pin_memory
        trainer = getattr(self, "trainer", None)
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def _loader(self, frames: list[FrameRecord], sampler: Any,
                keep_input: bool = False) -> DataLoader:
        dataset = SubjectFrames(self.subject_dir, frames, self.resolution_scale,
                                self.num_expression, keep_input, self.missing)
        return DataLoader(dataset, batch_size=1, sampler=sampler, shuffle=False,
                          num_workers=self.num_workers, collate_fn=collate_frames,
                          persistent_workers=self.num_workers > 0, pin_memory=self._pin())

    def train_dataloader(self) -> DataLoader:
        num_replicas, rank = self._replicas()
        return self._loader(self.train_frames, self.make_sampler(num_replicas, rank),
                            keep_input=self.keep_input_frame)

    def val_dataloader(self) -> DataLoader:
        rows = list(range(0, len(self.test_frames), self.val_every_kth_test_frame))
        return self._loader(self.test_frames, rows)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_frames, list(range(len(self.test_frames))))

    def predict_dataloader(self) -> DataLoader:
        """`persona predict` renders the test split's poses and cameras."""
        return self.test_dataloader()

    def train_dataset(self) -> SubjectFrames:
        return SubjectFrames(self.subject_dir, self.train_frames, self.resolution_scale,
                             self.num_expression, missing=self.missing)

    def test_dataset(self) -> SubjectFrames:
        return SubjectFrames(self.subject_dir, self.test_frames, self.resolution_scale,
                             self.num_expression, missing=self.missing)


def body_spec_from_config(body: dict[str, Any]) -> Any:
    """subject.json's ``body`` section -> persona.body.loader.BodySpec (unknown keys dropped)."""
    from persona.body.loader import BodySpec

    names = {f.name for f in dataclasses.fields(BodySpec)}
    return BodySpec(**{key: value for key, value in body.items() if key in names})
