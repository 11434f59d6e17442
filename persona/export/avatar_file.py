"""The self-contained avatar file: `persona export --ckpt RUN|CKPT --avatar-file --out A.persona`.

One torch.save archive (docs/EXPORT.md, "The avatar file") that `persona export` and `persona
animate` (through `persona.export.cli.load_avatar`) pose and render without the subject folder
and without RUN/config.yaml:
- `config`: the model settings of the run's config.yaml (seed_everything, trainer, model, data;
  `persona.runs.model_settings`), re-instantiated with the same LightningCLI as a checkpoint;
- `subject`: what `PersonaSystem.build_from_datamodule` reads from the subject and posing needs:
  subject.json's `body` section (which body model), the identity (betas, face and joint offsets)
  and the training frames' initial SMPL-X (they only size the per-frame parameters, whose trained
  values are in the state dict). No images: colours come from the state dict;
- `state_dict`: the checkpoint's, as it is;
- `format`, `version`, `provenance` (source checkpoint, its sha256, step, the exporting code's
  commit).
The body model's own files (SMPL-X npz, the converted open body), the skinning-volume cache and
the LPIPS weights stay outside, as for a checkpoint: they are looked up under the same settings.

The file holds only tensors and plain Python values, so it is read with torch's weights-only
loader (no code in a shared file runs) and told apart from a Lightning checkpoint by content.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from persona.atomic import atomic_write
from persona.data.subject import file_sha256
from persona.errors import UserError, one_line

AVATAR_FORMAT = "persona_avatar"  # value of the file's "format" entry
AVATAR_VERSION = 1  # the layout this code writes and reads
AVATAR_SUFFIX = ".persona"
REQUIRED_KEYS = ("format", "version", "config", "subject", "state_dict", "provenance")
SUBJECT_KEYS = ("body", "identity", "train_poses")
POSE_FIELDS = ("full_pose", "expression", "transl")  # PoseParams fields of train_poses
IDENTITY_FIELDS = ("betas", "face_offset", "joint_offset")  # Identity fields
AVATAR_HINT = ("write it again with `persona export --ckpt RUN --avatar-file --out "
               "avatar.persona`")
GIT_TIMEOUT_S = 5  # `git rev-parse` of the exporting code; None when it takes longer
# the warning build() gives without colour sources: expected here (colours are in the state dict)
NO_COLOUR_SOURCE_WARNING = "PersonaSystem: no colour source frame"


@dataclass
class AvatarFileResult:
    path: Path
    num_bytes: int
    num_gaussians: int


# ---------------------------------------------------------------------------- writing
def check_avatar_path(out: str | os.PathLike) -> Path:
    """The avatar file's path; ValueError unless it ends in .persona."""
    path = Path(out)
    if path.suffix != AVATAR_SUFFIX:
        raise ValueError(f"--out {path}: an avatar file is one {AVATAR_SUFFIX} file "
                         f"(e.g. avatar{AVATAR_SUFFIX})")
    return path



def code_commit() -> str | None:
    """The git commit of the persona checkout that writes the file, or None (not a git
    checkout, no git)."""
    root = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=False,
                              capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def subject_payload(datamodule: Any) -> dict[str, Any]:
    """What the model build reads from a set-up PersonaDataModule, as plain values and CPU
    tensors: subject.json's body section, the identity and the training frames' SMPL-X."""
    from persona.system_config import stacked_pose

    identity = datamodule.identity
    poses = stacked_pose(datamodule.train_frames)  # batch F (training frames)
    return {
        "body": dict(datamodule.subject_config["body"]),
        "identity": {name: (None if getattr(identity, name) is None
                            else getattr(identity, name).detach().cpu())
                     for name in IDENTITY_FIELDS},
        "train_poses": {name: getattr(poses, name).detach().cpu() for name in POSE_FIELDS},
    }


def save_atomic(payload: Mapping[str, Any], path: Path) -> int:
    """torch.save to a temporary sibling, then rename onto `path`; returns the size."""
    return atomic_write(path, lambda temporary: save_synced(payload, temporary)).stat().st_size


def save_synced(payload: Mapping[str, Any], target: Path) -> None:
    """torch.save into the file `target`, flushed to the disk."""
    with open(target, "wb") as handle:  # a file object: the zip's records are "archive/..."
        torch.save(dict(payload), handle)  # (a path would name them after the temp file)
        handle.flush()
        os.fsync(handle.fileno())


def write_avatar_file(ckpt: str | os.PathLike, out: str | os.PathLike) -> AvatarFileResult:
    """Build the checkpoint's avatar from its run (on the CPU: it also checks the state dict
    fits), then write config, subject data, state dict and provenance to `out` atomically."""
    from persona.runs import load_checkpoint, load_trained_system, model_settings, run_config_for

    path = check_avatar_path(out)
    ckpt = Path(ckpt)
    system, datamodule = load_trained_system(ckpt, device="cpu")
    config = run_config_for(ckpt)
    checkpoint = load_checkpoint(ckpt, map_location="cpu", mmap=True, file_checked=True)
    payload = {
        "format": AVATAR_FORMAT,
        "version": AVATAR_VERSION,
        "config": model_settings(config),
        "subject": subject_payload(datamodule),
        "state_dict": checkpoint["state_dict"],
        "provenance": {
            "checkpoint": str(ckpt.resolve()),
            "checkpoint_sha256": file_sha256(ckpt),
            "config": str(config.resolve()),
            "subject_dir": str(datamodule.subject_dir),
            "global_step": int(checkpoint.get("global_step", -1)),
            "epoch": int(checkpoint.get("epoch", -1)),
            "persona_commit": code_commit(),
        },
    }
    num_bytes = save_atomic(payload, path)
    return AvatarFileResult(path, num_bytes, int(system.avatar.mean_offset.shape[0]))


# ---------------------------------------------------------------------------- reading
def avatar_label(path: Path) -> str:
    return f"avatar file {path}"


def read_avatar_payload(path: Path) -> dict[str, Any] | None:
    """The file's content when it is an avatar file (any version), else None (a Lightning
    checkpoint or another torch file). Tensors are memory-mapped; the weights-only loader
    refuses anything but tensors and plain values, so a checkpoint's objects read as None.
    The caller has checked the archive (`checkpoint_file_problem`)."""
    from persona.runs import is_checkpoint_read_failure

    try:
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:
        if is_checkpoint_read_failure(error):
            return None
        raise
    if isinstance(content, Mapping) and content.get("format") == AVATAR_FORMAT:
        return dict(content)
    return None


def avatar_payload_problem(payload: Mapping[str, Any]) -> str | None:
    """What makes an avatar file's content unusable by this code (its version, missing
    entries), or None."""
    version = payload.get("version")
    if version != AVATAR_VERSION:
        return (f"format version {version!r}, this persona reads version {AVATAR_VERSION}: "
                f"{AVATAR_HINT} with this persona")
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    subject = payload.get("subject")
    if not missing and isinstance(subject, Mapping):
        missing = [f"subject.{key}" for key in SUBJECT_KEYS if key not in subject]
    elif not missing:
        missing = ["subject (a mapping)"]
    if missing:
        return f"incomplete (no {', '.join(repr(k) for k in missing)}): {AVATAR_HINT}"
    return None


def build_avatar_system(payload: Mapping[str, Any], path: Path, device: torch.device):
    """PersonaSystem in eval mode on `device` from an avatar file's content: the settings and
    subject data it holds, the body model from its settings, then its state dict."""
    from persona.body.loader import load_body
    from persona.body.types import Identity, PoseParams
    from persona.data.datamodule import body_spec_from_config
    from persona.runs import STATE_DICT_ERROR, instantiate_system, state_dict_error_summary
    from persona.system_config import resolve_body_spec

    system, _ = instantiate_system(payload["config"], device)  # the data module is unused
    subject = payload["subject"]
    spec = resolve_body_spec(body_spec_from_config(subject["body"]), system.hparams.body,
                             system.hparams.cache_dir)
    try:
        body = load_body(spec)
    except (FileNotFoundError, ValueError) as error:
        raise UserError(f"{avatar_label(path)}: its body model is not stored in it and did not "
                        f"load ({one_line(str(error))}); set model.body.model_path or "
                        "$PERSONA_SMPLX_PATH to the body files on this machine") from error
    identity = Identity(**{name: subject["identity"].get(name) for name in IDENTITY_FIELDS})
    # one stand-in frame record holding every training frame's SMPL-X: stacked_pose of it is
    # the [F, ...] stack build() makes FrameParams from (their values come from the state dict)
    frames = [SimpleNamespace(pose=PoseParams(**{name: subject["train_poses"][name]
                                                 for name in POSE_FIELDS}))]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=NO_COLOUR_SOURCE_WARNING)
        system.build(body, identity, frames, None, device=device)
    try:
        system.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        if STATE_DICT_ERROR not in str(error):
            raise
        raise UserError(f"{avatar_label(path)}: its state dict does not fit the model its "
                        f"settings build ({state_dict_error_summary(str(error))}): "
                        f"{AVATAR_HINT}") from error
    return system.to(device).eval()


def load_avatar_file(path: Path, payload: Mapping[str, Any],
                     device: torch.device):
    """The avatar of an avatar file whose content `read_avatar_payload` gave; UserError naming
    the file for another version or missing entries."""
    problem = avatar_payload_problem(payload)
    if problem is not None:
        raise UserError(f"{avatar_label(path)}: {problem}")
    return build_avatar_system(payload, path, device)
