"""The one place where aiocontain talks to the kernel beyond what ``os`` offers.

Every namespace, mount and process-control call goes through this module, so the
rest of the code reads as plain logic and tests can double this boundary. Device
ioctls are not here: they are ``fcntl.ioctl`` calls beside the device they act on
(``child/netdev.py``: the tap device and link flags; ``child/console.py``: the pty). It is
stdlib-only (ctypes) because the child side imports it on the start-up hot path.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import sys

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
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000

MNT_DETACH = 0x2

# The new mount API (Linux 5.2): one number on every architecture, as openat2's.
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_OPEN_TREE_CLONE = 0x1
_AT_RECURSIVE = 0x8000
_AT_FDCWD = -100
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOVE_MOUNT_T_SYMLINKS = 0x10

# mount(8)'s propagation options as mount(2) flags (the spec's -v options and OCI mounts alike)
PROPAGATION = {
    "private": MS_PRIVATE,
    "rprivate": MS_PRIVATE | MS_REC,
    "shared": MS_SHARED,
    "rshared": MS_SHARED | MS_REC,
    "slave": MS_SLAVE,
    "rslave": MS_SLAVE | MS_REC,
    "unbindable": MS_UNBINDABLE,
    "runbindable": MS_UNBINDABLE | MS_REC,
}

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_KEEPCAPS = 8

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

KEYCTL_JOIN_SESSION_KEYRING = 1
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

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

_SYS_KEYCTL_NUMBERS = {"x86_64": 250, "aarch64": 219, "riscv64": 219, "armv7l": 311, "i686": 288}
_SYS_KEYCTL = _SYS_KEYCTL_NUMBERS.get(os.uname().machine, -1)

_SYS_OPENAT2 = 437  # one number on every architecture (the syscall came after the tables were unified)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.capget.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_libc.capset.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def _b_str(value: str | None) -> bytes | None:
    """_b for the str a caller passes on the hot path (PID 1's ~30 mounts): os.fsencode without its frame."""
    if type(value) is str:
        return value.encode(_FS_ENCODING, _FS_ERRORS)
    return _b(value)


_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces (unshare(2))."""
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2): join the namespace that fd (an /proc/PID/ns/* file or a pidfd) names; Python 3.11 has no
    ``os.setns``. A PID namespace takes effect for children forked afterwards, not for the caller."""
    _check(_libc.setns(fd, nstype), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    """mount(2); the error names the target so a failing stage says what it tried (made only then)."""
    if _libc.mount(_b_str(source), _b_str(target), _b_str(fstype), flags, _b_str(data)) != 0:
        _check(-1, f"mount {fstype or source} on {target}")


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2)."""
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


def clone_tree(path: str, recursive: bool = True) -> int:
    """open_tree(2) with OPEN_TREE_CLONE (and AT_RECURSIVE): a detached copy of the mount at path (and of every
    mount under it), held by the returned fd (close-on-exec) until it is attached (``attach_tree``) or closed.
    Once attached, the fd still names that mount's root: a remount through its /proc/self/fd path reaches it."""
    flags = _OPEN_TREE_CLONE | os.O_CLOEXEC | (_AT_RECURSIVE if recursive else 0)
    fd: int = _libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, _b(path), flags)
    if fd < 0:
        _check(fd, f"open_tree {path}")
    return fd


def attach_tree(tree: int, target: str) -> None:
    """move_mount(2): attach a detached mount tree (``clone_tree``'s fd) at target, a symlink at its end
    followed as mount(2) follows it (an fd's /proc/self/fd path names that fd's file)."""
    flags = _MOVE_MOUNT_F_EMPTY_PATH | _MOVE_MOUNT_T_SYMLINKS
    _check(
        _libc.syscall(_SYS_MOVE_MOUNT, tree, b"", _AT_FDCWD, _b(target), flags),
        f"move_mount to {target}",
    )


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2): swap the root mount, so the old one can be detached (unlike chroot)."""
    number = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise OSError(_errno.ENOSYS, f"pivot_root: unknown syscall number on {os.uname().machine}")
    _check(_libc.syscall(number, _b(new_root), _b(put_old)), "pivot_root")


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


def open_in_root(root: int, path: str, flags: int) -> int:
    """openat2(2) with RESOLVE_IN_ROOT: open path as if root (a directory fd) were ``/``, every symlink and
    ``..`` on the way resolved within it by the kernel, in one step (a directory swapped for a symlink meanwhile
    cannot lead out of it) and no /proc magic link followed. ENOSYS before Linux 5.6.

    EAGAIN is retried: the kernel gives it for a ``..`` on the way when any rename or mount anywhere on the
    system raced with the walk, as it cannot then prove the ``..`` stayed within root."""
    how = _OpenHow(flags, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    name = _b(path)
    for _ in range(_OPENAT2_TRIES):
        fd: int = _libc.syscall(_SYS_OPENAT2, root, name, ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0 or ctypes.get_errno() != _errno.EAGAIN:
            break
    if fd < 0:
        _check(fd, f"openat2 {path}")
    return fd


_OPENAT2_TRIES = 100  # each race is one rename elsewhere during the walk: a busy system loses a few in a row


class _CloneArgs(ctypes.Structure):
    """clone3's struct clone_args, its first version (64 bytes)."""

    _fields_ = tuple(
        (name, ctypes.c_uint64)
        for name in ("flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size", "tls")
    )


_SYS_CLONE3 = 435  # one number on every architecture
CLONE_PIDFD = 0x00001000
_SIGCHLD = 17  # the same number on every architecture this runs on
# The interpreter's own calls around a fork (its locks, its thread state, os.register_at_fork's hooks), which
# os.fork makes and a clone from Python must make too. PyDLL: the GIL stays held across the syscall, as in os.fork.
_python = ctypes.pythonapi
_held_libc = ctypes.PyDLL(None, use_errno=True)
_held_libc.syscall.restype = ctypes.c_long
_clone_pidfd = ctypes.c_int(-1)


def clone_into_namespaces(flags: int) -> tuple[int, int]:
    """fork(2) into new namespaces at once (clone3 with CLONE_NEWUSER, CLONE_NEWPID and the others in flags):
    (pid, pidfd) in the parent, (0, -1) in the child, which is the first process of a new PID namespace.

    Python has os.fork and os.unshare but no clone. A process cannot enter a new PID namespace itself, so without
    this a container's PID 1 needs a process between it and its parent that unshares and forks. The pidfd comes
    with the clone (CLONE_PIDFD): never a window in which the pid could be reused.
    """
    args = _CloneArgs(flags=flags | CLONE_PIDFD, pidfd=ctypes.addressof(_clone_pidfd), exit_signal=_SIGCHLD)
    _python.PyOS_BeforeFork()
    pid = _held_libc.syscall(_SYS_CLONE3, ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))
    error = ctypes.get_errno()
    if pid == 0:
        _python.PyOS_AfterFork_Child()
        return 0, -1
    _python.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(error, f"clone3: {os.strerror(error)}")
    return int(pid), _clone_pidfd.value


def set_parent_death_signal(signum: int) -> None:
    """prctl(PR_SET_PDEATHSIG): the kernel sends signum when the parent thread exits."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def set_name(name: bytes) -> None:
    """prctl(PR_SET_NAME): the thread's name, its comm in /proc (at most 15 bytes kept)."""
    buffer = ctypes.create_string_buffer(name[:15])
    _check(_libc.prctl(PR_SET_NAME, ctypes.addressof(buffer), 0, 0, 0), "prctl(PR_SET_NAME)")


def set_dumpable(dumpable: bool) -> None:
    """prctl(PR_SET_DUMPABLE): a process that is not dumpable cannot be ptraced, nor its /proc/PID/fd, exe or
    mem opened, by anyone without CAP_SYS_PTRACE over the user namespace it was executed in. execve resets it."""
    _check(_libc.prctl(PR_SET_DUMPABLE, int(dumpable), 0, 0, 0), "prctl(PR_SET_DUMPABLE)")


def capability_in_bounding_set(cap: int) -> bool | None:
    """prctl(PR_CAPBSET_READ): whether cap is in the bounding set; None when the kernel has no such cap."""
    result: int = _libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0)
    if result < 0:
        if ctypes.get_errno() == _errno.EINVAL:
            return None
        _check(result, "prctl(PR_CAPBSET_READ)")
    return result == 1


def drop_bounding_capability(cap: int) -> None:
    """prctl(PR_CAPBSET_DROP): no process executed from here on can gain cap (needs CAP_SETPCAP)."""
    _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"prctl(PR_CAPBSET_DROP, {cap})")


def clear_ambient_capabilities() -> None:
    """prctl(PR_CAP_AMBIENT_CLEAR_ALL): ambient caps would survive exec outside the bounding set's control."""
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")


def clear_inheritable_capabilities() -> None:
    """capset(2) with the permitted and effective sets unchanged and an empty inheritable set: exec as uid 0
    adds the inheritable set to the new permitted set, bounding set or not."""
    header, data = _CAP_HEADER, _CAP_DATA
    _check(_libc.capget(header, data), "capget")
    data[2] = data[5] = 0
    _check(_libc.capset(header, data), "capset")


# ctypes arrays and structures for the calls of a container's last steps (PID 1, an exec'd process), made once
# where this module is imported: making them in a forked child touches, and so copies, a good part of ctypes
# (~0.1 ms and ~20 page faults each time; filling made ones, 3). Those steps run single-threaded.
_CAP_HEADER = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
_CAP_DATA = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable} words: caps 0-31, 32-63


def set_capabilities(effective: int, permitted: int, inheritable: int) -> None:
    """capset(2) with the three sets as bit masks (bit N: capability N); each must lie within the permitted
    set held now (the OCI runtime's ``process.capabilities``)."""
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    mask = 0xFFFFFFFF
    data = (ctypes.c_uint32 * 6)(
        *(effective & mask, permitted & mask, inheritable & mask),
        *(effective >> 32 & mask, permitted >> 32 & mask, inheritable >> 32 & mask),
    )
    _check(_libc.capset(header, data), "capset")


def raise_ambient_capability(cap: int) -> None:
    """prctl(PR_CAP_AMBIENT_RAISE): keep cap across execve as a non-root user (it must be permitted and
    inheritable already)."""
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0), f"prctl(PR_CAP_AMBIENT_RAISE, {cap})")


def set_keep_capabilities(keep: bool) -> None:
    """prctl(PR_SET_KEEPCAPS): whether the permitted set survives a change from uid 0 to another uid."""
    _check(_libc.prctl(PR_SET_KEEPCAPS, int(keep), 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")


def set_domain_name(name: str) -> None:
    """setdomainname(2), in the caller's UTS namespace (Python has only socket.sethostname)."""
    encoded = os.fsencode(name)
    _check(_libc.setdomainname(encoded, len(encoded)), "setdomainname")


def set_no_new_privs() -> None:
    """prctl(PR_SET_NO_NEW_PRIVS): exec never grants privileges again (setuid bits, file capabilities)."""
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def join_session_keyring(name: str) -> int:
    """keyctl(KEYCTL_JOIN_SESSION_KEYRING): a new session keyring of this name (named keyrings are looked up
    in the caller's user namespace only, so a fresh one has none to join), replacing the inherited one."""
    serial: int = _libc.syscall(_SYS_KEYCTL, KEYCTL_JOIN_SESSION_KEYRING, _b(name), 0, 0, 0)
    if serial < 0:
        _check(-1, "keyctl(KEYCTL_JOIN_SESSION_KEYRING)")
    return serial


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def set_seccomp_filter(program: bytes) -> None:
    """prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER): install a BPF program (raw struct sock_filter array).

    Needs no_new_privs or CAP_SYS_ADMIN in the caller's user namespace; it holds across execve and fork.
    """
    if len(program) > len(_FILTER):
        raise OSError(_errno.EINVAL, "prctl(PR_SET_SECCOMP): the program is longer than the kernel allows")
    ctypes.memmove(_FILTER, program, len(program))
    _FPROG.len = len(program) // 8
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, _FPROG_ADDRESS, 0, 0), "prctl(PR_SET_SECCOMP)")


_BPF_MAXINSNS = 4096  # the kernel's limit for a classic BPF program, which a seccomp filter is
_FILTER = ctypes.create_string_buffer(_BPF_MAXINSNS * 8)  # made once, as _CAP_DATA is
_FPROG = _SockFprog(0, ctypes.addressof(_FILTER))
_FPROG_ADDRESS = ctypes.addressof(_FPROG)


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


# posix_spawn(3) straight from glibc: os.posix_spawn cannot close the fds it does not name, and a helper must
# start with none but its own (posix_spawn_file_actions_addclosefrom_np, glibc 2.34).
_SPAWN_SETSIGDEF = 0x04
_SPAWN_SETSIGMASK = 0x08
_SPAWN_SETSID = 0x80
_SPAWN_STRUCT = 512  # at least posix_spawn_file_actions_t (80 bytes) and posix_spawnattr_t (336) on any ABI
_SIGSET = 128  # sigset_t
_CLOSEFROM = getattr(_libc, "posix_spawn_file_actions_addclosefrom_np", None)


def spawn_closes_other_fds() -> bool:
    """Whether ``spawn`` can close every fd it is not given (glibc 2.34 or later)."""
    return _CLOSEFROM is not None


def spawn(
    argv: list[bytes], env: list[bytes], dup2: list[tuple[int, int]], close_from: int, sigdefault: tuple[int, ...]
) -> int:
    """posix_spawn argv (argv[0] an absolute path) with env ("NAME=value" each), in a session of its own, no signal
    blocked, those in sigdefault at their default action: the dup2s (source, target) in order, then every fd from
    close_from on closed in the child. Its pid. Needs ``spawn_closes_other_fds()``."""
    assert _CLOSEFROM is not None
    attributes = _spawn_attributes(sigdefault)
    actions = ctypes.create_string_buffer(_SPAWN_STRUCT)
    _spawn_ok(_libc.posix_spawn_file_actions_init(actions), "posix_spawn_file_actions_init")
    try:
        for source, target in dup2:
            _spawn_ok(_libc.posix_spawn_file_actions_adddup2(actions, source, target), "posix_spawn dup2")
        _spawn_ok(_CLOSEFROM(actions, close_from), "posix_spawn closefrom")
        pid = ctypes.c_int(0)
        c_argv = (ctypes.c_char_p * (len(argv) + 1))(*argv, None)
        c_env = (ctypes.c_char_p * (len(env) + 1))(*env, None)
        error = _libc.posix_spawn(ctypes.byref(pid), argv[0], actions, attributes, c_argv, c_env)
        if error:
            raise OSError(error, os.strerror(error), os.fsdecode(argv[0]))
        return pid.value
    finally:
        _libc.posix_spawn_file_actions_destroy(actions)


_ATTRIBUTES: dict[tuple[int, ...], ctypes.Array[ctypes.c_char]] = {}  # made once for each set of signals


def _spawn_attributes(sigdefault: tuple[int, ...]) -> ctypes.Array[ctypes.c_char]:
    found = _ATTRIBUTES.get(sigdefault)
    if found is None:
        found = ctypes.create_string_buffer(_SPAWN_STRUCT)
        default, empty = ctypes.create_string_buffer(_SIGSET), ctypes.create_string_buffer(_SIGSET)
        _spawn_ok(_libc.posix_spawnattr_init(found), "posix_spawnattr_init")
        _libc.sigemptyset(empty)
        _libc.sigemptyset(default)
        for signum in sigdefault:
            _libc.sigaddset(default, signum)
        _spawn_ok(_libc.posix_spawnattr_setsigdefault(found, default), "posix_spawnattr_setsigdefault")
        _spawn_ok(_libc.posix_spawnattr_setsigmask(found, empty), "posix_spawnattr_setsigmask")
        flags = _SPAWN_SETSIGDEF | _SPAWN_SETSIGMASK | _SPAWN_SETSID
        _spawn_ok(_libc.posix_spawnattr_setflags(found, ctypes.c_short(flags)), "posix_spawnattr_setflags")
        _ATTRIBUTES[sigdefault] = found
    return found


def _spawn_ok(error: int, what: str) -> None:
    if error:
        raise OSError(error, f"{what}: {os.strerror(error)}")
