"""Differentiable Gaussian rendering: one ``Renderer`` interface, several backends.

- ``TorchRenderer`` (pure PyTorch, any device; the CPU training path),
- ``DenseRenderer`` (every Gaussian x every pixel; the test oracle),
- ``GsplatRenderer`` (gsplat's CUDA rasteriser, ``rasterize_mode="antialiased"``),
- ``rasterize_silhouette`` (mesh masks, no gradient).
"""

from __future__ import annotations

import importlib.util

import torch

from persona.render.dense import DenseRenderer
from persona.render.silhouette import rasterize_silhouette
from persona.render.torch_renderer import TorchRenderer
from persona.render.types import (
    Camera,
    ChannelGroup,
    Gaussians,
    Renderer,
    RenderSettings,
)

RENDERER_NAMES = ("torch", "dense", "gsplat", "auto")


def gsplat_available() -> bool:
    """True when CUDA is present and the gsplat package is installed."""
    return torch.cuda.is_available() and importlib.util.find_spec("gsplat") is not None


def make_renderer(name: str | Renderer, **kwargs) -> Renderer:
    """Build a renderer by name: "torch", "dense", "gsplat" or "auto" (gsplat when CUDA and
    gsplat are available, else torch). ``kwargs`` go to the backend's constructor. A renderer
    object (e.g. built by LightningCLI from a ``class_path``) is returned as it is."""
    if not isinstance(name, str):
        if kwargs:
            raise ValueError("make_renderer: keyword arguments need a renderer name, not an "
                             f"instance of {type(name).__name__}")
        if not callable(getattr(name, "render", None)):
            raise TypeError(f"make_renderer: {type(name).__name__} has no render() method")
        return name
    if name == "auto":
        name = "gsplat" if gsplat_available() else "torch"
    if name == "torch":
        return TorchRenderer(**kwargs)
    if name == "dense":
        return DenseRenderer(**kwargs)
    if name == "gsplat":
        from persona.render.gsplat_renderer import GsplatRenderer  # imports gsplat lazily

        return GsplatRenderer(**kwargs)
    raise ValueError(f"unknown renderer {name!r}; expected one of {RENDERER_NAMES}")


__all__ = [
    "Camera", "ChannelGroup", "DenseRenderer", "Gaussians", "RenderSettings", "Renderer",
    "TorchRenderer", "make_renderer", "rasterize_silhouette", "gsplat_available",
]
