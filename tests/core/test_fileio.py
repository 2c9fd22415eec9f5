import os

import pytest

from deepshrink.core.fileio import atomic_dir, atomic_path, check_output, write_text_atomic
from deepshrink.errors import InputError


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_and_uses_normal_mode(tmp_path):
    target = tmp_path / "out.txt"
    write_text_atomic(target, "one")
    write_text_atomic(target, "two")
    assert target.read_text() == "two"
    assert oct(os.stat(target).st_mode & 0o777) != oct(0o600)  # mkstemp's 0600 is not kept
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_dir_all_or_nothing(tmp_path):
    with pytest.raises(ValueError), atomic_dir(tmp_path) as stage:
        (stage / "a").write_text("a")
        raise ValueError
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(tmp_path) as stage:
        (stage / "a").write_text("a")
        (stage / "b").write_text("b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_check_output_rules(tmp_path):
    existing = tmp_path / "m.onnx"
    existing.write_bytes(b"x")
    with pytest.raises(InputError, match="already exists"):
        check_output(existing)
    assert check_output(existing, force=True) == existing
    with pytest.raises(InputError, match="same file"):
        check_output(existing, inputs=(existing,), force=True)
    with pytest.raises(InputError, match="does not exist"):
        check_output(tmp_path / "missing" / "m.onnx")


def test_an_output_that_is_a_directory_is_refused_force_or_not(tmp_path):
    folder = tmp_path / "out.onnx"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")
    for force in (False, True):
        with pytest.raises(InputError, match="is a directory"):
            check_output(folder, force=force)
    with pytest.raises(InputError, match="is a directory"), atomic_path(folder):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]  # no temporary file beside it
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]
