"""Subordinate id ranges read from a subuid/subgid file."""

from __future__ import annotations

import pwd
from pathlib import Path

import pytest

from aiocontain import subids

UID = 4242
NAME = "aiotestuser"


@pytest.fixture
def fake_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """Uid 4242 is the user 'aiotestuser', whatever this host's /etc/passwd holds."""
    real = pwd.getpwuid

    def getpwuid(uid: int) -> pwd.struct_passwd:
        if uid == UID:
            return pwd.struct_passwd((NAME, "x", UID, UID, "", "/home/" + NAME, "/bin/sh"))
        return real(uid)

    monkeypatch.setattr(pwd, "getpwuid", getpwuid)  # subids looks it up on the pwd module


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "subuid"
    path.write_text(text)
    return path


def test_by_user_name(tmp_path: Path, fake_user: None) -> None:
    path = write(tmp_path, f"someoneelse:100000:65536\n{NAME}:165536:65536\n")
    assert subids.ranges(UID, path) == [(165536, 65536)]


def test_by_numeric_uid(tmp_path: Path, fake_user: None) -> None:
    path = write(tmp_path, f"someoneelse:100000:65536\n{UID}:231072:1000\n")
    assert subids.ranges(UID, path) == [(231072, 1000)]


def test_by_numeric_uid_without_a_passwd_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(uid: int) -> pwd.struct_passwd:
        raise KeyError(uid)

    monkeypatch.setattr(pwd, "getpwuid", missing)
    path = write(tmp_path, "None:1:1\n987654:300000:5000\n")
    assert subids.ranges(987654, path) == [(300000, 5000)]


def test_name_and_uid_lines_together_in_file_order(tmp_path: Path, fake_user: None) -> None:
    path = write(tmp_path, f"{NAME}:100000:10\nother:1:1\n{UID}:200000:20\n{NAME}:300000:30\n")
    assert subids.ranges(UID, path) == [(100000, 10), (200000, 20), (300000, 30)]


def test_real_passwd_lookup_for_root(tmp_path: Path) -> None:
    try:
        name = pwd.getpwuid(0).pw_name
    except KeyError:
        pytest.skip("no passwd entry for uid 0")
    path = write(tmp_path, f"{name}:100000:65536\nnobody:1:1\n")
    assert subids.ranges(0, path) == [(100000, 65536)]


def test_other_users_only_gives_nothing(tmp_path: Path, fake_user: None) -> None:
    path = write(tmp_path, f"alice:100000:65536\n{UID + 1}:200000:65536\n{NAME}x:1:1\nx{NAME}:1:1\n")
    assert subids.ranges(UID, path) == []


def test_malformed_lines_and_zero_counts_are_ignored(tmp_path: Path, fake_user: None) -> None:
    text = "\n".join(
        [
            "# a comment",
            "",
            f"{NAME}",
            f"{NAME}:100000",
            f"{NAME}:100000:65536:extra",
            f"{NAME}:abc:65536",
            f"{NAME}:100000:lots",
            f"{NAME}:100000:",
            f"{NAME}:100000:0",
            f"{NAME}:100000:-5",
            f"{NAME}:1.5:10",
            f"  {NAME}:400000:7  ",  # surrounding whitespace is stripped
            f"{NAME}:500000:8",
        ]
    )
    path = write(tmp_path, text + "\n")
    assert subids.ranges(UID, path) == [(400000, 7), (500000, 8)]


def test_missing_file_gives_no_ranges(tmp_path: Path, fake_user: None) -> None:
    assert subids.ranges(UID, tmp_path / "does-not-exist") == []


def test_unreadable_path_gives_no_ranges(tmp_path: Path, fake_user: None) -> None:
    assert subids.ranges(UID, tmp_path) == []  # a directory: reading it fails with an OSError


def test_empty_file_gives_no_ranges(tmp_path: Path, fake_user: None) -> None:
    assert subids.ranges(UID, write(tmp_path, "")) == []
