"""The one place where aiocontain talks to the kernel beyond what ``os`` offers.

Every namespace, mount and process-control call goes through this module, so the
rest of the code reads as plain logic and tests can double this boundary. It is
stdlib-only (ctypes) because the child side imports it on the start-up hot path.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000

MNT_DETACH = 0x2

PR_SET_PDEATHSIG = 1

IN_MODIFY = 0x2
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# Terminal ioctls the termios module lacks (asm-generic numbers: x86, arm, riscv).
TIOCSCTTY = 0x540E
TIOCSWINSZ = 0x5414
TIOCGPTPEER = 0x5441  # open the slave of a pty master without a path lookup (Linux 4.13)
TIOCSPTLCK = 0x40045431

# glibc has no pivot_root wrapper; the number differs per architecture.
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "armv7l": 218, "i686": 217}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces (unshare(2))."""
    _check(_libc.unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    """mount(2); the error names the target so a failing stage says what it tried."""
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), f"mount {fstype or source} on {target}")


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2)."""
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2): swap the root mount, so the old one can be detached (unlike chroot)."""
    number = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise OSError(_errno.ENOSYS, f"pivot_root: unknown syscall number on {os.uname().machine}")
    _check(_libc.syscall(number, _b(new_root), _b(put_old)), "pivot_root")


def set_parent_death_signal(signum: int) -> None:
    """prctl(PR_SET_PDEATHSIG): the kernel sends signum when the parent thread exits."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def inotify_init1(flags: int = IN_NONBLOCK | IN_CLOEXEC) -> int:
    """inotify_init1(2): an fd that becomes readable when a watched file changes (no polling)."""
    fd: int = _libc.inotify_init1(flags)
    if fd < 0:
        _check(-1, "inotify_init1")
    return fd


def inotify_add_watch(fd: int, path: str, mask: int) -> int:
    """inotify_add_watch(2); cgroup files such as memory.events and cgroup.events report IN_MODIFY."""
    wd: int = _libc.inotify_add_watch(fd, _b(path), mask)
    if wd < 0:
        _check(-1, f"inotify_add_watch {path}")
    return wd
