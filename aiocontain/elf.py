"""Which CPU a rootfs is built for, and whether this host can run it.

A rootfs built for another architecture (the old default ``rootfs_arm`` on an
x86_64 laptop) otherwise fails deep inside the child with a bare ``Exec format
error``; reading the ELF header up front lets aiocontain say what is wrong.
Stdlib-only and import-light: the CLI imports it lazily.
"""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

from aiocontain.errors import AiocontainError

_ELF_MAGIC = b"\x7fELF"
_CLASS32, _CLASS64 = 1, 2
_LSB, _MSB = 1, 2
_PT_INTERP = 3
_MAX_SYMLINKS = 40  # the kernel's own limit (MAXSYMLINKS)

# (name, e_machine, EI_CLASS, EI_DATA); names follow `uname -m` as Debian/qemu spell them.
_MACHINES: tuple[tuple[str, int, int, int], ...] = (
    ("x86_64", 62, _CLASS64, _LSB),
    ("i386", 3, _CLASS32, _LSB),
    ("aarch64", 183, _CLASS64, _LSB),
    ("aarch64_be", 183, _CLASS64, _MSB),
    ("arm", 40, _CLASS32, _LSB),
    ("armeb", 40, _CLASS32, _MSB),
    ("riscv64", 243, _CLASS64, _LSB),
    ("riscv32", 243, _CLASS32, _LSB),
    ("ppc64le", 21, _CLASS64, _LSB),
    ("ppc64", 21, _CLASS64, _MSB),
    ("ppc", 20, _CLASS32, _MSB),
    ("ppcle", 20, _CLASS32, _LSB),
    ("s390x", 22, _CLASS64, _MSB),
    ("s390", 22, _CLASS32, _MSB),
    ("mips64el", 8, _CLASS64, _LSB),
    ("mips64", 8, _CLASS64, _MSB),
    ("mipsel", 8, _CLASS32, _LSB),
    ("mips", 8, _CLASS32, _MSB),
    ("loongarch64", 258, _CLASS64, _LSB),
    ("sparc64", 43, _CLASS64, _MSB),
    ("sparc", 2, _CLASS32, _MSB),
    ("m68k", 4, _CLASS32, _MSB),
    ("sh4", 42, _CLASS32, _LSB),
    ("sh4eb", 42, _CLASS32, _MSB),
    ("alpha", 0x9026, _CLASS64, _LSB),
    ("hppa", 15, _CLASS32, _MSB),
)

# Machines a host kernel usually runs natively besides its own (compat syscall layers).
_NATIVE_COMPAT = {"x86_64": {"i386"}, "aarch64": {"arm"}, "ppc64": {"ppc"}, "s390x": {"s390"}}

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")


def _read_header(path: Path, size: int) -> bytes | None:
    try:
        with open(path, "rb") as file:
            return file.read(size)
    except OSError:
        return None


def _machine_name(e_machine: int, elf_class: int, data: int) -> str:
    for name, em, cls, dat in _MACHINES:
        if (em, cls, dat) == (e_machine, elf_class, data):
            return name
    for name, em, _cls, _dat in _MACHINES:  # e.g. x32: an x86_64 machine in a 32-bit ELF
        if em == e_machine:
            return name
    return f"elf-machine-{e_machine}"


def elf_machine(path: Path) -> str | None:
    """The normalised machine an ELF file is built for; None when it is not an ELF (a script) or unreadable."""
    header = _read_header(path, 20)
    if header is None or len(header) < 20 or header[:4] != _ELF_MAGIC:
        return None
    elf_class, data = header[4], header[5]
    if elf_class not in (_CLASS32, _CLASS64) or data not in (_LSB, _MSB):
        return None
    (e_machine,) = struct.unpack("<H" if data == _LSB else ">H", header[18:20])
    return _machine_name(e_machine, elf_class, data)


def elf_interpreter(path: Path) -> str | None:
    """The PT_INTERP program interpreter of an ELF file, None for a static binary (or a non-ELF)."""
    try:
        with open(path, "rb") as file:
            header = file.read(64)
            if len(header) < 52 or header[:4] != _ELF_MAGIC:
                return None
            end = "<" if header[5] == _LSB else ">"
            if header[4] == _CLASS64:
                (phoff,) = struct.unpack(end + "Q", header[32:40])
                phentsize, phnum = struct.unpack(end + "HH", header[54:58])
                entry_fmt = end + "IIQQQQ"  # p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz
            else:
                (phoff,) = struct.unpack(end + "I", header[28:32])
                phentsize, phnum = struct.unpack(end + "HH", header[42:46])
                entry_fmt = end + "IIIII"  # p_type, p_offset, p_vaddr, p_paddr, p_filesz
            for index in range(phnum):
                file.seek(phoff + index * phentsize)
                raw = file.read(struct.calcsize(entry_fmt))
                if len(raw) < struct.calcsize(entry_fmt):
                    break
                fields = struct.unpack(entry_fmt, raw)
                if fields[0] != _PT_INTERP:
                    continue
                offset, size = (fields[2], fields[5]) if header[4] == _CLASS64 else (fields[1], fields[4])
                file.seek(offset)
                return file.read(size).split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return None
    return None


def normalise_machine(name: str) -> str:
    """Map a `uname -m` spelling (amd64, arm64, armv7l, i686 ...) to the names elf_machine returns."""
    name = name.strip().lower()
    little = sys.byteorder == "little"
    if name in ("x86_64", "amd64", "x64"):
        return "x86_64"
    if name in ("i386", "i486", "i586", "i686", "x86"):
        return "i386"
    if name in ("aarch64", "arm64"):
        return "aarch64"
    if name in ("aarch64_be", "arm64be"):
        return "aarch64_be"
    if name.startswith("arm"):
        return "armeb" if name.endswith("b") else "arm"  # armv7l, armv6l, armv5tel / armv7b, armeb
    if name in ("mips", "mips64"):  # uname does not say the byte order
        return name + ("el" if little else "")
    if name in ("parisc", "parisc64"):
        return "hppa"
    if name.startswith("sh4"):
        return "sh4" if little else "sh4eb"
    return name


def host_machine() -> str:
    """The machine this host runs, normalised like elf_machine."""
    return normalise_machine(os.uname().machine)  # what platform.machine() says, without its import (~1 ms)


def _elf_headers(machine: str) -> list[bytes]:
    """Representative headers (executable and PIE) of an ELF for machine, to match binfmt_misc magic against."""
    for name, em, cls, dat in _MACHINES:
        if name == machine:
            end = "<" if dat == _LSB else ">"
            ident = _ELF_MAGIC + bytes([cls, dat, 1]) + bytes(9)
            return [ident + struct.pack(end + "HHI", e_type, em, 1) for e_type in (2, 3)]
    return []


def _entry(text: str) -> dict[str, str]:
    """A binfmt_misc entry's fields; its first line (enabled or disabled) is a key of its own."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        fields.setdefault(key.rstrip(":"), value.strip())
    return fields


def _entry_matches(fields: dict[str, str], headers: list[bytes]) -> bool:
    if "magic" not in fields:
        return False  # an extension-based entry
    try:
        magic = bytes.fromhex(fields["magic"])
        mask = bytes.fromhex(fields["mask"]) if "mask" in fields else b"\xff" * len(magic)
        offset = int(fields.get("offset", "0"))
    except ValueError:
        return False
    mask = mask[: len(magic)].ljust(len(magic), b"\xff")
    for header in headers:
        chunk = header[offset : offset + len(magic)]
        if len(chunk) == len(magic) and all((c & m) == (g & m) for c, g, m in zip(chunk, magic, mask, strict=True)):
            return True
    return False


def binfmt_support(machine: str, *, binfmt_dir: Path = BINFMT_DIR) -> tuple[str | None, str]:
    """(name of a binfmt_misc entry that runs ELFs of machine in a container, ""), or (None, the fix).

    In a container the handler's interpreter (e.g. /usr/libexec/qemu-binfmt/...) is not in the root, so the
    entry must have the F (fix-binary) flag, which opens the interpreter when it is registered.
    """
    headers = _elf_headers(machine)
    install = f"sudo apt-get install qemu-user-static (it registers qemu-{machine} with the F flag)"
    if not headers:
        return None, install
    try:
        status = (binfmt_dir / "status").read_text().strip()
        entries = sorted(os.listdir(binfmt_dir))
    except OSError:
        import shutil

        if shutil.which(f"qemu-{machine}-static") is None:
            return None, install
        return None, f"binfmt_misc is not mounted: sudo mount -t binfmt_misc binfmt_misc {binfmt_dir}"
    matching = []
    for entry in entries:
        if entry in ("status", "register"):
            continue
        try:
            fields = _entry((binfmt_dir / entry).read_text())
        except OSError:
            continue
        if _entry_matches(fields, headers):
            matching.append((entry, fields))
    if not matching:
        return None, install
    if status != "enabled":
        return None, f"binfmt_misc is disabled: echo 1 | sudo tee {binfmt_dir / 'status'}"
    enabled = [(entry, fields) for entry, fields in matching if "enabled" in fields]
    if not enabled:
        return None, f"its binfmt_misc entry is disabled: sudo update-binfmts --enable {matching[0][0]}"
    for entry, fields in enabled:
        if "F" in fields.get("flags", ""):
            return entry, ""
    entry = enabled[0][0]
    return None, (
        f"binfmt_misc entry {entry} lacks the F (fix-binary) flag, so its interpreter is not found inside a"
        f" container: register it with flags F (qemu-user-static's entries have it)"
    )


def binfmt_handler(machine: str, *, binfmt_dir: Path = BINFMT_DIR) -> str | None:
    """Name of an enabled binfmt_misc entry (e.g. qemu-aarch64) that runs ELFs of machine in a container."""
    return binfmt_support(machine, binfmt_dir=binfmt_dir)[0]


def runs_on_host(machine: str) -> bool:
    """Whether this host can execute binaries of machine: natively, in a compat mode, or via binfmt_misc."""
    host = host_machine()
    return machine == host or machine in _NATIVE_COMPAT.get(host, set()) or binfmt_handler(machine) is not None


def resolve_in_rootfs(rootfs: Path, path: str) -> Path | None:
    """Resolve path as the container would see it, with symlinks followed relative to rootfs, never out of it.

    Returns the host path of the final file, or None when a component is missing, unreadable or the
    symlinks loop.
    """
    todo = [part for part in path.split("/") if part]
    todo.reverse()  # a stack: the next component is at the end
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop()
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()  # never above the rootfs root, like chroot
            continue
        candidate = rootfs.joinpath(*done, part)
        try:
            is_link = candidate.is_symlink()
            if not is_link and not os.path.lexists(candidate):
                return None
            if is_link:
                links += 1
                if links > _MAX_SYMLINKS:
                    return None
                target = os.readlink(candidate)
                if target.startswith("/"):
                    done = []
                todo.extend(reversed([p for p in target.split("/") if p]))
                continue
        except OSError:
            return None
        done.append(part)
    return rootfs.joinpath(*done)


def _find_command(rootfs: Path, command: str, env_path: str, workdir: str) -> Path | None:
    if "/" in command:
        return resolve_in_rootfs(rootfs, command if command.startswith("/") else f"{workdir}/{command}")
    for directory in env_path.split(":"):
        if not directory.startswith("/"):
            continue  # a relative PATH entry depends on the working directory
        found = resolve_in_rootfs(rootfs, f"{directory}/{command}")
        try:
            if found is not None and found.is_file() and os.stat(found).st_mode & 0o111:
                return found
        except OSError:
            continue
    return None


def check_arch(rootfs: Path, command: str, env_path: str, *, workdir: str = "/") -> None:
    """Refuse to start a command whose ELF is built for a machine this host cannot run.

    Bare names are searched in env_path like execvp; a relative path starts at workdir (in the container).
    A command that is missing or not an ELF passes: the runtime reports 127/126 for it itself.
    """
    found = _find_command(rootfs, command, env_path, workdir)
    if found is None:
        return
    machine = elf_machine(found)
    host = host_machine()
    if machine is None or machine == host or machine in _NATIVE_COMPAT.get(host, set()):
        return
    handler, fix = binfmt_support(machine)
    if handler is not None:
        return
    raise AiocontainError(
        f"rootfs {rootfs} is built for {machine} but this host is {host} "
        f"and no binfmt_misc handler runs {machine} binaries in a container",
        fix=f"rebuild it with `aiocontain rootfs init DIR`, or {fix}",
    )
