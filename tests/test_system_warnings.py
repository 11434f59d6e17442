"""No silent fallbacks in PersonaSystem (issue 10): a skipped non-finite training step names the
terms, a colour initialisation without a source frame says so."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from persona.data.datamodule import PersonaDataModule, collate_frames
from persona.data.synth import preset_config, synthesize
from persona.losses.table import LossWeights
from persona.system import DeformerConfig, PersonaSystem, SkinningConfig

FAST_MODEL = dict(subdivision_levels=0, renderer="torch",
                  skinning=SkinningConfig(grid_size=24),
                  deformer=DeformerConfig(triplane_resolution=16),
                  losses=LossWeights(lpips=0.0))
NEUTRAL_COLOUR = 0.3  # not sigmoid(0) = 0.5, so a fill left at the raw default shows


@pytest.fixture(scope="module")
def tiny_subject(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("subject") / "tiny"
    synthesize(root, preset_config("tiny", seed=1))
    return root


@pytest.fixture(scope="module")
def datamodule(tiny_subject: Path) -> PersonaDataModule:
    dm = PersonaDataModule(str(tiny_subject), epoch_length=3, seed=3)
    dm.setup("fit")
    return dm


def test_skipped_nonfinite_step_warns_naming_exactly_the_bad_terms(datamodule) -> None:
    """Old behaviour caught: a non-finite step was skipped without saying which terms."""
    system = PersonaSystem(**FAST_MODEL)
    system.build_from_datamodule(datamodule)
    logged: dict[str, float] = {}
    system.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    with torch.no_grad():
        system.avatar.rgb_aux.fill_(float("nan"))  # only the rgb_aux terms become NaN
    row = datamodule.generated_rows[0]  # a generated frame: rgb_aux is supervised there
    batch = collate_frames([datamodule.train_dataset()[row]])
    with pytest.warns(UserWarning, match="skipped a training step") as record:
        assert system.training_step(batch, 0) is None
    message = next(str(w.message) for w in record if "skipped" in str(w.message))
    named = set(re.findall(r"'([^']+)'", re.search(r"terms \[([^\]]*)\]", message).group(1)))
    losses = {k.split("/")[-1]: v for k, v in logged.items() if k.startswith("train/loss/")}
    bad = {name for name, value in losses.items() if not torch.isfinite(torch.tensor(value))}
    assert bad and bad != set(losses), "some terms finite, some not"
    assert named == bad
    assert f"frame {batch['split'][0]}/{int(batch['index'][0])}" in message
    assert system.nonfinite_steps == 1


def _build_without_sources(datamodule, neutral_colour: float) -> PersonaSystem:
    from persona.body.loader import load_body

    system = PersonaSystem(**FAST_MODEL, neutral_colour=neutral_colour)
    body = load_body(datamodule.body_spec)
    system.build(body, datamodule.identity, datamodule.train_frames, colour_sources=[])
    return system


def test_colour_initialisation_without_a_source_frame_warns(datamodule) -> None:
    """Old behaviour caught: with no input image or generated frame the colours silently kept
    their initial values."""
    with pytest.warns(UserWarning, match="no colour source frame"):
        system = _build_without_sources(datamodule, 0.5)
    torch.testing.assert_close(torch.sigmoid(system.avatar.rgb),
                               torch.full_like(system.avatar.rgb, 0.5))


def test_colours_without_a_source_frame_take_the_neutral_colour(datamodule) -> None:
    with pytest.warns(UserWarning, match=f"neutral_colour {NEUTRAL_COLOUR}"):
        system = _build_without_sources(datamodule, NEUTRAL_COLOUR)
    for name in ("rgb", "rgb_aux"):
        colours = torch.sigmoid(getattr(system.avatar, name))
        torch.testing.assert_close(colours, torch.full_like(colours, NEUTRAL_COLOUR))
