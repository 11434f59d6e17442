"""`persona view RUN|CKPT|BUNDLE`: a static web viewer of an animatable avatar, served locally.

Writes a folder (index.html, the page's JavaScript, the vendored Spark + three.js builds and the
avatar data) and serves it on 127.0.0.1 at a free port; `--no-serve` only writes it. The page
(viewer/src/) draws the Gaussians with Spark (@sparkjsdev/spark, a three.js Gaussian-splatting
renderer) and poses them in the browser every motion frame: linear blend skinning of the
bundle's canonical Gaussians with its weights (the maths of bundle_loader.py), plus the bundle's
per-frame canonical offsets on the motion they belong to. The npm packages come from
viewer/node_modules (`npm ci` in viewer/, done by `make install`); nothing is fetched at run
time and the written page loads with the network off. docs/EXPORT.md, "Web viewer".

Data layout (`avatar.json` + `avatar.bin`, read by viewer/src/avatar.js): each array is stored
little-endian at an 8-byte aligned offset of avatar.bin, described in avatar.json's "arrays" by
{offset, dtype, shape}; skinning weights are stored sparse (CSR over the non-zero weights, which
is exact); the skeleton in float64.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch

from persona.atomic import replace_folder
from persona.errors import EXIT_USER_ERROR
from persona.export.bundle_loader import NUM_JOINTS, AvatarBundle, load_bundle, pose_means
from persona.export.compressed import VIEWER_ROOT
from persona.export.variants import VARIANT_HELP, VARIANTS

HOST = "127.0.0.1"  # the viewer is served on the loopback interface only
DATA_FORMAT = "persona_viewer_data"  # avatar.json "format" (viewer/src/avatar.js checks it)
DATA_VERSION = 1
LAYOUT_FILE = "avatar.json"
BINARY_FILE = "avatar.bin"
ALIGNMENT = 8  # bytes: every array of avatar.bin starts at a multiple (Float64Array views)
DEFAULT_MOTION = "dance"  # the start motion (and offsets motion of a RUN) unless --motion
ORBIT_FOV_DEG = 30.0  # vertical field of view of the page's orbit camera
ORBIT_WIDTH, ORBIT_HEIGHT = 4, 3  # the aspect the orbit distance is fitted for (landscape)
ORBIT_SAMPLES = 8  # frames of the start motion the orbit camera frames
PAGE_FILES = ("index.html", "viewer.js", "avatar.js", "skinning.js")  # viewer/src -> DIR/
# DIR/vendor/<path> <- viewer/node_modules/<path>: the built files the page imports, + licences
VENDOR_FILES: dict[str, str] = {
    "three/three.module.js": "three/build/three.module.js",
    "three/three.core.js": "three/build/three.core.js",
    "three/addons/controls/OrbitControls.js": "three/examples/jsm/controls/OrbitControls.js",
    "three/addons/postprocessing/Pass.js": "three/examples/jsm/postprocessing/Pass.js",  # Spark's
    "three/LICENSE": "three/LICENSE",
    "spark/spark.module.js": "@sparkjsdev/spark/dist/spark.module.js",
    "spark/LICENSE": "@sparkjsdev/spark/LICENSE",
}
MIME_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".json": "application/json",
              ".bin": "application/octet-stream", ".html": "text/html"}


# ---------------------------------------------------------------------------- page files
def viewer_problem(viewer_root: Path = VIEWER_ROOT) -> str | None:
    """Why the viewer folder cannot be written here (None when it can)."""
    for name in PAGE_FILES:
        if not (viewer_root / "src" / name).is_file():
            return f"{viewer_root / 'src' / name} is missing (the viewer's page sources)"
    for source in VENDOR_FILES.values():
        if not (viewer_root / "node_modules" / source).is_file():
            return (f"{viewer_root / 'node_modules' / source} is missing: run `npm ci` in "
                    f"{viewer_root} (make install) to install the viewer's packages")
    return None


def copy_page(folder: Path, viewer_root: Path = VIEWER_ROOT) -> None:
    """The page sources and the vendored npm builds into folder."""
    problem = viewer_problem(viewer_root)
    if problem is not None:
        raise FileNotFoundError(f"persona view: {problem}")
    for name in PAGE_FILES:
        shutil.copyfile(viewer_root / "src" / name, folder / name)
    for target, source in VENDOR_FILES.items():
        (folder / "vendor" / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(viewer_root / "node_modules" / source, folder / "vendor" / target)


# ---------------------------------------------------------------------------- avatar data
@dataclass
class ViewerMotion:
    name: str
    poses: np.ndarray  # [T, 55, 3] axis-angle
    transl: np.ndarray  # [T, 3] metres
    fps: float
    offsets: np.ndarray | None = None  # [T, N, 3] canonical offsets (the bundle's motion only)


def sparse_weights(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense skinning weights [N, 55] -> CSR over the non-zero entries: (indptr [N + 1] uint32,
    joints [nnz] uint8, values [nnz] float32). Exact: only zeros are dropped."""
    if weights.ndim != 2 or weights.shape[1] != NUM_JOINTS:
        raise ValueError(f"viewer: skinning weights must be [N, {NUM_JOINTS}], got "
                         f"{list(weights.shape)}")
    rows, cols = np.nonzero(weights)  # row-major order: grouped by Gaussian
    indptr = np.zeros(weights.shape[0] + 1, np.uint32)
    np.cumsum(np.bincount(rows, minlength=weights.shape[0]), out=indptr[1:])
    return indptr, cols.astype(np.uint8), weights[rows, cols].astype(np.float32)


def pack_arrays(arrays: dict[str, np.ndarray]) -> tuple[dict[str, dict], bytes]:
    """({name: {offset, dtype, shape}}, the concatenated little-endian bytes, 8-byte aligned)."""
    layout, chunks, offset = {}, [], 0
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        layout[name] = {"offset": offset, "dtype": array.dtype.name,
                        "shape": list(array.shape)}
        padding = -len(data) % ALIGNMENT
        chunks += [data, b"\0" * padding]
        offset += len(data) + padding
    return layout, b"".join(chunks)


def orbit_framing(bundle: AvatarBundle, motion: ViewerMotion) -> dict:
    """Target and distance of the page's orbit camera: the framing persona's turntable videos
    use (`framing_distance`) around ORBIT_SAMPLES frames of the start motion."""
    from persona.export.video import framing_distance

    posing = bundle_with_offsets(bundle, motion)
    total = motion.poses.shape[0]
    frames = sorted({round(i * (total - 1) / max(ORBIT_SAMPLES - 1, 1))
                     for i in range(ORBIT_SAMPLES)})
    means = torch.cat([pose_means(posing, motion.poses[t], motion.transl[t],
                                  t if motion.offsets is not None else None, torch.float32)
                       for t in frames])  # [S * N, 3]
    centre, distance = framing_distance(means, ORBIT_WIDTH, ORBIT_HEIGHT, ORBIT_FOV_DEG)
    return {"target": [float(v) for v in centre], "distance": float(distance),
            "fov_deg": ORBIT_FOV_DEG}


def bundle_with_offsets(bundle: AvatarBundle, motion: ViewerMotion) -> AvatarBundle:
    """The bundle carrying this motion's offsets (what pose_means reads for frame t)."""
    from dataclasses import replace

    return replace(bundle, offsets=motion.offsets)


def viewer_data(bundle: AvatarBundle, motions: list[ViewerMotion], start: str,
                source: str) -> tuple[dict, bytes]:
    """avatar.json's content and avatar.bin's bytes for the bundle and motions."""
    indptr, joints, values = sparse_weights(np.asarray(bundle.weights, np.float32))
    canonical = np.asarray(bundle.canonical_transforms, np.float64)
    arrays: dict[str, np.ndarray] = {
        "means": np.asarray(bundle.means, np.float32),
        "scales": np.asarray(bundle.scales, np.float32),
        "opacities": np.asarray(bundle.opacities, np.float32),
        "rgb": np.asarray(bundle.rgb, np.float32),
        "weight_indptr": indptr, "weight_joints": joints, "weight_values": values,
        "parents": np.asarray(bundle.parents, np.int32),
        "rest_joints": np.asarray(bundle.rest_joints, np.float64),
        "pose_mean": np.asarray(bundle.pose_mean, np.float64),
        "canonical_inverse": np.linalg.inv(canonical),  # [55, 4, 4] float64
    }
    entries = []
    for i, motion in enumerate(motions):
        key = f"motion{i}"
        arrays[f"{key}_poses"] = np.asarray(motion.poses, np.float32)
        arrays[f"{key}_transl"] = np.asarray(motion.transl, np.float32)
        if motion.offsets is not None:
            arrays[f"{key}_offsets"] = np.asarray(motion.offsets, np.float32)
        entries.append({"name": motion.name, "fps": float(motion.fps),
                        "num_frames": int(motion.poses.shape[0]),
                        "poses": f"{key}_poses", "transl": f"{key}_transl",
                        "offsets": f"{key}_offsets" if motion.offsets is not None else None})
    layout, binary = pack_arrays(arrays)
    start_motion = next(m for m in motions if m.name == start)
    info = {"format": DATA_FORMAT, "version": DATA_VERSION, "binary": BINARY_FILE,
            "source": source, "variant": bundle.variant, "num_gaussians": bundle.num_gaussians,
            "num_weights": int(values.shape[0]), "start_motion": start, "motions": entries,
            "orbit": orbit_framing(bundle, start_motion), "arrays": layout}
    return info, binary


def viewer_motions(bundle: AvatarBundle, extra: list[str]) -> list[ViewerMotion]:
    """The built-in motions, the bundle's own motion (with its offsets; it replaces the built-in
    of the same name) and the extra motions (names or npz files), without duplicates."""
    from persona.data.motions import BUILTIN_MOTIONS, resolve_motion

    motions: dict[str, ViewerMotion] = {}
    for name in list(BUILTIN_MOTIONS) + list(extra):
        motion = resolve_motion(name)
        motions[motion.name] = ViewerMotion(motion.name, motion.poses, motion.transl, motion.fps)
    if bundle.offsets is not None and bundle.motion_poses is not None:
        name = bundle.motion_name or "bundle"
        motions[name] = ViewerMotion(name, bundle.motion_poses, bundle.motion_transl,
                                     bundle.fps, bundle.offsets)
    return list(motions.values())


# ---------------------------------------------------------------------------- sources
def _numpy(value) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def bundle_from_arrays(arrays: dict) -> AvatarBundle:
    """An AvatarBundle from `persona.export.bundle.bundle_arrays` (tensors or numpy)."""
    fields = {key: _numpy(arrays[key]) for key in (
        "means", "scales", "opacities", "rgb", "weights", "parents", "rest_joints",
        "canonical_transforms", "pose_mean", "canonical_joints", "canonical_pose")}
    for key in ("offsets", "motion_poses", "motion_transl"):
        if key in arrays:
            fields[key] = _numpy(arrays[key])
    fields["motion_name"] = str(arrays.get("motion_name", ""))
    fields["fps"] = float(arrays.get("fps", 0.0))
    fields["variant"] = str(arrays.get("variant", ""))
    return AvatarBundle(**fields)


def checkpoint_of(source: Path) -> Path:
    """RUN folder -> RUN/checkpoints/last.ckpt; a .ckpt file as it is."""
    if source.is_dir():
        ckpt = source / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise FileNotFoundError(f"{source}: no checkpoints/last.ckpt in this run folder")
        return ckpt
    return source


def load_source(source: Path, motion: str | None, max_frames: int | None, variant: str,
                device: str, offsets: bool) -> AvatarBundle:
    """The avatar as a bundle: read from a bundle npz, or built from a run / checkpoint with the
    offsets of `motion` (default dance; none with offsets=False)."""
    if source.suffix == ".npz":
        return load_bundle(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: not found (expected a run folder, a .ckpt or a "
                                "bundle .npz)")
    from persona.data.motions import resolve_motion
    from persona.export.bundle import bundle_arrays
    from persona.export.cli import load_avatar

    avatar = load_avatar(str(checkpoint_of(source)), device)
    chosen = resolve_motion(motion or DEFAULT_MOTION) if offsets else None
    return bundle_from_arrays(bundle_arrays(avatar, chosen, variant, max_frames))


# ---------------------------------------------------------------------------- folder
def _replaceable(folder: Path) -> bool:
    """An existing folder may be replaced only when empty or an earlier viewer folder."""
    return folder.is_dir() and (not any(folder.iterdir()) or (folder / LAYOUT_FILE).is_file())


def write_viewer(bundle: AvatarBundle, out: str | os.PathLike, extra_motions: list[str],
                 start: str | None = None, source: str = "",
                 viewer_root: Path = VIEWER_ROOT) -> Path:
    """Write the viewer folder atomically (a temporary sibling renamed to `out`)."""
    out = Path(out)
    if out.exists() and not _replaceable(out):
        raise ValueError(f"--out {out}: exists and is not an earlier viewer folder (no "
                         f"{LAYOUT_FILE}); choose another folder")
    problem = viewer_problem(viewer_root)
    if problem is not None:
        raise FileNotFoundError(f"persona view: {problem}")
    motions = viewer_motions(bundle, extra_motions)
    names = [m.name for m in motions]
    start = start or (bundle.motion_name if bundle.offsets is not None else DEFAULT_MOTION)
    if start not in names:
        raise ValueError(f"--motion {start!r}: not among the viewer's motions {names}")
    info, binary = viewer_data(bundle, motions, start, source)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        copy_page(tmp, viewer_root)
        (tmp / BINARY_FILE).write_bytes(binary)
        (tmp / LAYOUT_FILE).write_text(json.dumps(info, indent=1))
        tmp.chmod(0o755)
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def default_out(source: Path) -> Path:
    """RUN/viewer for a run folder or RUN/checkpoints/*.ckpt; else <name>_viewer beside it."""
    if source.is_dir():
        return source / "viewer"
    if source.suffix == ".ckpt" and source.parent.name == "checkpoints":
        return source.parent.parent / "viewer"
    return source.with_name(f"{source.stem}_viewer")


# ---------------------------------------------------------------------------- serving
class _Handler(SimpleHTTPRequestHandler):
    """Static files of one folder, no caching, quiet."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base's signature)
        pass


def make_server(folder: str | os.PathLike, port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server of folder's files bound to 127.0.0.1 (port 0: a free port)."""
    handler = functools.partial(_Handler, directory=str(folder))
    return ThreadingHTTPServer((HOST, port), handler)


def page_url(server: ThreadingHTTPServer) -> str:
    return f"http://{HOST}:{server.server_address[1]}/index.html"


def start_server(folder: str | os.PathLike, port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Serve folder from a daemon thread; returns the server (.shutdown() stops it) and the
    page's URL."""
    server = make_server(folder, port)
    threading.Thread(target=server.serve_forever, name="persona-view", daemon=True).start()
    return server, page_url(server)


# ---------------------------------------------------------------------------- command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="persona view", description=__doc__.split("\n")[0])
    parser.add_argument("source", help="run folder, checkpoint (.ckpt) or avatar bundle (.npz)")
    parser.add_argument("--out", default=None,
                        help="the folder to write (default: RUN/viewer, or <bundle>_viewer)")
    parser.add_argument("--motion", action="append", default=[],
                        help="built-in motion or motion .npz to add (repeatable); the first is "
                             "the start motion and, for a run or checkpoint, the one the "
                             f"per-frame offsets are computed for (default {DEFAULT_MOTION})")
    parser.add_argument("--max-frames", type=int, default=None,
                        help="run/checkpoint: offsets for the first N frames of the motion only")
    parser.add_argument("--no-offsets", action="store_true",
                        help="run/checkpoint: plain skinning, no per-frame offsets (faster)")
    parser.add_argument("--variant", choices=VARIANTS, default="refined", help=VARIANT_HELP)
    parser.add_argument("--device", default="cpu", help="where a checkpoint is posed")
    parser.add_argument("--no-serve", action="store_true", help="only write the folder")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    args = parser.parse_args(argv)
    source = Path(args.source)
    try:
        bundle = load_source(source, args.motion[0] if args.motion else None, args.max_frames,
                             args.variant, args.device, not args.no_offsets)
        start = None
        if args.motion:
            from persona.data.motions import resolve_motion

            start = resolve_motion(args.motion[0]).name
        out = write_viewer(bundle, args.out or default_out(source), args.motion, start,
                           str(source))
    except (FileNotFoundError, ValueError) as exc:
        print(f"persona view: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"wrote the viewer ({bundle.num_gaussians} Gaussians) to {out}")
    if args.no_serve:
        return 0
    server = make_server(out, args.port)
    print(f"serving {out} at {page_url(server)} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
