"""Atomic writes: the final name holds the old version or the new one, never a partial one."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from biotransformer.atomic import atomic_directory, atomic_path, atomic_write, write_json
from biotransformer.errors import InputError


def test_atomic_write_replaces_file_with_ordinary_permissions(tmp_path):
    target = tmp_path / "out" / "metrics.json"
    with atomic_write(target) as handle:
        handle.write("first")
    with atomic_write(target) as handle:
        handle.write("second")
    assert target.read_text() == "second"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]


def test_atomic_write_failure_keeps_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "table.tsv"
    target.write_text("previous")
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["table.tsv"]


def test_atomic_write_binary_mode(tmp_path):
    target = tmp_path / "plot.png"
    with atomic_write(target, "wb") as handle:
        handle.write(b"\x89PNG")
    assert target.read_bytes() == b"\x89PNG"


def test_atomic_directory_replaces_whole_directory(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as staging:
        (staging / "config.json").write_text("v1")
        (staging / "old-only.txt").write_text("x")
    with atomic_directory(target, replaces=["config.json", "old-only.txt"]) as staging:
        assert not any(staging.iterdir()), "staging starts empty"
        (staging / "config.json").write_text("v2")
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]
    assert (target / "config.json").read_text() == "v2"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert target.stat().st_mode & 0o700 == 0o700


def test_atomic_directory_failure_keeps_previous_version(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as staging:
        (staging / "config.json").write_text("good")
    with pytest.raises(KeyboardInterrupt), atomic_directory(target) as staging:
        (staging / "config.json").write_text("partial")
        raise KeyboardInterrupt
    assert (target / "config.json").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_directory_moved_aside_by_a_killed_save_is_restored(tmp_path):
    from biotransformer.atomic import restore_interrupted_directory

    target = tmp_path / "model"
    with atomic_directory(target) as staging:
        (staging / "config.json").write_text("good")
    retired = tmp_path / ".model.abc123.old"
    retired.mkdir()
    os.replace(target, retired / "model")  # the state between atomic_directory's two renames
    restore_interrupted_directory(target)
    assert (target / "config.json").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_atomic_directory_refuses_a_directory_holding_files_it_does_not_own(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text("old")
    (target / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"notes\.txt"), atomic_directory(target) as staging:
        (staging / "config.json").write_text("new")
    with (
        pytest.raises(InputError, match=r"notes\.txt"),
        atomic_directory(target, replaces=["config.json"]),
    ):
        raise AssertionError("refused before the write")
    assert (target / "notes.txt").read_text() == "mine"
    assert (target / "config.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging left behind


def test_links_and_special_files_are_never_replaced(tmp_path):
    real = tmp_path / "real.txt"
    real.write_text("real")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target in (link, fifo):
        with pytest.raises(InputError, match="never replaces"), atomic_write(target) as handle:
            handle.write("x")
    assert link.is_symlink() and real.read_text() == "real"
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    with pytest.raises(InputError, match="symbolic link"), atomic_directory(link):
        pass


def test_write_json_is_strict_json_with_ordinary_permissions(tmp_path):
    path = write_json(
        tmp_path / "metrics.json",
        {"mcc": float("nan"), "auroc": [np.float32("inf"), 0.5], "n": 3, "ok": np.float64(0.25)},
    )

    def refuse(name):
        raise ValueError(f"bare {name} in JSON")

    assert json.loads(path.read_text(), parse_constant=refuse) == {
        "mcc": None,
        "auroc": [None, 0.5],
        "n": 3,
        "ok": 0.25,
    }
    umask = os.umask(0o022)
    try:
        write_json(tmp_path / "run.json", {})
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "run.json").stat().st_mode) == 0o644


def test_atomic_path_gives_a_path_for_libraries_that_open_files(tmp_path):
    target = tmp_path / "data.bin"
    with atomic_path(target) as staging:
        assert staging.parent == tmp_path and staging != target
        staging.write_bytes(b"abc")
        assert not target.exists()
    assert target.read_bytes() == b"abc"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]
