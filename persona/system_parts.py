"""The system's fixed (non-learned) state, and small helpers of the LightningModule.

`FrozenParts` holds what the system computes with but never optimises: the body model, the
avatar template, the subject's identity, the skinning volume, mesh edges, region faces and
silhouette face labels, and the frozen LPIPS networks. Its tensors are non-persistent buffers
and its modules are moved in `_apply`, so `.to()` (and Lightning) move all of it with the
system while checkpoints keep none of it (body files may be licensed; LPIPS and the skinning
volume are rebuilt from their caches). No file I/O happens here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

import torch
from torch import Tensor, nn

from persona.avatar.template import AvatarTemplate
from persona.body.types import Identity
from persona.losses.terms import SILHOUETTE_LABELS
from persona.ops.mesh import mesh_edges
from persona.render.types import Camera

TEMPLATE = "template"  # buffer-name prefix of the template's tensors
IDENTITY = "identity"  # buffer-name prefix of the identity's tensors
REGION_FACE_TERMS = {"hand_mask": "hands", "eye_mask": "eyes"}  # silhouette term -> region


def region_faces(body: Any, region: str) -> Tensor:
    """[F', 3] the body's faces whose three vertices lie in the region."""
    return body.faces[body.region_masks[region][body.faces].all(1)]


def silhouette_face_labels(body: Any) -> Tensor:
    """[F] int64 per-face labels of the whole mesh for z-buffered silhouettes (0 = rest)."""
    labels = torch.zeros(body.faces.shape[0], dtype=torch.int64)
    for label, region in SILHOUETTE_LABELS.items():
        labels[body.region_masks[region][body.faces].all(1).cpu()] = label
    return labels


class FrozenParts(nn.Module):
    """Non-learned state that moves with `.to()` and stays out of the state dict."""

    def __init__(self, body: nn.Module, template: AvatarTemplate, identity: Identity,
                 field: nn.Module | None = None, lpips_train: nn.Module | None = None,
                 lpips_eval: nn.Module | None = None) -> None:
        super().__init__()
        # Plain dict, not submodules: their own (persistent) buffers and parameters stay out of
        # state_dict() and parameters(); `_apply` moves them.
        self._unregistered: dict[str, nn.Module | None] = {
            "body": body, "field": field, "lpips_train": lpips_train, "lpips_eval": lpips_eval}
        self._layouts: dict[str, tuple[type, dict[str, tuple[str, Any]]]] = {}
        self._register_dataclass(TEMPLATE, template)
        self._register_dataclass(IDENTITY, identity)
        self.register_buffer("edges", mesh_edges(template.faces, template.num_vertices),
                             persistent=False)
        self.register_buffer("face_labels", silhouette_face_labels(body), persistent=False)
        for term, region in REGION_FACE_TERMS.items():
            self.register_buffer(f"region_faces_{term}", region_faces(body, region),
                                 persistent=False)
        # [N, 3] the colours unwrapped at step 0 (the authors' frozen rgb_orig of face_geo);
        # None until the colour initialisation sets it.
        self.register_buffer("rgb_init", None, persistent=False)

    # -------------------------------------------------------------- dataclasses as buffers
    def _register_dataclass(self, prefix: str, value: Any) -> None:
        """Each tensor field (and each tensor of a dict field) of a dataclass becomes a
        non-persistent buffer "<prefix>__<field>[__<key>]"; other fields are kept as they are."""
        layout: dict[str, tuple[str, Any]] = {}  # field -> (kind, dict keys | plain value)
        for item in fields(value):
            name, field_value = item.name, getattr(value, item.name)
            if isinstance(field_value, dict):
                layout[name] = ("dict", list(field_value))
                for key, tensor in field_value.items():
                    self.register_buffer(f"{prefix}__{name}__{key}", tensor, persistent=False)
            elif isinstance(field_value, Tensor):
                layout[name] = ("tensor", None)
                self.register_buffer(f"{prefix}__{name}", field_value, persistent=False)
            else:
                layout[name] = ("value", field_value)
        self._layouts[prefix] = (type(value), layout)

    def _rebuild(self, prefix: str) -> Any:
        cls, layout = self._layouts[prefix]
        values: dict[str, Any] = {}
        for name, (kind, extra) in layout.items():
            if kind == "dict":
                values[name] = {key: getattr(self, f"{prefix}__{name}__{key}") for key in extra}
            elif kind == "tensor":
                values[name] = getattr(self, f"{prefix}__{name}")
            else:
                values[name] = extra
        return cls(**values)

    # -------------------------------------------------------------- moving
    def _apply(self, fn: Callable, recurse: bool = True) -> FrozenParts:
        super()._apply(fn, recurse)
        for module in self._unregistered.values():
            if module is not None:
                module._apply(fn, recurse)
        return self

    # -------------------------------------------------------------- access
    @property
    def template(self) -> AvatarTemplate:
        return self._rebuild(TEMPLATE)

    @property
    def identity(self) -> Identity:
        return self._rebuild(IDENTITY)

    @property
    def body(self) -> Any:
        return self._unregistered["body"]

    @property
    def field(self) -> nn.Module | None:
        return self._unregistered["field"]

    @property
    def lpips_train(self) -> nn.Module | None:
        return self._unregistered["lpips_train"]

    @property
    def lpips_eval(self) -> nn.Module | None:
        return self._unregistered["lpips_eval"]

    @property
    def region_faces(self) -> dict[str, Tensor]:
        """silhouette term ("hand_mask", "eye_mask") -> [F', 3] faces of its region."""
        return {term: getattr(self, f"region_faces_{term}") for term in REGION_FACE_TERMS}

    @property
    def device(self) -> torch.device:
        return self.edges.device


def batch_camera(batch: dict) -> Camera:
    """The camera of a collated frame (batch size 1)."""
    return Camera(batch["K"][0], batch["R"][0], batch["t"][0], int(batch["width"]),
                  int(batch["height"]))


def to_batch(sample: dict, device: torch.device) -> dict:
    """A dataset sample as a batch of one on `device` (tensors get a leading 1)."""
    return {k: (v.unsqueeze(0).to(device) if isinstance(v, Tensor) else v)
            for k, v in sample.items()}


def to_device(sample: dict, device: torch.device) -> dict:
    """A dataset sample with its tensors on `device`."""
    return {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in sample.items()}
