"""`persona view` (persona/export/viewer.py + viewer/src): the written folder's data, and the page
in headless Chromium: its screenshot of a known pose from a fixed camera matches persona's own
render of that pose (PSNR over the avatar's pixels), the browser's skinning reproduces persona's
posed means, nothing is fetched from outside 127.0.0.1, and the page reports its frame rate.

The browser test needs Node.js, viewer/node_modules (`npm ci` in viewer/) and Chromium
(/usr/bin/chromium, or PERSONA_CHROMIUM); it skips with the reason when one is missing."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from persona.export.bundle_loader import NUM_JOINTS
from persona.export.viewer import (
    BINARY_FILE,
    LAYOUT_FILE,
    VIEWER_ROOT,
    main,
    sparse_weights,
    start_server,
    viewer_problem,
)

MOTION = "dance"  # the motion the viewer gets per-frame offsets for
MAX_FRAMES = 6  # offsets for this many frames (posing each costs the test time)
FRAME = 5  # the known pose: dance frame 5
WIDTH, HEIGHT = 240, 320  # the fixed camera's image
FOV_DEG = 30.0
VIEW_DIRECTION = (0.3, 0.2, 1.0)  # camera position relative to the avatar (front, a bit off)
PSNR_MIN_DB = 25.0  # the viewer's image vs persona's render of the same pose and camera
MASK_ALPHA = 1.0 / 255.0  # persona's alpha above which a pixel belongs to the avatar
MASK_DIFF = 2.0 / 255.0  # a viewer pixel this far from white also belongs to the avatar
MEAN_TOLERANCE_M = 1e-5  # browser skinning (float64 maths, float32 output) vs persona
SAMPLE_IDS = (0, 1, 500, 1234)  # Gaussians whose posed means the page reports
FPS_SECONDS = 3  # how long the page plays before its frame rate is read
CAPTURE_TIMEOUT_S = 120  # the whole browser session
CHROMIUM = os.environ.get("PERSONA_CHROMIUM", "/usr/bin/chromium")


def _browser_problem() -> str | None:
    if shutil.which("node") is None:
        return "Node.js (node) is not installed"
    problem = viewer_problem()
    if problem is not None:
        return problem
    if not (VIEWER_ROOT / "node_modules" / "playwright-core").is_dir():
        return "viewer/node_modules/playwright-core is missing (npm ci in viewer/)"
    if not Path(CHROMIUM).exists():
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    return None


# checked at collection, before the tiny run is trained
needs_viewer = pytest.mark.skipif(viewer_problem() is not None,
                                  reason=f"viewer packages unavailable: {viewer_problem()}")
needs_browser = pytest.mark.skipif(_browser_problem() is not None,
                                   reason=f"browser test unavailable: {_browser_problem()}")


@pytest.fixture(scope="module")
def viewer_folder(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`persona view RUN --motion dance --max-frames 6 --no-serve` of the tiny run."""
    out = tmp_path_factory.mktemp("view") / "viewer"
    run = tiny_ckpt.parent.parent
    assert main([str(run), "--motion", MOTION, "--max-frames", str(MAX_FRAMES), "--out",
                 str(out), "--no-serve"]) == 0
    return out


def _read_data(folder: Path) -> tuple[dict, bytes]:
    return json.loads((folder / LAYOUT_FILE).read_text()), (folder / BINARY_FILE).read_bytes()


def _array(layout: dict, binary: bytes, name: str) -> np.ndarray:
    spec = layout["arrays"][name]
    count = math.prod(spec["shape"])
    return np.frombuffer(binary, spec["dtype"], count, spec["offset"]).reshape(spec["shape"])


def test_sparse_weights_are_exact() -> None:
    rng = np.random.default_rng(0)
    dense = rng.uniform(size=(50, NUM_JOINTS)) * (rng.uniform(size=(50, NUM_JOINTS)) < 0.2)
    indptr, joints, values = sparse_weights(dense.astype(np.float32))
    rebuilt = np.zeros_like(dense, dtype=np.float32)
    for i in range(dense.shape[0]):
        rebuilt[i, joints[indptr[i]:indptr[i + 1]]] = values[indptr[i]:indptr[i + 1]]
    np.testing.assert_array_equal(rebuilt, dense.astype(np.float32))
    with pytest.raises(ValueError, match="skinning weights must be"):
        sparse_weights(np.zeros((3, 4), np.float32))


@needs_viewer
def test_folder_holds_page_vendored_modules_and_data(viewer_folder: Path, tiny_system) -> None:
    for name in ("index.html", "viewer.js", "skinning.js", "avatar.js",
                 "vendor/three/three.module.js", "vendor/spark/spark.module.js"):
        assert (viewer_folder / name).is_file(), name
    page = (viewer_folder / "index.html").read_text()
    assert "http://" not in page and "https://" not in page  # nothing from the network
    layout, binary = _read_data(viewer_folder)
    names = [m["name"] for m in layout["motions"]]
    assert {"rotation", "punches", "kicks", "dance", "wave"} <= set(names)
    dance = next(m for m in layout["motions"] if m["name"] == MOTION)
    assert dance["num_frames"] == MAX_FRAMES and dance["offsets"] is not None
    assert all(m["offsets"] is None for m in layout["motions"] if m["name"] != MOTION)
    count = layout["num_gaussians"]
    assert _array(layout, binary, dance["offsets"]).shape == (MAX_FRAMES, count, 3)
    indptr = _array(layout, binary, "weight_indptr")
    values = _array(layout, binary, "weight_values")
    assert indptr.shape == (count + 1,) and indptr[-1] == values.shape[0]
    row_sums = np.add.reduceat(values.astype(np.float64), indptr[:-1].astype(np.int64))
    np.testing.assert_allclose(row_sums, 1.0, atol=1e-5)  # weights rows sum to 1
    canonical_inverse = _array(layout, binary, "canonical_inverse")
    assert canonical_inverse.shape == (NUM_JOINTS, 4, 4)
    assert np.isfinite(canonical_inverse).all()


@needs_viewer
def test_refuses_to_replace_another_folder(viewer_folder: Path, tmp_path: Path) -> None:
    bundle_free = tmp_path / "notes"
    bundle_free.mkdir()
    (bundle_free / "keep.txt").write_text("mine")
    assert main([str(viewer_folder.parent / "missing_run"), "--out", str(tmp_path / "x"),
                 "--no-serve"]) == 1
    from persona.export.viewer import write_viewer

    with pytest.raises(ValueError, match="not an earlier viewer folder"):
        write_viewer(None, bundle_free, [])  # refused before the bundle is looked at
    assert (bundle_free / "keep.txt").read_text() == "mine"


@needs_viewer
def test_server_serves_modules_with_javascript_mime(viewer_folder: Path) -> None:
    server, url = start_server(viewer_folder)
    try:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url.replace("index.html", "viewer.js")) as response:
            assert response.headers["Content-Type"].startswith("text/javascript")
        with urllib.request.urlopen(url.replace("index.html", LAYOUT_FILE)) as response:
            assert json.loads(response.read())["format"] == "persona_viewer_data"
    finally:
        server.shutdown()


def _camera(means: torch.Tensor):
    from persona.export.video import framing_distance, intrinsics, look_at
    from persona.render.types import Camera

    centre, distance = framing_distance(means.float(), WIDTH, HEIGHT, FOV_DEG)
    direction = torch.tensor(VIEW_DIRECTION)
    R, t = look_at(centre + direction / direction.norm() * distance, centre)
    return Camera(K=intrinsics(WIDTH, HEIGHT, FOV_DEG), R=R, t=t, width=WIDTH, height=HEIGHT)


def _persona_render(gaussians, rgb: torch.Tensor, camera) -> tuple[np.ndarray, np.ndarray]:
    """persona's own image on white [H, W, 3] in [0, 1] and alpha [H, W]."""
    from persona.render import make_renderer
    from persona.render.types import ChannelGroup, RenderSettings

    with torch.no_grad():
        out = make_renderer("torch").render(gaussians, camera, {"rgb": ChannelGroup(rgb)},
                                            RenderSettings(depth=False))
    image = (out["rgb"] + (1.0 - out["alpha"])).clamp(0, 1)
    return image.double().numpy(), out["alpha"][..., 0].double().numpy()


def _masked_psnr(image: np.ndarray, reference: np.ndarray, alpha: np.ndarray) -> float:
    """PSNR (dB, peak 1) over the avatar's pixels: persona's alpha or the viewer's non-white."""
    mask = (alpha > MASK_ALPHA) | (np.abs(image - 1.0).max(-1) > MASK_DIFF)
    mse = float(((image - reference) ** 2)[mask].mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


@needs_browser
def test_page_matches_persona_render_and_reports_fps(viewer_folder: Path, tiny_system,
                                                     tmp_path: Path) -> None:
    from PIL import Image

    from persona.data.motions import resolve_motion
    from persona.export.poses import canonical_pose, posed_frame

    motion = resolve_motion(MOTION)
    gaussians, channels = posed_frame(tiny_system, motion.poses, motion.transl,
                                      motion.expression, FRAME)
    camera = _camera(gaussians.means)
    (viewer_folder / "camera.json").write_text(json.dumps({
        "K": camera.K.tolist(), "R": camera.R.tolist(), "t": camera.t.tolist(),
        "width": WIDTH, "height": HEIGHT}))
    png = tmp_path / "viewer.png"
    server, url = start_server(viewer_folder)
    try:
        done = subprocess.run(
            ["node", str(VIEWER_ROOT / "tools" / "capture.mjs"),
             "--url", f"{url}?camera=camera.json&play=0", "--png", str(png),
             "--motion", MOTION, "--frame", str(FRAME), "--ids", ",".join(map(str, SAMPLE_IDS)),
             "--width", str(WIDTH), "--height", str(HEIGHT), "--fps-seconds", str(FPS_SECONDS),
             "--chromium", CHROMIUM],
            capture_output=True, text=True, timeout=CAPTURE_TIMEOUT_S, check=False)
    finally:
        server.shutdown()
    assert done.stdout.strip(), f"capture printed nothing: {done.stderr[-2000:]}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0 and "error" not in report, report
    assert report["blocked"] == []  # the page asked for nothing outside 127.0.0.1
    assert report["errors"] == []

    posed = np.asarray(report["posed_means"])
    expected = gaussians.means[list(SAMPLE_IDS)].double().numpy()
    assert np.abs(posed - expected).max() < MEAN_TOLERANCE_M

    image = np.asarray(Image.open(png).convert("RGB"), np.float64) / 255.0
    assert image.shape == (HEIGHT, WIDTH, 3)
    reference, alpha = _persona_render(gaussians, channels["rgb"], camera)
    psnr = _masked_psnr(image, reference, alpha)
    with torch.no_grad():
        other, other_channels = tiny_system.posed_gaussians(
            canonical_pose(tiny_system.body.num_expression), "refined")
    other_reference, other_alpha = _persona_render(other, other_channels["rgb"], camera)
    psnr_other_pose = _masked_psnr(image, other_reference, other_alpha)
    fps = report["fps"]
    print(f"\nviewer vs persona render: PSNR {psnr:.2f} dB over the avatar's pixels "
          f"(vs another pose: {psnr_other_pose:.2f} dB); page frame rate {fps:.2f} fps "
          f"({report['renderer']})")
    assert psnr >= PSNR_MIN_DB
    assert psnr_other_pose < PSNR_MIN_DB  # the measure tells poses apart
    assert isinstance(fps, (int, float)) and fps > 0  # JSON: 20 arrives as an int
    assert report["fps_text"].endswith("fps")
