"""`persona track` benchmark: per-frame time of decoding, the BlazePose detector, the landmark
model (with its decoding) and the body fit, on this CPU.

Input: the sports2d demo video (weights/sports2d/demo.mp4, 1768 x 994, from the Makefile's
install step) or --video; the first --frames frames. Each part's time per frame is the median
over frames (decode, detector, landmarks) or the total over the clip divided by its frames
(the fit is one batched optimisation); `over_reference` divides by a reference measured in the
same run (the median time of a fixed float32 [512, 512] @ [512, 512] matmul, this process's
threads), so runs on a busy or another machine compare. Prints one JSON document.

Usage: python experiments/bench/track.py [--video V] [--frames 60] [--body open]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP runtime

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from data_prep import light_pose as lp  # noqa: E402
from persona.track import detect as det  # noqa: E402
from persona.track.cli import load_pose_models, load_track_body  # noqa: E402
from persona.track.fit import fit_clip  # noqa: E402
from persona.track.sports2d import video_path  # noqa: E402
from persona.track.video import iter_frames, probe  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the reference matmul of experiments/bench/train_step.py: ratios comparable across benches
from train_step import REFERENCE_SIZE, reference_seconds  # noqa: E402

MS = 1000.0


def timed(function: Callable, sink: list[float]) -> Callable:
    """function, with each call's wall time appended to sink."""
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            sink.append(time.perf_counter() - start)
    return wrapper


def row(seconds_per_frame: float, reference: float) -> dict[str, float]:
    return {"ms_per_frame": round(seconds_per_frame * MS, 2),
            "over_reference": round(seconds_per_frame / reference, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", default=str(video_path()))
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--body", default="open", choices=("open", "smplx", "procedural"))
    args = parser.parse_args()
    if not Path(args.video).is_file():
        raise SystemExit(f"{args.video} missing: python -m persona.track.sports2d install "
                         "weights/sports2d (or pass --video)")
    reference_before = reference_seconds()
    info = probe(args.video, args.frames)
    pose = load_pose_models(None)
    body = load_track_body(args.body)

    decode: list[float] = []
    frames = []
    iterator = iter_frames(info)
    while True:
        start = time.perf_counter()
        image = next(iterator, None)
        if image is None:
            break
        decode.append(time.perf_counter() - start)
        frames.append(image)

    detector: list[float] = []
    landmarks: list[float] = []
    original_detect = lp.detect_people
    lp.detect_people = timed(original_detect, detector)
    pose.landmarks_in = timed(pose.landmarks_in, landmarks)
    try:
        start = time.perf_counter()
        detections = det.detect_all(pose, lambda: iter(frames), info.grid_index,
                                    info.num_frames)
        detect_total = time.perf_counter() - start
    finally:
        lp.detect_people = original_detect
    start = time.perf_counter()
    fit_clip(body, detections.landmarks, detections.world, detections.valid, info.width,
             info.height)
    fit_total = time.perf_counter() - start
    reference_after = reference_seconds()
    reference = statistics.median([reference_before, reference_after])
    count = len(frames)
    per_landmark_call = statistics.median(landmarks) if landmarks else 0.0
    print(json.dumps({
        "input": {"video": args.video, "frames": count, "size": [info.width, info.height],
                  "body": body.name},
        "reference": {"what": f"median seconds of a float32 [{REFERENCE_SIZE}]^2 @ "
                              f"[{REFERENCE_SIZE}]^2 matmul",
                      "before_s": reference_before, "after_s": reference_after},
        "per_frame": {
            "decode": row(statistics.median(decode), reference),
            "detector": row(statistics.median(detector), reference),
            "landmarks": row(per_landmark_call * len(landmarks) / count, reference),
            "detect_and_landmarks_total": row(detect_total / count, reference),
            "fit": row(fit_total / count, reference),
            "total": row(sum(decode) / count + (detect_total + fit_total) / count, reference),
        },
        "landmark_calls": len(landmarks),
        "frames_with_landmarks": int(detections.valid.sum()),
        "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
    }, indent=1))


if __name__ == "__main__":
    main()
