"""Cache files count only when they are the user's alone, and are never written through a planted name."""

from __future__ import annotations

import os

from aiocontain import cachefile


def test_written_then_read_back_private(tmp_path):
    path = tmp_path / "cache" / "entry"
    cachefile.write(str(path), b"data")
    assert cachefile.read(str(path)) == b"data"
    assert (path.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    assert sorted(os.listdir(path.parent)) == ["entry"]  # no temporary file left


def test_a_file_others_may_write_or_a_symlink_is_not_read(tmp_path):
    path = tmp_path / "entry"
    path.write_bytes(b"data")
    path.chmod(0o666)
    assert cachefile.read(str(path)) is None
    path.chmod(0o600)
    assert cachefile.read(str(path)) == b"data"  # the control
    link = tmp_path / "link"
    link.symlink_to(path)
    assert cachefile.read(str(link)) is None


def test_a_name_planted_at_the_temporary_name_is_not_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / f".entry.{os.getpid()}").symlink_to(victim)
    cachefile.write(str(tmp_path / "entry"), b"data")
    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "entry").exists()  # no cache this time: only a compile or a scan more
