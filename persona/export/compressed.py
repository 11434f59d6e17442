"""The compressed sharing format: SPZ (`persona export --ckpt C --out avatar.spz`).

SPZ is Niantic's compressed Gaussian-splat format (github.com/nianticlabs/spz, MIT), read by the
common web viewers (Spark, SuperSplat / PlayCanvas, ...). The file is written by PlayCanvas's
`@playcanvas/splat-transform` command-line tool, installed at set-up time in `viewer/node_modules`
(`npm ci` in viewer/; never fetched at run time), which encodes with `@adobe/spz`, the WebAssembly
build of Niantic's reference C++ library. We write SPZ version 3 (one gzip stream; version 4 needs
zstd to read) with spherical-harmonics degree 0 (persona's colours do not depend on the view).

`read_spz` is an independent numpy reader of versions 2 and 3 (the tests compare it with the
source Gaussians and with splat-transform's own decoder). The format's quantisation, as stated in
the SPZ README and `src/cc/load-spz.cc` of nianticlabs/spz:
- positions: 24-bit signed fixed point with `fractionalBits` (12: "~0.25 millimeter resolution");
- scales: 8-bit, `(log(scale) + 10) * 16`;  alphas: 8-bit, `sigmoid(opacity) * 255`;
- colours: 8-bit, `f_dc * 0.15 * 255 + 127.5` (f_dc the degree-0 SH coefficient);
- rotations (version 3): the smallest three quaternion components, 9-bit magnitude + sign each.
SPZ stores right-up-back axes and splat-transform reads a PLY as right-down-front (the 3DGS
convention), so y and z are negated on disk; `read_spz` undoes it: the file reads back in the
PLY's (persona's) coordinates.
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from persona.atomic import atomic_write
from persona.export.ply import SH_C0

VIEWER_ROOT = Path(__file__).resolve().parents[2] / "viewer"  # package.json + node_modules
SPLAT_TRANSFORM_CLI = Path("node_modules/@playcanvas/splat-transform/bin/cli.mjs")
SPZ_SUFFIX = ".spz"
SPZ_WRITE_VERSION = 3  # gzip container, readable by every SPZ reader (4: zstd streams)
SPZ_READ_VERSIONS = (2, 3)  # what read_spz decodes
SPZ_MAGIC = 0x5053474E  # "NGSP"
SPZ_HEADER = struct.Struct("<IIIBBBB")  # magic, version, points, sh degree, fractional bits,
#                                         flags, reserved: 16 bytes
SPZ_FLAG_EXTENSIONS = 0x2  # header flag: extension records follow the header
SPZ_COLOR_SCALE = 0.15  # load-spz.cc colorScale: f_dc * 0.15 * 255 + 127.5 is stored
SPZ_SCALE_OFFSET = 10.0  # load-spz.cc: (log scale + 10) * 16 is stored
SPZ_SCALE_STEPS = 16.0  # steps per unit of log scale
SPZ_QUAT_BITS = 9  # version 3: magnitude bits of each of the three smallest components
QUAT_REBUILD_FACTOR = 3.0  # error growth of the quaternion component rebuilt from the norm
SPZ_SH_DIMS = {0: 0, 1: 3, 2: 8, 3: 15}  # SH coefficients per colour beyond DC, by degree
BYTE_MAX = 255.0
RDF_TO_RUB = np.array([1.0, -1.0, -1.0], np.float32)  # y and z flip between the two conventions
SPLAT_TRANSFORM_TIMEOUT_S = 600  # seconds; the default avatar (~167k Gaussians) takes ~2 s


@dataclass
class SpzPrecision:
    """Largest decoding error of each quantity for an in-range value (half a quantisation step)."""

    position_m: float  # metres (per coordinate)
    log_scale: float  # natural log of the standard deviation
    opacity: float  # activated opacity in [0, 1]
    rgb: float  # colour in [0, 1] (through f_dc = (rgb - 0.5) / SH_C0)
    quaternion: float  # per component of the unit quaternion (see spz_precision)


def spz_precision(fractional_bits: int = 12) -> SpzPrecision:
    """Half a quantisation step of each stored quantity (the format's stated encoding)."""
    return SpzPrecision(
        position_m=0.5 / (1 << fractional_bits),
        log_scale=0.5 / SPZ_SCALE_STEPS,
        opacity=0.5 / BYTE_MAX,
        rgb=0.5 * SH_C0 / (SPZ_COLOR_SCALE * BYTE_MAX),
        # three components are stored (half a step each); the largest is rebuilt from the unit
        # norm, |dq_L| <= sum|q_i| e / q_L <= 3 e since q_L >= 1/2
        quaternion=QUAT_REBUILD_FACTOR * 0.5 * math.sqrt(0.5) / ((1 << SPZ_QUAT_BITS) - 1))


@dataclass
class SpzGaussians:
    """Decoded SPZ contents, in the PLY's (persona's) coordinates, activated."""

    means: np.ndarray  # [N, 3] metres
    scales: np.ndarray  # [N, 3] standard deviations
    quats_wxyz: np.ndarray  # [N, 4] unit quaternions
    opacities: np.ndarray  # [N] in [0, 1]
    rgb: np.ndarray  # [N, 3] colour from the degree-0 coefficient (may leave [0, 1] slightly)
    version: int
    sh_degree: int
    fractional_bits: int


# ---------------------------------------------------------------------------- writing
def splat_transform_problem(viewer_root: Path = VIEWER_ROOT) -> str | None:
    """Why the SPZ writer cannot run here (None when it can): node and splat-transform needed."""
    if shutil.which("node") is None:
        return "Node.js (`node`) is not on PATH; install Node.js 20+ (make install)"
    cli = viewer_root / SPLAT_TRANSFORM_CLI
    if not cli.is_file():
        return (f"{cli} is missing: run `npm ci` in {viewer_root} (make install) to install "
                "the viewer's and the SPZ writer's packages")
    return None


def convert_with_splat_transform(source: Path, out: Path, actions: list[str] | None = None,
                                 extra: list[str] | None = None,
                                 viewer_root: Path = VIEWER_ROOT) -> Path:
    """Run `splat-transform [extra] source [actions] out` (overwriting out); errors carry the
    tool's own message."""
    problem = splat_transform_problem(viewer_root)
    if problem is not None:
        raise FileNotFoundError(f"SPZ export: {problem}")
    command = ["node", str(viewer_root / SPLAT_TRANSFORM_CLI), "-q", "-w", *(extra or []),
               str(source), *(actions or []), str(out)]
    done = subprocess.run(command, capture_output=True, text=True,
                          timeout=SPLAT_TRANSFORM_TIMEOUT_S, check=False)
    if done.returncode != 0 or not out.is_file():
        raise ValueError(f"splat-transform could not convert {source} to {out} (exit "
                         f"{done.returncode}): {(done.stderr or done.stdout).strip()[-800:]}")
    return out


def ply_to_spz(ply: str | os.PathLike, out: str | os.PathLike,
               viewer_root: Path = VIEWER_ROOT) -> Path:
    """Compress a 3DGS PLY to SPZ version 3 with SH degree 0; atomic (temporary name, rename)."""
    out = Path(out)
    if out.suffix != SPZ_SUFFIX:
        raise ValueError(f"--out {out}: an SPZ file ends in {SPZ_SUFFIX}")
    return atomic_write(out, lambda temporary: convert_with_splat_transform(
        Path(ply), temporary, actions=["-H", "0"],
        extra=["--spz-version", str(SPZ_WRITE_VERSION)], viewer_root=viewer_root))


def write_spz(path: str | os.PathLike, means, log_scales, quats_wxyz, opacity_logit,
              rgb) -> Path:
    """Gaussians (the arguments of `write_gaussians_ply`) to an SPZ file, through a temporary
    3DGS PLY."""
    from persona.export.ply import write_gaussians_ply

    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="persona_spz_") as folder:
        ply = write_gaussians_ply(Path(folder) / "source.ply", means, log_scales, quats_wxyz,
                                  opacity_logit, rgb)
        return ply_to_spz(ply, path)


# ---------------------------------------------------------------------------- reading
def _unpack_smallest_three(packed: np.ndarray) -> np.ndarray:
    """[N, 4] uint8 (version 3 rotations) -> [N, 4] (x, y, z, w) unit quaternions."""
    comp = packed.astype(np.uint32)
    word = comp[:, 0] | (comp[:, 1] << 8) | (comp[:, 2] << 16) | (comp[:, 3] << 24)  # [N]
    largest = (word >> 30).astype(np.int64)
    mask = (1 << SPZ_QUAT_BITS) - 1
    quats = np.zeros((len(word), 4), np.float64)
    # the three smaller components are packed first-to-last with the last in the lowest bits
    remaining = word.copy()
    for slot in range(3, -1, -1):
        value = (remaining & mask).astype(np.float64) / mask * math.sqrt(0.5)
        negative = ((remaining >> SPZ_QUAT_BITS) & 1).astype(bool)
        is_largest = largest == slot
        quats[:, slot] = np.where(is_largest, 0.0, np.where(negative, -value, value))
        remaining = np.where(is_largest, remaining, remaining >> (SPZ_QUAT_BITS + 1))
    rest = np.sqrt(np.clip(1.0 - (quats ** 2).sum(1), 0.0, None))  # [N]
    quats[np.arange(len(word)), largest] = rest
    return quats


def _unpack_first_three(packed: np.ndarray) -> np.ndarray:
    """[N, 3] uint8 (version 2 rotations) -> [N, 4] (x, y, z, w), w >= 0."""
    xyz = packed.astype(np.float64) / 127.5 - 1.0
    w = np.sqrt(np.clip(1.0 - (xyz ** 2).sum(1), 0.0, None))
    return np.concatenate([xyz, w[:, None]], axis=1)


def read_spz(path: str | os.PathLike) -> SpzGaussians:
    """Decode an SPZ file of version 2 or 3 (gzip); errors name the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SPZ file not found: {path}")
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a gzip SPZ file (versions {SPZ_READ_VERSIONS}): "
                         f"{exc}") from exc
    if len(data) < SPZ_HEADER.size:
        raise ValueError(f"{path}: shorter than the {SPZ_HEADER.size}-byte SPZ header")
    magic, version, count, sh_degree, fractional_bits, flags, _ = SPZ_HEADER.unpack_from(data)
    if magic != SPZ_MAGIC:
        raise ValueError(f"{path}: header 'magic' is {magic:#x}, not NGSP ({SPZ_MAGIC:#x})")
    if version not in SPZ_READ_VERSIONS:
        raise ValueError(f"{path}: header 'version' {version} not supported "
                         f"(this reader: {SPZ_READ_VERSIONS})")
    if flags & SPZ_FLAG_EXTENSIONS:
        raise ValueError(f"{path}: header 'flags' {flags:#x} announce extension records, which "
                         "this reader does not parse")
    if sh_degree not in SPZ_SH_DIMS:
        raise ValueError(f"{path}: header 'shDegree' {sh_degree} not supported")
    rotation_bytes = 4 if version >= 3 else 3
    sizes = {"positions": count * 9, "alphas": count, "colors": count * 3, "scales": count * 3,
             "rotations": count * rotation_bytes, "sh": count * SPZ_SH_DIMS[sh_degree] * 3}
    if len(data) != SPZ_HEADER.size + sum(sizes.values()):
        raise ValueError(f"{path}: {len(data)} bytes after decompression, expected "
                         f"{SPZ_HEADER.size + sum(sizes.values())} for {count} points")
    blocks, offset = {}, SPZ_HEADER.size
    for name, size in sizes.items():
        blocks[name] = np.frombuffer(data, np.uint8, size, offset)
        offset += size
    raw = blocks["positions"].reshape(count, 3, 3).astype(np.int32)
    fixed = raw[..., 0] | (raw[..., 1] << 8) | (raw[..., 2] << 16)  # [N, 3] 24-bit
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)  # sign extension
    means = fixed.astype(np.float64) / (1 << fractional_bits) * RDF_TO_RUB
    log_scales = blocks["scales"].reshape(count, 3) / SPZ_SCALE_STEPS - SPZ_SCALE_OFFSET
    f_dc = (blocks["colors"].reshape(count, 3) / BYTE_MAX - 0.5) / SPZ_COLOR_SCALE
    rotations = blocks["rotations"].reshape(count, rotation_bytes)
    xyzw = _unpack_smallest_three(rotations) if version >= 3 else _unpack_first_three(rotations)
    xyzw[:, :3] *= RDF_TO_RUB  # the axis flip acts on the vector part as on positions
    return SpzGaussians(
        means=means.astype(np.float32), scales=np.exp(log_scales).astype(np.float32),
        quats_wxyz=xyzw[:, [3, 0, 1, 2]].astype(np.float32),
        opacities=(blocks["alphas"] / BYTE_MAX).astype(np.float32),
        rgb=(f_dc * SH_C0 + 0.5).astype(np.float32), version=version, sh_degree=sh_degree,
        fractional_bits=fractional_bits)
