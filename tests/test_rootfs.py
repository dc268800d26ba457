"""Building the default rootfs from a static busybox, and reporting a missing one."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiocontain import elf, rootfs
from aiocontain.errors import AiocontainError

BUSYBOX = Path("/bin/busybox")

needs_busybox = pytest.mark.skipif(
    not BUSYBOX.is_file(), reason="/bin/busybox is missing (sudo apt-get install busybox-static)"
)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def built(tmp_path: Path) -> Iterator[Path]:
    """A rootfs built under a restrictive umask, to prove the modes are set explicitly."""
    dest = tmp_path / "rootfs"
    old = os.umask(0o077)
    try:
        rootfs.init_rootfs(dest)
    finally:
        os.umask(old)
    yield dest


@needs_busybox
def test_layout(built: Path) -> None:
    assert (built / "bin" / "busybox").read_bytes() == BUSYBOX.read_bytes()
    assert mode(built / "bin" / "busybox") == 0o755
    for name in ("proc", "sys", "dev", "etc", "run", "home", "var"):
        assert (built / name).is_dir() and mode(built / name) == 0o755, name
    assert mode(built / "tmp") == 0o1777
    assert mode(built / "var" / "tmp") == 0o1777
    assert mode(built / "root") == 0o700
    passwd = (built / "etc" / "passwd").read_text().splitlines()
    assert "root:x:0:0:root:/root:/bin/sh" in passwd
    assert "nobody:x:65534:65534:nobody:/nonexistent:/bin/false" in passwd
    assert (built / "etc" / "group").read_text().splitlines() == ["root:x:0:", "nogroup:x:65534:"]
    assert "localhost" in (built / "etc" / "hosts").read_text()
    assert (built / "etc" / "resolv.conf").read_text() == ""
    assert (built / "etc" / "hostname").read_text().strip()
    assert (built / rootfs.MARKER).is_file()


@needs_busybox
def test_every_applet_is_a_symlink_to_busybox(built: Path) -> None:
    listed = subprocess.run([str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    assert listed, "busybox listed no applets"
    for applet in listed:
        if applet in ("bin/busybox", "linuxrc"):
            continue
        assert os.readlink(built / applet) == "/bin/busybox", applet
    assert os.readlink(built / "bin" / "sh") == "/bin/busybox"
    assert os.readlink(built / "usr" / "bin" / "env") == "/bin/busybox"
    # Resolved the way the container sees it, the shell is the rootfs's own static busybox.
    assert elf.resolve_in_rootfs(built, "/bin/sh") == built / "bin" / "busybox"
    assert elf.elf_interpreter(built / "bin" / "busybox") is None


@needs_busybox
def test_the_copied_busybox_runs(built: Path) -> None:
    result = subprocess.run([str(built / "bin" / "busybox"), "echo", "ok"], capture_output=True, text=True, check=True)
    assert result.stdout == "ok\n"


@needs_busybox
def test_everything_is_readable_by_other_users(built: Path) -> None:
    for directory, dirs, files in os.walk(built):
        for name in dirs:
            path = Path(directory) / name
            if path != built / "root" and not path.is_symlink():
                assert mode(path) & 0o005 == 0o005, path
        for name in files:
            path = Path(directory) / name
            if not path.is_symlink():
                assert mode(path) & 0o004, path


@needs_busybox
def test_init_is_idempotent_and_keeps_edits(built: Path) -> None:
    (built / "etc" / "hostname").write_text("edited\n")
    (built / "bin" / "sh").unlink()
    (built / "etc" / "group").unlink()
    before = sorted(str(p.relative_to(built)) for p in built.rglob("*"))
    rootfs.init_rootfs(built)
    rootfs.init_rootfs(built)
    assert (built / "etc" / "hostname").read_text() == "edited\n"
    assert os.readlink(built / "bin" / "sh") == "/bin/busybox"
    assert (built / "etc" / "group").read_text().startswith("root:x:0:")
    after = sorted(str(p.relative_to(built)) for p in built.rglob("*"))
    assert set(after) == set(before) | {"bin/sh", "etc/group"}
    assert not list(built.rglob(".*.tmp"))


@needs_busybox
def test_init_fills_a_directory_holding_only_a_readme(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("default rootfs\n")
    (tmp_path / ".gitignore").write_text("*\n")
    rootfs.init_rootfs(tmp_path)
    assert (tmp_path / "README.md").read_text() == "default rootfs\n"
    assert (tmp_path / "bin" / "busybox").is_file()


@needs_busybox
def test_init_refuses_a_foreign_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("precious")
    with pytest.raises(AiocontainError) as caught:
        rootfs.init_rootfs(tmp_path)
    assert str(tmp_path) in caught.value.message
    assert caught.value.fix is not None and "aiocontain rootfs init DIR" in caught.value.fix
    assert sorted(os.listdir(tmp_path)) == ["data.txt"]
    # A busybox-based tree that aiocontain did not build is refused too.
    other = tmp_path / "other"
    (other / "bin").mkdir(parents=True)
    (other / "bin" / "busybox").write_bytes(b"")
    with pytest.raises(AiocontainError, match="not empty"):
        rootfs.init_rootfs(other)


def dynamic_elf() -> Path | None:
    for candidate in (Path(sys.executable).resolve(), Path("/bin/ls"), Path("/usr/bin/env")):
        if candidate.is_file() and elf.elf_interpreter(candidate) is not None:
            return candidate
    return None


def test_init_refuses_a_dynamic_busybox(tmp_path: Path) -> None:
    dynamic = dynamic_elf()
    if dynamic is None:
        pytest.skip("no dynamically linked ELF found (sys.executable, /bin/ls, /usr/bin/env)")
    dest = tmp_path / "rootfs"
    with pytest.raises(AiocontainError) as caught:
        rootfs.init_rootfs(dest, busybox=dynamic)
    assert "dynamically linked" in caught.value.message
    assert str(dynamic) in caught.value.message
    assert caught.value.fix is not None
    assert "apt-get install busybox-static" in caught.value.fix and "--busybox PATH" in caught.value.fix
    assert not dest.exists()


def test_init_refuses_a_missing_or_non_elf_busybox(tmp_path: Path) -> None:
    script = tmp_path / "busybox.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    with pytest.raises(AiocontainError, match="not an ELF") as caught:
        rootfs.init_rootfs(tmp_path / "a", busybox=script)
    assert caught.value.fix is not None and "busybox-static" in caught.value.fix
    with pytest.raises(AiocontainError, match="no busybox at"):
        rootfs.init_rootfs(tmp_path / "b", busybox=tmp_path / "missing")


@needs_busybox
def test_init_refuses_a_file_as_destination(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(AiocontainError, match="not a directory"):
        rootfs.init_rootfs(target)
    assert target.read_text() == "x"


def test_is_empty(tmp_path: Path) -> None:
    assert rootfs.is_empty(tmp_path / "missing")
    assert rootfs.is_empty(tmp_path)
    for name in ("README.md", "README", ".gitkeep", ".gitignore", ".anything"):
        (tmp_path / name).write_text("")
    assert rootfs.is_empty(tmp_path)
    (tmp_path / "bin").mkdir()
    assert not rootfs.is_empty(tmp_path)
    assert not rootfs.is_empty(tmp_path / "README.md")  # a file is not an empty directory


def test_default_rootfs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AIOCONTAIN_ROOTFS", str(tmp_path))
    assert rootfs.default_rootfs() == tmp_path
    monkeypatch.delenv("AIOCONTAIN_ROOTFS")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    default = rootfs.default_rootfs()
    assert default.name == "rootfs_arm"
    checkout = Path(rootfs.__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file():  # running from a source checkout
        assert default == checkout / "rootfs_arm"
    else:  # an installed package keeps its default rootfs in the user's data directory
        assert default == tmp_path / "data" / "aiocontain" / "rootfs_arm"


@pytest.mark.parametrize("is_default", [True, False])
def test_check_rootfs_names_the_command_for_a_missing_rootfs(tmp_path: Path, is_default: bool) -> None:
    missing = tmp_path / "nothing here"
    with pytest.raises(AiocontainError) as caught:
        rootfs.check_rootfs(missing, is_default=is_default)
    assert str(missing) in caught.value.message and "does not exist" in caught.value.message
    assert "aiocontain rootfs init" in str(caught.value)
    expected = "aiocontain rootfs init" if is_default else f"aiocontain rootfs init '{missing}'"
    assert caught.value.fix == expected


def test_check_rootfs_empty_and_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("")
    with pytest.raises(AiocontainError, match="is empty") as caught:
        rootfs.check_rootfs(tmp_path, is_default=False)
    assert caught.value.fix == f"aiocontain rootfs init {tmp_path}"
    with pytest.raises(AiocontainError, match="not a directory") as caught:
        rootfs.check_rootfs(tmp_path / "README.md", is_default=True)
    assert "aiocontain rootfs init" in str(caught.value)


@needs_busybox
def test_check_rootfs_accepts_a_built_rootfs(built: Path) -> None:
    rootfs.check_rootfs(built, is_default=False)
    assert not rootfs.is_empty(built)
