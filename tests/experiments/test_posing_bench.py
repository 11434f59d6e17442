"""experiments/bench/posing.py: a short run on the procedural body (structure and the operator
counts that the depth walk saves; no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path

from experiment_scripts import load_script


def test_posing_bench_counts_both_forms(tmp_path: Path) -> None:
    out = tmp_path / "posing.json"
    bench = load_script("bench/posing.py", "posing_bench")
    assert bench.main(["--preset", "tiny", "--batch", "2", "--repeats", "1",
                       "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["preset"] == "tiny" and result["batch"] == 2
    assert result["max_abs_difference"] <= bench.AGREEMENT_ATOL
    depth, joints = result["forms"]["depth"], result["forms"]["joints"]
    # the joint-by-joint reference launches 2 x 54 products where the depth walk needs 10
    assert joints["top_level_ops"] - depth["top_level_ops"] > 2 * 54
    assert depth["host_syncs"] == joints["host_syncs"] == 1  # the inputs' finiteness check
    assert depth["median_s"] > 0 and result["joints_over_depth"]["top_level_ops"] > 1
