"""experiments/keypoint_pose_fix.py: fitting the generated frames' poses to their keypoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from experiment_scripts import load_script

from persona.data.synth import preset_config, synthesize

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

fix = load_script("keypoint_pose_fix.py")


def test_exact_keypoints_pull_the_written_poses_to_the_truth(tmp_path: Path) -> None:
    """The tiny subject's written poses carry the synth's pose noise; fitted to the true pose's
    keypoints (no detector noise, no prior) they land on those keypoints, the image-plane
    translation comes back to the truth and the joint angles move towards it; detector noise
    keeps the keypoints off by about its size and, with no prior, takes the joints further from
    the truth than the written poses; a huge prior holds them where they were written."""
    subject = tmp_path / "subject"
    synthesize(subject, preset_config("tiny", seed=4))
    report = fix.keypoint_fix_report(subject, [0.0, 8.0], [0.0, 1e6], iterations=150, lr=1e-2)
    written, exact = report["written"], report["noise_0px_prior_0"]
    assert written["keypoints_px"] > 5.0  # the noise moves the keypoints by several px
    assert exact["keypoints_px"] < 0.2 * written["keypoints_px"]
    for axis in "xy":  # what a front camera sees of the translation
        assert exact[f"transl_{axis}_mm"] < 0.3 * written[f"transl_{axis}_mm"], axis
    assert exact["body"] < written["body"]
    # a huge prior keeps the joints where they were written (only the translation moves)
    held = report["noise_0px_prior_1e+06"]
    assert held["body"] == pytest.approx(written["body"], abs=0.05)
    noisy = report["noise_8px_prior_0"]  # fitted to keypoints 8 px (at 1024 px) off the truth's
    assert noisy["keypoints_px"] > 2.0
    assert noisy["body"] > written["body"]  # without a prior the joints follow the noise
    out = tmp_path / "fix.json"
    assert fix.main([str(subject), "--noise", "0", "--prior", "10", "--iterations", "2",
                     "--out", str(out)]) == 0
    assert set(json.loads(out.read_text())) >= {"written", "noise_0px_prior_10"}
