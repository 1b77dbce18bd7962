"""Atomic writes: the final name holds the old version or the new one, never a partial one."""

from __future__ import annotations

import os

import pytest

from biotransformer.atomic import atomic_directory, atomic_write


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
    with atomic_directory(target) as staging:
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
