from pathlib import Path

import numpy as np
import pytest
import torch
from subject_faults import missing_mask, unknown_body
from tiny_subject import TINY_HEIGHT, TINY_NUM_EXPRESSION, TINY_WIDTH
from torch.utils.data import DistributedSampler

from persona.data.datamodule import PersonaDataModule, scale_camera
from persona.data.palette import palette_array
from persona.data.subject import SubjectError


def _setup(root: Path, **kwargs) -> PersonaDataModule:
    datamodule = PersonaDataModule(str(root), **kwargs)
    datamodule.setup("fit")
    return datamodule


def test_setup_exposes_frames_identity_and_body(tiny_subject: Path):
    dm = _setup(tiny_subject)
    assert [(f.split, f.index) for f in dm.train_frames] == [
        ("captured", 0), ("generated_0", 0), ("generated_0", 1), ("generated_0", 2),
        ("generated_1", 0), ("generated_1", 1)]
    assert [(f.split, f.index) for f in dm.test_frames] == [("test", 0), ("test", 1)]
    assert dm.identity.betas.shape == (10,)
    assert dm.body_spec.kind == "procedural" and dm.body_spec.num_expression == 10
    assert dm.input_rows == [0] and dm.generated_rows == [1, 2, 3, 4, 5]


def test_training_batches_follow_the_contract(tiny_subject: Path):
    dm = _setup(tiny_subject)
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, DistributedSampler)  # Lightning will not re-wrap it
    batches = list(loader)
    assert len(batches) == 2 * 5  # default epoch: twice the generated frames
    assert sum(bool(b["is_input"][0]) for b in batches) == 5
    batch = batches[0]
    h, w = TINY_HEIGHT, TINY_WIDTH
    shapes = {"image": (1, h, w, 3), "mask": (1, h, w, 1), "depth": (1, h, w, 1),
              "normal": (1, h, w, 3), "seg": (1, h, w, 3), "albedo": (1, h, w, 3),
              "K": (1, 3, 3), "R": (1, 3, 3), "t": (1, 3), "full_pose": (1, 55, 3),
              "expression": (1, TINY_NUM_EXPRESSION), "transl": (1, 3), "is_input": (1,),
              "frame_id": (1,), "index": (1,), "has_albedo": (1,)}
    for key, shape in shapes.items():
        assert tuple(batch[key].shape) == shape, key
    assert batch["frame_id"].dtype == torch.long and batch["is_input"].dtype == torch.bool
    assert batch["height"] == h and batch["width"] == w and isinstance(batch["split"], list)
    for b in batches:
        record = dm.train_frames[int(b["frame_id"][0])]
        # host copies: what the training step reads without waiting for the device
        assert b["frame_id_host"] == [int(b["frame_id"][0])]
        assert b["is_input_host"] == [bool(b["is_input"][0])]
        assert b["split"] == [record.split] and int(b["index"][0]) == record.index
        assert bool(b["is_input"][0]) == record.is_input == bool(b["has_albedo"][0])
        # the hand-made frames carry (len(split), index) in pixel (0, 0)
        code = (b["image"][0, 0, 0, :2] * 255).round().tolist()
        assert code == [len(record.split), record.index]
        torch.testing.assert_close(b["full_pose"][0], record.pose.full_pose[0])


def test_resolution_scale_resizes_maps_and_scales_cameras(tiny_subject: Path):
    dm = _setup(tiny_subject, resolution_scale=0.5)
    sample = dm.train_dataset()[0]
    assert sample["image"].shape == (TINY_HEIGHT // 2, TINY_WIDTH // 2, 3)
    assert sample["height"] == TINY_HEIGHT // 2
    native = dm.train_frames[0].camera.K
    torch.testing.assert_close(sample["K"][:2], native[:2] * 0.5)
    # nearest resizing keeps part-seg on the palette and depth values exact
    seg = (sample["seg"].numpy() * 255).round().astype(np.uint8).reshape(-1, 3)
    assert set(map(tuple, seg)) <= set(map(tuple, palette_array()))
    assert set(sample["depth"].unique().tolist()) <= {0.0, 4.0}


def test_scale_camera_keeps_projection_consistent():
    from persona.render.types import Camera

    camera = Camera(torch.tensor([[500.0, 0, 100], [0, 480, 160], [0, 0, 1]]), torch.eye(3),
                    torch.zeros(3), 200, 320)
    small = scale_camera(camera, 50, 80)
    point = torch.tensor([0.1, -0.2, 3.0])
    uv = (camera.K @ point)[:2] / point[2]
    uv_small = (small.K @ point)[:2] / point[2]
    torch.testing.assert_close(uv_small, uv * 0.25)


def test_validation_and_test_loaders_iterate_the_test_split(tiny_subject: Path):
    dm = _setup(tiny_subject, val_every_kth_test_frame=2)
    assert [int(b["frame_id"][0]) for b in dm.test_dataloader()] == [0, 1]
    assert [int(b["frame_id"][0]) for b in dm.val_dataloader()] == [0]
    batch = next(iter(dm.test_dataloader()))
    assert batch["split"] == ["test"] and not bool(batch["has_albedo"][0])


def test_invalid_subject_refuses_to_start_with_full_report(tiny_subject: Path):
    expected = [missing_mask(tiny_subject), unknown_body(tiny_subject)]
    with pytest.raises(SubjectError) as info:
        _setup(tiny_subject)
    for file, field, _ in expected:
        assert f"{file}: [{field}]" in str(info.value)


def test_epoch_length_and_ratio_are_configurable(tiny_subject: Path):
    dm = _setup(tiny_subject, epoch_length=40, input_ratio=0.25, seed=3)
    draws = [int(b["frame_id"][0]) for b in dm.train_dataloader()]
    assert len(draws) == 40 and draws.count(0) == 10


def test_lightning_cli_can_type_the_arguments():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(PersonaDataModule, "data")
    config = parser.parse_args(["--data.subject_dir", "x", "--data.input_ratio", "0.25",
                                "--data.epoch_length", "12"])
    assert config.data.input_ratio == 0.25 and config.data.epoch_length == 12


def test_the_input_frame_is_decoded_once_and_kept(tiny_subject: Path, monkeypatch):
    """Training keeps the decoded input frame (half of all draws): its maps are read once,
    generated frames every time; old behaviour: every draw decoded the input PNGs again."""
    import persona.data.datamodule as datamodule

    reads: list[tuple[str, int]] = []
    original = datamodule.read_frame_maps

    def counting(root, split, index):
        reads.append((split, index))
        return original(root, split, index)

    monkeypatch.setattr(datamodule, "read_frame_maps", counting)
    dm = _setup(tiny_subject, epoch_length=8, pin_memory=False)
    batches = list(dm.train_dataloader())
    inputs = sum(bool(b["is_input"][0]) for b in batches)
    assert inputs >= 2 and reads.count(("captured", 0)) == 1
    assert len(reads) == 1 + len(batches) - inputs
    first = next(b for b in batches if bool(b["is_input"][0]))
    again = next(b for b in reversed(batches) if bool(b["is_input"][0]))
    for key in ("image", "mask", "depth", "image_native"):
        torch.testing.assert_close(first[key], again[key])
    fresh = _setup(tiny_subject, keep_input_frame=False).train_dataset()
    torch.testing.assert_close(fresh[dm.input_rows[0]]["image"], first["image"][0])
    assert not dm.train_dataloader().pin_memory  # no trainer on CUDA: no pinning
