"""`persona compare RUN... | GLOB [--by KEY ...]`: compare finished runs offline.

A finished run is a folder `persona fit` then `persona test` wrote: RUN/config.yaml (the
resolved config), RUN/metrics.json (its "mean" test metrics; on synthetic garment subjects a
"deformation" section too), RUN/csv/version_*/metrics.csv (the CSV logger's train/val
scalars) and RUN/media/*.png (persona/callbacks/media.py grids). A folder that is not a run
stands for the runs below it (a sweep's folder), up to RUN_SEARCH_DEPTH levels down.

Runs are grouped by config keys: `--by KEY` (dotted, repeatable), else every key whose value
differs between the runs except the seed and the keys that only say where a run lives
(LOCATION_LEAVES). `--by config` groups by the config files a run's command layered
(`--config` in RUN/trial.json, written by `persona trial` and so by every sweep point): by the
stems of the files not every compared run layered, "(base)" for a run with none of those; a
fragment is not a key of the resolved config, so this is how a sweep over fragments is told
apart. Per group: mean and sample std over its runs (seeds) of each test metric;
with `--baseline GROUP` each group's difference to that group in pooled seed stds. Written to
--out (default ./compare), each file atomically:
  compare.md        the group table (mean ± std), the baseline differences, skipped runs;
  compare.csv       one row per group: grouping keys, n, seeds, <metric>_mean/_std/_n
                    (and <metric>_diff/_effect with --baseline);
  compare_runs.csv  one row per run: run folder, group, grouping keys, seed, metric values;
  compare.html      one self-contained page (inline CSS, no script, no external URL): the
                    tables, learning curves (mean over seeds per group with a +-std band, from
                    the CSV logs), a per-metric figure and each group's last media grid side by
                    side; the figures are embedded as base64 PNG;
  compare_metrics.png  that per-metric figure alone (for a docs page or a paper).
Runs without metrics.json (unfinished) or with an unreadable config/metrics file are listed as
skipped with the reason. docs/EXPERIMENTS.md shows an example and the same comparison in W&B.
"""

from __future__ import annotations

import argparse
import base64
import csv
import glob
import html
import io
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from persona.atomic import atomic_write_bytes, atomic_write_text
from persona.errors import UserError, nearest_keys

DEFAULT_OUT = "compare"
MARKDOWN_NAME, CSV_NAME, RUNS_CSV_NAME, HTML_NAME, FIGURE_NAME = (
    "compare.md", "compare.csv", "compare_runs.csv", "compare.html", "compare_metrics.png")
CONFIG_NAME = "config.yaml"  # written by `persona fit` (LightningCLI's SaveConfigCallback)
METRICS_NAME = "metrics.json"  # written by `persona test` (persona/callbacks/test_metrics.py)
CSV_LOG_GLOB = "csv/version_*/metrics.csv"  # CSVLogger(save_dir=RUN, name="csv")
MEDIA_DIR = "media"  # MediaLogger: <tag>_<step:07d>.png
MEDIA_TAGS = ("val_grid", "train_grid")  # grids preferred for the report, in this order
MEDIA_STEP = re.compile(r"^(?P<tag>.+)_(?P<step>\d+)\.png$")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUN_SEARCH_DEPTH = 3  # folder levels searched below a given folder that is not a run itself
SEED_KEY = "seed_everything"
# config keys (by their last part) that only say where a run, its subject or its logs live
LOCATION_LEAVES = frozenset({"default_root_dir", "subject_dir", "ckpt_path", "save_dir",
                             "dirpath", "cache_dir", "log_dir"})
UNSET = "(unset)"  # the value shown for a key a run's config does not have
TRIAL_NAME = "trial.json"  # written by `persona trial`: its "args" hold the command's --config
FRAGMENT_KEY = "config"  # --by this: the config files a run layered (as a sweep's parameter)
BASE_FRAGMENTS = "(base)"  # a run that layered only the files every compared run layered
ALL_RUNS_LABEL = "all runs"  # the one group's label when no key tells the runs apart
# metrics.json "deformation" sections (persona/metrics/deformation.py) -> flat name prefix,
# and the keys of each taken into the table (as experiments/ablations.py does)
# canonical-space offset errors, and the world-space error of the posed garment (what the
# skinned avatar shows; the canonical ones carry the skinning floor, docs/ABLATIONS.md)
DEFORMATION_KEYS = ("total_error_mm", "deformer_error_mm", "deformer_correlation",
                    "pose_part_correlation", "world_error_mm")
# of each garment part (skirt, sleeves) in the test poses
REGION_KEYS = ("world_error_mm", "pose_part_correlation")
DEFORMATION_SECTIONS = {"garment": ("deform", DEFORMATION_KEYS),
                        "train_garment": ("train_deform", DEFORMATION_KEYS),
                        "skirt": ("skirt", REGION_KEYS), "sleeves": ("sleeves", REGION_KEYS)}
# metric -> (higher is better, printed digits); others: no direction, DEFAULT_DIGITS
KNOWN_METRICS: dict[str, tuple[bool, int]] = {
    "psnr": (True, 2), "ssim": (True, 4), "lpips": (False, 4), "mask_iou": (True, 2),
    "depth_l1_mm": (False, 2), "normal_deg": (False, 2), "garment_psnr": (True, 2),
    "garment_mask_iou": (True, 2), "deform_total_error_mm": (False, 2),
    "deform_deformer_error_mm": (False, 2), "deform_deformer_correlation": (True, 3),
    "deform_world_error_mm": (False, 2),
    "train_deform_total_error_mm": (False, 2), "train_deform_deformer_error_mm": (False, 2),
    "train_deform_deformer_correlation": (True, 3), "train_deform_world_error_mm": (False, 2),
    "skirt_world_error_mm": (False, 2), "sleeves_world_error_mm": (False, 2),
    "deform_pose_part_correlation": (True, 3), "train_deform_pose_part_correlation": (True, 3),
    "skirt_pose_part_correlation": (True, 3), "sleeves_pose_part_correlation": (True, 3),
}
DEFAULT_DIGITS = 4
DEFAULT_CURVES = ("train/loss", "val/psnr")  # the loss total and the validation PSNR
CURVE_STEP_COLUMN = "step"
MAX_METRIC_PANELS = 6  # panels of the per-metric figure (the first metrics of the table)
METRIC_PANEL_COLUMNS = 3  # panels per row of the per-metric figure
FIGURE_DPI = 100
CURVE_FIGSIZE = (7.0, 3.6)  # inches
PANEL_SIZE = (3.4, 2.8)  # inches per panel of the per-metric figure
TICK_ROTATION = 30  # degrees: the per-metric figure's group names under each panel
TICK_CHARS = 24  # longer group names are cut in the figure (the tables keep them whole)
BAND_ALPHA = 0.2  # opacity of the +-std band around a mean curve
DEFAULT_MEDIA_PER_GROUP = 1  # media grids shown per group (its runs in seed order)


# ---------------------------------------------------------------------------- statistics
def summarise(values: list[float]) -> dict[str, Any]:
    """{"mean", "std" (sample, ddof 1; NaN below 2 values), "n", "values"}."""
    n = len(values)
    mean = sum(values) / n if n else math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return {"mean": mean, "std": std, "n": n, "values": list(values)}


def pooled_std(a: dict, b: dict) -> float:
    """Pooled sample std of two summaries (NaN when either has fewer than 2 values)."""
    if a["n"] < 2 or b["n"] < 2:
        return math.nan
    return math.sqrt(((a["n"] - 1) * a["std"] ** 2 + (b["n"] - 1) * b["std"] ** 2)
                     / (a["n"] + b["n"] - 2))


def effect_size(variant: dict, default: dict) -> float:
    """(variant mean - default mean) / pooled seed std; +-inf for a difference with zero
    spread, 0 for none, NaN without 2 seeds on both sides."""
    diff = variant["mean"] - default["mean"]
    pooled = pooled_std(variant, default)
    if math.isnan(pooled) or math.isnan(diff):
        return math.nan
    if pooled == 0.0:
        return 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
    return diff / pooled


def mean_std_cell(stats: dict | None, digits: int) -> str:
    """"mean ± std" ("mean" alone for one value, "-" for none)."""
    if not stats or not stats["n"]:
        return "-"
    if stats["n"] < 2:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def difference_cell(diff: float, effect: float, digits: int) -> str:
    """"+0.12 (+1.3σ)": a difference and its effect size (∞σ without seed spread, no effect
    below 2 seeds on either side)."""
    if math.isnan(diff):
        return "-"
    cell = f"{diff:+.{digits}f}"
    if math.isinf(effect):
        cell += f" ({'+' if effect > 0 else '-'}∞σ)"
    elif not math.isnan(effect):
        cell += f" ({effect:+.1f}σ)"
    return cell


def metric_digits(name: str) -> int:
    return KNOWN_METRICS.get(name, (None, DEFAULT_DIGITS))[1]


def metric_label(name: str) -> str:
    """The name with ↑ (higher is better) or ↓ when the direction is known."""
    known = KNOWN_METRICS.get(name)
    return name if known is None else f"{name} {'↑' if known[0] else '↓'}"


# ---------------------------------------------------------------------------- runs
@dataclass
class Run:
    """One finished run: its folder, resolved config, flat test metrics and seed."""

    path: Path
    config: dict
    metrics: dict[str, float]
    seed: Any = None
    fragments: tuple[str, ...] | None = None  # its command's --config files (None: no trial.json)
    group: str = ""
    values: dict[str, str] = field(default_factory=dict)  # grouping key -> shown value


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


def is_run_folder(folder: Path) -> bool:
    return (folder / CONFIG_NAME).is_file() or (folder / METRICS_NAME).is_file()


def runs_below(folder: Path, depth: int = RUN_SEARCH_DEPTH) -> list[Path]:
    """Run folders at most `depth` levels below `folder` (not descending into a run), sorted."""
    found: list[Path] = []
    if depth <= 0:
        return found
    for child in sorted(p for p in folder.iterdir() if p.is_dir()):
        found += [child] if is_run_folder(child) else runs_below(child, depth - 1)
    return found


def expand_patterns(patterns: Sequence[str]) -> tuple[list[Path], list[str], list[Skipped]]:
    """(run folders in argument order without repeats, patterns that matched nothing, paths
    skipped as not runs). A glob is expanded here (quoted patterns work); a folder that is not
    a run stands for the runs below it."""
    folders: list[Path] = []
    unmatched: list[str] = []
    skipped: list[Skipped] = []
    seen: set[Path] = set()
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        matches = sorted(glob.glob(expanded, recursive=True)) if glob.has_magic(expanded) \
            else ([expanded] if os.path.exists(expanded) else [])
        if not matches:
            unmatched.append(pattern)
        for match in matches:
            path = Path(match)
            if not path.is_dir():
                skipped.append(Skipped(match, "not a folder (give a run folder: it holds "
                                              f"{CONFIG_NAME} and {METRICS_NAME})"))
                continue
            below = [path] if is_run_folder(path) else runs_below(path)
            if not below:
                skipped.append(Skipped(match, f"no {CONFIG_NAME}: not a run folder and no run "
                                              f"folders below it"))
            for run in below:
                if run.resolve() not in seen:
                    seen.add(run.resolve())
                    folders.append(run)
    return folders, unmatched, skipped


def flat_test_metrics(report: dict) -> dict[str, float]:
    """metrics.json's "mean" metrics and the DEFORMATION_SECTIONS keys of its deformation part (as
    "<prefix>_<key>"), finite numbers only."""
    values: dict[str, Any] = dict(report.get("mean") or {})
    deformation = report.get("deformation") or {}
    if isinstance(deformation, dict):
        for section, (prefix, keys) in DEFORMATION_SECTIONS.items():
            part = deformation.get(section)
            for key in keys:
                if isinstance(part, dict) and key in part:
                    values[f"{prefix}_{key}"] = part[key]
    return {name: float(value) for name, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value)}


def one_line_error(error: Exception) -> str:
    return " ".join(str(error).split())


def load_run(folder: Path) -> Run | Skipped:
    """The run in `folder`, or why it is skipped (never raises for a broken run)."""
    config_path, metrics_path = folder / CONFIG_NAME, folder / METRICS_NAME
    if not config_path.is_file():
        return Skipped(str(folder), f"no {CONFIG_NAME} (not written by `persona fit`)")
    try:
        config = yaml.safe_load(config_path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        return Skipped(str(folder), f"{CONFIG_NAME}: unreadable ({one_line_error(error)})")
    if not isinstance(config, dict):
        return Skipped(str(folder), f"{CONFIG_NAME}: not a mapping of settings")
    if not metrics_path.is_file():
        return Skipped(str(folder), f"unfinished: no {METRICS_NAME} (run `persona test "
                                    f"--config {config_path} --ckpt_path "
                                    f"{folder / 'checkpoints' / 'last.ckpt'}`)")
    try:
        report = json.loads(metrics_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return Skipped(str(folder), f"{METRICS_NAME}: unreadable ({one_line_error(error)})")
    if not isinstance(report, dict) or not isinstance(report.get("mean"), dict):
        return Skipped(str(folder), f"{METRICS_NAME}: no \"mean\" metrics (not written by "
                                    "`persona test`)")
    return Run(folder, config, flat_test_metrics(report), seed=config.get(SEED_KEY),
               fragments=command_fragments(folder))


def config_files(args: Sequence[str]) -> tuple[str, ...]:
    """The files a command line layers with `--config FILE` / `--config=FILE`, in order."""
    files: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            files.append(str(args[i + 1]))
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return tuple(files)


def command_fragments(folder: Path) -> tuple[str, ...] | None:
    """The --config files of the command in RUN/trial.json; None without a readable one."""
    try:
        trial = json.loads((folder / TRIAL_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    args = trial.get("args") if isinstance(trial, dict) else None
    return config_files(args) if isinstance(args, list) else None


# ---------------------------------------------------------------------------- grouping
def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b.c": leaf} of nested dicts and lists (list items by index; an empty dict or list is
    a leaf)."""
    if isinstance(config, dict) and config:
        items: Iterable[tuple[Any, Any]] = config.items()
    elif isinstance(config, list) and config:
        items = enumerate(config)
    else:
        return {prefix: config} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_value(config: dict, key: str) -> Any:
    """The value (or subtree) at a dotted key; UNSET when a part is missing."""
    node: Any = config
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return UNSET
    return node


def show_value(value: Any) -> str:
    """A config value as one short string: strings as they are, the rest as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def is_location_key(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in LOCATION_LEAVES


def differing_keys(configs: Sequence[dict]) -> list[str]:
    """Config keys (flat, dotted) whose value differs between the configs, except the seed and
    the location keys; in the order of the first config, then new keys sorted."""
    flats = [flatten(c) for c in configs]
    order = list(flats[0]) if flats else []
    order += sorted({k for f in flats[1:] for k in f} - set(order))
    return [key for key in order
            if key != SEED_KEY and not is_location_key(key)
            and len({show_value(f.get(key, UNSET)) for f in flats}) > 1]


def fragment_values(runs: Sequence[Run]) -> dict[Path, str]:
    """run path -> the stems (joined by "+") of the config files its command layered that not
    every run layered; BASE_FRAGMENTS when none; UNSET without trial.json."""
    known = [set(r.fragments) for r in runs if r.fragments is not None]
    shared = set.intersection(*known) if known else set()
    values = {}
    for run in runs:
        if run.fragments is None:
            values[run.path] = UNSET
            continue
        own = [Path(f).stem for f in run.fragments if f not in shared]
        values[run.path] = "+".join(own) or BASE_FRAGMENTS
    return values


def check_keys(keys: Sequence[str], configs: Sequence[dict], runs: Sequence[Run] = ()) -> None:
    """UserError for a --by key no run's config has (with the nearest keys); --by config
    needs a run with trial.json."""
    known = {k for c in configs for k in flatten(c)}
    for key in keys:
        if key == FRAGMENT_KEY:
            if not any(r.fragments is not None for r in runs):
                raise UserError(f"--by {FRAGMENT_KEY}: no run has {TRIAL_NAME} (written by "
                                f"`persona trial`, which sweeps run) to read its --config "
                                f"files from")
            continue
        if all(config_value(c, key) is UNSET for c in configs):
            near = nearest_keys(key, known)
            hint = f"; did you mean {' or '.join(near)}?" if near else ""
            raise UserError(f"--by {key}: no run's {CONFIG_NAME} has this key{hint}")


def natural(text: str) -> tuple[int, float, str]:
    """Sort key: numbers by value before other text ("2" before "10")."""
    try:
        number = float(text)
    except ValueError:
        return (1, 0.0, text)
    return (0, number, text) if not math.isnan(number) else (1, 0.0, text)


def group_label(values: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items()) or ALL_RUNS_LABEL


def assign_groups(runs: list[Run], keys: Sequence[str]) -> dict[str, list[Run]]:
    """{group label: runs (seed order)}; groups sorted by their values; sets run.group and
    run.values."""
    fragments = fragment_values(runs) if FRAGMENT_KEY in keys else {}
    for run in runs:
        run.values = {key: fragments[run.path] if key == FRAGMENT_KEY
                      else show_value(config_value(run.config, key)) for key in keys}
        run.group = group_label(run.values)
    ordered = sorted(runs, key=lambda r: ([natural(r.values[k]) for k in keys], natural(
        show_value(r.seed)), str(r.path)))
    groups: dict[str, list[Run]] = {}
    for run in ordered:
        groups.setdefault(run.group, []).append(run)
    return groups


def metric_names(runs: Sequence[Run], wanted: Sequence[str] | None) -> list[str]:
    """The table's metrics: `wanted` (each must be in some run), else KNOWN_METRICS order then
    the others sorted."""
    present = {name for run in runs for name in run.metrics}
    if wanted:
        missing = [m for m in wanted if m not in present]
        if missing:
            raise UserError(f"--metrics {','.join(missing)}: in no run's {METRICS_NAME} "
                            f"(they hold: {', '.join(sorted(present)) or 'nothing'})")
        return list(wanted)
    return [m for m in KNOWN_METRICS if m in present] + sorted(present - set(KNOWN_METRICS))


def summarise_groups(groups: dict[str, list[Run]], metrics: Sequence[str]
                     ) -> dict[str, dict[str, dict]]:
    """{group: {metric: summarise(values of the group's runs that have it)}}."""
    return {label: {m: summarise([r.metrics[m] for r in runs if m in r.metrics])
                    for m in metrics} for label, runs in groups.items()}


def find_baseline(name: str, groups: dict[str, list[Run]]) -> str:
    """The group label `name` stands for: the label itself, or its values joined by ","."""
    for label, runs in groups.items():
        if name in (label, ",".join(runs[0].values.values())):
            return label
    raise UserError(f"--baseline {name}: no such group (groups: "
                    + "; ".join(groups) + ")")


def baseline_differences(summary: dict[str, dict[str, dict]], baseline: str
                         ) -> dict[str, dict[str, tuple[float, float]]]:
    """{group: {metric: (mean - baseline mean, effect size in pooled seed stds)}}."""
    base = summary[baseline]
    return {label: {m: (stats["mean"] - base[m]["mean"], effect_size(stats, base[m]))
                    for m, stats in metrics.items()}
            for label, metrics in summary.items()}


# ---------------------------------------------------------------------------- curves
def read_csv_logs(run: Path) -> dict[str, dict[int, float]]:
    """{column: {step: value}} over RUN/csv/version_*/metrics.csv in version order (a later
    version's value wins at a repeated step: a resumed fit); unreadable files are left out."""
    def version(path: Path) -> int:
        digits = path.parent.name.rpartition("_")[2]
        return int(digits) if digits.isdigit() else -1

    columns: dict[str, dict[int, float]] = {}
    for path in sorted(run.glob(CSV_LOG_GLOB), key=version):
        try:
            with open(path, newline="") as handle:
                rows = list(csv.DictReader(handle))
        except (OSError, UnicodeDecodeError, csv.Error):
            continue
        for row in rows:
            try:
                step = int(float(row.get(CURVE_STEP_COLUMN) or "nan"))
            except ValueError:
                continue
            for name, text in row.items():
                if name in (None, CURVE_STEP_COLUMN) or not text:
                    continue
                try:
                    value = float(text)
                except (TypeError, ValueError):
                    continue
                if math.isfinite(value):
                    columns.setdefault(name, {})[step] = value
    return columns


def mean_curve(curves: Sequence[dict[int, float]]) -> list[tuple[int, float, float, int]]:
    """[(step, mean, std (NaN below 2 runs), runs)] over the steps any curve has."""
    steps = sorted({s for c in curves for s in c})
    points = []
    for step in steps:
        stats = summarise([c[step] for c in curves if step in c])
        points.append((step, stats["mean"], stats["std"], stats["n"]))
    return points


def group_curves(groups: dict[str, list[Run]], logs: dict[Path, dict[str, dict[int, float]]],
                 names: Sequence[str]) -> dict[str, dict[str, list]]:
    """{curve name: {group: mean_curve}} for each name some run logged."""
    result: dict[str, dict[str, list]] = {}
    for name in names:
        per_group = {label: mean_curve([logs[r.path][name] for r in runs
                                        if name in logs[r.path]])
                     for label, runs in groups.items()}
        per_group = {label: points for label, points in per_group.items() if points}
        if per_group:
            result[name] = per_group
    return result


# ---------------------------------------------------------------------------- media
def last_media(run: Path) -> Path | None:
    """The run's newest media grid: the highest step of the first MEDIA_TAGS tag it has, else
    its newest PNG by name."""
    folder = run / MEDIA_DIR
    if not folder.is_dir():
        return None
    pngs = sorted(folder.glob("*.png"))
    for tag in MEDIA_TAGS:
        tagged = [(int(m["step"]), p) for p in pngs
                  if (m := MEDIA_STEP.match(p.name)) and m["tag"] == tag]
        if tagged:
            return max(tagged)[1]
    return pngs[-1] if pngs else None


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def media_cells(groups: dict[str, list[Run]], per_group: int
                ) -> dict[str, list[tuple[str, str | None]]]:
    """{group: [(caption, data URI or None when there is no readable grid)]} for the first
    `per_group` runs of each group."""
    cells: dict[str, list[tuple[str, str | None]]] = {}
    for label, runs in groups.items():
        row = []
        for run in runs[:per_group]:
            path = last_media(run.path)
            try:
                data = path.read_bytes() if path is not None else b""
            except OSError:
                data = b""
            if not data.startswith(PNG_SIGNATURE):
                row.append((f"seed {run.seed}: no media grid in {run.path / MEDIA_DIR}", None))
                continue
            row.append((f"seed {run.seed}: {path.name}", png_data_uri(data)))
        cells[label] = row
    return cells


# ---------------------------------------------------------------------------- figures
def _figure(size: tuple[float, float]):  # noqa: ANN202 - a matplotlib Figure
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    return Figure(figsize=size, dpi=FIGURE_DPI)


def figure_png(figure) -> bytes:  # noqa: ANN001 - a matplotlib Figure
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def curve_figure(name: str, per_group: dict[str, list]) -> bytes:
    """PNG: one line per group (mean over its runs) with a +-std band where 2+ runs."""
    figure = _figure(CURVE_FIGSIZE)
    axis = figure.add_subplot()
    for index, (label, points) in enumerate(per_group.items()):
        steps = [p[0] for p in points]
        means = [p[1] for p in points]
        colour = f"C{index % 10}"
        axis.plot(steps, means, color=colour, label=label, marker="." if len(points) < 30
                  else None)
        band = [(s, m, d) for s, m, d, _ in points if not math.isnan(d)]
        if band:
            axis.fill_between([b[0] for b in band], [b[1] - b[2] for b in band],
                              [b[1] + b[2] for b in band], color=colour, alpha=BAND_ALPHA,
                              linewidth=0)
    axis.set_xlabel("step")
    axis.set_ylabel(name)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    return figure_png(figure)


def metrics_figure(summary: dict[str, dict[str, dict]], metrics: Sequence[str]) -> bytes:
    """PNG: a panel per metric, each group's mean with its seed std bar and each seed a dot."""
    columns = min(len(metrics), METRIC_PANEL_COLUMNS)
    rows = math.ceil(len(metrics) / columns)
    figure = _figure((PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows))
    labels = list(summary)
    for index, name in enumerate(metrics):
        axis = figure.add_subplot(rows, columns, index + 1)
        for x, label in enumerate(labels):
            stats = summary[label][name]
            if not stats["n"]:
                continue
            std = stats["std"] if stats["n"] > 1 else 0.0
            axis.errorbar([x], [stats["mean"]], yerr=[std], fmt="o", capsize=4,
                          color=f"C{x % 10}")
            axis.scatter([x] * stats["n"], stats["values"], s=10, color="0.5", zorder=3)
        axis.set_title(metric_label(name), fontsize=9)
        axis.set_xticks(range(len(labels)))
        axis.set_xticklabels([short_label(label) for label in labels], fontsize=7,
                             rotation=TICK_ROTATION, ha="right")
        axis.grid(axis="y", alpha=0.3)
    return figure_png(figure)


# ---------------------------------------------------------------------------- tables
@dataclass
class Comparison:
    """Everything the reports show."""

    runs: list[Run]
    skipped: list[Skipped]
    keys: list[str]
    grouped_by_default: bool
    other_keys: list[str]  # differing keys not grouped by (with --by)
    groups: dict[str, list[Run]]
    metrics: list[str]
    summary: dict[str, dict[str, dict]]
    baseline: str | None = None
    differences: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)


def seeds_text(runs: Sequence[Run]) -> str:
    return " ".join(show_value(r.seed) for r in runs)


def group_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Head and body of the group table (mean ± std per metric)."""
    head = ["group", "n", "seeds", *[metric_label(m) for m in comparison.metrics]]
    body = [[label, str(len(runs)), seeds_text(runs),
             *[mean_std_cell(comparison.summary[label][m], metric_digits(m))
               for m in comparison.metrics]]
            for label, runs in comparison.groups.items()]
    return head, body


def difference_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    head = ["group", *[metric_label(m) for m in comparison.metrics]]
    body = [[label, *[difference_cell(*diffs[m], metric_digits(m)) for m in comparison.metrics]]
            for label, diffs in comparison.differences.items() if label != comparison.baseline]
    return head, body


def markdown_table(head: list[str], body: list[list[str]]) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    return ["| " + " | ".join(map(cell, head)) + " |", "|" + "---|" * len(head),
            *["| " + " | ".join(map(cell, row)) + " |" for row in body]]


def grouping_sentence(comparison: Comparison) -> str:
    if not comparison.keys:
        return ("No config key differs between the runs (besides the seed and locations): "
                "one group.")
    how = "the config keys that differ between the runs" if comparison.grouped_by_default \
        else "--by"
    sentence = f"Grouped by {how}: {', '.join(f'`{k}`' for k in comparison.keys)}."
    if comparison.other_keys:
        sentence += (" Also differing, not grouped by: "
                     + ", ".join(f"`{k}`" for k in comparison.other_keys) + ".")
    return sentence


def markdown_report(comparison: Comparison) -> str:
    lines = [f"# Comparison of {len(comparison.runs)} runs", "", grouping_sentence(comparison),
             "Test metrics (metrics.json): mean ± sample std over each group's runs (seeds).",
             ""]
    lines += markdown_table(*group_rows(comparison))
    if comparison.baseline is not None:
        lines += ["", f"## Difference to `{comparison.baseline}`", "",
                  "Group mean minus the baseline's, in parentheses in units of the pooled seed "
                  "std (∞σ: no seed spread; none below 2 seeds on either side).", ""]
        lines += markdown_table(*difference_rows(comparison))
    if comparison.skipped:
        lines += ["", "## Skipped", ""]
        lines += [f"- {s.path}: {s.reason}" for s in comparison.skipped]
    return "\n".join(lines) + "\n"


def csv_number(value: float) -> str:
    return "" if math.isnan(value) else repr(float(value))


def group_csv_rows(comparison: Comparison) -> list[list[str]]:
    head = ["group", *comparison.keys, "n", "seeds"]
    for m in comparison.metrics:
        head += [f"{m}_mean", f"{m}_std", f"{m}_n"]
        if comparison.baseline is not None:
            head += [f"{m}_diff", f"{m}_effect"]
    rows = [head]
    for label, runs in comparison.groups.items():
        row = [label, *runs[0].values.values(), str(len(runs)), seeds_text(runs)]
        for m in comparison.metrics:
            stats = comparison.summary[label][m]
            row += [csv_number(stats["mean"]), csv_number(stats["std"]), str(stats["n"])]
            if comparison.baseline is not None:
                diff, effect = comparison.differences[label][m]
                row += [csv_number(diff), csv_number(effect)]
        rows.append(row)
    return rows


def run_csv_rows(comparison: Comparison) -> list[list[str]]:
    rows = [["run", "group", *comparison.keys, "seed", *comparison.metrics]]
    for label, runs in comparison.groups.items():
        for run in runs:
            rows.append([str(run.path), label, *run.values.values(), show_value(run.seed),
                         *[csv_number(run.metrics.get(m, math.nan)) for m in comparison.metrics]])
    return rows


def csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


# ---------------------------------------------------------------------------- HTML
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em;
       color: #222; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child, td.text { text-align: left; }
th { background: #f2f2f2; }
figure { display: inline-block; margin: 0.4em; vertical-align: top; }
figcaption { font-size: 0.8em; color: #555; max-width: 40em; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
.media { display: flex; flex-wrap: wrap; gap: 0.6em; align-items: flex-start; }
.media figure { flex: 1 1 24em; max-width: 32%; margin: 0; }
.media img { width: 100%; image-rendering: pixelated; }
.note { color: #555; font-size: 0.9em; }
"""


def html_table(head: list[str], body: list[list[str]], text_columns: int = 1) -> str:
    """A table in a horizontally scrolling box; the first `text_columns` columns left-aligned."""
    def cell(index: int, text: str) -> str:
        align = ' class="text"' if index < text_columns else ""
        return f"<td{align}>{html.escape(text)}</td>"

    rows = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    rows += ["<tr>" + "".join(cell(i, c) for i, c in enumerate(row)) + "</tr>" for row in body]
    return '<div class="scroll"><table>\n' + "\n".join(rows) + "\n</table></div>"


def html_figure(data_uri: str, caption: str, alt: str) -> str:
    return (f'<figure><img src="{data_uri}" alt="{html.escape(alt, quote=True)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def html_report(comparison: Comparison, curves: dict[str, bytes], metric_png: bytes | None,
                media: dict[str, list[tuple[str, str | None]]], notes: list[str]) -> str:
    """One self-contained page: inline CSS, figures as data URIs, no script, no external URL."""
    parts = [f"<h1>Comparison of {len(comparison.runs)} runs</h1>",
             f"<p>{html.escape(grouping_sentence(comparison).replace('`', ''))} Test metrics "
             "(metrics.json): mean ± sample std over each group's runs (seeds).</p>",
             html_table(*group_rows(comparison))]
    if comparison.baseline is not None:
        parts += [f"<h2>Difference to {html.escape(comparison.baseline)}</h2>",
                  "<p class=\"note\">Group mean minus the baseline's; in parentheses in units of "
                  "the pooled seed std.</p>", html_table(*difference_rows(comparison))]
    if metric_png is not None:
        numbered = "; ".join(f"{i + 1}: {label}" for i, label in enumerate(comparison.groups))
        parts += ["<h2>Test metrics per group</h2>",
                  html_figure(png_data_uri(metric_png), f"Mean with seed std bar, each seed a "
                              f"grey dot. Groups {numbered}.", "test metrics per group")]
    parts.append("<h2>Learning curves</h2>")
    if curves:
        parts += [html_figure(png_data_uri(png), f"{name}: mean over each group's runs, band "
                              "+-1 std (CSV logs)", f"learning curve {name}")
                  for name, png in curves.items()]
    else:
        parts.append("<p class=\"note\">No learning curves (no run's CSV logs hold the "
                     "curves asked for).</p>")
    parts += ["<h2>Media</h2>", "<p class=\"note\">The newest media grid (persona/callbacks/"
              "media.py: target, render, error, ...) of each group's first runs.</p>",
              "<div class=\"media\">"]
    for label, cells in media.items():
        for caption, uri in cells:
            parts.append(html_figure(uri, f"{label}: {caption}", f"media grid of {label}")
                         if uri else f"<p class=\"note\">{html.escape(label)}: "
                                     f"{html.escape(caption)}</p>")
    parts += ["</div>", "<h2>Runs</h2>", html_table(*run_table(comparison), text_columns=2)]
    if comparison.skipped:
        parts += ["<h2>Skipped</h2>", "<ul>"]
        parts += [f"<li>{html.escape(s.path)}: {html.escape(s.reason)}</li>"
                  for s in comparison.skipped]
        parts.append("</ul>")
    if notes:
        parts += ["<h2>Notes</h2>", "<ul>", *[f"<li>{html.escape(n)}</li>" for n in notes],
                  "</ul>"]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<title>persona compare</title>\n<style>" + STYLE + "</style>\n</head>\n<body>\n"
            + "\n".join(parts) + "\n</body>\n</html>\n")


def run_table(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    head = ["run", "group", "seed", *[metric_label(m) for m in comparison.metrics]]
    body = [[str(run.path), label, show_value(run.seed),
             *[f"{run.metrics[m]:.{metric_digits(m)}f}" if m in run.metrics else "-"
               for m in comparison.metrics]]
            for label, runs in comparison.groups.items() for run in runs]
    return head, body


# ---------------------------------------------------------------------------- writing
def build_comparison(patterns: Sequence[str], by: Sequence[str] = (),
                     metrics: Sequence[str] | None = None, baseline: str | None = None
                     ) -> Comparison:
    """Load, group and summarise the runs; UserError when none is found or an option names
    nothing."""
    folders, unmatched, skipped = expand_patterns(patterns)
    runs: list[Run] = []
    for folder in folders:
        loaded = load_run(folder)
        (runs if isinstance(loaded, Run) else skipped).append(loaded)
    skipped += [Skipped(p, "matched nothing") for p in unmatched]
    if not runs:
        why = "; ".join(f"{s.path}: {s.reason}" for s in skipped)
        raise UserError(f"no finished runs in {' '.join(patterns)}"
                        + (f" ({why})" if why else ""))
    configs = [run.config for run in runs]
    differing = differing_keys(configs)
    if by:
        check_keys(by, configs, runs)
        keys, other = list(by), [k for k in differing if k not in by]
    else:
        keys, other = differing, []
    groups = assign_groups(runs, keys)
    names = metric_names(runs, metrics)
    summary = summarise_groups(groups, names)
    comparison = Comparison(runs, skipped, keys, not by, other, groups, names, summary)
    if baseline is not None:
        comparison.baseline = find_baseline(baseline, groups)
        comparison.differences = baseline_differences(summary, comparison.baseline)
    return comparison


def figures(comparison: Comparison, curve_names: Sequence[str]
            ) -> tuple[dict[str, bytes], bytes | None, list[str]]:
    """(curve name -> PNG, the per-metric PNG or None, notes) from the runs' CSV logs."""
    notes: list[str] = []
    try:
        import matplotlib  # noqa: F401 - only whether it is there
    except ImportError:
        return {}, None, ["no figures: matplotlib is not installed in this environment"]
    logs = {run.path: read_csv_logs(run.path) for run in comparison.runs}
    per_curve = group_curves(comparison.groups, logs, curve_names)
    missing = [n for n in curve_names if n not in per_curve]
    if missing:
        notes.append(f"no run's CSV logs ({CSV_LOG_GLOB}) hold {', '.join(missing)}")
    curves = {name: curve_figure(name, per_group) for name, per_group in per_curve.items()}
    panels = comparison.metrics[:MAX_METRIC_PANELS]
    metric_png = metrics_figure(comparison.summary, panels) if panels else None
    return curves, metric_png, notes


def short_label(label: str) -> str:
    """A group label as a tick: the values of its `key=value` parts (the table names the keys),
    cut to TICK_CHARS characters."""
    values = ", ".join(part.split("=", 1)[-1] for part in label.split(", "))
    return values if len(values) <= TICK_CHARS else values[:TICK_CHARS - 1] + "…"


def write_reports(comparison: Comparison, out: Path, curve_names: Sequence[str],
                  media_per_group: int) -> dict[str, Path]:
    curves, metric_png, notes = figures(comparison, curve_names)
    media = media_cells(comparison.groups, media_per_group)
    written = {}
    if metric_png is not None:
        written["figure"] = atomic_write_bytes(out / FIGURE_NAME, metric_png)
    else:  # no figure this time: an earlier comparison's must not pass for this one's
        (out / FIGURE_NAME).unlink(missing_ok=True)
    return {**written,
        "markdown": atomic_write_text(out / MARKDOWN_NAME, markdown_report(comparison)),
        "csv": atomic_write_text(out / CSV_NAME, csv_text(group_csv_rows(comparison))),
        "runs_csv": atomic_write_text(out / RUNS_CSV_NAME, csv_text(run_csv_rows(comparison))),
        "html": atomic_write_text(out / HTML_NAME,
                                  html_report(comparison, curves, metric_png, media, notes)),
    }


def comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="persona compare", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN|GLOB",
                        help="run folders, folders holding runs, or glob patterns (quoted "
                             "patterns are expanded here)")
    parser.add_argument("--by", action="append", default=[], metavar="KEY",
                        help="group by this dotted config key (repeatable); `config`: by the "
                             "config files each run's command layered (trial.json); default: "
                             "every key that differs between the runs except the seed and "
                             "locations")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default "
                                                           f"./{DEFAULT_OUT})")
    parser.add_argument("--metrics", type=comma_list, default=None, metavar="A,B",
                        help="only these test metrics (metrics.json names)")
    parser.add_argument("--baseline", default=None, metavar="GROUP",
                        help="also each group's difference to this one (its label, e.g. "
                             "model.deformer.mode=mean, or its values joined by commas)")
    parser.add_argument("--curves", type=comma_list, default=list(DEFAULT_CURVES),
                        metavar="A,B", help="CSV-logged scalars drawn as learning curves "
                                            f"(default {','.join(DEFAULT_CURVES)})")
    parser.add_argument("--media-per-group", type=int, default=DEFAULT_MEDIA_PER_GROUP,
                        metavar="N", help="media grids shown per group, its runs in seed "
                                          f"order (default {DEFAULT_MEDIA_PER_GROUP}; 0: none)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.media_per_group < 0:
        raise UserError(f"--media-per-group {args.media_per_group}: must be 0 or more")
    comparison = build_comparison(args.runs, args.by, args.metrics, args.baseline)
    written = write_reports(comparison, Path(args.out), args.curves, args.media_per_group)
    print(markdown_report(comparison), end="")
    print(f"[compare] {len(comparison.runs)} runs in {len(comparison.groups)} groups, "
          f"{len(comparison.skipped)} skipped; wrote "
          + ", ".join(str(p) for p in written.values()))
    return 0
