"""Colour initialisation as plain functions: unwrap, source choice, nearest-seen fill."""

from __future__ import annotations

import pytest
import torch

from persona.avatar.colour_init import (
    Unwrapped,
    colour_source_rows,
    fill_unseen,
    initial_colours,
    unwrap_colours,
)
from persona.render.types import Camera, Gaussians


def test_fill_unseen_takes_the_nearest_seen_colour_and_fill_when_nothing_is_seen():
    positions = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0.1, 0, 0], [0.9, 0, 0]])
    colours = torch.tensor([[1.0, 0, 0], [0.0, 1, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    visible = torch.tensor([True, True, False, False])
    filled = fill_unseen(colours, visible, positions, 0.5)
    torch.testing.assert_close(filled[2], colours[0])
    torch.testing.assert_close(filled[3], colours[1])
    assert torch.equal(fill_unseen(colours, torch.zeros(4, dtype=torch.bool), positions, 0.25),
                       torch.full((4, 3), 0.25))


def _unwrapped(is_input: bool, value: float, n: int = 3) -> Unwrapped:
    return Unwrapped(is_input, {"image": torch.full((n, 3), value),
                                "seg": torch.full((n, 3), value / 2)}, torch.ones(n, dtype=bool))


def test_input_image_gives_rgb_and_seg_generated_video_gives_rgb_aux():
    canonical = torch.rand(3, 3)
    colours = initial_colours([_unwrapped(False, 0.2), _unwrapped(True, 0.8)], canonical, 0.5)
    assert float(colours["rgb"][0, 0]) == pytest.approx(0.8)
    assert float(colours["seg"][0, 0]) == pytest.approx(0.4)
    assert float(colours["rgb_aux"][0, 0]) == pytest.approx(0.2)
    only_generated = initial_colours([_unwrapped(False, 0.2)], canonical, 0.5)
    assert float(only_generated["rgb"][0, 0]) == pytest.approx(0.2)
    assert only_generated["seg"] is None
    assert initial_colours([], canonical, 0.5) is None  # the system warns on this


def test_unwrap_keeps_only_gaussians_in_front_of_the_rendered_depth():
    K = torch.tensor([[10.0, 0, 2.0], [0, 10.0, 2.0], [0, 0, 1.0]])
    camera = Camera(K, torch.eye(3), torch.zeros(3), 4, 4)
    means = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 3.0], [5.0, 0.0, 2.0]])  # front/behind/out
    gaussians = Gaussians(means, torch.full((3, 3), 0.01), torch.ones(3))
    rendered = {"alpha": torch.ones(4, 4, 1), "depth": torch.full((4, 4, 1), 2.0)}
    sample = {"mask": torch.ones(4, 4, 1), "image": torch.rand(4, 4, 3),
              "seg": torch.rand(4, 4, 3)}
    colours, visible = unwrap_colours(sample, gaussians, rendered, camera)
    assert visible.tolist() == [True, False, False]
    torch.testing.assert_close(colours["image"][0], sample["image"][2, 2])
    sample["mask"][2, 2] = 0.0  # outside the subject's mask: not a colour source
    assert not unwrap_colours(sample, gaussians, rendered, camera)[1][0]


class _Frame:
    def __init__(self, is_input: bool, split: str, index: int) -> None:
        self.is_input, self.split, self.index = is_input, split, index


def test_colour_source_rows_are_the_input_and_the_first_generated_frame():
    frames = [_Frame(False, "b", 0), _Frame(False, "a", 3), _Frame(True, "captured", 0),
              _Frame(False, "a", 1)]
    assert colour_source_rows(frames) == [2, 3]
