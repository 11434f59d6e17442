"""experiments/bench/laplacian.py: a one-repeat run on the procedural body (structure only: no
timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path

from experiment_scripts import load_script


def test_laplacian_bench_times_both_forms_at_each_level(tmp_path: Path) -> None:
    out = tmp_path / "laplacian.json"
    bench = load_script("bench/laplacian.py", "laplacian_bench")
    assert bench.main(["--preset", "tiny", "--levels", "0", "1", "--repeats", "1",
                       "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["preset"] == "tiny" and result["repeats"] == 1
    levels = result["levels"]
    assert [entry["level"] for entry in levels] == [0, 1]
    assert levels[1]["vertices"] > 3 * levels[0]["vertices"]  # one 1-to-4 split
    for entry in levels:
        assert set(entry["median_s"]) == {"sparse", "gathers"}
        assert all(seconds > 0 for seconds in entry["median_s"].values())
        assert entry["sparse_over_gathers"] > 0
