"""The preprocessing framework (data_prep/stage.py): frames, keypoints files, writer, skip /
overwrite, and a 2-process DDP predict that writes every frame exactly once.

Run as a script (``python test_prep_stage.py SUBJECT OUT``) it is the DDP entry point used by
test_ddp_predict_writes_each_frame_once (DDP relaunches the script, hence the __main__ guard).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image

from data_prep.stage import (
    NUM_KEYPOINTS,
    KeypointsError,
    PrepData,
    PrepStage,
    SubjectFrames,
    SubjectWriter,
    collate_items,
    keypoints_relpath,
    read_keypoints,
    split_frame_indices,
    write_keypoints,
    write_payload,
)
from persona.data.subject import list_splits, write_png

REPO = Path(__file__).resolve().parents[2]
LUMA_THRESHOLD = 128  # the test stage's known answer: mean RGB > 128 is "person"
DDP_SPLITS = ["generated_0", "generated_1", "test"]  # 3 + 2 + 2 = 7 frames: uneven over 2 ranks


def _load_tiny_subject_module() -> Any:
    """tests/data/tiny_subject.py under a private name (tests/ has no __init__.py)."""
    spec = importlib.util.spec_from_file_location("_prep_stage_tiny_subject",
                                                  REPO / "tests" / "data" / "tiny_subject.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class LumaStage(PrepStage):
    """Known-answer stage: mask = mean RGB > 128, plus the mean as float32 .npy and a JSON."""

    output_templates = ("{split}/masks/{index}.png",)

    def process(self, item: dict[str, Any]) -> dict[str, Any]:
        image = item["image"].cpu().numpy().astype(np.float32)  # [H, W, 3]
        mean = image.mean(axis=-1)  # [H, W]
        split, index = item["split"], item["index"]
        return {f"{split}/masks/{index}.png": mean > LUMA_THRESHOLD,
                f"{split}/luma/{index}.npy": mean.astype(np.float32),
                f"{split}/luma/{index}.json": {"split": split, "index": int(index)}}


def expected_mask(root: Path, split: str, index: int) -> np.ndarray:
    """uint8 [H, W]: 255 where the integer RGB sum exceeds 3 x 128 (computed from the file)."""
    with Image.open(root / split / "images" / f"{index}.png") as image:
        rgb = np.asarray(image.convert("RGB")).astype(np.int64)
    return np.where(rgb.sum(axis=-1) > 3 * LUMA_THRESHOLD, 255, 0).astype(np.uint8)


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.asarray(image)


def make_trainer(devices: int = 1, strategy: str = "auto") -> Trainer:
    return Trainer(accelerator="cpu", devices=devices, strategy=strategy, logger=False,
                   enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False)


def run_stage(root: Path, **data_kwargs: Any) -> SubjectWriter:
    trainer = make_trainer()
    trainer.predict(LumaStage(), datamodule=PrepData(str(root), **data_kwargs),
                    return_predictions=False)
    return next(c for c in trainer.callbacks if isinstance(c, SubjectWriter))


@pytest.fixture
def subject(tmp_path: Path) -> Path:
    return _load_tiny_subject_module().make_tiny_subject(tmp_path / "tiny")


def all_frames(root: Path, splits: list[str] | None = None) -> list[tuple[str, int]]:
    splits = list_splits(root) if splits is None else splits
    return [(s, i) for s in splits for i in split_frame_indices(root, s)]


# ----------------------------------------------------------------------------------------------
def test_frames_items_and_frame_lists(subject: Path) -> None:
    # an unlisted generated image is ignored; a split without a frame list uses images/*.png
    write_png(subject / "generated_0" / "images" / "7.png", np.zeros((32, 24, 3), np.uint8))
    write_png(subject / "captured" / "images" / "3.png", np.zeros((32, 24, 3), np.uint8))
    frames = SubjectFrames(subject)
    assert frames.splits == ["captured", "generated_0", "generated_1", "test"]
    assert frames.items == [("captured", 0), ("captured", 3), ("generated_0", 0),
                            ("generated_0", 1), ("generated_0", 2), ("generated_1", 0),
                            ("generated_1", 1), ("test", 0), ("test", 1)]
    keypoints = np.random.default_rng(1).random((NUM_KEYPOINTS, 3)) * 20.0
    write_keypoints(subject / keypoints_relpath("generated_0", 1), keypoints)
    item = frames[3]
    assert (item["split"], item["index"]) == ("generated_0", 1)
    with Image.open(subject / "generated_0" / "images" / "1.png") as image:
        assert torch.equal(item["image"], torch.from_numpy(np.array(image.convert("RGB"))))
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (32, 24, 3)
    # tiny subject masks: rows 4:28, columns 6:18
    expected = np.zeros((32, 24), bool)
    expected[4:28, 6:18] = True
    assert item["mask"].dtype == torch.bool and np.array_equal(item["mask"].numpy(), expected)
    assert item["keypoints"].dtype == torch.float32
    assert np.allclose(item["keypoints"].numpy(), keypoints, atol=1e-5)
    assert "keypoints" not in frames[2]
    assert SubjectFrames(subject, ["test"]).items == [("test", 0), ("test", 1)]
    batch = collate_items([frames[0], frames[2]])
    assert [b["index"] for b in batch] == [0, 0] and isinstance(batch, list)


def test_keypoints_errors_name_file_and_field(tmp_path: Path) -> None:
    good = np.arange(NUM_KEYPOINTS * 3, dtype=np.float64).reshape(NUM_KEYPOINTS, 3) / 7.0
    path = tmp_path / "k.json"
    write_keypoints(path, good)
    data = json.loads(path.read_text())
    assert data["format"] == "coco_wholebody_133" and len(data["keypoints"]) == NUM_KEYPOINTS
    assert np.array_equal(read_keypoints(path), good.astype(np.float32))
    cases = {
        "format": {"format": "coco_17", "keypoints": good.tolist()},
        "keypoints": {"format": "coco_wholebody_133", "keypoints": good[:17].tolist()},
    }
    for field, content in cases.items():
        path.write_text(json.dumps(content))
        with pytest.raises(KeypointsError) as error:
            read_keypoints(path)
        assert error.value.field == field and str(path) in str(error.value)
        assert f"[{field}]" in str(error.value)
    path.write_text(json.dumps({"format": "coco_wholebody_133"}))
    with pytest.raises(KeypointsError, match=r"\[keypoints\] missing field"):
        read_keypoints(path)
    path.write_text("{not json")
    with pytest.raises(KeypointsError, match=r"\[file\]"):
        read_keypoints(path)


def test_write_payload_by_suffix(tmp_path: Path) -> None:
    mask = np.array([[True, False], [False, True]])
    write_payload(tmp_path / "m.png", mask)
    assert np.array_equal(read_png(tmp_path / "m.png"), [[255, 0], [0, 255]])
    rgb = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    write_payload(tmp_path / "c.png", torch.from_numpy(rgb))
    with Image.open(tmp_path / "c.png") as image:
        assert image.mode == "RGB" and np.array_equal(np.asarray(image), rgb)
    with pytest.raises(ValueError, match="float32"):
        write_payload(tmp_path / "d.npy", np.zeros(3, np.float64))
    with pytest.raises(ValueError, match="uint8"):
        write_payload(tmp_path / "e.png", np.zeros((2, 2), np.float32))
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_stage_writes_known_answers_then_skips_and_overwrites(subject: Path) -> None:
    frames = all_frames(subject)
    # the tiny subject ships masks: all frames are done, nothing runs by default
    assert run_stage(subject).written == []
    # remove two masks and mark another: only the two missing frames are processed
    for split, index in [("generated_0", 1), ("test", 0)]:
        (subject / split / "masks" / f"{index}.png").unlink()
    marker = np.full((32, 24), 7, np.uint8)
    write_png(subject / "generated_1" / "masks" / "1.png", marker)
    writer = run_stage(subject)
    assert sorted(writer.written) == sorted(
        f"{s}/{kind}/{i}.{ext}" for s, i in [("generated_0", 1), ("test", 0)]
        for kind, ext in [("masks", "png"), ("luma", "npy"), ("luma", "json")])
    for split, index in [("generated_0", 1), ("test", 0)]:
        assert np.array_equal(read_png(subject / split / "masks" / f"{index}.png"),
                              expected_mask(subject, split, index))
    assert np.array_equal(read_png(subject / "generated_1" / "masks" / "1.png"), marker)
    # overwrite: every frame, files exactly equal the known answers
    writer = run_stage(subject, overwrite=True, batch_size=3)
    assert len(writer.written) == 3 * len(frames)
    for split, index in frames:
        assert np.array_equal(read_png(subject / split / "masks" / f"{index}.png"),
                              expected_mask(subject, split, index))
        with Image.open(subject / split / "images" / f"{index}.png") as image:
            mean = np.asarray(image.convert("RGB")).astype(np.float32).mean(-1)
        luma = np.load(subject / split / "luma" / f"{index}.npy")
        assert luma.dtype == np.float32 and np.array_equal(luma, mean)
        assert json.loads((subject / split / "luma" / f"{index}.json").read_text()) == {
            "split": split, "index": index}
    # explicit skip templates: skip frames whose luma json exists -> nothing to do
    assert run_stage(subject, skip_if_exists=["{split}/luma/{index}.json"]).written == []


def test_unsafe_output_path_is_refused(subject: Path) -> None:
    class Escape(PrepStage):
        def process(self, item: dict[str, Any]) -> dict[str, Any]:
            return {"../outside.png": np.zeros((2, 2), bool)}

    with pytest.raises(ValueError, match="relative to the subject"):
        make_trainer().predict(Escape(), datamodule=PrepData(str(subject), splits=["test"]),
                               return_predictions=False)
    assert not (subject.parent / "outside.png").exists()


# ----------------------------------------------------------------------------------------------
def ddp_main(subject: str, out: str) -> None:
    """DDP entry: 2 CPU processes; each rank records the files it wrote."""
    trainer = make_trainer(devices=2, strategy="ddp")
    data = PrepData(subject, splits=DDP_SPLITS, overwrite=True, batch_size=2)
    trainer.predict(LumaStage(), datamodule=data, return_predictions=False)
    writer = next(c for c in trainer.callbacks if isinstance(c, SubjectWriter))
    record = {"rank": trainer.global_rank, "world": trainer.world_size, "pid": os.getpid(),
              "written": writer.written}
    Path(out, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def test_ddp_predict_writes_each_frame_once(subject: Path, tmp_path: Path) -> None:
    single = _load_tiny_subject_module().make_tiny_subject(tmp_path / "single")
    run_stage(single, splits=DDP_SPLITS, overwrite=True)
    for split in DDP_SPLITS:  # the DDP run must write these itself
        for path in (subject / split / "masks").glob("*.png"):
            path.unlink()
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "OMP_WAIT_POLICY": "PASSIVE"}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, __file__, str(subject), str(out)], env=env,
                            capture_output=True, text=True, timeout=240, cwd=tmp_path)
    wall = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in records] == [2, 2] and records[0]["pid"] != records[1]["pid"]
    masks = [[p for p in r["written"] if "/masks/" in p] for r in records]
    expected = {f"{s}/masks/{i}.png" for s, i in all_frames(subject, DDP_SPLITS)}
    assert len(expected) == 7
    # every frame exactly once: 4 + 3 over the ranks, disjoint, nothing lost
    assert sorted(len(m) for m in masks) == [3, 4]
    assert set(masks[0]).isdisjoint(masks[1]) and set(masks[0]) | set(masks[1]) == expected
    for rel in expected:
        assert (subject / rel).read_bytes() == (single / rel).read_bytes()
        assert (subject / rel.replace("masks", "luma").replace(".png", ".npy")).is_file()
    print(f"2-process DDP predict wall time: {wall:.1f} s")


if __name__ == "__main__":
    ddp_main(sys.argv[1], sys.argv[2])
