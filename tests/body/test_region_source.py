"""No silent region-mask fallback (issue 10): a SMPL-X file without the official vertex-id files
warns, naming the missing files; metrics.json records where the masks came from."""

from __future__ import annotations

import json
import pickle
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from persona.body.loader import BodySpec, load_body
from persona.body.model import DERIVED_FROM_WEIGHTS, OFFICIAL_IDS
from persona.body.regions import FLAME_IDS_FILE, MANO_IDS_FILE


def test_missing_official_ids_warn_naming_the_missing_file(procedural_folder) -> None:
    """Old behaviour caught: the masks were silently derived from the skinning weights."""
    np.save(procedural_folder / FLAME_IDS_FILE, np.arange(5))  # only the FLAME file
    with pytest.warns(UserWarning, match=DERIVED_FROM_WEIGHTS) as record:
        body = load_body(BodySpec(kind="smplx", model_path=str(procedural_folder)))
    assert body.region_mask_source == DERIVED_FROM_WEIGHTS
    message = str(record[0].message)
    assert MANO_IDS_FILE in message and FLAME_IDS_FILE not in message


def test_official_ids_and_built_in_bodies_do_not_warn(procedural_folder) -> None:
    count = load_body(BodySpec(kind="procedural")).num_vertices
    with open(procedural_folder / MANO_IDS_FILE, "wb") as stream:
        pickle.dump({"left_hand": np.arange(10), "right_hand": np.arange(10, 20)}, stream)
    np.save(procedural_folder / FLAME_IDS_FILE, np.arange(20, min(60, count)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        body = load_body(BodySpec(kind="smplx", model_path=str(procedural_folder)))
        procedural = load_body(BodySpec(kind="procedural"))  # derived by design: no warning
    assert body.region_mask_source == OFFICIAL_IDS
    assert procedural.region_mask_source == DERIVED_FROM_WEIGHTS


@pytest.mark.parametrize("source", [DERIVED_FROM_WEIGHTS, OFFICIAL_IDS, None])
def test_metrics_json_records_the_region_mask_source(tmp_path, source) -> None:
    """Old behaviour caught: metrics.json did not say whether the masks were approximate."""
    from persona.callbacks.test_metrics import TestMetricsWriter
    from persona.metrics.protocol import EvalProtocol

    body = None if source is None else SimpleNamespace(region_mask_source=source)
    module = SimpleNamespace(eval_protocol=EvalProtocol(name="authors"), body=body)
    trainer = SimpleNamespace(is_global_zero=True, default_root_dir=str(tmp_path), loggers=[],
                              global_step=1, ckpt_path=None)
    writer = TestMetricsWriter()
    writer.on_test_epoch_start(trainer, module)
    batch = {"split": ["test"], "index": torch.tensor([0])}
    writer.on_test_batch_end(trainer, module, {"psnr": 20.0}, batch, 0)
    writer.on_test_epoch_end(trainer, module)
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert "region_mask_source" in data and data["region_mask_source"] == source
