"""Device placement on the CPU (issue 13): every render of the avatar happens on the device the
module was placed on, through a real `persona fit`, `persona test`, `persona export` and
`persona animate` of the tiny subject.

A CPU-only machine has one device, so the only detectable fault is *ordering*: rendering before
the module was placed. On CUDA that fault is gsplat receiving CPU tensors (the colour
initialisation in `PersonaSystem.setup` ran before Lightning moved the module). Here a renderer
stand-in (a `TorchRenderer` returned by `make_renderer`) refuses any render

- of a system that no `PersonaSystem.to(device)` call has placed yet, or
- whose tensors (Gaussians, colours, camera) are not on that device, or
- whose placement differs from the trainer's `strategy.root_device` when a trainer is attached.

Old behaviour caught: `setup` -> `build` -> `_initialise_colours` rendered before any placement
(fit, test), and `runs.load_trained_system` built (and rendered) before `system.to(device)`
(export, animate); `persona export/animate` had no `--device`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

import persona.render
import persona.system
from persona.cli import main
from persona.data.synth import preset_config, synthesize
from persona.export.cli import animate_main, export_main
from persona.lightning_cli import BASE_CONFIG
from persona.render.torch_renderer import TorchRenderer
from persona.system import PersonaSystem

TINY = str(BASE_CONFIG.parent / "tiny.yaml")
FIT_STEPS = 2  # training steps of the tiny fit
ANIMATION_FRAMES = 2  # frames `persona animate` renders
ANIMATION_SIZE = ("64", "96")  # width, height of the animation


class WrongDeviceRender(RuntimeError):
    """A render of tensors the module was not (yet) placed with."""


class PlacementLedger:
    """Which device each PersonaSystem was placed on (by `.to(device)`), and the system being
    built (the one whose renders the stand-in checks)."""

    def __init__(self) -> None:
        self.placed: dict[int, torch.device] = {}
        self.current: PersonaSystem | None = None
        self.renders = 0

    def expected_device(self) -> torch.device:
        system = self.current
        if system is None:
            raise WrongDeviceRender("a render before any PersonaSystem was built")
        placed = self.placed.get(id(system))
        if placed is None:
            raise WrongDeviceRender("a render before the module was placed on a device "
                                    "(PersonaSystem.to(device) was not called yet)")
        trainer = getattr(system, "_trainer", None)
        if trainer is not None and trainer.strategy.root_device != placed:
            raise WrongDeviceRender(f"the module is on {placed}, the trainer chose "
                                    f"{trainer.strategy.root_device}")
        return placed


def _same_device(a: torch.device, b: torch.device) -> bool:
    """cpu == cpu; cuda == cuda:0 when the index is left out."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def make_checking_renderer_class(ledger: PlacementLedger) -> type[TorchRenderer]:
    class DeviceCheckingRenderer(TorchRenderer):
        """TorchRenderer that refuses tensors not on the device the module was placed on."""

        def render(self, gaussians, camera, channels, settings=None):
            device = ledger.expected_device()
            tensors = {"means": gaussians.means, "scales": gaussians.scales,
                       "opacities": gaussians.opacities, "camera.K": camera.K,
                       "camera.R": camera.R, "camera.t": camera.t,
                       **{f"channel {k}": g.values for k, g in channels.items()}}
            for name, tensor in tensors.items():
                if not _same_device(tensor.device, device):
                    raise WrongDeviceRender(f"{name} is on {tensor.device}, the module on "
                                            f"{device}")
            ledger.renders += 1
            return super().render(gaussians, camera, channels, settings)

    return DeviceCheckingRenderer


@pytest.fixture
def ledger(monkeypatch: pytest.MonkeyPatch) -> PlacementLedger:
    """Record placements and builds of PersonaSystem; every renderer is the checking one."""
    book = PlacementLedger()
    original_to, original_build = PersonaSystem.to, PersonaSystem.build

    @functools.wraps(original_to)
    def recording_to(self, *args, **kwargs):
        device = torch._C._nn._parse_to(*args, **kwargs)[0]  # nn.Module.to's own parsing
        if device is not None:
            book.placed[id(self)] = torch.device(device)
        return original_to(self, *args, **kwargs)

    @functools.wraps(original_build)
    def recording_build(self, *args, **kwargs):
        book.current = self
        return original_build(self, *args, **kwargs)

    checking = make_checking_renderer_class(book)

    def make_renderer(name: str = "torch", **kwargs):
        assert name in ("torch", "auto"), f"the CPU device test expects torch/auto, got {name}"
        return checking(**kwargs)

    monkeypatch.setattr(PersonaSystem, "to", recording_to)
    monkeypatch.setattr(PersonaSystem, "build", recording_build)
    monkeypatch.setattr(persona.render, "make_renderer", make_renderer)
    if hasattr(persona.system, "make_renderer"):  # imported at module level
        monkeypatch.setattr(persona.system, "make_renderer", make_renderer)
    return book


def test_stand_in_refuses_renders_before_placement() -> None:
    """The stand-in itself: no system, an unplaced one, then a placed one."""
    book = PlacementLedger()
    with pytest.raises(WrongDeviceRender, match="before any PersonaSystem"):
        book.expected_device()
    system = PersonaSystem(subdivision_levels=0)
    book.current = system
    with pytest.raises(WrongDeviceRender, match="before the module was placed"):
        book.expected_device()
    book.placed[id(system)] = torch.device("cpu")
    assert book.expected_device() == torch.device("cpu")


def test_fit_test_export_animate_render_on_the_placed_device(
        ledger: PlacementLedger, tmp_path: Path) -> None:
    subject = tmp_path / "subject"
    synthesize(subject, preset_config("tiny", seed=4))
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "last.ckpt"

    # persona fit: setup builds the avatar (colour initialisation renders), then training and
    # one validation frame render
    assert main(["fit", "--config", TINY, "--data.subject_dir", str(subject),
                 "--trainer.default_root_dir", str(run), "--trainer.max_steps", str(FIT_STEPS),
                 "--data.epoch_length", str(FIT_STEPS),
                 "--trainer.max_epochs", "1"]) == 0
    assert ckpt.is_file()
    fit_renders, ledger.renders = ledger.renders, 0
    assert fit_renders > FIT_STEPS  # colour init + 2 passes per step + validation

    # persona test: a fresh system, built in setup, then the checkpoint
    assert main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(ckpt),
                 "--trainer.limit_test_batches", "1",
                 "--model.eval_protocol.fit_steps", "1"]) == 0
    assert ledger.renders > 0
    ledger.renders = 0

    # persona export: the checkpoint loaded onto the device asked for (colour init renders)
    out = tmp_path / "avatar.ply"
    assert export_main(["--ckpt", str(ckpt), "--out", str(out), "--device", "cpu"]) == 0
    assert out.is_file() and ledger.renders > 0
    ledger.renders = 0

    # persona animate --renderer auto: the avatar on the CPU is drawn by the torch renderer
    video = tmp_path / "clip.mp4"
    assert animate_main(["--ckpt", str(ckpt), "--motion", "wave", "--out", str(video),
                         "--device", "cpu", "--renderer", "auto", "--max-frames",
                         str(ANIMATION_FRAMES), "--width", ANIMATION_SIZE[0],
                         "--height", ANIMATION_SIZE[1]]) == 0
    assert video.is_file() and ledger.renders >= ANIMATION_FRAMES


def test_renderer_names_follow_the_avatar_device() -> None:
    """gsplat draws CUDA tensors only: loading onto a non-CUDA device turns the model's
    gsplat/auto renderer into torch; `persona animate --renderer auto` picks torch for a CPU
    avatar (old: gsplat whenever CUDA existed) and refuses gsplat for one."""
    from persona.export.cli import animation_renderer_name
    from persona.runs import renderer_for_device, resolve_device

    cpu = torch.device("cpu")
    assert renderer_for_device("gsplat", cpu) == renderer_for_device("auto", cpu) == "torch"
    assert renderer_for_device("gsplat", torch.device("cuda")) == "gsplat"
    assert animation_renderer_name("auto", cpu) == "torch"
    with pytest.raises(ValueError, match="--device cuda"):
        animation_renderer_name("gsplat", cpu)
    assert resolve_device("cpu") == cpu
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
