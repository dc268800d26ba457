"""ELF machine detection, binfmt_misc matching and the rootfs architecture check."""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

import pytest

from aiocontain import elf
from aiocontain.errors import AiocontainError

EM_AARCH64, EM_S390, EM_X86_64 = 183, 22, 62

# The entry qemu-user-static registers for aarch64 (from /usr/lib/binfmt.d/qemu-aarch64.conf).
QEMU_AARCH64 = (
    "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POCF\noffset 0\n"
    "magic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n"
)


def fake_elf(e_machine: int, *, bits: int = 64, big_endian: bool = False, interp: bytes | None = None) -> bytes:
    """A minimal ELF executable header (plus one PT_INTERP program header when interp is given)."""
    end = ">" if big_endian else "<"
    ident = b"\x7fELF" + bytes([2 if bits == 64 else 1, 2 if big_endian else 1, 1]) + bytes(9)
    if bits == 64:
        phoff, phentsize = 64, 56
        header = ident + struct.pack(end + "HHIQQQIHHHHHH", 2, e_machine, 1, 0, phoff, 0, 0, 64, phentsize, 1, 0, 0, 0)
        if interp is None:
            return header
        data_offset = phoff + phentsize
        phdr = struct.pack(end + "IIQQQQQQ", 3, 4, data_offset, 0, 0, len(interp), len(interp), 1)
        return header + phdr + interp
    phoff, phentsize = 52, 32
    header = ident + struct.pack(end + "HHIIIIIHHHHHH", 2, e_machine, 1, 0, phoff, 0, 0, 52, phentsize, 1, 0, 0, 0)
    if interp is None:
        return header
    phdr = struct.pack(end + "IIIIIIII", 3, phoff + phentsize, 0, 0, len(interp), len(interp), 4, 1)
    return header + phdr + interp


def write_exe(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o755)
    return path


def foreign() -> tuple[str, int, bool]:
    """A machine that is not the host's: aarch64, or big-endian s390x on an arm host."""
    if elf.host_machine() in ("aarch64", "arm"):
        return "s390x", EM_S390, True
    return "aarch64", EM_AARCH64, False


def test_elf_machine_of_the_running_python_is_the_host() -> None:
    assert elf.elf_machine(Path(sys.executable)) == elf.host_machine()


def test_hand_made_aarch64_header(tmp_path: Path) -> None:
    assert elf.elf_machine(write_exe(tmp_path / "a", fake_elf(EM_AARCH64))) == "aarch64"


def test_big_endian_s390x_header(tmp_path: Path) -> None:
    path = write_exe(tmp_path / "s", fake_elf(EM_S390, big_endian=True))
    assert elf.elf_machine(path) == "s390x"
    # The same machine number read with the wrong byte order would be 0x1600; prove it is not.
    assert path.read_bytes()[18:20] == b"\x00\x16"


def test_32_bit_arm_header(tmp_path: Path) -> None:
    assert elf.elf_machine(write_exe(tmp_path / "arm", fake_elf(40, bits=32))) == "arm"


def test_non_elf_files_give_none(tmp_path: Path) -> None:
    script = write_exe(tmp_path / "script", b"#!/bin/sh\necho hi\n")
    short = write_exe(tmp_path / "short", b"\x7fELF")
    assert elf.elf_machine(script) is None
    assert elf.elf_machine(short) is None
    assert elf.elf_machine(tmp_path / "missing") is None
    assert elf.elf_machine(tmp_path) is None


@pytest.mark.parametrize(
    ("uname", "expected"),
    [("amd64", "x86_64"), ("x86_64", "x86_64"), ("arm64", "aarch64"), ("armv7l", "arm"), ("i686", "i386")],
)
def test_normalise_machine(uname: str, expected: str) -> None:
    assert elf.normalise_machine(uname) == expected


def test_elf_interpreter_reads_pt_interp(tmp_path: Path) -> None:
    dynamic64 = write_exe(tmp_path / "d64", fake_elf(EM_X86_64, interp=b"/lib64/ld-linux-x86-64.so.2\0"))
    dynamic32 = write_exe(tmp_path / "d32", fake_elf(40, bits=32, interp=b"/lib/ld-linux-armhf.so.3\0"))
    static = write_exe(tmp_path / "static", fake_elf(EM_X86_64))
    assert elf.elf_interpreter(dynamic64) == "/lib64/ld-linux-x86-64.so.2"
    assert elf.elf_interpreter(dynamic32) == "/lib/ld-linux-armhf.so.3"
    assert elf.elf_interpreter(static) is None


def fake_binfmt(tmp_path: Path, entries: dict[str, str], status: str = "enabled") -> Path:
    directory = tmp_path / "binfmt_misc"
    directory.mkdir()
    (directory / "status").write_text(status + "\n")
    (directory / "register").write_text("")
    for name, text in entries.items():
        (directory / name).write_text(text)
    return directory


def test_binfmt_handler_matches_qemu_magic(tmp_path: Path) -> None:
    directory = fake_binfmt(tmp_path, {"qemu-aarch64": QEMU_AARCH64})
    assert elf.binfmt_handler("aarch64", binfmt_dir=directory) == "qemu-aarch64"
    assert elf.binfmt_handler("s390x", binfmt_dir=directory) is None


def test_binfmt_handler_ignores_disabled_entries(tmp_path: Path) -> None:
    disabled = fake_binfmt(tmp_path, {"qemu-aarch64": QEMU_AARCH64.replace("enabled", "disabled", 1)})
    assert elf.binfmt_handler("aarch64", binfmt_dir=disabled) is None
    (disabled / "qemu-aarch64").write_text(QEMU_AARCH64)
    (disabled / "status").write_text("disabled\n")
    assert elf.binfmt_handler("aarch64", binfmt_dir=disabled) is None
    assert elf.binfmt_handler("aarch64", binfmt_dir=tmp_path / "not-mounted") is None


_INSTALL = "sudo apt-get install qemu-user-static"


def test_a_handler_without_the_fix_binary_flag_is_named(tmp_path: Path) -> None:
    # Its interpreter lives on the host's /usr/libexec: after pivot_root the kernel would not find it.
    directory = fake_binfmt(tmp_path, {"qemu-aarch64": QEMU_AARCH64.replace("flags: POCF", "flags: OC")})
    handler, fix = elf.binfmt_support("aarch64", binfmt_dir=directory)
    assert handler is None
    assert "qemu-aarch64 lacks the F (fix-binary) flag" in fix


@pytest.mark.parametrize(
    "state, needle",
    [
        ("entry disabled", "sudo update-binfmts --enable qemu-aarch64"),
        ("binfmt_misc disabled", "binfmt_misc is disabled"),
        ("not mounted", "binfmt_misc is not mounted: sudo mount -t binfmt_misc"),
        ("no entry", "install qemu-user-static"),
    ],
)
def test_the_fix_says_what_is_wrong_with_binfmt_misc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: str, needle: str
) -> None:
    qemu = tmp_path / "bin" / "qemu-aarch64-static"  # installed: the fix is binfmt_misc's state, not installing it
    write_exe(qemu, b"#!/bin/sh\n")
    monkeypatch.setenv("PATH", str(qemu.parent))
    entry = QEMU_AARCH64.replace("enabled", "disabled", 1) if state == "entry disabled" else QEMU_AARCH64
    entries = {} if state == "no entry" else {"qemu-aarch64": entry}
    directory = fake_binfmt(tmp_path, entries, status="disabled" if state == "binfmt_misc disabled" else "enabled")
    if state == "not mounted":
        directory = tmp_path / "not-mounted"
    handler, fix = elf.binfmt_support("aarch64", binfmt_dir=directory)
    assert handler is None and needle in fix, fix


def test_without_binfmt_misc_or_qemu_the_fix_is_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    handler, fix = elf.binfmt_support("aarch64", binfmt_dir=tmp_path / "not-mounted")
    assert handler is None and "apt-get install qemu-user-static" in fix


def test_check_arch_refuses_a_foreign_rootfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name, e_machine, big = foreign()
    write_exe(tmp_path / "bin" / "sh", fake_elf(e_machine, big_endian=big))
    monkeypatch.setattr(elf, "binfmt_support", lambda machine, **_: (None, _INSTALL))
    for command in ("/bin/sh", "sh"):
        with pytest.raises(AiocontainError) as caught:
            elf.check_arch(tmp_path, command, "/usr/bin:/bin")
        assert name in caught.value.message
        assert elf.host_machine() in caught.value.message
        assert str(tmp_path) in caught.value.message
        assert caught.value.fix is not None and "aiocontain rootfs init" in caught.value.fix
        assert "qemu-user-static" in caught.value.fix


def test_check_arch_accepts_a_foreign_rootfs_with_a_binfmt_handler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, e_machine, big = foreign()
    write_exe(tmp_path / "bin" / "sh", fake_elf(e_machine, big_endian=big))
    asked: list[str] = []

    def handler(machine: str, **_: object) -> tuple[str, str]:
        asked.append(machine)
        return f"qemu-{machine}", ""

    monkeypatch.setattr(elf, "binfmt_support", handler)
    elf.check_arch(tmp_path, "/bin/sh", "")
    assert asked == [name]


def test_check_arch_accepts_a_host_binary(tmp_path: Path) -> None:
    header = Path(sys.executable).read_bytes()[:64]  # the host's own ELF header
    write_exe(tmp_path / "bin" / "sh", header)
    elf.check_arch(tmp_path, "/bin/sh", "")
    elf.check_arch(tmp_path, "sh", "/bin")
    assert elf.elf_machine(tmp_path / "bin" / "sh") == elf.host_machine()


def test_check_arch_leaves_missing_and_non_elf_commands_to_the_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(elf, "binfmt_support", lambda machine, **_: (None, _INSTALL))
    write_exe(tmp_path / "bin" / "script", b"#!/bin/sh\n")
    _, e_machine, big = foreign()
    (tmp_path / "bin" / "notexec").write_bytes(fake_elf(e_machine, big_endian=big))  # no x bit: PATH skips it
    for command in ("/bin/missing", "missing", "/bin/script", "script", "notexec"):
        elf.check_arch(tmp_path, command, "/bin")
    with pytest.raises(AiocontainError):
        elf.check_arch(tmp_path, "/bin/notexec", "")  # an explicit path is still judged
    with pytest.raises(AiocontainError):
        elf.check_arch(tmp_path, "./notexec", "", workdir="/bin")  # relative to the working directory
    elf.check_arch(tmp_path, "./notexec", "")  # not in /, so left to the runtime


def test_symlinks_resolve_inside_the_rootfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name, e_machine, big = foreign()
    busybox = write_exe(tmp_path / "bin" / "busybox", fake_elf(e_machine, big_endian=big))
    (tmp_path / "bin" / "sh").symlink_to("/bin/busybox")  # absolute: must mean rootfs/bin/busybox
    (tmp_path / "usr").mkdir()
    (tmp_path / "usr" / "bin").symlink_to("../../../../../bin")  # ".." cannot climb above the rootfs
    assert elf.resolve_in_rootfs(tmp_path, "/bin/sh") == busybox
    assert elf.resolve_in_rootfs(tmp_path, "/usr/bin/sh") == busybox
    assert elf.resolve_in_rootfs(tmp_path, "/usr/bin/../bin/./sh") == busybox
    monkeypatch.setattr(elf, "binfmt_support", lambda machine, **_: (None, _INSTALL))
    with pytest.raises(AiocontainError, match=name):
        elf.check_arch(tmp_path, "sh", "/usr/bin")


def test_symlink_loops_and_dangling_links_resolve_to_none(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("/a")
    (tmp_path / "dangling").symlink_to("/nowhere")
    assert elf.resolve_in_rootfs(tmp_path, "/a") is None
    assert elf.resolve_in_rootfs(tmp_path, "/dangling") is None
    assert os.path.islink(tmp_path / "a")
