"""SAM segmentation (data_prep/segment.py): a tiny random `Sam` built directly from the
segment-anything classes, saved as a state dict (the released format) and loaded through the
backend; prompts, coordinates and masks against direct `SamPredictor` calls; the CLI."""

from __future__ import annotations

import importlib.util
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from segment_anything.predictor import SamPredictor

from data_prep.cli import main as prep_main
from data_prep.segment import (
    PromptSettings,
    SamSegmenter,
    SamSegmentStage,
    build_sam,
    load_sam,
    make_prompts,
    sam_architecture,
)
from data_prep.stage import NUM_KEYPOINTS, keypoints_relpath, read_mask_bool, write_keypoints
from persona.data.subject import list_splits, validate_subject

REPO = Path(__file__).resolve().parents[2]
# A tiny SAM: 64 px input, 4 x 4 embeddings, 16 x 16 low-res logits.
TINY = dict(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=[1], image_size=64,
            window_size=4, prompt_embed_dim=32, decoder_mlp_dim=64, decoder_num_heads=2,
            iou_head_hidden_dim=32, mask_in_chans=4)
H, W = 32, 24


def tiny_sam_by_hand(seed: int = 0) -> Sam:
    """The tiny SAM written out with the package classes (independent of build_sam)."""
    torch.manual_seed(seed)
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4,
            out_chans=32, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True, window_size=4, global_attn_indexes=(1,)),
        prompt_encoder=PromptEncoder(embed_dim=32, image_embedding_size=(4, 4),
                                     input_image_size=(64, 64), mask_in_chans=4),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=2),
            transformer_dim=32, iou_head_depth=3, iou_head_hidden_dim=32),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    ).eval()


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> tuple[Path, Sam]:
    sam = tiny_sam_by_hand()
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(sam.state_dict(), path)
    return path, sam


def make_image() -> np.ndarray:
    rng = np.random.default_rng(3)
    image = (rng.random((H, W, 3)) * 60).astype(np.uint8)
    image[6:28, 5:19] += 150  # a bright "person"
    return image


def make_keypoints() -> np.ndarray:
    keypoints = np.zeros((NUM_KEYPOINTS, 3))
    keypoints[0] = [4.5, 6.5, 0.9]
    keypoints[5] = [18.5, 26.5, 0.8]
    keypoints[9] = [10.0, 12.0, 0.51]
    keypoints[11] = [2.0, 30.0, 0.5]  # exactly the threshold: not a prompt (score > 0.5)
    keypoints[100] = [20.0, 3.0, 0.3]
    return keypoints


# Hand-computed prompts for make_keypoints(): points with score > 0.5, minus 0.5 (SAM indices)
HAND_POINTS = np.array([[4.0, 6.0], [18.0, 26.0], [9.5, 11.5]])
# box: min (4.5, 6.5), max (18.5, 26.5), centre (11.5, 16.5), half (7, 10) x 1.2 = (8.4, 12)
# -> [3.1, 4.5, 19.9, 28.5], minus 0.5
HAND_BOX = np.array([2.6, 4.0, 19.4, 28.0])


def direct_refined_mask(sam: Sam, image: np.ndarray, points: np.ndarray | None,
                        box: np.ndarray) -> np.ndarray:
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    kwargs: dict[str, Any] = {"box": box, "multimask_output": False}
    if points is not None:
        kwargs.update(point_coords=points, point_labels=np.ones(len(points), int))
    _, scores, logits = predictor.predict(**kwargs)
    masks, _, _ = predictor.predict(mask_input=logits[np.argmax(scores)][None], **kwargs)
    return masks.any(0)


# ----------------------------------------------------------------------------------------------
def test_presets_have_the_released_sizes() -> None:
    for model_type, (dim, depth, heads, attn) in {
            "vit_h": (1280, 32, 16, (7, 15, 23, 31)), "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
            "vit_b": (768, 12, 12, (2, 5, 8, 11))}.items():
        arch = sam_architecture(model_type)
        assert (arch.embed_dim, arch.depth, arch.num_heads, arch.global_attn_indexes) == (
            dim, depth, heads, attn)
    with torch.device("meta"):  # shapes only, no memory
        state = build_sam(sam_architecture("vit_h")).state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["image_encoder.pos_embed"] == (1, 64, 64, 1280)  # 1024 / 16
    assert shapes["image_encoder.blocks.7.attn.rel_pos_h"] == (2 * 64 - 1, 1280 // 16)  # global
    assert shapes["image_encoder.blocks.0.attn.rel_pos_h"] == (2 * 14 - 1, 80)  # window 14
    assert shapes["image_encoder.neck.0.weight"] == (256, 1280, 1, 1)
    assert shapes["prompt_encoder.mask_downscaling.0.weight"] == (16 // 4, 1, 2, 2)
    assert shapes["mask_decoder.transformer.layers.1.mlp.lin1.weight"] == (2048, 256)
    assert shapes["mask_decoder.iou_prediction_head.layers.0.weight"] == (256, 256)
    assert sum(k.startswith("image_encoder.blocks.") and k.endswith(".attn.qkv.weight")
               for k in shapes) == 32
    with pytest.raises(ValueError, match="model_type"):
        sam_architecture("vit_x")
    with pytest.raises(ValueError, match="unknown SAM architecture override"):
        sam_architecture("vit_b", {"depht": 2})


def test_prompts_recipe() -> None:
    settings = PromptSettings()
    prompts = make_prompts(make_keypoints(), H, W, settings)
    assert np.allclose(prompts.points - 0.5, HAND_POINTS)
    assert np.allclose(prompts.box - 0.5, HAND_BOX)
    for keypoints in (None, np.zeros((NUM_KEYPOINTS, 3))):
        prompts = make_prompts(keypoints, H, W, settings)
        assert prompts.full_image and prompts.points is None
        assert np.array_equal(prompts.box, [0.0, 0.0, W, H])
    loose = make_prompts(make_keypoints(), H, W, PromptSettings(keypoint_threshold=0.2))
    assert len(loose.points) == 5


def test_backend_equals_direct_predictor(tiny_checkpoint: tuple[Path, Sam]) -> None:
    path, sam = tiny_checkpoint
    segmenter = SamSegmenter.from_checkpoint(path, "vit_b", TINY)
    loaded = segmenter.sam.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sam.state_dict().items())
    calls: list[dict[str, Any]] = []
    predict = segmenter.predictor.predict

    def recording_predict(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return predict(**kwargs)

    segmenter.predictor.predict = recording_predict  # type: ignore[method-assign]
    image = make_image()
    mask = segmenter.segment(image, make_keypoints())
    assert mask.shape == (H, W) and mask.dtype == np.bool_
    # what SamPredictor received: points and box shifted by -0.5, single mask, then refined
    assert len(calls) == 2
    for call in calls:
        assert np.allclose(call["point_coords"], HAND_POINTS)
        assert np.array_equal(call["point_labels"], [1, 1, 1])
        assert np.allclose(call["box"], HAND_BOX) and call["multimask_output"] is False
    assert "mask_input" not in calls[0] and calls[1]["mask_input"].shape == (1, 16, 16)
    expected = direct_refined_mask(sam, image, HAND_POINTS, HAND_BOX)
    assert np.array_equal(mask, expected)
    assert 0 < expected.sum() < H * W  # a non-trivial mask for this seed
    # no keypoints: the full-image box [0, 0, W, H] - 0.5 and no points
    full = direct_refined_mask(sam, image, None, np.array([-0.5, -0.5, W - 0.5, H - 0.5]))
    assert np.array_equal(segmenter.segment(image, None), full)


def test_stage_process_writes_mask_path(tiny_checkpoint: tuple[Path, Sam]) -> None:
    path, sam = tiny_checkpoint
    stage = SamSegmentStage(str(path), "vit_b", TINY)
    image = make_image()
    item = {"split": "generated_1", "index": 4, "image": torch.from_numpy(image),
            "keypoints": torch.from_numpy(make_keypoints().astype(np.float32))}
    files = stage.process(item)
    assert list(files) == ["generated_1/masks/4.png"]
    assert np.array_equal(files["generated_1/masks/4.png"],
                          direct_refined_mask(sam, image, HAND_POINTS, HAND_BOX))
    assert any(p is stage.sam.image_encoder.pos_embed for p in stage.parameters())


def test_checkpoint_errors(tiny_checkpoint: tuple[Path, Sam], tmp_path: Path) -> None:
    path, _ = tiny_checkpoint
    with pytest.raises(FileNotFoundError) as error:
        load_sam(tmp_path / "nope.pth", "vit_h")
    message = str(error.value)
    assert "model.init_args.checkpoint" in message and "sam_vit_h_4b8939.pth" in message
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth" in message
    with pytest.raises(ValueError) as error:  # one block too many: missing keys
        load_sam(path, "vit_b", {**TINY, "depth": 3})
    message = str(error.value)
    assert "sam_vit_b_01ec64.pth" in message and "model.init_args.checkpoint" in message
    assert "missing keys" in message and "image_encoder.blocks.2." in message
    # another input size: pos_embed and the global block's relative positions change shape
    with pytest.raises(ValueError, match=r"shape mismatches 3 \(image_encoder.blocks.1.attn."
                       r"rel_pos_h, image_encoder.blocks.1.attn.rel_pos_w, image_encoder.pos_"):
        load_sam(path, "vit_b", {**TINY, "image_size": 128})


def _tiny_subject(root: Path) -> Path:
    spec = importlib.util.spec_from_file_location("_sam_segment_tiny_subject",
                                                  REPO / "tests" / "data" / "tiny_subject.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_tiny_subject(root)


def test_persona_prep_cli_writes_valid_masks(tiny_checkpoint: tuple[Path, Sam],
                                             tmp_path: Path) -> None:
    path, sam = tiny_checkpoint
    subject = _tiny_subject(tmp_path / "tiny")
    for split in list_splits(subject):
        for mask in (subject / split / "masks").glob("*.png"):
            mask.unlink()
    write_keypoints(subject / keypoints_relpath("generated_0", 2), make_keypoints())
    arch = "{" + ", ".join(f"{k}: {v}" for k, v in TINY.items()) + "}"
    status = prep_main(["--config", str(REPO / "configs/prep/segment.yaml"),
                        "--data.subject_dir", str(subject),
                        "--model.init_args.checkpoint", str(path),
                        "--model.init_args.model_type", "vit_b",
                        "--model.init_args.architecture", arch,
                        "--trainer.accelerator", "cpu"])
    assert status == 0
    assert validate_subject(subject) == []
    for split, index in [("captured", 0), ("generated_0", 2), ("test", 1)]:
        with Image.open(subject / split / "images" / f"{index}.png") as image:
            rgb = np.array(image.convert("RGB"))
        with Image.open(subject / split / "masks" / f"{index}.png") as written:
            assert written.mode == "L" and set(np.unique(written)) <= {0, 255}
        if (split, index) == ("generated_0", 2):
            expected = direct_refined_mask(sam, rgb, HAND_POINTS, HAND_BOX)
        else:
            expected = direct_refined_mask(sam, rgb, None, np.array([-0.5, -0.5, W - .5, H - .5]))
        assert np.array_equal(read_mask_bool(subject / split / "masks" / f"{index}.png"),
                              expected)
