"""Re-create a trained avatar from its run: the saved config plus a checkpoint.

Parameters of `PersonaSystem` are built from the subject (`build_from_datamodule`), so loading a
checkpoint means: parse RUN/config.yaml exactly as `persona fit` did, build, then load the state
dict. Used by `persona export`, `persona animate` and the demo; `instantiate_system` also
rebuilds the model of a self-contained avatar file (persona/export/avatar_file.py).
"""

from __future__ import annotations

import copy
import pickle
import re
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from persona.errors import RERUN_HINT, UserError, one_line, raised_by_checkpoint_reader

MODEL_CONFIG_KEYS = ("seed_everything", "trainer", "model", "data")
GPU_ONLY_RENDERERS = ("auto", "gsplat")  # renderer names that may pick gsplat (CUDA only)
# trainer settings of the CLI that only instantiates the model (nothing runs on it)
LOADER_TRAINER = {"accelerator": "cpu", "devices": 1, "precision": "32-true"}
ZIP_MAGIC = b"PK\x03\x04"  # first bytes of a zip archive (torch.save writes one)
CHECKPOINT_PICKLE = "data.pkl"  # every torch.save archive holds <name>/data.pkl
CRC_CHUNK_BYTES = 1 << 20  # read size of the checksum pass over a checkpoint
EVAL_CHECKPOINT_KEYS = ("state_dict",)  # what loading an avatar (test, export) needs
RESUME_CHECKPOINT_KEYS = ("state_dict", "optimizer_states", "loops")  # what resuming fit needs
STATE_DICT_ERROR = "Error(s) in loading state_dict"  # torch's load_state_dict RuntimeError
TORCH_SIZE = re.compile(r"torch\.Size\((\[[^\]]*\])\)")
KEY_LIST = re.compile(r"^(Missing|Unexpected) key\(s\) in state_dict: (.*)$")
LISTED_KEYS = 3  # state-dict keys named in a mismatch message


def run_config_for(ckpt: str | Path) -> Path:
    """RUN/config.yaml for RUN/checkpoints/<name>.ckpt (the layout `persona fit` writes)."""
    ckpt = Path(ckpt)
    for folder in (ckpt.parent, ckpt.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    raise FileNotFoundError(f"{ckpt}: no config.yaml beside it or in its parent folder: keep "
                            "the checkpoint in its run folder (`persona fit` writes "
                            "RUN/config.yaml and RUN/checkpoints/)")


# ---------------------------------------------------------------------------- checkpoints
def checkpoint_file_problem(path: Path, hint: str = RERUN_HINT) -> str | None:
    """What makes `path` unusable as a torch checkpoint, judged from the file, its zip index
    and the members' checksums (one read of the file; nothing is unpickled), or None. `hint`:
    what to do about a damaged file (ends the message)."""
    if not path.exists():
        return "file not found; check the path (`persona fit` writes RUN/checkpoints/last.ckpt)"
    if path.is_dir():
        return "is a folder, not a checkpoint file (e.g. RUN/checkpoints/last.ckpt)"
    size = path.stat().st_size
    if size == 0:
        return f"empty file (0 bytes): {hint}"
    with open(path, "rb") as handle:  # PermissionError names the file (persona/errors.py)
        head = handle.read(len(ZIP_MAGIC))
    if not zipfile.is_zipfile(path):
        if head == ZIP_MAGIC:
            return (f"truncated or corrupt ({size} bytes, the zip archive has no end record): "
                    f"{hint}")
        return f"not a PyTorch checkpoint (not a torch.save zip archive): {hint}"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if not any(name.rpartition("/")[2] == CHECKPOINT_PICKLE for name in names):
                return (f"not a PyTorch checkpoint (a zip archive without {CHECKPOINT_PICKLE}: "
                        f"an .npz or an export bundle?): {hint}")
            damaged = first_damaged_member(archive)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f"truncated or corrupt ({one_line(str(error))}): {hint}"
    if damaged is not None:
        return f"corrupt (checksum mismatch in {damaged}): {hint}"
    return None


def first_damaged_member(archive: zipfile.ZipFile) -> str | None:
    """The first member whose bytes do not match their CRC-32 (torch.load does not check them:
    a damaged tensor would load as garbage), or None. Members stored without a CRC are
    skipped."""
    for info in archive.infolist():
        if info.CRC == 0:
            continue
        try:
            with archive.open(info) as member:  # raises BadZipFile at the end on a bad CRC
                while member.read(CRC_CHUNK_BYTES):
                    pass
        except zipfile.BadZipFile:
            return info.filename
    return None


def is_checkpoint_read_failure(error: BaseException) -> bool:
    """torch.load failed on the file's content (not out of memory, not a missing CUDA device:
    those messages are clear as they are)."""
    if type(error).__name__ == "OutOfMemoryError" or "CUDA" in str(error):
        return False
    return (raised_by_checkpoint_reader(error)
            or isinstance(error, (pickle.UnpicklingError, EOFError, zipfile.BadZipFile)))


def checkpoint_content_problem(checkpoint: Any, required_keys: Sequence[str]) -> str | None:
    """What a loaded checkpoint lacks (not a dict, or missing keys), or None."""
    if not isinstance(checkpoint, Mapping):
        return (f"holds a {type(checkpoint).__name__}, not a Lightning checkpoint (a dict with "
                f"'state_dict'): {RERUN_HINT}")
    missing = [key for key in required_keys if key not in checkpoint]
    if not missing:
        return None
    if "state_dict" in checkpoint:  # weights only (ModelCheckpoint(save_weights_only=True))
        return (f"has no {', '.join(repr(k) for k in missing)} (saved with weights only?): "
                "resuming needs a full checkpoint such as RUN/checkpoints/last.ckpt")
    return (f"not a Lightning checkpoint (no {', '.join(repr(k) for k in missing)}): "
            f"{RERUN_HINT}")


def load_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu",
                    required_keys: Sequence[str] = EVAL_CHECKPOINT_KEYS,
                    weights_only: bool | None = False, mmap: bool = False,
                    file_checked: bool = False) -> dict[str, Any]:
    """torch.load a user's checkpoint; a missing, truncated, corrupt or foreign file, or one
    without `required_keys`, raises UserError naming the file and what to do.

    weights_only None: torch's default. mmap: map tensors from the file instead of reading them
    (a cheap check of a large checkpoint). file_checked: the caller already ran
    `checkpoint_file_problem` (it reads the whole file once)."""
    path = Path(path)
    problem = None if file_checked else checkpoint_file_problem(path)
    if problem is not None:
        raise UserError(f"checkpoint {path}: {problem}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=weights_only,
                                mmap=mmap)
    except Exception as error:
        if not is_checkpoint_read_failure(error):
            raise
        detail = one_line(str(error)) or type(error).__name__
        if "Weights only load failed" in detail:
            raise UserError(f"checkpoint {path}: refused by torch's weights-only loader: pass "
                            "--weights_only false only if you trust the file") from error
        raise UserError(f"checkpoint {path}: truncated or corrupt ({detail[:200]}): "
                        f"{RERUN_HINT}") from error
    problem = checkpoint_content_problem(checkpoint, required_keys)
    if problem is not None:
        raise UserError(f"checkpoint {path}: {problem}")
    return checkpoint


def state_dict_error_summary(message: str) -> str:
    """torch's load_state_dict error (it lists every mismatch) shortened to its first size
    mismatch (else its first line of missing or unexpected keys), with how many more."""
    lines = [line.strip() for line in message.splitlines()[1:] if line.strip()]
    if not lines:
        return one_line(message)
    lines.sort(key=lambda line: not line.startswith("size mismatch"))
    first = TORCH_SIZE.sub(r"\1", lines[0]).rstrip(".")  # torch.Size([2, 3]) -> [2, 3]
    keys = KEY_LIST.match(first)
    if keys:
        names = re.findall(r'"([^"]+)"', keys.group(2))
        extra = f" and {len(names) - LISTED_KEYS} more" if len(names) > LISTED_KEYS else ""
        first = f"{keys.group(1)} key(s) {', '.join(names[:LISTED_KEYS])}{extra}"
    more = f"; and {len(lines) - 1} more kind(s) of mismatch" if len(lines) > 1 else ""
    return f"{first}{more}"


def model_mismatch_error(ckpt: str | Path, config: str | Path | None,
                         error: RuntimeError) -> UserError:
    """The UserError for a checkpoint whose tensors do not fit the model a config builds."""
    built = (f"the model built from {config}" if config is not None
             else "the model this config builds")
    return UserError(f"checkpoint {ckpt}: does not fit {built} "
                     f"({state_dict_error_summary(str(error))}); a checkpoint of another "
                     "subject, body or model settings? use the config.yaml of the run that "
                     "wrote it")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """"auto"/None -> cuda when available, else cpu; anything else as torch.device."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def renderer_for_device(name: str, device: torch.device) -> str:
    """The model's renderer for an avatar on `device`: gsplat draws CUDA tensors only, so
    "auto" and "gsplat" become "torch" off CUDA (on CUDA "auto" stays gsplat-when-available)."""
    if device.type != "cuda" and name in GPU_ONLY_RENDERERS:
        return "torch"
    return name


def model_settings(config: Path) -> dict[str, Any]:
    """What builds the model from a run's config.yaml (seed, trainer, model, data): `persona
    fit` subcommand options (ckpt_path, ...) dropped."""
    return {k: v for k, v in read_run_config(config).items() if k in MODEL_CONFIG_KEYS}


def instantiate_system(settings: Mapping[str, Any], device: torch.device):
    """(PersonaSystem, PersonaDataModule) of model settings, not built yet (the data module
    only holds its settings: nothing reads the subject here). `settings` is not changed."""
    from persona.lightning_cli import run_lightning_cli

    settings = copy.deepcopy(dict(settings))
    model = settings.get("model") or {}
    settings["model"] = model
    model["renderer"] = renderer_for_device(model.get("renderer", "auto"), device)
    # The trainer only completes the CLI here (placement is explicit): a CPU one never asks
    # for a GPU, so a paper.yaml run (accelerator: gpu) loads on a CPU-only machine too.
    settings["trainer"] = {**(settings.get("trainer") or {}), **LOADER_TRAINER}
    with tempfile.TemporaryDirectory() as folder:
        resolved = Path(folder) / "config.yaml"
        resolved.write_text(yaml.safe_dump(settings))
        cli = run_lightning_cli(["--config", str(resolved), "--trainer.logger", "false"],
                                run=False)
    return cli.model, cli.datamodule


def load_trained_system(ckpt: str | Path, config: str | Path | None = None,
                        device: str | torch.device = "cpu", file_checked: bool = False):
    """(PersonaSystem in eval mode on device, its PersonaDataModule) from a checkpoint.

    The system is built on `device` (its colour initialisation renders there) and the
    checkpoint's tensors are loaded onto `device` ("auto": cuda when available).
    file_checked: the caller already ran `checkpoint_file_problem` on `ckpt`."""
    ckpt = Path(ckpt)
    problem = None if file_checked else checkpoint_file_problem(ckpt)
    if problem is not None:  # before the (slow) model build
        raise UserError(f"checkpoint {ckpt}: {problem}")
    device = resolve_device(device)
    config = Path(config) if config is not None else run_config_for(ckpt)
    system, datamodule = instantiate_system(model_settings(config), device)
    system.build_from_datamodule(datamodule, device=device)
    checkpoint = load_checkpoint(ckpt, map_location=device, file_checked=True)
    try:
        system.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        if STATE_DICT_ERROR not in str(error):
            raise
        raise model_mismatch_error(ckpt, config, error) from error
    return system.to(device).eval(), datamodule


def yaml_error_summary(error: yaml.YAMLError) -> str:
    """"line L, column C: problem" (1-based) for a PyYAML error, else its text on one line."""
    mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
    if mark is None or problem is None:
        return one_line(str(error))
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def read_run_config(config: Path) -> dict[str, Any]:
    """A run's config.yaml as a dict; UserError naming the file when it is not one."""
    try:
        settings = yaml.safe_load(config.read_text())
    except yaml.YAMLError as error:
        raise UserError(f"{config}: not valid YAML ({yaml_error_summary(error)}); restore the "
                        "config.yaml `persona fit` wrote") from error
    if not isinstance(settings, dict):
        raise UserError(f"{config}: expected a YAML mapping (trainer, model, data), got "
                        f"{type(settings).__name__}; restore the config.yaml `persona fit` "
                        "wrote")
    return settings
