"""Renderer benchmark: forward/backward time and peak memory of TorchRenderer vs DenseRenderer.

Prints one JSON document. Scene: N isotropic Gaussians on the surface of a ~1.7 m body made of
ellipsoids (head, torso, pelvis, arms, legs), scale = mean distance to the 3 nearest neighbours,
camera 3 m in front, focal length so the body spans ~90 % of the image height. Channels of a
training render: rgb (3), normal (3), seg (3) with geometry gradient, positional map (3) with
detached geometry, plus alpha and depth = 14.

Time: median of ``--repeats`` runs of wall time (time.perf_counter) and, less sensitive to other
processes on a shared machine, of this process's CPU time (time.process_time, all threads: the
forward plus backward work; it includes OpenMP spin-waiting). Memory: peak resident set size growth
(``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after minus before the measured call, MiB); a
process's max RSS only grows, so configurations run from small to large and a 0 means the call
fit in memory already touched by an earlier one.

Threads: OpenMP's default spin-waiting makes 2 torch threads 5-15x slower when other processes
share the 2 cores; this script sets ``OMP_WAIT_POLICY=PASSIVE`` (unless already set) before torch
loads, and records it.

Usage: python experiments/bench/render.py [--quick] [--repeats 5] [--dense-backward]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP runtime

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402

from persona.render.dense import DenseRenderer  # noqa: E402
from persona.render.torch_renderer import TorchRenderer  # noqa: E402
from persona.render.types import Camera, ChannelGroup, Gaussians, Renderer  # noqa: E402

BODY_HEIGHT = 1.7  # metres, top of head to feet
CAMERA_DISTANCE = 3.0  # metres from the body centre
FILL = 0.9  # fraction of the image height the body spans
# (centre xyz, semi-axes xyz) in metres; y up in body space, feet at y = 0.
BODY_PARTS = [
    ((0.0, 1.58, 0.0), (0.09, 0.12, 0.10)),  # head
    ((0.0, 1.22, 0.0), (0.18, 0.26, 0.11)),  # torso
    ((0.0, 0.92, 0.0), (0.17, 0.10, 0.10)),  # pelvis
    ((-0.33, 1.22, 0.0), (0.20, 0.05, 0.05)),  # left upper arm
    ((0.33, 1.22, 0.0), (0.20, 0.05, 0.05)),  # right upper arm
    ((-0.70, 1.22, 0.0), (0.18, 0.04, 0.04)),  # left forearm
    ((0.70, 1.22, 0.0), (0.18, 0.04, 0.04)),  # right forearm
    ((-0.10, 0.62, 0.0), (0.07, 0.22, 0.07)),  # left thigh
    ((0.10, 0.62, 0.0), (0.07, 0.22, 0.07)),  # right thigh
    ((-0.10, 0.22, 0.0), (0.05, 0.20, 0.05)),  # left shin
    ((0.10, 0.22, 0.0), (0.05, 0.20, 0.05)),  # right shin
]


def body_scene(n: int, seed: int = 0) -> Gaussians:
    """N isotropic Gaussians on ellipsoid surfaces, area-weighted, scale from 3 neighbours."""
    rng = np.random.default_rng(seed)
    axes = np.array([a for _, a in BODY_PARTS])
    areas = 4 * np.pi * ((axes[:, 0] * axes[:, 1]) ** 1.6 + (axes[:, 0] * axes[:, 2]) ** 1.6
                         + (axes[:, 1] * axes[:, 2]) ** 1.6) ** (1 / 1.6) / 3 ** (1 / 1.6)
    part = rng.choice(len(BODY_PARTS), size=n, p=areas / areas.sum())
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    centres = np.array([c for c, _ in BODY_PARTS])
    pts = centres[part] + d * axes[part]  # [N, 3]
    pts[:, 1] -= BODY_HEIGHT / 2  # centre the body at the origin
    dist, _ = cKDTree(pts).query(pts, k=4)
    scale = np.sqrt((dist[:, 1:] ** 2).mean(axis=1))  # [N]
    means = torch.tensor(pts, dtype=torch.float32)
    means[:, 1] = -means[:, 1]  # OpenCV: y down
    scales = torch.tensor(scale, dtype=torch.float32)[:, None].expand(n, 3).contiguous()
    opacities = torch.tensor(rng.uniform(0.5, 1.0, size=n), dtype=torch.float32)
    return Gaussians(means, scales, opacities, None)


def body_camera(height: int, width: int) -> Camera:
    """Camera on the -z side looking at the body centre, OpenCV axes."""
    f = FILL * height * CAMERA_DISTANCE / BODY_HEIGHT
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], dtype=torch.float32)
    return Camera(K, torch.eye(3), torch.tensor([0.0, 0.0, CAMERA_DISTANCE]), width, height)


def training_channels(n: int, seed: int = 0) -> dict[str, ChannelGroup]:
    g = torch.Generator().manual_seed(seed)
    return {
        "rgb": ChannelGroup(torch.rand(n, 3, generator=g), True),
        "normal": ChannelGroup(torch.rand(n, 3, generator=g), True),
        "seg": ChannelGroup(torch.rand(n, 3, generator=g), True),
        "positional": ChannelGroup(torch.rand(n, 3, generator=g), False),
    }


def _leaves(gaussians: Gaussians, channels: dict[str, ChannelGroup]):
    g = Gaussians(*(t.clone().requires_grad_(True) for t in
                    (gaussians.means, gaussians.scales, gaussians.opacities)), None)
    ch = {k: ChannelGroup(v.values.clone().requires_grad_(True), v.geometry_grad)
          for k, v in channels.items()}
    return g, ch


def _loss(out: dict[str, torch.Tensor]) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return sum((v * torch.rand(v.shape, generator=g)).sum() for v in out.values())


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(renderer: Renderer, gaussians: Gaussians, camera: Camera,
            channels: dict[str, ChannelGroup], repeats: int, backward: bool,
            warmup: int = 0) -> dict:
    """Median forward and backward seconds and max-RSS growth (MiB); ``warmup`` runs first
    (not counted). process_cpu_s covers forward, loss and backward."""
    fwd, bwd, cpu = [], [], []
    rss0 = _maxrss_mib()
    for i in range(warmup + repeats):
        if i == warmup:
            fwd, bwd, cpu = [], [], []
        g, ch = _leaves(gaussians, channels)
        c0 = time.process_time()
        t0 = time.perf_counter()
        if backward:
            out = renderer.render(g, camera, ch)
        else:
            with torch.no_grad():
                out = renderer.render(g, camera, ch)
        t1 = time.perf_counter()
        fwd.append(t1 - t0)
        if backward:
            loss = _loss(out)
            t2 = time.perf_counter()
            loss.backward()
            bwd.append(time.perf_counter() - t2)
        cpu.append(time.process_time() - c0)
    res = {"forward_s": statistics.median(fwd), "forward_runs_s": [round(x, 4) for x in fwd],
           "process_cpu_s": statistics.median(cpu),
           "peak_rss_growth_mib": round(_maxrss_mib() - rss0, 1)}
    if backward:
        res["backward_s"] = statistics.median(bwd)
        totals = [a + b for a, b in zip(fwd, bwd, strict=True)]
        res["forward_backward_s"] = statistics.median(totals)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="N=10k at 256x256 and N=50k at 512x512")
    p.add_argument("--repeats", type=int, default=5, help="runs per measurement (median)")
    p.add_argument("--dense-backward", action="store_true",
                   help="also time the dense backward at N=10k 256x256 (minutes)")
    p.add_argument("--dense-repeats", type=int, default=1, help="runs of the dense reference")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    fast = TorchRenderer()
    dense = DenseRenderer(pixel_chunk=256)
    sizes = [(256, 256), (512, 512), (576, 1024)]
    counts = [10_000, 50_000, 170_000]
    configs = [(n, hw) for hw in sizes for n in counts]
    if args.quick:
        configs = [(10_000, (256, 256)), (50_000, (512, 512))]
    results = []
    load_before = os.getloadavg()
    for n, (h, w) in configs:
        scene, cam, ch = body_scene(n), body_camera(h, w), training_channels(n)
        row = {"n": n, "height": h, "width": w,
               "channels": sum(c.values.shape[1] for c in ch.values()) + 2,
               "load_avg_1m": os.getloadavg()[0]}
        row["fast"] = measure(fast, scene, cam, ch, args.repeats, backward=True, warmup=1)
        if n == 10_000 and (h, w) == (256, 256):
            row["dense"] = measure(dense, scene, cam, ch, args.dense_repeats,
                                   backward=args.dense_backward)
            fwd_fast = measure(fast, scene, cam, ch, args.repeats, backward=False, warmup=1)
            row["fast_forward_only_s"] = fwd_fast["forward_s"]
            row["dense_over_fast_forward"] = row["dense"]["forward_s"] / fwd_fast["forward_s"]
        results.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps({
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
        "memory": "peak_rss_growth_mib = ru_maxrss delta (MiB) during the measured calls",
        "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
