import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from data_prep import stage
from persona import atomic

THREAD_TIMEOUT_S = 30  # a write thread that waits longer is stuck
THREADS = 8  # writers of test_many_threads_hammering_one_path
REPEATS = 20  # writes per thread there


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


# ------------------------------------------------------------------------------ file writers
def _usual_mode() -> int:
    """0o666 less the umask, read here the portable way (tests run single-threaded)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def test_a_file_appears_with_its_content_and_the_usual_mode(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "a.json"  # the parents are made
    assert atomic.atomic_write_bytes(path, b"\x00bytes\n") == path
    assert path.read_bytes() == b"\x00bytes\n"
    assert stat.S_IMODE(path.stat().st_mode) == _usual_mode()  # not mkstemp's 0o600
    text = tmp_path / "a.csv"
    assert atomic.atomic_write_text(text, "a,b\r\nä,1\n") == text
    assert text.read_bytes() == "a,b\r\nä,1\n".encode()  # utf-8, newlines as given
    assert atomic.atomic_write_text(text, "x", encoding="utf-16").read_bytes() == \
        "x".encode("utf-16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "new"]  # no temporary
    document = tmp_path / "new" / "b.json"
    assert atomic.atomic_write_json(document, {"a": [1, 2.5], "b": "ä"}) == document
    assert document.read_text() == '{\n "a": [\n  1,\n  2.5\n ],\n "b": "\\u00e4"\n}\n'


def test_the_mode_follows_the_umask(tmp_path: Path) -> None:
    earlier = os.umask(0o027)
    try:
        path = atomic.atomic_write_bytes(tmp_path / "a.bin", b"x")
    finally:
        os.umask(earlier)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_the_umask_is_read_without_changing_it() -> None:
    assert atomic.proc_umask("Name:\tpython\nUmask:\t0027\nState:\tR\n") == 0o027
    assert atomic.proc_umask("Name:\tpython\n") is None
    assert atomic.current_umask() == 0o666 & ~_usual_mode()


@pytest.mark.parametrize("error", [ValueError("half written"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_earlier_file_and_no_temporary(tmp_path: Path,
                                                                  error: BaseException) -> None:
    path = atomic.atomic_write_text(tmp_path / "a.txt", "earlier")
    seen = []

    def failing(temporary: Path) -> None:
        temporary.write_text("half")
        seen.append(temporary)
        raise error

    with pytest.raises(type(error)):
        atomic.atomic_write(path, failing)
    assert path.read_text() == "earlier"
    assert seen and not seen[0].exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def _disk_full(temporary: Path) -> None:
    raise OSError("disk full")


def test_a_failed_write_of_a_new_file_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="disk full"):
        atomic.atomic_write(tmp_path / "new" / "a.npy", _disk_full)
    assert [p.name for p in tmp_path.iterdir()] == ["new"]  # the folder, empty
    assert list((tmp_path / "new").iterdir()) == []


def test_the_temporary_is_hidden_keeps_the_suffix_and_is_a_stale_temporary(
        tmp_path: Path) -> None:
    names = []

    def record(temporary: Path) -> None:
        names.append(temporary.name)
        assert temporary.parent == tmp_path  # same folder: os.replace is a rename
        assert temporary.is_file() and temporary.stat().st_size == 0  # made, empty, closed
        np.save(temporary, np.arange(3))  # a suffix-inferring writer: no ".npy" added

    path = atomic.atomic_write(tmp_path / "volume.npy", record)
    np.testing.assert_array_equal(np.load(path), np.arange(3))
    (name,) = names
    assert name.startswith(f".volume.npy.tmp-{os.getpid()}-") and name.endswith(".npy")
    assert stage.TEMPORARY_NAME.fullmatch(name)
    assert [p.name for p in tmp_path.iterdir()] == ["volume.npy"]  # nothing else appeared


@pytest.mark.parametrize("name", [".2.json.tmp-4242",  # the earlier writers' name
                                  ".2.json.tmp-4242-k3x9q_7z.json", ".LICENSE.tmp-7-abc_123",
                                  ".a.tar.gz.tmp-99-zz00zz00.gz"])
def test_leftover_temporaries_are_found_and_removed(tmp_path: Path, name: str) -> None:
    assert stage.TEMPORARY_NAME.fullmatch(name)
    (tmp_path / "sub").mkdir()
    leftover = tmp_path / "sub" / name
    leftover.write_text("cut sh")
    kept = [atomic.atomic_write_text(tmp_path / "sub" / "2.json", "{}"),
            atomic.atomic_write_text(tmp_path / ".hidden.json", "{}")]
    assert stage.stale_temporaries(tmp_path) == [leftover]
    assert stage.remove_stale_temporaries(tmp_path) == [leftover]
    assert not leftover.exists() and all(p.exists() for p in kept)


@pytest.mark.parametrize("name", ["2.json", ".hidden.json", ".2.json.tmp", ".2.json.tmp-x",
                                  ".2.json.tmp-12-ab.c.d", "2.json.tmp-12"])
def test_other_names_are_not_temporaries(name: str) -> None:
    assert not stage.TEMPORARY_NAME.fullmatch(name)


def test_two_threads_writing_one_path_both_succeed(tmp_path: Path) -> None:
    """Both write functions run at once (a barrier inside them), each in its own temporary;
    the file is one of the two contents, whole."""
    path = tmp_path / "shared.bin"
    contents = [b"a" * 100_000, b"b" * 100_000]
    barrier = threading.Barrier(len(contents), timeout=THREAD_TIMEOUT_S)
    temporaries: list[Path] = []

    def write(data: bytes) -> Path:
        def slow(temporary: Path) -> None:
            temporaries.append(temporary)
            barrier.wait()  # the other write has its temporary too
            temporary.write_bytes(data)

        return atomic.atomic_write(path, slow)

    with ThreadPoolExecutor(max_workers=len(contents)) as pool:
        results = [f.result(timeout=THREAD_TIMEOUT_S)
                   for f in [pool.submit(write, data) for data in contents]]
    assert results == [path, path]
    assert len(set(temporaries)) == len(contents)  # a temporary each
    assert path.read_bytes() in contents
    assert [p.name for p in tmp_path.iterdir()] == ["shared.bin"]


def test_many_threads_hammering_one_path(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    texts = [f"{i}\n" * 1000 for i in range(THREADS)]
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        list(pool.map(lambda text: [atomic.atomic_write_text(path, text)
                                    for _ in range(REPEATS)], texts))
    assert path.read_text() in texts
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
