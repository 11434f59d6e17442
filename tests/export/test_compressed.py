"""SPZ export (persona/export/compressed.py): the file decodes back to the source Gaussians within
the format's stated quantisation (SPZ README and load-spz.cc of nianticlabs/spz: 12 fractional
bits of position, 1/16 log-scale steps, 8-bit alpha and colour, 9-bit quaternion components), and
our reader agrees with the reference decoder (splat-transform's @adobe/spz)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from persona.export.compressed import (
    SPZ_HEADER,
    SPZ_MAGIC,
    convert_with_splat_transform,
    ply_to_spz,
    read_spz,
    splat_transform_problem,
    spz_precision,
    write_spz,
)
from persona.export.ply import read_gaussians_ply

FLOAT_SLACK = 1e-6  # float32 rounding on top of a quantisation bound
NUM_RANDOM = 4000  # Gaussians of the synthetic round trip
MIN_COMPRESSION = 5.0  # an SPZ of these Gaussians is at least this many times smaller than the PLY

needs_tool = pytest.mark.skipif(splat_transform_problem() is not None,
                                reason=f"SPZ writer unavailable: {splat_transform_problem()}")


def _random_gaussians(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    quats = rng.normal(size=(NUM_RANDOM, 4)).astype(np.float32)
    return {"means": (rng.normal(size=(NUM_RANDOM, 3)) * 0.6).astype(np.float32),
            "log_scales": rng.uniform(-7.0, -1.0, (NUM_RANDOM, 3)).astype(np.float32),
            "quats_wxyz": quats / np.linalg.norm(quats, axis=1, keepdims=True),
            "opacity_logit": rng.uniform(-5.0, 5.0, NUM_RANDOM).astype(np.float32),
            "rgb": rng.uniform(0.0, 1.0, (NUM_RANDOM, 3)).astype(np.float32)}


def _same_rotation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """b with each quaternion's sign flipped to match a (q and -q are the same rotation)."""
    return b * np.sign((a * b).sum(1, keepdims=True))


@needs_tool
def test_spz_round_trip_within_stated_precision(tmp_path: Path) -> None:
    g = _random_gaussians()
    out = write_spz(tmp_path / "avatar.spz", **g)
    decoded = read_spz(out)
    bound = spz_precision(decoded.fractional_bits)
    assert (decoded.version, decoded.sh_degree, decoded.fractional_bits) == (3, 0, 12)
    position_error = np.abs(decoded.means - g["means"]).max()
    assert position_error <= bound.position_m + FLOAT_SLACK
    assert position_error > bound.position_m / 4  # quantised: the PLY's floats are not kept
    assert np.abs(np.log(decoded.scales) - g["log_scales"]).max() <= bound.log_scale + 1e-5
    opacities = 1.0 / (1.0 + np.exp(-g["opacity_logit"]))
    assert np.abs(decoded.opacities - opacities).max() <= bound.opacity + FLOAT_SLACK
    assert np.abs(decoded.rgb - g["rgb"]).max() <= bound.rgb + FLOAT_SLACK
    quats = _same_rotation(g["quats_wxyz"], decoded.quats_wxyz)
    assert np.abs(quats - g["quats_wxyz"]).max() <= bound.quaternion + FLOAT_SLACK
    ply_size = NUM_RANDOM * 62 * 4  # the 3DGS PLY's float32 properties
    assert out.stat().st_size * MIN_COMPRESSION < ply_size


@needs_tool
def test_reader_agrees_with_reference_decoder(tmp_path: Path) -> None:
    """splat-transform decodes the SPZ with @adobe/spz (Niantic's library) back to a PLY."""
    out = write_spz(tmp_path / "a.spz", **_random_gaussians(seed=1))
    ours = read_spz(out)
    reference = read_gaussians_ply(convert_with_splat_transform(out, tmp_path / "back.ply"))
    np.testing.assert_allclose(ours.means, reference.means, atol=1e-7)
    np.testing.assert_allclose(ours.scales, reference.scales, rtol=1e-6)
    np.testing.assert_allclose(ours.opacities, reference.opacities, atol=1e-6)
    np.testing.assert_allclose(ours.rgb, reference.rgb, atol=1e-6)
    np.testing.assert_allclose(_same_rotation(ours.quats_wxyz, reference.quats_wxyz),
                               ours.quats_wxyz, atol=1e-6)


@needs_tool
def test_export_cli_writes_spz_of_the_posed_avatar(tiny_ckpt: Path, tmp_path: Path) -> None:
    from persona.export.cli import export_main

    pose = "motion:dance:4"
    assert export_main(["--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "a.spz"),
                        "--pose", pose, "--device", "cpu"]) == 0
    assert export_main(["--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "a.ply"),
                        "--pose", pose, "--device", "cpu"]) == 0
    spz, ply = read_spz(tmp_path / "a.spz"), read_gaussians_ply(tmp_path / "a.ply")
    bound = spz_precision(spz.fractional_bits)
    assert spz.means.shape == ply.means.shape
    assert np.abs(spz.means - ply.means).max() <= bound.position_m + FLOAT_SLACK
    assert np.abs(np.log(spz.scales) - ply.log_scales).max() <= bound.log_scale + 1e-5
    assert np.abs(spz.opacities - ply.opacities).max() <= bound.opacity + FLOAT_SLACK
    assert np.abs(spz.rgb - ply.rgb).max() <= bound.rgb + FLOAT_SLACK
    assert np.abs(spz.quats_wxyz - ply.quats_wxyz).max() <= bound.quaternion  # identity
    assert not list(tmp_path.glob("*.tmp*"))  # the atomic write left nothing behind


def test_read_spz_names_the_file_and_field(tmp_path: Path) -> None:
    bad_magic = tmp_path / "bad.spz"
    bad_magic.write_bytes(gzip.compress(SPZ_HEADER.pack(0x1234, 3, 0, 0, 12, 0, 0)))
    with pytest.raises(ValueError, match=r"bad\.spz: header 'magic'"):
        read_spz(bad_magic)
    truncated = tmp_path / "short.spz"
    truncated.write_bytes(gzip.compress(SPZ_HEADER.pack(SPZ_MAGIC, 3, 10, 0, 12, 0, 0)))
    with pytest.raises(ValueError, match=r"short\.spz: .* expected .* for 10 points"):
        read_spz(truncated)
    version4 = tmp_path / "v4.spz"
    version4.write_bytes(gzip.compress(SPZ_HEADER.pack(SPZ_MAGIC, 4, 0, 0, 12, 0, 0)))
    with pytest.raises(ValueError, match=r"v4\.spz: header 'version' 4"):
        read_spz(version4)
    plain = tmp_path / "plain.spz"
    plain.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match=r"plain\.spz: not a gzip SPZ"):
        read_spz(plain)


def test_missing_writer_says_how_to_install(tmp_path: Path) -> None:
    ply = tmp_path / "a.ply"
    ply.write_bytes(b"ply\n")
    with pytest.raises(FileNotFoundError, match="npm ci|Node.js"):
        ply_to_spz(ply, tmp_path / "a.spz", viewer_root=tmp_path / "no_viewer")
    with pytest.raises(ValueError, match=r"ends in \.spz"):
        ply_to_spz(ply, tmp_path / "a.ply.out")
