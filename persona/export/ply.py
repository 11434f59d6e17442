"""Gaussians to the standard 3DGS PLY layout (readable by common splat viewers) and to npz.

PLY vertex properties, in order, all float32, binary little endian:
x y z  nx ny nz  f_dc_0..2  f_rest_0..44  opacity  scale_0..2  rot_0..3
with f_dc = (rgb - 0.5) / C0 (the degree-0 spherical-harmonics coefficient), f_rest = 0 (no
view dependence), opacity as a logit, scale as log standard deviation, rot as a (w, x, y, z)
quaternion, normals zero unless given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from persona.atomic import atomic_write

SH_C0 = 0.28209479177387814  # degree-0 real spherical harmonic, 1 / (2 sqrt(pi))
NUM_SH_REST = 45  # degree-3 SH: 15 coefficients x 3 colours beyond the DC term
PLY_PROPERTIES: tuple[str, ...] = (
    ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2")
    + tuple(f"f_rest_{i}" for i in range(NUM_SH_REST))
    + ("opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
)


@dataclass
class GaussianArrays:
    """Raw (pre-activation) Gaussian parameters as stored in a 3DGS PLY."""

    means: np.ndarray  # [N, 3]
    log_scales: np.ndarray  # [N, 3]
    quats_wxyz: np.ndarray  # [N, 4]
    opacity_logit: np.ndarray  # [N]
    rgb: np.ndarray  # [N, 3] in [0, 1]
    normals: np.ndarray  # [N, 3]

    @property
    def scales(self) -> np.ndarray:
        return np.exp(self.log_scales)

    @property
    def opacities(self) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.opacity_logit))


def _numpy(value: Tensor | np.ndarray, name: str, shape: tuple[int | None, ...]) -> np.ndarray:
    array = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
    if array.ndim != len(shape) or any(s is not None and a != s
                                       for a, s in zip(array.shape, shape, strict=True)):
        want = ", ".join("N" if s is None else str(s) for s in shape)
        raise ValueError(f"{name}: expected shape [{want}], got {list(array.shape)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return array.astype(np.float32)


def _collect(means, log_scales, quats_wxyz, opacity_logit, rgb, normals) -> GaussianArrays:
    means = _numpy(means, "means", (None, 3))
    n = means.shape[0]
    arrays = GaussianArrays(
        means=means,
        log_scales=_numpy(log_scales, "log_scales", (n, 3)),
        quats_wxyz=_numpy(quats_wxyz, "quats_wxyz", (n, 4)),
        opacity_logit=_numpy(opacity_logit, "opacity_logit", (n,)),
        rgb=_numpy(rgb, "rgb", (n, 3)),
        normals=np.zeros((n, 3), np.float32) if normals is None
        else _numpy(normals, "normals", (n, 3)),
    )
    return arrays


def write_gaussians_ply(path: str | os.PathLike, means: Tensor | np.ndarray,
                        log_scales: Tensor | np.ndarray, quats_wxyz: Tensor | np.ndarray,
                        opacity_logit: Tensor | np.ndarray, rgb: Tensor | np.ndarray,
                        normals: Tensor | np.ndarray | None = None) -> Path:
    """Write the standard 3DGS PLY (see module docstring). Returns the path."""
    from plyfile import PlyData, PlyElement

    g = _collect(means, log_scales, quats_wxyz, opacity_logit, rgb, normals)
    n = g.means.shape[0]
    f_dc = (g.rgb - 0.5) / SH_C0  # [N, 3]
    columns = np.concatenate([
        g.means, g.normals, f_dc, np.zeros((n, NUM_SH_REST), np.float32),
        g.opacity_logit[:, None], g.log_scales, g.quats_wxyz,
    ], axis=1).astype(np.float32)  # [N, 62]
    vertex = np.empty(n, dtype=[(name, "<f4") for name in PLY_PROPERTIES])
    for i, name in enumerate(PLY_PROPERTIES):
        vertex[name] = columns[:, i]
    ply = PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<")
    return atomic_write(path, lambda temporary: ply.write(str(temporary)))


def read_gaussians_ply(path: str | os.PathLike) -> GaussianArrays:
    """Read a 3DGS PLY written by `write_gaussians_ply` (or any file with those properties)."""
    from plyfile import PlyData

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PLY file not found: {path}")
    ply = PlyData.read(str(path))
    if "vertex" not in ply:
        raise ValueError(f"{path}: no 'vertex' element")
    vertex = ply["vertex"].data
    names = set(vertex.dtype.names)

    def stack(*columns: str) -> np.ndarray:
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(f"{path}: vertex property {missing[0]!r} missing")
        return np.stack([np.asarray(vertex[c], np.float32) for c in columns], axis=1)

    normals = stack("nx", "ny", "nz") if {"nx", "ny", "nz"} <= names \
        else np.zeros((len(vertex), 3), np.float32)
    return GaussianArrays(
        means=stack("x", "y", "z"),
        log_scales=stack("scale_0", "scale_1", "scale_2"),
        quats_wxyz=stack("rot_0", "rot_1", "rot_2", "rot_3"),
        opacity_logit=stack("opacity")[:, 0],
        rgb=stack("f_dc_0", "f_dc_1", "f_dc_2") * SH_C0 + 0.5,
        normals=normals,
    )


def write_gaussians_npz(path: str | os.PathLike, arrays: dict[str, Tensor | np.ndarray]) -> Path:
    """Full-fidelity dump: every array as given (activated Gaussians, every channel, metadata)."""
    converted = {}
    for key, value in arrays.items():
        converted[key] = value.detach().cpu().numpy() if isinstance(value, Tensor) \
            else np.asarray(value)
    return atomic_write(path, lambda temporary: savez_into(temporary, converted))


def savez_into(target: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed into the file `target` as named (given a path, numpy would add
    .npz to a name without it)."""
    with open(target, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def logit(p: Tensor, eps: float = 1e-6) -> Tensor:
    """Inverse sigmoid with p clamped to [eps, 1 - eps] (eps keeps opacity 0/1 finite)."""
    p = p.clamp(eps, 1.0 - eps)
    return torch.log(p) - torch.log1p(-p)


EXPORT_FORMATS = ("ply", "npz", "spz")


def format_for_path(path: str | os.PathLike) -> str:
    """The export format an output name asks for: its suffix when one of EXPORT_FORMATS, else
    ply."""
    suffix = Path(path).suffix.lstrip(".").lower()
    return suffix if suffix in EXPORT_FORMATS else "ply"


def export_gaussians(path: str | os.PathLike, gaussians, channels: dict[str, Tensor],
                     fmt: str = "ply", metadata: dict[str, object] | None = None) -> Path:
    """Export activated Gaussians (`persona.render.types.Gaussians`) with their channels.

    channels must hold "rgb" [N, 3] in [0, 1] (the contract of `posed_gaussians`); "normal" [N, 3]
    is written to nx, ny, nz when present. ply: the standard 3DGS layout (activations inverted:
    log scales, opacity logits, identity rotation when quats is None). spz: the same Gaussians
    compressed (persona/export/compressed.py; needs viewer/node_modules). npz: every activated array
    and every channel as float32, plus `metadata` entries (full fidelity, no SH round trip).
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format: expected one of {EXPORT_FORMATS}, got {fmt!r}")
    if "rgb" not in channels:
        raise ValueError(f"export {path}: channels need 'rgb' [N, 3], got {sorted(channels)}")
    means = gaussians.means.detach().float()  # [N, 3]
    n = means.shape[0]
    scales = gaussians.scales.detach().float()  # [N, 3] (or [N, 1] isotropic)
    if scales.ndim == 1:
        scales = scales[:, None]
    scales = scales.expand(n, 3)
    quats = gaussians.quats.detach().float() if gaussians.quats is not None \
        else torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(n, 4)
    opacities = gaussians.opacities.detach().float().reshape(n)
    if fmt == "npz":
        arrays: dict[str, object] = {"means": means, "scales": scales, "quats_wxyz": quats,
                                     "opacities": opacities}
        arrays.update({f"channel_{k}": v.detach().float() for k, v in channels.items()})
        arrays.update({f"meta_{k}": np.asarray(v) for k, v in (metadata or {}).items()})
        return write_gaussians_npz(path, arrays)
    if (scales <= 0).any():
        raise ValueError(f"export {path}: Gaussian scales must be > 0 for a log-scale PLY")
    if fmt == "spz":  # compressed: persona/export/compressed.py (SPZ through splat-transform)
        from persona.export.compressed import write_spz

        return write_spz(path, means, scales.log(), quats, logit(opacities),
                         channels["rgb"].detach().float().clamp(0, 1))
    return write_gaussians_ply(path, means, scales.log(), quats, logit(opacities),
                               channels["rgb"].detach().float().clamp(0, 1),
                               normals=channels.get("normal"))
