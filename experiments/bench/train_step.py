"""Training-step profile: where one CPU training step of PersonaSystem spends its time, per part.

    nice -n 10 .venv/bin/python experiments/bench/train_step.py [--levels 0 1] [--out PATH]

Prints one JSON document. The system is the demo fit's: configs/demo.yaml parsed by the same
LightningCLI as `persona fit` (base.yaml first; its model, data and trainer settings: renderer,
skinning grid and lookup switches, triplane, LPIPS weight, face patch size, resolution scale,
deterministic algorithms), with model.subdivision_levels set per --levels and data.subject_dir
from --subject; the JSON records the settings used. The loop is Lightning's automatic
optimisation without Lightning: training_step, backward, Adam (the system's parameter groups)
step and zero_grad, batch size 1. Two step kinds: "input" (the captured image: seams, face patch
and face terms) and "generated" (a generated video frame: rgb_aux; cycles over the generated
frames).

Parts, timed without changing the system: for the run, the script swaps module attributes and
instance methods the step calls for wrappers (restored afterwards), each opening a named range.
A part's time is exclusive (time inside nested ranges belongs to them), so the forward parts,
``forward.other`` (the rest of training_step), ``backward``, ``optimizer`` and ``other`` (the
loop between them) add up to the step.

  posing.frame_params          per-frame SMPL-X parameters (FrameParams forward, body_pose_6d)
  posing.smplx                 SMPL-X joint transforms (body.transforms_from_canonical)
  posing.lbs                   linear blend skinning of the base and refined means (skin_points)
  posing.other                 the rest of posing.posed_state (expression offsets, sigmoids)
  posing.mesh                  the posed body mesh (no gradient) of the silhouette and
                               face-patch terms
  skinning_lookup.grid_sample  the skinning volume's trilinear samples (SkinningField.sample,
                               13 points per Gaussian)
  skinning_lookup.blend        the rest of the 13-point lookup (skinning_weights: offsets,
                               blend, normalise, template rows)
  skinning_lookup.argmax       the dominant joint of the looked-up weights (dominant_joint)
  deformer.triplane            the deformer's triplane grid_sample
  deformer.mlp                 the rest of the deformer (pose table, MLP, scatter)
  render.base, render.refined  the two training passes (passes.render_state, normals included)
  render.hands                 the hand colour-TV renders (passes.render_hands)
  render.face_patch            renderer calls inside the face-patch terms (native resolution)
  render.other                 any other renderer call
  losses.*                     image + geometry terms, silhouettes, face patch, face_geo, hand
                               colour, regularisers, total (each without the renders / mesh
                               posing inside it)

Backward per part: one extra step per kind (--profile-steps) runs under torch.profiler; each
backward node (``autograd::engine::evaluate_function: ...``) is attributed through its
sequence number to the forward op that created it, and so to the innermost range around that
op. The shares of the profiled backward are applied to the unprofiled backward median
(``backward_by_part``); ``backward.accumulate_grad`` is the leaves' gradient accumulation,
``backward.engine`` what no node covers. ``top_backward_nodes``: the costliest nodes
("part: node"), as shares of the profiled backward.

Numbers: per part the median seconds over --steps steps after --warmup, ``fraction``: the part's
share of the summed step time over those steps (sums to 1 over parts), calls per step, and the
ratio to a reference measured in the same run (the median time of a fixed float32 matmul,
just before each step kind's measured steps, and once before and after the whole run), so
figures compare across machines. No figure here is an assertion.

--set KEY VALUE (repeatable) overrides a setting of configs/demo.yaml as `persona fit --KEY VALUE`
does (recorded in the JSON); e.g. `--set model.skinning.method volume` times the authors' volume
lookup.

--smoke: a tiny procedural subject (persona.data.synth, preset tiny) in a temporary folder, 1
warm-up + 2 steps per kind; for tests.
"""

from __future__ import annotations

import os

from persona.cli import openmp_environment

# what `persona fit` runs under (persona/cli.py): its OpenMP wait settings, before torch loads
os.environ.update(openmp_environment(os.environ))
# silences the profiler's (kineto's) start/stop and "no GPU" lines on stderr (99: above every
# kineto log level)
os.environ.setdefault("KINETO_LOG_LEVEL", "99")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
DEFAULT_SUBJECT = "runs/demo/subject"  # data.subject_dir of configs/demo.yaml
SMOKE_PRESET = "tiny"  # persona.data.synth preset of --smoke
SMOKE_SEED = 1  # its seed
SMOKE_STEPS = 2  # measured steps per kind with --smoke
SMOKE_WARMUP = 1  # warm-up steps per kind with --smoke
RANGE_PREFIX = "persona_bench::"  # profiler range names of the parts
BACKWARD_NODE = "autograd::engine::evaluate_function: "  # profiler name of a backward node
ACCUMULATE_GRAD = "AccumulateGrad"  # the node that adds a leaf's gradient
REFERENCE_SIZE = 512  # side of the reference matmul (float32 [512, 512] @ [512, 512])
REFERENCE_REPEATS = 50  # timed reference matmuls (median) per measurement
REFERENCE_WARMUP = 3  # untimed reference matmuls first
NO_DECAY_STEPS = 10**9  # the schedule's length: its step decay never comes in the benchmark
STEP_KINDS = ("input", "generated")
FORWARD_TOP = "forward.other"  # the range around training_step: its exclusive rest
# Parts always reported (0 when a step kind does not run them), in the output's order.
PARTS = ("posing.frame_params", "posing.smplx", "posing.lbs", "posing.other", "posing.mesh",
         "skinning_lookup.grid_sample", "skinning_lookup.blend", "skinning_lookup.argmax",
         "deformer.triplane", "deformer.mlp", "render.base",
         "render.refined", "render.hands", "render.face_patch", "render.other",
         "losses.image_geometry", "losses.silhouettes", "losses.face_patch", "losses.face_geo",
         "losses.hand_colour", "losses.regularisers", "losses.total", FORWARD_TOP, "backward",
         "optimizer", "other")
# Summary groups: a part belongs to the first group whose prefix it starts with.
GROUPS = ("posing", "skinning_lookup", "deformer", "render", "losses", FORWARD_TOP, "backward",
          "optimizer", "other")
BACKWARD_EXTRA = ("backward.accumulate_grad", "backward.engine")  # backward not of a part
TOP_BACKWARD_NODES = 8  # the costliest backward nodes listed per step kind


# ---------------------------------------------------------------------------- timing
class PartTimer:
    """Exclusive wall time per named range; nested ranges' time goes to the inner one. Each
    range is also a torch.profiler range (RANGE_PREFIX + name)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)  # name -> exclusive seconds
        self.calls: dict[str, int] = defaultdict(int)
        self.names: list[str] = []  # the open ranges, outermost first
        self._child: list[float] = []  # per open range: seconds spent in its children

    def reset(self) -> None:
        self.totals.clear()
        self.calls.clear()

    @property
    def current(self) -> str | None:
        return self.names[-1] if self.names else None

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        with torch.profiler.record_function(RANGE_PREFIX + name):
            self.names.append(name)
            self._child.append(0.0)
            start = time.perf_counter()
            try:
                yield
            finally:
                elapsed = time.perf_counter() - start
                children = self._child.pop()
                self.names.pop()
                self.totals[name] += elapsed - children
                self.calls[name] += 1
                if self._child:
                    self._child[-1] += elapsed


def timed(timer: PartTimer, name: str | Callable[..., str | None], fn: Callable) -> Callable:
    """fn inside timer.part(name); name may be a function of (args, kwargs) giving the name,
    or None for no range of its own."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        label = name(args, kwargs) if callable(name) else name
        if label is None:
            return fn(*args, **kwargs)
        with timer.part(label):
            return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def patched(targets: list[tuple[Any, str, Callable]]) -> Iterator[None]:
    """Set owner.attribute = wrapped(original) for each (owner, attribute, wrap); restore after
    (an instance attribute that was not there before is deleted again)."""
    saved = []
    try:
        for owner, attribute, wrap in targets:
            local = attribute in vars(owner)
            original = getattr(owner, attribute)
            saved.append((owner, attribute, local, vars(owner).get(attribute)))
            setattr(owner, attribute, wrap(original))
        yield
    finally:
        for owner, attribute, local, original in reversed(saved):
            if local:
                setattr(owner, attribute, original)
            else:
                delattr(owner, attribute)


def render_variant(args: tuple, kwargs: dict) -> str:
    """passes.render_state(template, state, camera, renderer, variant, ...) -> render.<variant>."""
    variant = args[4] if len(args) > 4 else kwargs["variant"]
    return f"render.{variant}"


def renderer_part(timer: PartTimer) -> Callable[[tuple, dict], str | None]:
    """A renderer call's part: inside a render.* range, that range's (None); inside the face
    patch terms, render.face_patch; else render.other."""

    def name(args: tuple, kwargs: dict) -> str | None:
        current = timer.current or ""
        if current.startswith("render."):
            return None
        return "render.face_patch" if current == "losses.face_patch" else "render.other"

    return name


def instrumentation(system: Any, timer: PartTimer) -> list[tuple[Any, str, Callable]]:
    """What the training step calls, as (owner, attribute, wrap) for `patched`: the module
    attributes persona/system.py and persona/avatar/posing.py read at call time, and methods of
    the system's parts (body, frame parameters, deformer, renderer)."""
    from persona.avatar import posing
    from persona.losses import step_terms
    from persona.losses import terms as loss_terms
    from persona.render import passes

    def wrap(name: str | Callable) -> Callable[[Callable], Callable]:
        return lambda fn: timed(timer, name, fn)

    targets = [
        (posing, "posed_state", wrap("posing.other")),
        (posing, "expression_offsets", wrap("posing.other")),
        (posing, "skin_points", wrap("posing.lbs")),
        (posing, "skinning_weights", wrap("skinning_lookup.blend")),
        (posing, "dominant_joint", wrap("skinning_lookup.argmax")),
        (system.body, "transforms_from_canonical", wrap("posing.smplx")),
        (system, "mesh_vertices", wrap("posing.mesh")),
        (system.frame_params, "forward", wrap("posing.frame_params")),
        (system.frame_params, "body_pose_6d", wrap("posing.frame_params")),
        (system.deformer, "forward", wrap("deformer.mlp")),
        (passes, "render_state", wrap(render_variant)),
        (passes, "render_hands", wrap("render.hands")),
        (system.renderer, "render", wrap(renderer_part(timer))),
        (step_terms, "render_pass_terms", wrap("losses.image_geometry")),
        (step_terms, "mesh_silhouette_terms", wrap("losses.silhouettes")),
        (step_terms, "face_patch_step_terms", wrap("losses.face_patch")),
        (loss_terms, "face_geo_terms", wrap("losses.face_geo")),
        (loss_terms, "hand_colour_terms", wrap("losses.hand_colour")),
        (loss_terms, "regulariser_terms", wrap("losses.regularisers")),
        (loss_terms, "total_loss", wrap("losses.total")),
    ]
    if system.frozen.field is not None:  # skinning.method "volume"
        targets.append((system.frozen.field, "sample", wrap("skinning_lookup.grid_sample")))
    if isinstance(getattr(system.deformer, "triplane", None), torch.nn.Module):
        targets.append((system.deformer.triplane, "forward", wrap("deformer.triplane")))
    return targets


def reference_seconds(repeats: int = REFERENCE_REPEATS) -> float:
    """Median seconds of a fixed float32 [512, 512] @ [512, 512] matmul (this process's
    threads)."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(REFERENCE_SIZE, REFERENCE_SIZE, generator=g)
    b = torch.rand(REFERENCE_SIZE, REFERENCE_SIZE, generator=g)
    times = []
    for i in range(REFERENCE_WARMUP + repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        if i >= REFERENCE_WARMUP:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------------------- the step
def run_step(system: Any, optimiser: torch.optim.Optimizer, batch: dict, timer: PartTimer
             ) -> float:
    """One training step as Lightning's automatic optimisation runs it (no logging); returns
    its wall seconds. The timer's parts of the step add up to it (with "other")."""
    before = sum(timer.totals.values())
    start = time.perf_counter()
    with timer.part(FORWARD_TOP):
        loss = system.training_step(batch, 0)
    if loss is None:
        raise RuntimeError(f"train_step bench: frame {batch['split'][0]}/"
                           f"{int(batch['index'][0])} gave a non-finite loss")
    with timer.part("backward"):
        loss.backward()
    with timer.part("optimizer"):
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
    total = time.perf_counter() - start
    timer.totals["other"] += total - (sum(timer.totals.values()) - before)
    timer.calls["other"] += 1
    return total


Event = tuple[str, int, int, int]  # a profiler event: (name, start ns, end ns, sequence nr)


def backward_shares(events: list[Event]) -> tuple[dict[str, float], dict[str, float]]:
    """Profiled backward seconds per part: each backward node (outermost only) goes to the
    innermost range around the forward op of the same sequence number; plus BACKWARD_EXTRA and
    the profiled "backward" range's seconds under the key "total". Also the seconds per
    "part: node" (e.g. "deformer.mlp: IndexBackward0"). Ranges nest properly (they are context
    managers on one thread)."""
    seq_part: dict[int, str] = {}  # forward op sequence number -> its part
    shares: dict[str, float] = defaultdict(float)
    nodes: dict[str, float] = defaultdict(float)
    total = 0.0
    open_ranges: list[tuple[int, str]] = []  # (end ns, part), outermost first
    node_end = -1  # end of the backward node being counted (nodes inside it are not)
    for name, start, end, seq in sorted(events, key=lambda e: (e[1], -e[2])):
        while open_ranges and open_ranges[-1][0] <= start:
            open_ranges.pop()
        seconds = (end - start) * 1e-9
        if name.startswith(RANGE_PREFIX):
            part = name[len(RANGE_PREFIX):]
            open_ranges.append((end, part))
            if part == "backward":
                total += seconds
        elif name.startswith(BACKWARD_NODE):
            if start < node_end:
                continue
            node_end = end
            node = name[len(BACKWARD_NODE):]
            part = ("backward.accumulate_grad" if ACCUMULATE_GRAD in node
                    else seq_part.get(seq, "backward.engine"))
            shares[part] += seconds
            nodes[f"{part}: {node}"] += seconds
        elif seq >= 0 and open_ranges and open_ranges[-1][1] not in ("backward", "optimizer"):
            seq_part[seq] = open_ranges[-1][1]  # the innermost op wins (it starts later)
    shares["backward.engine"] += max(total - sum(shares.values()), 0.0)
    shares["total"] = total
    return dict(shares), dict(nodes)


def profiled_events(prof: torch.profiler.profile) -> list[Event]:
    """(name, start ns, end ns, sequence nr) of every CPU event of a finished profile. The raw
    kineto results when torch has them (50 ms for a demo step) instead of prof.events(), which
    builds a Python object tree (1.7 s)."""
    raw = getattr(getattr(prof.profiler, "kineto_results", None), "events", None)
    if raw is not None:
        return [(e.name(), e.start_ns(), e.end_ns(), e.sequence_nr()) for e in raw()
                if e.device_type() == torch.autograd.DeviceType.CPU]
    return [(e.name, int(e.time_range.start * 1000), int(e.time_range.end * 1000),
             e.sequence_nr) for e in prof.events()]  # microseconds -> ns


def profile_backward(system: Any, optimiser: torch.optim.Optimizer, batches: list[dict],
                     timer: PartTimer) -> tuple[dict[str, float], dict[str, float]]:
    """backward_shares summed over one profiled step per batch."""
    summed: dict[str, float] = defaultdict(float)
    nodes: dict[str, float] = defaultdict(float)
    for batch in batches:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            run_step(system, optimiser, batch, timer)
        shares, node_seconds = backward_shares(profiled_events(prof))
        for key, value in shares.items():
            summed[key] += value
        for key, value in node_seconds.items():
            nodes[key] += value
    return dict(summed), dict(nodes)


def part_report(per_step: list[dict[str, float]], calls: list[dict[str, int]],
                steps: list[float], reference: float) -> dict[str, dict]:
    """Per part: median seconds, share of the summed step time, calls per step (median),
    median / reference."""
    whole = sum(steps)
    out = {}
    for name in PARTS:
        values = [s.get(name, 0.0) for s in per_step]
        out[name] = {"median_s": statistics.median(values),
                     "fraction": sum(values) / whole,
                     "calls_per_step": statistics.median([c.get(name, 0) for c in calls]),
                     "over_reference": statistics.median(values) / reference}
    return out


def group_report(parts: dict[str, dict], reference: float) -> dict[str, dict]:
    """The parts summed per GROUPS prefix: median_s (sum of medians), fraction (sum)."""
    out = {g: {"median_s": 0.0, "fraction": 0.0} for g in GROUPS}
    for name, row in parts.items():
        group = next(g for g in GROUPS if name == g or name.startswith(g + "."))
        out[group]["median_s"] += row["median_s"]
        out[group]["fraction"] += row["fraction"]
    for row in out.values():
        row["over_reference"] = row["median_s"] / reference
    return out


def backward_report(shares: dict[str, float], backward_median: float) -> dict[str, dict]:
    """Per part with backward time: share of the profiled backward and that share of the
    unprofiled backward median."""
    total = shares.get("total", 0.0)
    out = {}
    for name in (*PARTS, *BACKWARD_EXTRA):
        if name in shares and total > 0:
            share = shares[name] / total
            out[name] = {"fraction_of_backward": share, "estimate_s": share * backward_median}
    return out


def measure_kind(system: Any, optimiser: torch.optim.Optimizer, batches: list[dict],
                 warmup: int, steps: int, profile_steps: int, timer: PartTimer) -> dict:
    """Warm-up, the reference matmul, `steps` timed steps (cycling over batches), then the
    profiled ones."""
    for i in range(warmup):
        run_step(system, optimiser, batches[i % len(batches)], timer)
    reference = reference_seconds()
    per_step, calls, totals = [], [], []
    for i in range(steps):
        timer.reset()
        totals.append(run_step(system, optimiser, batches[(warmup + i) % len(batches)], timer))
        per_step.append(dict(timer.totals))
        calls.append(dict(timer.calls))
    parts = part_report(per_step, calls, totals, reference)
    profiled = [batches[i % len(batches)] for i in range(profile_steps)]
    shares, nodes = (profile_backward(system, optimiser, profiled, timer) if profiled
                     else ({}, {}))
    total = shares.get("total", 0.0)
    top = sorted(nodes.items(), key=lambda item: -item[1])[:TOP_BACKWARD_NODES]
    return {"reference_s": reference,
            "step_median_s": statistics.median(totals),
            "step_s": [round(t, 4) for t in totals],
            "step_over_reference": statistics.median(totals) / reference,
            "groups": group_report(parts, reference),
            "parts": parts,
            "backward_by_part": backward_report(shares, parts["backward"]["median_s"]),
            "profiled_backward_s": total / max(profile_steps, 1),
            "top_backward_nodes": {name: {"fraction_of_backward": seconds / total}
                                   for name, seconds in top if total > 0}}


# ---------------------------------------------------------------------------- building
def build_system(subject: Path, level: int, overrides: Sequence[tuple[str, str]] = ()
                 ) -> tuple[Any, Any]:
    """(PersonaSystem built on CPU, its data module) from configs/demo.yaml (over base.yaml)
    with model.subdivision_levels = level, data.subject_dir = subject and each (key, value) of
    overrides (as `persona fit --key value`), as `persona fit` parses it. The CLI's Trainer
    applies trainer.deterministic (torch's global flag)."""
    from persona.lightning_cli import run_lightning_cli

    extra = [arg for key, value in overrides for arg in (f"--{key}", value)]
    cli = run_lightning_cli(["--config", str(DEMO_CONFIG), "--trainer.logger", "false",
                             "--model.subdivision_levels", str(level),
                             "--data.subject_dir", str(subject), *extra], run=False)
    system, dm = cli.model, cli.datamodule
    system.build_from_datamodule(dm, device="cpu")
    system.log = lambda *args, **kwargs: None  # no trainer to log to
    system.train()
    return system, dm


def make_optimiser(system: Any) -> torch.optim.Optimizer:
    """The system's Adam (configure_optimizers' parameter groups and settings)."""
    from persona import system_config

    groups = system_config.optimizer_groups(system.avatar, system.deformer, system.frame_params,
                                            system.optim_cfg)
    return system_config.optimizer_and_schedule(groups, system.optim_cfg,
                                                NO_DECAY_STEPS)["optimizer"]


def kind_batches(dm: Any) -> dict[str, list[dict]]:
    """Batches (batch size 1) of the input frame(s) and of every generated frame."""
    from persona.data.datamodule import collate_frames

    dataset = dm.train_dataset()
    rows = {"input": dm.input_rows, "generated": dm.generated_rows}
    for kind, found in rows.items():
        if not found:
            raise ValueError(f"{dm.subject_dir}: no {kind} frame among the training frames")
    return {kind: [collate_frames([dataset[row]]) for row in found]
            for kind, found in rows.items()}


def measure_level(subject: Path, level: int, warmup: int, steps: int,
                  profile_steps: int, overrides: Sequence[tuple[str, str]] = ()) -> dict:
    """Both step kinds at one subdivision level."""
    system, dm = build_system(subject, level, overrides)
    optimiser = make_optimiser(system)
    batches = kind_batches(dm)
    timer = PartTimer()
    first = batches["input"][0]
    out = {"subdivision_levels": level,
           "gaussians": int(system.template.num_vertices),
           "width": int(first["width"]), "height": int(first["height"]),
           "pixels": int(first["width"]) * int(first["height"]),
           "face_patch_size": int(system.loss_weights.face_patch_size),
           "renderer": type(system.renderer).__name__,
           "skinning": {"method": system.skinning_cfg.method,
                        "grid_size": system.skinning_cfg.grid_size,
                        "lookup_grad": system.skinning_cfg.lookup_grad,
                        "refined_lookup": system.skinning_cfg.refined_lookup},
           "triplane_resolution": system.deformer_cfg.triplane_resolution,
           "lpips": float(system.loss_weights.lpips),
           "kinds": {}}
    with patched(instrumentation(system, timer)):
        for kind in STEP_KINDS:
            out["kinds"][kind] = measure_kind(system, optimiser, batches[kind], warmup, steps,
                                              profile_steps, timer)
    return out


def check_subject(subject: Path) -> None:
    if not (subject / "subject.json").is_file():
        raise SystemExit(f"train_step bench: no subject at {subject} (no subject.json). Build "
                         f"the demo subject first: `make demo`, or `persona synth --preset demo "
                         f"--out {DEFAULT_SUBJECT}`; or pass --subject DIR (--smoke makes a "
                         "tiny one).")


def write_json(path: Path, document: dict) -> None:
    """Write via a temporary name in the same folder, then rename (no half-written file)."""
    from persona.atomic import atomic_write_json

    atomic_write_json(path, document)


def benchmark(subject: Path, levels: list[int], warmup: int, steps: int,
              profile_steps: int, overrides: Sequence[tuple[str, str]] = ()) -> dict:
    """The whole document; torch's deterministic flags are restored afterwards."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    load_before = os.getloadavg()
    reference_before = reference_seconds()
    results = []
    try:
        for level in levels:
            results.append(measure_level(subject, level, warmup, steps, profile_steps,
                                         overrides))
            print(json.dumps({"level": level, "step_median_s": {
                k: round(v["step_median_s"], 3) for k, v in results[-1]["kinds"].items()}}),
                file=sys.stderr, flush=True)
        run_deterministic = torch.are_deterministic_algorithms_enabled()
        run_fill = torch.utils.deterministic.fill_uninitialized_memory
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.utils.deterministic.fill_uninitialized_memory = fill
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    reference_after = reference_seconds()
    return {
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
        "deterministic_algorithms": run_deterministic,
        "fill_uninitialized_memory": run_fill,
        "config": str(DEMO_CONFIG.relative_to(REPO)), "subject": str(subject),
        "overrides": {key: value for key, value in overrides},
        "warmup": warmup, "steps": steps, "profile_steps": profile_steps,
        "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
        "reference": {"what": f"median seconds of a float32 [{REFERENCE_SIZE}]^2 @ "
                              f"[{REFERENCE_SIZE}]^2 matmul, {REFERENCE_REPEATS} runs",
                      "before_s": reference_before, "after_s": reference_after},
        "notes": ("median_s: median over the measured steps; fraction: the part's share of "
                  "the summed step time (parts sum to 1); over_reference: median_s / the "
                  "step kind's reference_s (the matmul, measured just before its steps); "
                  "backward_by_part: profiled shares of backward applied to the unprofiled "
                  "backward median"),
        "levels": results,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--subject", default=DEFAULT_SUBJECT, help="subject directory")
    p.add_argument("--levels", type=int, nargs="+", default=[0, 1],
                   help="model.subdivision_levels to measure")
    p.add_argument("--steps", type=int, default=5, help="measured steps per step kind")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured steps first, per kind")
    p.add_argument("--profile-steps", type=int, default=1,
                   help="extra profiled steps per kind for the backward split (0: none)")
    p.add_argument("--smoke", action="store_true",
                   help=f"a tiny procedural subject, {SMOKE_WARMUP} + {SMOKE_STEPS} steps")
    p.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="a config override on configs/demo.yaml, as `persona fit --KEY VALUE` "
                        "(repeatable), e.g. --set model.skinning.method volume")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.profile_steps < 0:
        p.error("--steps must be >= 1, --warmup and --profile-steps >= 0")
    with contextlib.ExitStack() as stack:
        if args.smoke:
            from persona.data.synth import preset_config, synthesize

            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            subject = folder / "subject"
            synthesize(subject, preset_config(SMOKE_PRESET, seed=SMOKE_SEED))
            warmup, steps = SMOKE_WARMUP, SMOKE_STEPS
        else:
            subject = Path(args.subject)
            check_subject(subject)
            warmup, steps = args.warmup, args.steps
        document = benchmark(subject, args.levels, warmup, steps, args.profile_steps,
                             [tuple(pair) for pair in args.set])
    if args.smoke:
        document["subject"] = f"synth preset {SMOKE_PRESET}, seed {SMOKE_SEED} (--smoke)"
    text = json.dumps(document, indent=1)
    print(text)
    if args.out is not None:
        write_json(args.out, document)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
