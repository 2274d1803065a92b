"""atomic_write: all or nothing, and the finished file has the mode any other new file gets."""

import os

import pytest

from vgg_flax.weights.atomic import atomic_write


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target, "w") as file:
        file.write("half of the new")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["summary.json"]


def test_finished_file_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "a.bin") as file:
            file.write(b"1")
        plain = tmp_path / "plain.bin"
        plain.write_bytes(b"1")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "a.bin").st_mode & 0o777 == os.stat(plain).st_mode & 0o777 == 0o640
