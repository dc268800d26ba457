"""Where the root filesystem lives, and how ``aiocontain rootfs init`` builds one.

The repository ships no rootfs (an empty checkout used to fail deep in the child);
instead ``init_rootfs`` builds a minimal one from the host's static busybox, so it
always matches the host architecture. Stdlib-only: the CLI imports it lazily.
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import subprocess
from pathlib import Path

from aiocontain import elf
from aiocontain.errors import AiocontainError

DEFAULT_BUSYBOX = Path("/bin/busybox")
MARKER = "etc/aiocontain-rootfs"
_BUSYBOX_FIX = "sudo apt-get install busybox-static, or pass --busybox PATH to a statically linked busybox"

# Directories of the layout and their modes; set explicitly so a restrictive umask cannot
# hide the rootfs from the (possibly different) user who runs containers on it.
_DIRS: tuple[tuple[str, int], ...] = (
    ("bin", 0o755),
    ("sbin", 0o755),
    ("usr", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("proc", 0o755),
    ("sys", 0o755),
    ("dev", 0o755),
    ("tmp", 0o1777),
    ("root", 0o700),
    ("etc", 0o755),
    ("run", 0o755),
    ("var", 0o755),
    ("var/tmp", 0o1777),
    ("home", 0o755),
)

# Written only when missing, so a rerun keeps the user's edits.
_ETC_FILES: tuple[tuple[str, str], ...] = (
    ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
    ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
    ("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
    ("etc/resolv.conf", ""),  # a mount point: the runtime bind-mounts its own
    ("etc/hostname", "aiocontain\n"),
)


def default_rootfs() -> Path:
    """Where ``run`` looks without ``--rootfs``.

    ``$AIOCONTAIN_ROOTFS`` if set; else ``rootfs_arm/`` of the source checkout the
    package runs from (an editable install); else, for an installed package,
    ``$XDG_DATA_HOME/aiocontain/rootfs_arm`` (~/.local/share/aiocontain/rootfs_arm).
    """
    configured = os.environ.get("AIOCONTAIN_ROOTFS")
    if configured:
        return Path(configured).expanduser()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "rootfs_arm").is_dir():
        return checkout / "rootfs_arm"
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data) / "aiocontain" / "rootfs_arm"


def is_empty(path: Path) -> bool:
    """True when path is missing or holds only README*, .gitkeep, .gitignore or other dot-files."""
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return True
    except NotADirectoryError:
        return False
    return all(name.startswith((".", "README")) for name in names)


def _is_built(dest: Path) -> bool:
    marker = dest / MARKER
    return marker.is_file() and not marker.is_symlink()


def _ensure_dir(dest: Path, relative: str, mode: int) -> Path:
    """Create dest/relative (and its parents) as real directories; a symlink on the way is refused."""
    path = dest
    parts = relative.split("/")
    for index, part in enumerate(parts):
        path = path / part
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise AiocontainError(
                f"cannot build rootfs in {dest}: {path} exists and is not a directory",
                fix=f"remove {path}, or choose another directory: aiocontain rootfs init DIR",
            )
        if not path.exists():
            path.mkdir(mode=0o755)
            os.chmod(path, 0o755)  # mkdir's mode is filtered by the umask
        if index == len(parts) - 1 and (path.stat().st_mode & 0o7777) != mode:
            os.chmod(path, mode)
    return path


def _write_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Write atomically, replacing (never following) whatever is at path."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _check_busybox(busybox: Path) -> None:
    if not busybox.is_file():
        raise AiocontainError(f"no busybox at {busybox}", fix=_BUSYBOX_FIX)
    machine = elf.elf_machine(busybox)
    if machine is None:
        raise AiocontainError(f"{busybox} is not an ELF binary", fix=_BUSYBOX_FIX)
    interpreter = elf.elf_interpreter(busybox)
    if interpreter is not None:
        raise AiocontainError(
            f"{busybox} is dynamically linked (interpreter {interpreter}); the rootfs holds no libraries, "
            "so it needs a static busybox",
            fix=_BUSYBOX_FIX,
        )
    if not elf.runs_on_host(machine):
        raise AiocontainError(
            f"{busybox} is built for {machine} but this host is {elf.host_machine()} "
            f"and no binfmt_misc handler runs {machine} binaries",
            fix=f"install qemu-user-static, or pass --busybox PATH to a busybox for {elf.host_machine()}",
        )


def _applets(busybox: Path) -> list[str]:
    """Applet paths relative to the root (``bin/sh``, ``usr/bin/env`` ...) as busybox lists them."""
    for option in ("--list-full", "--list"):
        try:
            result = subprocess.run([str(busybox), option], capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.SubprocessError):
            continue
        names = [line.strip() for line in result.stdout.splitlines() if line.strip()]
        if result.returncode == 0 and names:
            # --list (older builds) gives bare names; put those in bin/
            return names if option == "--list-full" else [f"bin/{name}" for name in names]
    raise AiocontainError(f"`{busybox} --list-full` did not list any applets", fix=_BUSYBOX_FIX)


def _link_applets(dest: Path, applets: list[str]) -> None:
    for applet in applets:
        parts = applet.strip("/").split("/")
        if any(part in ("", ".", "..") for part in parts) or parts == ["linuxrc"]:
            continue  # never write outside dest; linuxrc is an initrd entry point, useless here
        if len(parts) > 1:
            _ensure_dir(dest, "/".join(parts[:-1]), 0o755)
        link = dest.joinpath(*parts)
        if not os.path.lexists(link):
            os.symlink("/bin/busybox", link)


def init_rootfs(dest: Path, busybox: Path | None = None) -> None:
    """Build (or complete) a minimal root filesystem in dest from a static busybox.

    Idempotent on a rootfs it built; refuses any other non-empty directory so it never
    overwrites someone's files.
    """
    source = busybox if busybox is not None else DEFAULT_BUSYBOX
    _check_busybox(source)
    if dest.exists() and not dest.is_dir():
        raise AiocontainError(
            f"{dest} exists and is not a directory", fix="choose a directory: aiocontain rootfs init DIR"
        )
    if not is_empty(dest) and not _is_built(dest):
        raise AiocontainError(
            f"{dest} is not empty and was not built by `aiocontain rootfs init`; refusing to write into it",
            fix="choose a new or empty directory: aiocontain rootfs init DIR",
        )
    try:
        dest.mkdir(parents=True, exist_ok=True)
        if (dest.stat().st_mode & 0o7777) != 0o755:
            os.chmod(dest, 0o755)
        for relative, mode in _DIRS:
            _ensure_dir(dest, relative, mode)
        # The marker goes first so an interrupted build can be completed by a rerun.
        _write_file(dest / MARKER, f"built by `aiocontain rootfs init` from {source}\n")
        tmp = dest / "bin" / ".busybox.tmp"
        tmp.unlink(missing_ok=True)
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest / "bin" / "busybox")
        _link_applets(dest, _applets(source))
        for relative, text in _ETC_FILES:
            if not os.path.lexists(dest / relative):
                _write_file(dest / relative, text)
    except OSError as err:
        raise AiocontainError(
            f"cannot build rootfs in {dest}: {err}", fix="make sure you can write there, or choose another directory"
        ) from err


def _refuse_symlink_loop(rootfs: Path) -> None:
    """exists() is False for a symlink loop as for a missing path: tell them apart, since the fix differs."""
    try:
        os.stat(rootfs)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise AiocontainError(
                f"rootfs {rootfs} is a symlink loop", fix=f"point the link at a directory, or remove it: rm {rootfs}"
            ) from None


def check_rootfs(rootfs: Path, *, is_default: bool) -> None:
    """Refuse a rootfs that is missing, not a directory or empty, naming the command that builds it."""
    command = "aiocontain rootfs init" if is_default else f"aiocontain rootfs init {shlex.quote(str(rootfs))}"
    try:
        if not rootfs.exists():
            _refuse_symlink_loop(rootfs)
            raise AiocontainError(f"rootfs {rootfs} does not exist", fix=command)
        if not rootfs.is_dir():
            raise AiocontainError(
                f"rootfs {rootfs} is not a directory",
                fix="remove it or use another directory: aiocontain rootfs init DIR",
            )
        if is_empty(rootfs):
            raise AiocontainError(f"rootfs {rootfs} is empty", fix=command)
    except OSError as err:
        raise AiocontainError(f"cannot read rootfs {rootfs}: {err}", fix=f"make {rootfs} readable") from err
