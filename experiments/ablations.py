"""The paper's ablations on the synthetic garment subject, over seeds, against ground truth.

Reproduce the table (9 variants x 3 seeds = 27 fits of configs/demo.yaml; hours on a 2-core CPU):

    .venv/bin/python experiments/ablations.py --out runs/ablations

It builds the subject first when OUT/subject has no meta.json (`persona synth --preset garment
--seed 0`; `--subject DIR` uses another). Each (variant, seed) is one
`persona fit --config configs/demo.yaml --config configs/ablation/<x>.yaml --seed_everything S`
then `persona test` (`--dry-run` prints them all, and whether each row would be reused). Besides
the test metrics (PSNR/SSIM/LPIPS, mask IoU, depth, normals, and on garment subjects
garment_psnr / garment_mask_iou and metrics.json's "deformation" section) it scores identity
where the subject's ground truth marks it: PSNR on the face and on the chest logo of the
held-out test frames (the regions of the known avatar, rendered in each test pose).

Rows: OUT/rows/<variant>/seed<k>.json, one per fit (fields: the comment above ROW_SCHEMA). A
stored row is reused only when its git commit, source hash (uncommitted changes under
SOURCE_PATHS), resolved-config hash and subject hash all equal the current ones; else the fit is
re-run into OUT/runs/<variant>/seed<k>.
`--reuse-any` reuses any stored row (marked stale in the tables), `--table-only` only aggregates.

Tables: OUT/ablations.json and OUT/ablations.md (mean +- sample std over seeds; each variant's
difference to the default in units of the pooled seed std, and whether it agrees with the paper's
direction, PAPER_CLAIMS), OUT/ablations.png (PSNR and garment offset error, seed error bars).
Smoke run: `--variants default --seeds 0 --epochs 1 --override trainer.max_steps=2`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from persona.atomic import atomic_write_json

# the seed statistics `persona compare` uses too (mean, sample std, pooled-std effect size)
from persona.study.compare import (  # pooled_std: part of this script's interface
    difference_cell,
    effect_size,
    pooled_std,  # noqa: F401
    summarise,
)
from persona.study.compare import mean_std_cell as _mean_std

# a run's identity as `persona sweep` computes it (its resolved config without location keys)
from persona.study.identity import LOCATION_KEYS, config_hash, normalise_config  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
ABLATION_DIR = REPO / "configs" / "ablation"
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
PYTHON = ".venv/bin/python"  # how the printed commands start (run from the repository root)
DEFAULT_VARIANT = "default"
# variant -> config fragments layered on configs/demo.yaml: the paper's ablations (default list)
PAPER_VARIANTS: dict[str, list[str]] = {
    DEFAULT_VARIANT: [],  # 1:1 sampling, refined image 0.1, mean offsets, 4-ring pose, seams on
    "deformer_off": ["deformer_off.yaml"],
    "deformer_mean_scale": ["deformer_mean_scale.yaml"],
    "deformer_mean_rgb": ["deformer_mean_rgb.yaml"],
    "deformer_full_pose": ["full_pose_ring.yaml"],  # model.deformer.ring_size: null
    "no_balanced_sampling": ["no_balanced_sampling.yaml"],
    "image_weight_1": ["image_weight_1.yaml"],
    "image_weight_0.01": ["image_weight_0.01.yaml"],
    "seams_off": ["seams_off.yaml"],
}
# our own switches, run only when named with --variants
EXTRA_VARIANTS: dict[str, list[str]] = {
    "mask_occlusion_off": ["mask_occlusion_off.yaml"],
    "face_patch_off": ["face_patch_off.yaml"],
    "albedo_off": ["albedo_off.yaml"],
    "skinning_knn": ["skinning_knn.yaml"],
}
VARIANTS: dict[str, list[str]] = {**PAPER_VARIANTS, **EXTRA_VARIANTS}
DEFAULT_SEEDS = (0, 1, 2)
SUBJECT_PRESET = "garment"  # synth/config.py PRESETS: the open body in the loose garment
DEFAULT_SUBJECT_SEED = 0  # the subject is an input: fixed across the fit seeds
SOURCE_PATHS = ("persona", "configs", "pyproject.toml")  # uncommitted edits here change results
# resolved-config keys that only say where a run lives (the subject is keyed by its meta hash)
# A row, OUT/rows/<variant>/seed<k>.json (version ROW_SCHEMA): schema, variant, seed, fragments
# (under configs/ablation/), epochs (--epochs or null), overrides (--override KEY=VALUE list),
# commands {fit, test} (shell lines), git {commit, dirty, source_hash}, config_hash, config (the
# run's config.yaml as written by `persona fit`), subject {path, meta_sha256}, run_dir, metrics
# (metrics.json "mean"), deformation (metrics.json "deformation" or null), identity {psnr_face,
# psnr_logo}, seconds {fit, test, identity, total}, finished (UTC ISO time).
ROW_SCHEMA = 1
ROW_KEY_FIELDS = ("commit", "source_hash", "config_hash", "subject_hash")  # all equal: reuse
IDENTITY_REGIONS = ("face", "logo")  # regions of the ground-truth avatar scored separately
REGION_THRESHOLD = 0.5  # rendered region coverage above which a pixel belongs to the region
# |effect| below this many pooled seed stds is "within noise": with 3 vs 3 seeds a two-sided
# t-test at 5% needs |d| > 2.27 (t = d * sqrt(n / 2), 4 degrees of freedom)
NOISE_EFFECT_SIZE = 2.0
# metrics.json "deformation" sections (persona/metrics/deformation.py GARMENT_KEY, TRAIN_PREFIX)
# -> flat name prefix
DEFORMATION_SECTIONS = {"garment": "deform", "train_garment": "train_deform"}
DEFORMATION_KEYS = ("total_error_mm", "deformer_error_mm", "deformer_correlation")


@dataclass(frozen=True)
class Metric:
    """One aggregated column: where it comes from, its direction and its printed precision."""

    label: str
    higher_is_better: bool
    digits: int


# flat row metric -> Metric; flat names are metrics.json "mean" keys, identity scores, and
# "<prefix>_<key>" of the deformation section's garment (test poses) / train_garment sections
METRICS: dict[str, Metric] = {
    "psnr": Metric("PSNR", True, 2),
    "ssim": Metric("SSIM", True, 4),
    "lpips": Metric("LPIPS", False, 4),
    "mask_iou": Metric("mask IoU %", True, 2),
    "depth_l1_mm": Metric("depth mm", False, 2),
    "normal_deg": Metric("normal deg", False, 2),
    "psnr_face": Metric("PSNR face", True, 2),
    "psnr_logo": Metric("PSNR logo", True, 2),
    "garment_psnr": Metric("garment PSNR", True, 2),
    "garment_mask_iou": Metric("garment IoU %", True, 2),
    "deform_total_error_mm": Metric("garment total err mm", False, 2),
    "deform_deformer_error_mm": Metric("deformer err mm", False, 2),
    "deform_deformer_correlation": Metric("deformer corr", True, 3),
    "train_deform_total_error_mm": Metric("train: total err mm", False, 2),
    "train_deform_deformer_error_mm": Metric("train: deformer err mm", False, 2),
    "train_deform_deformer_correlation": Metric("train: deformer corr", True, 3),
}
PLOT_METRICS = ("psnr", "deform_total_error_mm")  # OUT/ablations.png panels
# the tables of OUT/ablations.md: (title, metrics); every METRICS key in exactly one
COLUMN_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Image and geometry", ("psnr", "ssim", "lpips", "mask_iou", "depth_l1_mm", "normal_deg")),
    ("Identity and garment region", ("psnr_face", "psnr_logo", "garment_psnr",
                                     "garment_mask_iou")),
    ("Garment offsets against the truth (test poses; train: the true training poses)",
     ("deform_total_error_mm", "deform_deformer_error_mm", "deform_deformer_correlation",
      "train_deform_total_error_mm", "train_deform_deformer_error_mm",
      "train_deform_deformer_correlation")),
)


@dataclass(frozen=True)
class PaperClaim:
    """The paper says the default beats this variant on these metrics (source: where)."""

    metrics: tuple[str, ...]
    source: str


IMAGE = ("psnr", "ssim", "lpips")
PAPER_CLAIMS: dict[str, PaperClaim] = {
    "deformer_off": PaperClaim(
        (*IMAGE, "mask_iou", "depth_l1_mm", "normal_deg", "deform_total_error_mm"),
        "Tab. 2 (PSNR/SSIM/LPIPS), Tab. S3 (mask 88.60->90.06, depth, normal), Fig. 6b-c "
        "(cloth stays on the body; garment error is our reading)"),
    "deformer_mean_scale": PaperClaim(IMAGE, "Fig. 6f-g, Sec. 5.2: scale offsets blur"),
    "deformer_mean_rgb": PaperClaim(IMAGE, "Sec. 5.2: RGB offsets copy unreliable colours "
                                           "(text only)"),
    "deformer_full_pose": PaperClaim(
        (*IMAGE, "deform_total_error_mm"),
        "Sec. 4: 4-ring joints 'to enhance generalization' (after Saito et al.; not ablated)"),
    "no_balanced_sampling": PaperClaim((*IMAGE, "psnr_face", "psnr_logo"),
                                       "Fig. 7, S8: identity lost, blurrier"),
    "image_weight_1": PaperClaim(IMAGE, "Tab. S2: 28.18/0.969/0.030 vs 29.20/0.974/0.021"),
    "image_weight_0.01": PaperClaim(IMAGE, "Tab. S2: 29.00/0.970/0.023 vs 29.20/0.974/0.021"),
    "seams_off": PaperClaim(IMAGE, "Fig. 8: colours leak across body parts"),
}
VERDICT_MARKS = {"agrees": "✓", "opposite": "✗", "within noise": "≈",
                 "agrees (1 seed)": "✓?", "opposite (1 seed)": "✗?"}


# ---------------------------------------------------------------------------- commands


def parse_overrides(items: list[str]) -> list[str]:
    """["trainer.max_steps=2", ...] -> ["--trainer.max_steps", "2", ...] for `persona fit`."""
    argv: list[str] = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or key.startswith("-"):
            raise ValueError(f"--override: expected KEY=VALUE (e.g. trainer.max_steps=2), "
                             f"got {item!r}")
        argv += [f"--{key}", value]
    return argv


def fit_argv(fragments: list[str], seed: int, subject: Path, run_dir: Path,
             epochs: int | None, overrides: list[str]) -> list[str]:
    """`persona fit` arguments of one (variant, seed); overrides come last and win."""
    argv = ["fit", "--config", str(DEMO_CONFIG)]
    for fragment in fragments:
        path = ABLATION_DIR / fragment
        if not path.is_file():
            raise FileNotFoundError(f"ablation fragment not found: {path}")
        argv += ["--config", str(path)]
    argv += ["--seed_everything", str(seed), "--data.subject_dir", str(subject),
             "--trainer.default_root_dir", str(run_dir)]
    if epochs is not None:
        argv += ["--trainer.max_epochs", str(epochs)]
    return argv + parse_overrides(overrides)


def test_argv(run_dir: Path) -> list[str]:
    return ["test", "--config", str(run_dir / "config.yaml"), "--ckpt_path",
            str(run_dir / "checkpoints" / "last.ckpt")]


def synth_argv(subject: Path, subject_seed: int) -> list[str]:
    return ["--preset", SUBJECT_PRESET, "--seed", str(subject_seed), "--out", str(subject)]


def shell_command(argv: list[str], tool: str = "") -> str:
    """The shell line equivalent to persona.cli.main(argv) (tool: a persona subcommand)."""
    return shlex.join([PYTHON, "-m", "persona", *([tool] if tool else []), *argv])


def run_dir_of(out: Path, variant: str, seed: int) -> Path:
    return out / "runs" / variant / f"seed{seed}"


def row_path(out: Path, variant: str, seed: int) -> Path:
    return out / "rows" / variant / f"seed{seed}.json"


# ---------------------------------------------------------------------------- identity of a run


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def resolve_config(argv: list[str]) -> dict:
    """The config `persona fit argv` would write to RUN/config.yaml, without fitting
    (LightningCLI's --print_config; identical to the file a fit writes)."""
    from persona.cli import main as persona

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            persona([*argv, "--print_config"])
        except SystemExit as exit_info:
            if exit_info.code not in (0, None):
                raise RuntimeError(f"persona {shlex.join(argv)} --print_config failed "
                                   f"(exit {exit_info.code})") from None
    config = yaml.safe_load(printed.getvalue())
    if not isinstance(config, dict):
        raise RuntimeError(f"persona {shlex.join(argv)} --print_config printed no config")
    return config


def subject_hash(subject: Path) -> str | None:
    """sha256 of SUBJECT/meta.json (every synth setting), None when there is none."""
    meta = subject / "meta.json"
    return sha256_bytes(meta.read_bytes()) if meta.is_file() else None


def _git(args: list[str], repo: Path) -> bytes:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, check=True).stdout


def git_state(repo: Path = REPO) -> dict[str, Any]:
    """{"commit": HEAD, "dirty": `git status --porcelain` non-empty, "source_hash": sha256 of
    the uncommitted changes under SOURCE_PATHS (tracked diff + untracked files), "" when none}."""
    try:
        commit = _git(["rev-parse", "HEAD"], repo).decode().strip()
        dirty = bool(_git(["status", "--porcelain"], repo).strip())
        diff = _git(["diff", "HEAD", "--binary", "--", *SOURCE_PATHS], repo)
        untracked = _git(["ls-files", "--others", "--exclude-standard", "-z", "--",
                          *SOURCE_PATHS], repo).split(b"\0")
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"[ablations] warning: no git state ({error}); rows are keyed as 'unknown'",
              file=sys.stderr)
        return {"commit": "unknown", "dirty": True, "source_hash": "unknown"}
    digest = hashlib.sha256(diff)
    for name in sorted(n for n in untracked if n):
        digest.update(name + b"\0" + (repo / name.decode()).read_bytes())
    changed = bool(diff) or any(untracked)
    return {"commit": commit, "dirty": dirty, "source_hash": digest.hexdigest() if changed else ""}


def run_key(git: dict, config_digest: str, subject_digest: str | None) -> dict[str, Any]:
    """What a stored row must match to be reused (ROW_KEY_FIELDS)."""
    return {"commit": git["commit"], "source_hash": git["source_hash"],
            "config_hash": config_digest, "subject_hash": subject_digest}


def row_key(row: dict) -> dict[str, Any]:
    return {"commit": row.get("git", {}).get("commit"),
            "source_hash": row.get("git", {}).get("source_hash"),
            "config_hash": row.get("config_hash"),
            "subject_hash": row.get("subject", {}).get("meta_sha256")}


def stale_reasons(row: dict, key: dict) -> list[str]:
    """The ROW_KEY_FIELDS where a stored row differs from the current run ([] = reusable)."""
    stored = row_key(row)
    reasons = [f"{name} {stored[name]!s:.12} != {key[name]!s:.12}" for name in ROW_KEY_FIELDS
               if stored[name] != key[name]]
    if row.get("schema") != ROW_SCHEMA:
        reasons.append(f"schema {row.get('schema')} != {ROW_SCHEMA}")
    return reasons


def load_row(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        row = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        print(f"[ablations] warning: unreadable row {path} ({error}); re-running it",
              file=sys.stderr)
        return None
    return row if isinstance(row, dict) else None


def finite_or_none(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become null (strict JSON has no NaN/Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    """Atomic write (a kill never leaves half a row)."""
    atomic_write_json(path, finite_or_none(data))


# ---------------------------------------------------------------------------- identity scores


def region_psnr(pred: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> float:
    """PSNR (data range 1) over the pixels of region [H, W] bool; pred/target [H, W, 3]."""
    if not bool(region.any()):
        return math.nan
    mse = ((pred - target) ** 2)[region].mean().clamp(min=1e-12)
    return float(10.0 * torch.log10(1.0 / mse))


def ground_truth_regions(subject: Path):
    """A function (batch) -> {region: [H, W] bool} rendering the known avatar's regions."""
    from persona.data.synth import (
        FaultSettings,
        GarmentSettings,
        SynthConfig,
        build_avatar,
        load_synth_body,
        posed_means,
        subject_identity,
    )
    from persona.render import make_renderer
    from persona.render.types import Camera, ChannelGroup, Gaussians

    meta = json.loads((subject / "meta.json").read_text())["config"]
    known = set(SynthConfig.__dataclass_fields__)
    config = SynthConfig(**{k: v for k, v in meta.items() if k in known and k not in
                            ("faults", "garment")},
                         faults=FaultSettings(**meta["faults"]),
                         garment=GarmentSettings(**meta["garment"]))
    body = load_synth_body(config)
    avatar = build_avatar(body, subject_identity(body, config.seed), config)
    face = avatar.regions["head"] & ~avatar.regions["hair"]
    channels = torch.stack([face, avatar.regions["logo"]], -1).float()  # [N, 2]
    renderer = make_renderer("torch")

    def regions(batch: dict) -> dict[str, torch.Tensor]:
        from persona.body.types import PoseParams

        pose = PoseParams(batch["full_pose"], batch["expression"], batch["transl"])
        means = posed_means(body, avatar, pose, config.garment)[0]
        scales = avatar.scales[:, None].expand(-1, 3)
        camera = Camera(batch["K"][0], batch["R"][0], batch["t"][0], int(batch["width"]),
                        int(batch["height"]))
        out = renderer.render(Gaussians(means, scales, torch.ones_like(avatar.scales)), camera,
                              {"regions": ChannelGroup(channels)})["regions"]
        return {name: out[..., i] > REGION_THRESHOLD for i, name in enumerate(IDENTITY_REGIONS)}

    return regions


def identity_scores(ckpt: Path, regions_of) -> dict[str, float]:
    """Mean face/logo PSNR of the fitted avatar over the test split (renders on white)."""
    from persona.data.datamodule import collate_frames
    from persona.runs import load_trained_system

    system, dm = load_trained_system(ckpt)
    dataset = dm.test_dataset()
    sums = {name: [] for name in IDENTITY_REGIONS}
    with torch.no_grad():
        for row in range(len(dataset)):
            batch = collate_frames([dataset[row]])
            pred = system.render_eval(batch)["rgb_on_background"]
            mask = batch["mask"][0]
            target = batch["image"][0] * mask + (1 - mask)  # ground truth on white
            for name, region in regions_of(batch).items():
                value = region_psnr(pred, target, region)
                if math.isfinite(value):
                    sums[name].append(value)
    return {f"psnr_{name}": sum(v) / len(v) for name, v in sums.items() if v}


# ---------------------------------------------------------------------------- one fit


def run_one(variant: str, seed: int, fit: list[str], key: dict, git: dict, subject: Path,
            out: Path, regions_of, settings: dict) -> dict:
    """Fit, test and score one (variant, seed) into a fresh run folder; returns its row."""
    from persona.cli import main as persona

    run_dir = run_dir_of(out, variant, seed)
    shutil.rmtree(run_dir, ignore_errors=True)  # no stale checkpoint, csv or metrics.json
    start = time.perf_counter()
    persona(fit)
    fitted = time.perf_counter()
    test = test_argv(run_dir)
    persona(test)
    tested = time.perf_counter()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    written_hash = config_hash(config)
    if written_hash != key["config_hash"]:  # --print_config and the fit disagree: keep the truth
        print(f"[ablations] warning: {run_dir}/config.yaml hashes {written_hash:.12}, the "
              f"resolved config {key['config_hash']:.12}; the row keeps the written one",
              file=sys.stderr)
    report = json.loads((run_dir / "metrics.json").read_text())
    identity = identity_scores(run_dir / "checkpoints" / "last.ckpt", regions_of)
    done = time.perf_counter()
    return {
        "schema": ROW_SCHEMA,
        "variant": variant,
        "seed": seed,
        "fragments": VARIANTS[variant],
        **settings,
        "commands": {"fit": shell_command(fit), "test": shell_command(test)},
        "git": git,
        "config_hash": written_hash,
        "config": config,
        "subject": {"path": str(subject), "meta_sha256": key["subject_hash"]},
        "run_dir": str(run_dir),
        "metrics": report["mean"],
        "deformation": report.get("deformation"),
        "identity": identity,
        "seconds": {"fit": fitted - start, "test": tested - fitted, "identity": done - tested,
                    "total": done - start},
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------------------- aggregation


def flat_metrics(row: dict) -> dict[str, float]:
    """A row's METRICS as one flat dict of finite floats (absent ones are left out)."""
    values: dict[str, Any] = {**(row.get("metrics") or {}), **(row.get("identity") or {})}
    deformation = row.get("deformation") or {}
    for section, prefix in DEFORMATION_SECTIONS.items():
        for key in DEFORMATION_KEYS:
            values[f"{prefix}_{key}"] = (deformation.get(section) or {}).get(key)
    return {name: float(values[name]) for name in METRICS
            if isinstance(values.get(name), (int, float)) and math.isfinite(values[name])}


def verdict(diff: float, effect: float, higher_is_better: bool) -> str:
    """Does "the default beats this variant" (the paper's claim) hold for one metric?
    "agrees" / "opposite" / "within noise" (|effect| < NOISE_EFFECT_SIZE); without a seed
    spread the sign alone: "agrees (1 seed)" / "opposite (1 seed)"; "no data"."""
    if math.isnan(diff):
        return "no data"
    variant_better = diff > 0 if higher_is_better else diff < 0
    if math.isnan(effect):
        if diff == 0.0:
            return "within noise"
        return "opposite (1 seed)" if variant_better else "agrees (1 seed)"
    if abs(effect) < NOISE_EFFECT_SIZE:
        return "within noise"
    return "opposite" if variant_better else "agrees"


def variant_verdict(verdicts: list[str]) -> str:
    """One word over a claim's metrics: "agrees"/"opposite" when every decided metric says so,
    "mixed" when they split, "within noise" when none is decided, "no data"."""
    decided = {v.split(" (")[0] for v in verdicts if v.split(" (")[0] in ("agrees", "opposite")}
    if not decided:
        return "no data" if all(v == "no data" for v in verdicts) else "within noise"
    if len(decided) == 2:
        return "mixed"
    word = decided.pop()
    one_seed = any("(1 seed)" in v for v in verdicts)
    return f"{word} (1 seed)" if one_seed else word


def aggregate(rows: dict[str, list[dict]], stale: dict[str, list[str]] | None = None
              ) -> dict[str, Any]:
    """{variant: {"seeds", "metrics": {name: summary}, "vs_default": {name: {"diff",
    "effect_size", "verdict" (claim metrics only)}}, "paper", "verdict", "stale"}} from rows
    per variant (stale: variant -> reasons of reused stale rows)."""
    stale = stale or {}
    summary: dict[str, Any] = {}
    for variant, variant_rows in rows.items():
        flats = [flat_metrics(row) for row in variant_rows]
        metrics = {name: summarise([f[name] for f in flats if name in f]) for name in METRICS}
        summary[variant] = {"seeds": sorted(row["seed"] for row in variant_rows),
                            "fragments": VARIANTS.get(variant, []),
                            "metrics": {k: v for k, v in metrics.items() if v["n"]},
                            "stale": stale.get(variant, [])}
    default = summary.get(DEFAULT_VARIANT)
    for variant, entry in summary.items():
        claim = PAPER_CLAIMS.get(variant)
        entry["paper"] = {"claim": "default better", "metrics": list(claim.metrics),
                          "source": claim.source} if claim else None
        if default is None or variant == DEFAULT_VARIANT:
            continue
        comparison = {}
        for name, stats in entry["metrics"].items():
            base = default["metrics"].get(name)
            if base is None:
                continue
            diff = stats["mean"] - base["mean"]
            effect = effect_size(stats, base)
            comparison[name] = {"diff": diff, "effect_size": effect}
            if claim and name in claim.metrics:
                comparison[name]["verdict"] = verdict(diff, effect, METRICS[name].higher_is_better)
        entry["vs_default"] = comparison
        if claim:
            entry["verdict"] = variant_verdict(
                [comparison.get(m, {}).get("verdict", "no data") for m in claim.metrics])
    return summary


def _difference(entry: dict | None, digits: int) -> str:
    if not entry:
        return "-"
    cell = difference_cell(entry["diff"], entry["effect_size"], digits)
    mark = VERDICT_MARKS.get(entry.get("verdict", ""), "")
    return f"{cell} {mark}".rstrip()


def _table(head: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *["| " + " | ".join(cells) + " |" for cells in body]]


def markdown_report(summary: dict[str, Any], header: list[str]) -> str:
    """Per COLUMN_GROUPS: mean ± std per variant, then each variant minus the default; then the
    paper's claims with their verdicts, and the stale rows reused."""
    variants = list(summary)
    others = [v for v in variants if v != DEFAULT_VARIANT]
    compare = DEFAULT_VARIANT in summary and others

    def name_of(variant: str) -> str:
        return variant + ("*" if summary[variant]["stale"] else "")

    lines = [*header]
    for title, group in COLUMN_GROUPS:
        columns = [m for m in group if any(m in summary[v]["metrics"] for v in variants)]
        if not columns:
            continue
        labels = [METRICS[c].label for c in columns]
        lines += ["", f"## {title}", "", "Mean ± sample std over seeds.", ""]
        lines += _table(["variant", "seeds", *labels], [
            [name_of(v), str(len(summary[v]["seeds"])),
             *[_mean_std(summary[v]["metrics"].get(c), METRICS[c].digits) for c in columns]]
            for v in variants])
        if compare:
            lines += ["", f"Variant minus `{DEFAULT_VARIANT}` (effect size in pooled seed stds)."
                      " On the paper's metrics for the variant: ✓ agrees (default better), "
                      f"✗ opposite, ≈ within noise (|effect| < {NOISE_EFFECT_SIZE:g}σ); "
                      "? sign only (one seed).", ""]
            lines += _table(["variant", *labels], [
                [name_of(v), *[_difference(summary[v].get("vs_default", {}).get(c),
                                           METRICS[c].digits) for c in columns]]
                for v in others])
    if compare:
        claims = [v for v in others if summary[v]["paper"]]
        if claims:
            lines += ["", "## Against the paper", ""]
            lines += _table(["variant", "the paper: default better on", "source", "verdict"], [
                [name_of(v), ", ".join(METRICS[m].label for m in summary[v]["paper"]["metrics"]),
                 summary[v]["paper"]["source"], summary[v].get("verdict", "-")] for v in claims])
    elif others:
        lines += ["", f"(no `{DEFAULT_VARIANT}` rows: no differences)"]
    stale = [(v, r) for v in variants for r in summary[v]["stale"]]
    if stale:
        lines += ["", "\\* reused with --reuse-any although stale:"]
        lines += [f"- {variant}: {reason}" for variant, reason in stale]
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> str:
    """OUT/ablations.png: PLOT_METRICS per variant, mean with seed std bars and each seed as a
    dot. Returns a line saying what was written or why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed in this environment"
    panels = [m for m in PLOT_METRICS if any(m in e["metrics"] for e in summary.values())]
    if not panels:
        return f"no plot: none of {', '.join(PLOT_METRICS)} in the rows"
    variants = list(summary)
    figure, axes = plt.subplots(len(panels), 1, figsize=(max(6.0, 0.9 * len(variants)),
                                                         3.2 * len(panels)), squeeze=False)
    for axis, name in zip(axes[:, 0], panels, strict=True):
        for x, variant in enumerate(variants):
            stats = summary[variant]["metrics"].get(name)
            if not stats:
                continue
            std = stats["std"] if stats["n"] > 1 else 0.0
            axis.errorbar([x], [stats["mean"]], yerr=[std], fmt="o", capsize=4,
                          color="C3" if variant == DEFAULT_VARIANT else "C0")
            axis.scatter([x] * stats["n"], stats["values"], s=10, color="0.5", zorder=3)
        metric = METRICS[name]
        axis.set_ylabel(metric.label + (" ↑" if metric.higher_is_better else " ↓"))
        axis.set_xticks(range(len(variants)))
        axis.set_xticklabels(variants, rotation=30, ha="right", fontsize=8)
        axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return f"wrote {path}"


# ---------------------------------------------------------------------------- the study


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/ablations")
    parser.add_argument("--subject", default=None,
                        help="subject folder (default OUT/subject; built when it has no "
                             "meta.json)")
    parser.add_argument("--subject-seed", type=int, default=DEFAULT_SUBJECT_SEED,
                        help=f"seed of the {SUBJECT_PRESET!r} subject when it is built")
    parser.add_argument("--variants", nargs="+", default=list(PAPER_VARIANTS),
                        choices=list(VARIANTS), metavar="VARIANT",
                        help=f"default: the paper's ({', '.join(PAPER_VARIANTS)}); also "
                             f"{', '.join(EXTRA_VARIANTS)}")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS),
                        help="one fit per seed (--seed_everything)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="override trainer.max_epochs (smoke runs)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra `persona fit --KEY VALUE` (repeatable, last wins)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the commands and what would be reused; run nothing")
    parser.add_argument("--reuse-any", action="store_true",
                        help="reuse every stored row even when stale (marked in the tables)")
    parser.add_argument("--table-only", action="store_true",
                        help="only aggregate the stored rows (implies --reuse-any)")
    return parser


def write_tables(out: Path, rows: dict[str, list[dict]], stale: dict[str, list[str]],
                 header: list[str]) -> str:
    """OUT/ablations.json, .md and .png from the rows gathered so far; returns the markdown."""
    summary = aggregate({v: r for v, r in rows.items() if r}, stale)
    write_json(out / "ablations.json", {"header": header, "noise_effect_size": NOISE_EFFECT_SIZE,
                                        "default": DEFAULT_VARIANT, "variants": summary})
    table = markdown_report(summary, header)
    (out / "ablations.md").write_text(table + "\n")
    print(f"[ablations] {plot(summary, out / 'ablations.png')}", flush=True)
    return table


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        raise SystemExit(f"--seeds: repeated seed in {args.seeds}")
    parse_overrides(args.override)  # fail early on a malformed --override
    out = Path(args.out)
    subject = Path(args.subject) if args.subject else out / "subject"
    reuse_any = args.reuse_any or args.table_only
    if subject_hash(subject) is None:
        command = shell_command(synth_argv(subject, args.subject_seed), tool="synth")
        if args.dry_run or args.table_only:
            print(f"[ablations] no {subject}/meta.json; a run would first build it:\n  {command}")
        else:
            from persona.data.synth_cli import main as synth

            print(f"[ablations] building the subject: {command}", flush=True)
            synth(synth_argv(subject, args.subject_seed))
    subject_digest = subject_hash(subject)
    git = git_state()
    settings = {"epochs": args.epochs, "overrides": list(args.override)}
    header = [f"# Ablations on {subject} (subject meta.json sha256 {subject_digest!s:.12})",
              f"commit {git['commit']:.12}{' + uncommitted changes' if git['dirty'] else ''}; "
              f"seeds {' '.join(map(str, args.seeds))}; epochs "
              f"{args.epochs if args.epochs is not None else 'from configs/demo.yaml'}"
              + (f"; overrides {' '.join(args.override)}" if args.override else "")]
    if args.table_only:
        header.append("table only: the rows were not checked against this commit, config or "
                      "subject")
    rows: dict[str, list[dict]] = {v: [] for v in args.variants}
    stale: dict[str, list[str]] = {}
    regions_of = None
    for seed in args.seeds:  # every variant at one seed before the next: early full tables
        for variant in args.variants:
            path = row_path(out, variant, seed)
            stored = load_row(path)
            if args.table_only:
                if stored is not None:
                    rows[variant].append(stored)
                continue
            fit = fit_argv(VARIANTS[variant], seed, subject, run_dir_of(out, variant, seed),
                           args.epochs, args.override)
            key = run_key(git, config_hash(resolve_config(fit)), subject_digest)
            reasons = stale_reasons(stored, key) if stored is not None else ["no stored row"]
            if stored is not None and (not reasons or reuse_any):
                if reasons:
                    stale.setdefault(variant, []).extend(f"seed {seed}: {r}" for r in reasons)
                print(f"[ablations] {variant} seed {seed}: reusing {path}"
                      + (f" (stale: {'; '.join(reasons)})" if reasons else ""), flush=True)
                rows[variant].append(stored)
                continue
            print(f"[ablations] {variant} seed {seed}: {'would run' if args.dry_run else 'running'}"
                  f" ({'; '.join(reasons)})\n  {shell_command(fit)}\n"
                  f"  {shell_command(test_argv(run_dir_of(out, variant, seed)))}", flush=True)
            if args.dry_run:
                continue
            if regions_of is None:
                regions_of = ground_truth_regions(subject)
            row = run_one(variant, seed, fit, key, git, subject, out, regions_of, settings)
            write_json(path, row)
            rows[variant].append(row)
            print(f"[ablations] {variant} seed {seed}: " + ", ".join(
                f"{k} {v:.4f}" for k, v in flat_metrics(row).items()), flush=True)
            write_tables(out, rows, stale, header)  # progress survives a kill
    if args.dry_run:
        return 0
    print(write_tables(out, rows, stale, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
