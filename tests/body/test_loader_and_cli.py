import pytest
import torch

from persona.body.cli import main
from persona.body.loader import BodySpec, describe_bodies, load_body


def test_procedural_body_is_small_fast_and_complete():
    import time

    started = time.perf_counter()
    from persona.body.procedural import build_procedural_arrays

    arrays = build_procedural_arrays()
    assert time.perf_counter() - started < 1.0
    assert 1000 < arrays["v_template"].shape[0] < 10000
    body = load_body(BodySpec(kind="procedural", num_betas=10, num_expression=10))
    assert body.shapedirs.abs().amax(dim=(0, 1)).min() > 0  # ten real shape directions
    assert body.exprdirs.abs().amax(dim=(0, 1)).min() > 0  # ten real expression directions
    # five fingers per hand: every finger joint carries weight
    from persona.body.types import FINGER_JOINTS

    assert torch.all(body.lbs_weights[:, list(FINGER_JOINTS)].amax(0) > 0.5)


def test_more_betas_than_the_file_has_are_zero_directions():
    body = load_body(BodySpec(kind="procedural", num_betas=20, num_expression=12))
    assert body.num_betas == 20 and body.num_expression == 12
    assert body.shapedirs[..., 10:].abs().max() == 0


def test_body_spec_builds_from_yaml():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--body", type=BodySpec)
    config = parser.parse_string("body:\n  kind: procedural\n  num_betas: 16\n  gender: male\n")
    spec = parser.instantiate_classes(config).body
    assert isinstance(spec, BodySpec) and spec.kind == "procedural" and spec.num_betas == 16
    with pytest.raises(SystemExit):
        parser.parse_string("body:\n  kind: smpl\n")


def test_describe_bodies_says_why(tmp_path, procedural_folder):
    rows = dict(describe_bodies(model_path=None, cache_dir=str(tmp_path)))
    assert rows["body procedural"].startswith("loads")
    assert "model.body.model_path" in rows["body smplx"]
    rows = dict(describe_bodies(model_path=str(procedural_folder), cache_dir=str(tmp_path)))
    assert rows["body smplx neutral"].startswith("loads")
    assert "SMPLX_MALE.npz" in rows["body smplx male"]


def test_check_command_on_a_smplx_folder(procedural_folder, capsys):
    assert main(["check", "--model-path", str(procedural_folder), "--samples", "5"]) == 0
    out = capsys.readouterr().out
    assert "max vertex error vs smplx" in out and "OK" in out


def test_check_command_reports_a_missing_folder(tmp_path, capsys):
    assert main(["check", "--model-path", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "model.body.model_path" in err and "smpl-x.is.tue.mpg.de" in err


def test_show_command_draws_a_png(tmp_path):
    out = tmp_path / "body.png"
    assert main(["show", "--kind", "procedural", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_build_command_on_the_procedural_body(tmp_path, capsys):
    assert main(["build", "--kind", "procedural", "--grid-size", "16", "--levels", "1",
                 "--cache-dir", str(tmp_path)]) == 0
    assert "skinning_volume_build_seconds" in capsys.readouterr().out
