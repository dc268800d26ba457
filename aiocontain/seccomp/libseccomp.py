"""A narrow ctypes binding of libseccomp (libseccomp.so.2): just what compiling a profile to BPF needs.

libseccomp knows every architecture's syscall numbers, the multiplexed calls
(socketcall, ipc on x86) and how to check the audit architecture, so aiocontain
does not keep tables of its own. It runs in the runtime only: the container's
side receives the finished BPF program and never loads this library.
"""

from __future__ import annotations

import ctypes
import os

from aiocontain.errors import HostPrerequisiteError

SONAME = "libseccomp.so.2"

# Actions (seccomp.h); ERRNO and TRACE carry their data in the low 16 bits.
ACT_KILL_PROCESS = 0x80000000
ACT_KILL_THREAD = 0x00000000
ACT_TRAP = 0x00030000
ACT_ERRNO = 0x00050000
ACT_TRACE = 0x7FF00000
ACT_LOG = 0x7FFC0000
ACT_ALLOW = 0x7FFF0000

# enum scmp_compare
CMP_NE, CMP_LT, CMP_LE, CMP_EQ, CMP_GE, CMP_GT, CMP_MASKED_EQ = range(1, 8)

# enum scmp_filter_attr
ATTR_ACT_BADARCH = 2
ATTR_CTL_OPTIMIZE = 8  # libseccomp >= 2.5: 2 lays the syscalls out as a binary tree

NR_SCMP_ERROR = -1  # seccomp_syscall_resolve_name: no such syscall


class ArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp."""

    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


_lib: ctypes.CDLL | None = None


def _load() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        try:
            lib = ctypes.CDLL(SONAME, use_errno=True)  # by soname: ctypes.util.find_library runs ldconfig
        except OSError:
            raise HostPrerequisiteError(
                f"cannot load {SONAME} to compile the seccomp profile",
                fix="install libseccomp (Debian: apt-get install libseccomp2), or run with --security-opt "
                "seccomp=unconfined",
            ) from None
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_release.restype = None
        lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
        lib.seccomp_arch_native.argtypes = []
        lib.seccomp_arch_native.restype = ctypes.c_uint32
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(ArgCmp),
        ]
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.seccomp_version.argtypes = []
        lib.seccomp_version.restype = ctypes.POINTER(_Version)
        _lib = lib
    return _lib


def version() -> tuple[int, int, int]:
    v = _load().seccomp_version().contents
    return v.major, v.minor, v.micro


def resolve_syscall(name: str) -> int:
    """The syscall's number on the native architecture (a negative pseudo-number for one that exists only on
    another architecture of the filter), or NR_SCMP_ERROR when libseccomp knows no such name."""
    number: int = _load().seccomp_syscall_resolve_name(name.encode())
    return number


def resolve_arch(name: str) -> int:
    """An architecture token (AUDIT_ARCH_*) from libseccomp's name (x86_64, x86, x32, aarch64, ...); 0: unknown."""
    token: int = _load().seccomp_arch_resolve_name(name.encode())
    return token


class Filter:
    """A libseccomp filter context, released on close; ``export`` gives the BPF program as raw sock_filter bytes."""

    def __init__(self, default_action: int) -> None:
        self._lib = _load()
        self._ctx = self._lib.seccomp_init(default_action)
        if not self._ctx:
            raise ValueError(f"seccomp_init refused the default action {default_action:#x}")

    def close(self) -> None:
        if self._ctx:
            self._lib.seccomp_release(self._ctx)
            self._ctx = None

    def __enter__(self) -> Filter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def native_arch(self) -> int:
        token: int = self._lib.seccomp_arch_native()
        return token

    def add_arch(self, token: int) -> None:
        result = self._lib.seccomp_arch_add(self._ctx, token)
        if result not in (0, -17):  # -EEXIST: the native architecture is there from seccomp_init
            raise OSError(-result, f"seccomp_arch_add: {os.strerror(-result)}")

    def set_bad_arch_action(self, action: int) -> None:
        _check(self._lib.seccomp_attr_set(self._ctx, ATTR_ACT_BADARCH, action), "seccomp_attr_set")

    def optimize_as_tree(self) -> bool:
        """Lay the syscall checks out as a binary search tree rather than a list (libseccomp 2.5 and later; False
        where it cannot). The same decisions; the kernel checks the program in far fewer steps when it installs it
        (its per-syscall cache emulates the program once for every syscall number) and at each call."""
        result: int = self._lib.seccomp_attr_set(self._ctx, ATTR_CTL_OPTIMIZE, 2)
        return result == 0

    def add_rule(self, action: int, syscall: int, args: list[tuple[int, int, int, int]]) -> None:
        """One rule: ``args`` are (index, op, value, value_two) comparisons that must all hold."""
        array = (ArgCmp * len(args))(*(ArgCmp(index, op, a, b) for index, op, a, b in args))
        _check(self._lib.seccomp_rule_add_array(self._ctx, action, syscall, len(args), array), "seccomp_rule_add")

    def export(self) -> bytes:
        fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)  # seccomp_export_bpf writes to an fd (2.5 has no _mem)
        try:
            _check(self._lib.seccomp_export_bpf(self._ctx, fd), "seccomp_export_bpf")
            size = os.lseek(fd, 0, os.SEEK_END)
            return os.pread(fd, size, 0)
        finally:
            os.close(fd)


def _check(result: int, what: str) -> None:
    if result < 0:
        raise OSError(-result, f"{what}: {os.strerror(-result)}")
