import os
from pathlib import Path

import pytest

from persona import atomic


def _folder(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "a.txt").write_text(text)
    return path


def test_replaces_an_earlier_folder_and_leaves_nothing_behind(tmp_path: Path) -> None:
    out = _folder(tmp_path / "out", "old")
    new = _folder(tmp_path / ".out.tmp", "new")
    assert atomic.replace_folder(new, out) == out
    assert (out / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # no earlier folder: a plain rename
    assert atomic.replace_folder(_folder(tmp_path / ".x.tmp", "x"), tmp_path / "x").is_dir()


def test_a_failed_rename_puts_the_earlier_folder_back(tmp_path: Path, monkeypatch) -> None:
    out = _folder(tmp_path / "out", "old")
    new = _folder(tmp_path / ".out.tmp", "new")
    real_rename = os.rename

    def failing(src, dst):  # noqa: ANN001, ANN202
        if Path(src) == new:
            raise OSError("disk gone")
        return real_rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", failing)
    with pytest.raises(OSError, match="disk gone"):
        atomic.replace_folder(new, out)
    assert (out / "a.txt").read_text() == "old"  # the earlier folder is back at its name
    assert (new / "a.txt").read_text() == "new"  # the new one is not lost either


def test_at_every_moment_one_version_is_reachable(tmp_path: Path, monkeypatch) -> None:
    """A kill between the two renames leaves the earlier folder under a hidden name beside out,
    never removed before the new folder is in place."""
    out = _folder(tmp_path / "out", "old")
    new = _folder(tmp_path / ".out.tmp", "new")
    seen = []
    real_rmtree = atomic.shutil.rmtree

    def watching(path, **kwargs):  # noqa: ANN001, ANN003, ANN202
        seen.append((out / "a.txt").read_text())  # the new folder is already at out
        return real_rmtree(path, **kwargs)

    monkeypatch.setattr(atomic.shutil, "rmtree", watching)
    atomic.replace_folder(new, out)
    assert seen == ["new"]
