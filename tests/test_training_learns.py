"""A short fit on the tiny synthetic subject makes the avatar better on the held-out test split.

Step 0 (colours unwrapped from the input image, no training) and the fitted avatar are scored
on the same test frames with the same protocol (given test poses, no test-pose fitting, white
background, both images composited with the ground-truth mask): image L1 must drop and PSNR rise.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from persona.data.datamodule import PersonaDataModule, collate_frames
from persona.data.synth import preset_config, synthesize
from persona.losses.table import LossWeights
from persona.metrics.protocol import EvalProtocol, composite, evaluate_frame
from persona.system import DeformerConfig, PersonaSystem, SkinningConfig

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
FIT_STEPS = 60  # a short fit (about 30-60 s on 2 shared CPU cores)
SUBJECT_SEED = 0
PLAIN = EvalProtocol(name="plain-given-pose", background=(1.0, 1.0, 1.0), mask_composite=True,
                     paste_into_full_image=False, fit_test_pose=False, fit_steps=0)
# One subdivision (11 mm median edges): on the bare level-0 procedural mesh (22 mm edges, far
# coarser than the ~2 mm the authors' Laplacian weights were tuned for) the default fit did not
# raise test PSNR in 100 steps (18.89 -> 18.89 dB; cause not measured yet; docs item 5).
FAST_MODEL = dict(subdivision_levels=1, renderer="torch", skinning=SkinningConfig(grid_size=24),
                  deformer=DeformerConfig(triplane_resolution=16),
                  losses=LossWeights(lpips=0.0), eval_protocol=PLAIN)
MIN_PSNR_GAIN_DB = 0.3  # the fit must improve test PSNR by at least this much
MIN_L1_DROP = 0.05  # ... and lower test L1 by at least this fraction of its step-0 value


@pytest.fixture(scope="module")
def tiny_subject(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("learns") / "tiny"
    synthesize(root, preset_config("tiny", seed=SUBJECT_SEED))
    return root


@torch.no_grad()
def score_test_split(system: PersonaSystem, dm: PersonaDataModule) -> dict[str, float]:
    """Mean image L1 and PSNR over the test split (given poses, the PLAIN protocol)."""
    dataset = dm.test_dataset()
    l1, psnr = [], []
    for row in range(len(dataset)):
        batch = collate_frames([dataset[row]])
        out = system.render_eval(batch)
        target, mask = batch["image"][0], batch["mask"][0]  # [H, W, 3], [H, W, 1]
        pred = out["rgb_on_background"].clamp(0, 1)
        psnr.append(evaluate_frame(pred, target, out["alpha"], mask, PLAIN)["psnr"])
        l1.append(float((composite(pred, mask, PLAIN.background)
                         - composite(target.clamp(0, 1), mask, PLAIN.background)).abs().mean()))
    return {"l1": sum(l1) / len(l1), "psnr": sum(psnr) / len(psnr), "frames": len(l1)}


def test_short_fit_lowers_test_l1_and_raises_test_psnr(tiny_subject: Path, tmp_path: Path):
    pl.seed_everything(0)
    dm = PersonaDataModule(str(tiny_subject), epoch_length=FIT_STEPS, seed=0)
    system = PersonaSystem(**FAST_MODEL, cache_dir=str(tmp_path / "cache"))
    system.build_from_datamodule(dm)
    step0 = score_test_split(system.eval(), dm)
    trainer = pl.Trainer(default_root_dir=str(tmp_path), max_steps=FIT_STEPS, max_epochs=1,
                         accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(system, dm)
    assert trainer.global_step == FIT_STEPS
    fitted = score_test_split(system.eval(), dm)
    assert fitted["frames"] == step0["frames"] > 0
    assert fitted["psnr"] >= step0["psnr"] + MIN_PSNR_GAIN_DB, (step0, fitted)
    assert fitted["l1"] <= (1 - MIN_L1_DROP) * step0["l1"], (step0, fitted)
