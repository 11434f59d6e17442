"""PLY export: the standard 3DGS layout, read back with plyfile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from plyfile import PlyData

from persona.export.ply import (
    PLY_PROPERTIES,
    SH_C0,
    export_gaussians,
    read_gaussians_ply,
    write_gaussians_ply,
)
from persona.render.types import Gaussians

EXPECTED_NAMES = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                  + [f"f_rest_{i}" for i in range(45)]
                  + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2",
                     "rot_3"])


def _avatar(n: int = 500) -> tuple[Gaussians, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    quats = torch.randn(n, 4, generator=g)
    quats = quats / quats.norm(dim=1, keepdim=True)
    gaussians = Gaussians(means=torch.randn(n, 3, generator=g),
                          scales=torch.rand(n, 1, generator=g).expand(n, 3) * 0.02 + 1e-3,
                          opacities=torch.rand(n, generator=g) * 0.98 + 0.01, quats=quats)
    normals = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
    return gaussians, {"rgb": torch.rand(n, 3, generator=g), "normal": normals}


def test_layout_names_order_and_binary_float32(tmp_path: Path) -> None:
    gaussians, channels = _avatar()
    path = export_gaussians(tmp_path / "avatar.ply", gaussians, channels)
    ply = PlyData.read(str(path))
    assert not ply.text and ply.byte_order == "<"
    vertex = ply["vertex"]
    assert [p.name for p in vertex.properties] == EXPECTED_NAMES == list(PLY_PROPERTIES)
    assert all(vertex.data.dtype[name] == np.dtype("<f4") for name in EXPECTED_NAMES)
    assert len(vertex.data) == 500
    header = path.read_bytes()[:200]
    assert b"format binary_little_endian 1.0" in header


def test_values_and_activations_recovered(tmp_path: Path) -> None:
    gaussians, channels = _avatar()
    path = export_gaussians(tmp_path / "avatar.ply", gaussians, channels)
    data = PlyData.read(str(path))["vertex"].data
    column = {name: torch.from_numpy(np.asarray(data[name]).copy()) for name in EXPECTED_NAMES}
    means = torch.stack([column[c] for c in ("x", "y", "z")], 1)
    assert torch.allclose(means, gaussians.means, atol=1e-6)
    scales = torch.stack([column[f"scale_{i}"] for i in range(3)], 1).exp()
    assert torch.allclose(scales, gaussians.scales, atol=1e-6)
    opacity = torch.sigmoid(column["opacity"])
    assert torch.allclose(opacity, gaussians.opacities, atol=1e-6)
    quats = torch.stack([column[f"rot_{i}"] for i in range(4)], 1)
    assert torch.allclose(quats, gaussians.quats, atol=1e-6)  # w first
    rgb = torch.stack([column[f"f_dc_{i}"] for i in range(3)], 1) * SH_C0 + 0.5
    assert torch.allclose(rgb, channels["rgb"], atol=1e-6)
    normals = torch.stack([column[c] for c in ("nx", "ny", "nz")], 1)
    assert torch.allclose(normals, channels["normal"], atol=1e-6)
    assert all(column[f"f_rest_{i}"].abs().max() == 0 for i in range(45))
    # the package reader agrees
    back = read_gaussians_ply(path)
    assert np.allclose(back.opacities, gaussians.opacities.numpy(), atol=1e-6)
    assert np.allclose(back.rgb, channels["rgb"].numpy(), atol=1e-6)


def test_known_raw_values(tmp_path: Path) -> None:
    path = write_gaussians_ply(tmp_path / "one.ply", means=[[1.0, 2.0, 3.0]],
                               log_scales=[[-4.0, -5.0, -6.0]], quats_wxyz=[[1.0, 0, 0, 0]],
                               opacity_logit=[0.0], rgb=[[0.5, 1.0, 0.0]])
    row = PlyData.read(str(path))["vertex"].data[0]
    assert (row["x"], row["y"], row["z"]) == (1.0, 2.0, 3.0)
    assert row["f_dc_0"] == 0.0 and row["f_dc_1"] == pytest.approx(0.5 / SH_C0)
    assert row["opacity"] == 0.0 and row["scale_2"] == -6.0 and row["rot_0"] == 1.0
    assert row["nx"] == 0.0


def test_identity_rotation_when_quats_absent_and_npz_dump(tmp_path: Path) -> None:
    gaussians, channels = _avatar(10)
    gaussians.quats = None
    back = read_gaussians_ply(export_gaussians(tmp_path / "a.ply", gaussians, channels))
    assert np.array_equal(back.quats_wxyz, np.tile([1.0, 0.0, 0.0, 0.0], (10, 1)))
    path = export_gaussians(tmp_path / "a.npz", gaussians, channels, fmt="npz",
                            metadata={"pose": "canonical"})
    with np.load(path) as dump:
        assert np.array_equal(dump["opacities"], gaussians.opacities.numpy())
        assert np.array_equal(dump["channel_rgb"], channels["rgb"].numpy())
        assert str(dump["meta_pose"]) == "canonical"


def test_bad_input_is_clear_and_nothing_half_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"log_scales: expected shape \[2, 3\]"):
        write_gaussians_ply(tmp_path / "bad.ply", np.zeros((2, 3)), np.zeros((3, 3)),
                            np.zeros((2, 4)), np.zeros(2), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="means: contains NaN"):
        write_gaussians_ply(tmp_path / "bad.ply", np.full((1, 3), np.nan), np.zeros((1, 3)),
                            np.zeros((1, 4)), np.zeros(1), np.zeros((1, 3)))
    gaussians, channels = _avatar(4)
    with pytest.raises(ValueError, match="'rgb'"):
        export_gaussians(tmp_path / "bad.ply", gaussians, {"normal": channels["normal"]})
    assert list(tmp_path.iterdir()) == []
