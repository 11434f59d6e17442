"""A tiny trained avatar for the export tests: one `persona fit` of the tiny config on the tiny
synthetic subject (as tests/test_lightning_cli.py does, shorter), shared by the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest

FIT_STEPS = 2  # optimiser steps of the tiny run: trained, and cheap (CPU renderer)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RUN/checkpoints/last.ckpt of a 2-step `persona fit` (RUN/config.yaml beside it)."""
    from persona.cli import main
    from persona.data.synth import preset_config, synthesize
    from persona.lightning_cli import BASE_CONFIG

    root = tmp_path_factory.mktemp("export_run")
    subject = root / "subject"
    synthesize(subject, preset_config("tiny", seed=2))
    run = root / "run"
    assert main(["fit", "--config", str(BASE_CONFIG.parent / "tiny.yaml"),
                 "--data.subject_dir", str(subject), "--trainer.default_root_dir", str(run),
                 "--trainer.max_steps", str(FIT_STEPS), "--data.epoch_length", str(FIT_STEPS),
                 "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0"]) == 0
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return ckpt


@pytest.fixture(scope="session")
def tiny_system(tiny_ckpt: Path):
    """The tiny run's PersonaSystem on the CPU, in eval mode (what the export commands load)."""
    from persona.runs import load_trained_system

    system, _ = load_trained_system(tiny_ckpt, device="cpu")
    return system
