"""PID 1 of the container: take the Config, build the root once mapped, wait for the release, exec the command.

It is forked before its container is asked for (by a spare, ahead of any
request), and takes the Config and the container's stdio from the handover
socket. It first leads a session of its own (``setsid``, as runc does), so
that nothing inside shares the caller's session, process group or controlling
terminal: a signal to process group 0 or TIOCSTI on an inherited terminal
reaches nothing outside. With ``tty`` it opens the container's own terminal (child/console.py)
and sends its master up on the report socket (Console) before the release.

With ``--init`` it execs the host's static init instead (catatonit, bind-mounted
read-only at ``mounts.INIT_PATH``), like ``podman run --init``: that stays PID 1,
runs the command as PID 2, passes signals on to it and reaps every orphan, so that
a command without signal handlers still stops on SIGTERM and zombies never pile up.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stubs; signal.py wraps it
import contextlib
import errno
import os
import signal
import socket
import stat

from aiocontain import messages, syscalls
from aiocontain.child import console, harden, mounts
from aiocontain.messages import Config, Console, Failed

TYPE_CHECKING = False  # typing is a heavy import for the child
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn


def main(handover: int, release_r: int, report_w: int, name: bytes | None = None) -> NoReturn:
    """name: for a PID 1 forked ahead by a spare, the comm to take once handed a container (it waits under the
    spare's)."""
    try:
        os.setsid()  # before anything else: no moment inside the caller's session
        # Our parent (the intermediate) is single-threaded, so this fires only when it dies.
        syscalls.set_parent_death_signal(signal.SIGKILL)
        config = take_config(handover)
        if name is not None:
            syscalls.set_name(name)
        # Two bytes on the release pipe: MAPPED once our id maps are written (build the root meanwhile, as
        # runc's create does), RELEASE for the release itself (the host side is ready: exec). A spare's maps are
        # written before its offer: then build at once, and skip the MAPPED that still comes.
        mapped = maps_written()
        if not mapped and os.read(release_r, 1) != messages.MAPPED:
            os._exit(0)  # the runtime went away first
        become_root()
        if config.unshare_net:
            harden.allow_ping()  # the network namespace's own sysctl, while the host's /proc is still ours
        mounts.build(config)
        env = dict(config.env)
        try:
            enter_workdir(config.workdir)
        except (FileExistsError, NotADirectoryError):
            report(report_w, Failed(messages.STEP_WORKDIR, f"{config.workdir} is not a directory", errno.ENOTDIR))
            os._exit(126)
        if config.tty:
            send_console(report_w, config.user[0] if config.user is not None else None)
        released = os.read(release_r, 1)
        if mapped and released == messages.MAPPED:
            released = os.read(release_r, 1)
        if released != messages.RELEASE:
            os._exit(0)  # the runtime went away before releasing us
        os.close(release_r)
        # Now that the runtime has moved us into the container's cgroup, make it our cgroup namespace's root.
        syscalls.unshare(syscalls.CLONE_NEWCGROUP)
        if config.mount_cgroup:
            mounts.mount_cgroup()
        harden.lock_down(config)  # keyring, capabilities, no_new_privs, rlimits, user, seccomp last
    except Exception as exc:  # noqa: BLE001 - any failure here must reach the runtime as one line
        report(report_w, Failed(messages.STEP_SETUP, describe(exc), getattr(exc, "errno", 0) or 0))
        os._exit(125)
    if config.init:
        _exec_init(config, env, report_w)
    exec_command(config.argv, env, report_w)


def take_config(handover: int) -> Config:
    """The Config and the container's stdin, stdout and stderr, from the intermediate; exit quietly at end of
    stream (a spare let go: no container came)."""
    with socket.socket(fileno=handover) as sock:
        raw, fds = messages.recv_raw(sock)
    if not raw:
        os._exit(0)
    config = messages.decode(raw)
    if not isinstance(config, Config) or len(fds) != 3:
        raise OSError(errno.EPROTO, "the intermediate handed over no Config and stdio")
    for target, fd in enumerate(fds):
        os.dup2(fd, target)  # inheritable: the command gets them
        os.close(fd)
    return config


def maps_written() -> bool:
    """Whether our user namespace's id maps are written (each is written whole, uid_map first)."""
    for name in ("/proc/self/uid_map", "/proc/self/gid_map"):
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if not os.read(fd, 64):
                return False
        finally:
            os.close(fd)
    return True


def send_console(report_w: int, owner: int | None) -> None:
    """Open the container's terminal and hand its master to the runtime, which holds the only copy."""
    master = console.open_console(owner)
    report = socket.socket(fileno=report_w)
    try:
        messages.send(report, Console(), [master])
    finally:
        report.detach()  # still ours, as an fd: exec closes it, which tells the runtime the command runs
        os.close(master)


def enter_workdir(workdir: str) -> None:
    """chdir into workdir, made first if missing (as podman does); tried first, as it nearly always exists."""
    try:
        os.chdir(workdir)
    except FileNotFoundError:
        os.makedirs(workdir, exist_ok=True)
        os.chdir(workdir)


def become_root() -> None:
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    try:
        os.setgroups([])  # drop the host's supplementary groups where setgroups is allowed
    except OSError:
        pass  # single-id mapping: setgroups is denied, and the host groups show as nogroup


def exec_command(argv: list[str], env: dict[str, str], report_w: int) -> NoReturn:
    _reset_signals()
    try:
        _execvpe(argv, env)
    except OSError as exc:
        _exec_failed(argv[0], exc, report_w)


def _exec_init(config: Config, env: dict[str, str], report_w: int) -> NoReturn:
    """Become the init, with the container's environment only. The init runs the command itself: look it up
    here first, so that a missing or non-executable command still ends in 127 or 126 with one line."""
    try:
        _search(config.argv[0], env, _check_executable)
    except OSError as exc:
        _exec_failed(config.argv[0], exc, report_w)
    _reset_signals()
    try:
        os.execve(mounts.INIT_PATH, [mounts.INIT_PATH, "--", *config.argv], env)
    except OSError as exc:
        report(report_w, Failed(messages.STEP_SETUP, f"the init {config.init_binary}: {exc.strerror}", exc.errno or 0))
        os._exit(125)


def _reset_signals() -> None:
    # exec keeps ignored signals ignored: Python's SIGPIPE and SIGXFSZ (`yes | head` would never end), and
    # whatever the invoking shell ignored (SIGQUIT of a background job). The command starts with none ignored.
    # Python knows every disposition here: the ones it found at start-up and the ones set through it since.
    # _signal, not signal: the latter turns each number into an enum (an exception for every real-time one).
    default = _signal.SIG_DFL
    for signum in _signal.valid_signals():
        if signum != _SIGKILL and signum != _SIGSTOP and _signal.getsignal(signum) != default:
            try:
                _signal.signal(signum, default)
            except (OSError, ValueError):
                pass  # e.g. the real-time signals glibc keeps for itself


_SIGKILL, _SIGSTOP = int(signal.SIGKILL), int(signal.SIGSTOP)


def _exec_failed(name: str, exc: OSError, report_w: int) -> NoReturn:
    code = 127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126
    report(report_w, Failed(messages.STEP_EXEC, f"{name}: {exc.strerror}", exc.errno or 0))
    os._exit(code)


def _execvpe(argv: list[str], env: dict[str, str]) -> NoReturn:
    """os.execvpe, without its lazy imports: after pivot_root the host's stdlib is gone."""
    _search(argv[0], env, lambda path: os.execve(path, argv, env))
    raise AssertionError("execve returned")


def _search(name: str, env: dict[str, str], attempt: Callable[[str], None]) -> None:
    """execvp's PATH search: attempt(path) on each candidate until one does not raise; else raise as execvp."""
    if "/" in name:
        attempt(name)
        return
    first_error: OSError | None = None
    for directory in env.get("PATH", "/usr/bin:/bin").split(":"):
        try:
            attempt(os.path.join(directory or ".", name))
            return
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            first_error = first_error or exc  # e.g. EACCES: keep looking, as execvp does, but remember it
    raise first_error or FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


def _check_executable(path: str) -> None:
    """Raise what execve would for path (ENOENT, ENOTDIR, EACCES; not a bad format), without executing it."""
    if not stat.S_ISREG(os.stat(path).st_mode) or not os.access(path, os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)


def report(report_w: int, failure: Failed) -> None:
    with contextlib.suppress(OSError):
        os.write(report_w, messages.encode(failure))


def describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return str(exc.strerror if not exc.filename else f"{exc.filename}: {exc.strerror}")
    # No traceback module: after pivot_root nothing more can be imported from the host.
    return f"{type(exc).__name__}: {exc}"
