"""PID 1 of the container: take the Config, set its namespaces up, build the root, wait for the release, exec.

The fork server clones it straight into the container's new namespaces (a
spare ahead of any request), with the control socket at fd 3 and the
container's stdio at 0-2; it leads a session of its own from its first step
(``child.forkserver``), as runc's init does, so that nothing inside shares the
caller's session, process group or controlling terminal: a signal to process
group 0 or TIOCSTI on an inherited terminal reaches nothing outside. It reads
the Config, sets the hostname, ``lo`` and tap0 up, and hands its release pipe,
report socket and netlink socket up (Ready); then it builds the root once its
id maps are written. With ``tty`` it opens the container's own terminal
(child/console.py) and sends its master up on the report socket (Console)
before the release.

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
from aiocontain.messages import Config, Console, Failed, Message, Ready

TYPE_CHECKING = False  # typing is a heavy import for the child
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

    from aiocontain.child.mounts import Trees


def main(fd: int, unshare_net: bool, lo_up: bool = False, trees: Trees | None = None) -> NoReturn:
    """PID 1, cloned by the fork server into the container's namespaces, with the control socket at fd and the
    container's stdio at 0-2. unshare_net: whether it has a network namespace of its own; lo_up: it was a spare,
    which brought lo up already; trees: the /proc, /sys and /dev such a spare built ahead."""
    # Here, not at the top: the fork server has it imported already, and exec's helper (child/join.py), which
    # imports this module for the exec, never sets a network up.
    from aiocontain.child import netdev

    sock = socket.socket(fileno=fd)
    try:
        config, _ = messages.recv(sock)
    except (OSError, ValueError):
        config = None  # the runtime went away before we started
    if not isinstance(config, Config):
        os._exit(125)
    try:
        if unshare_net != config.unshare_net:
            raise OSError(errno.EINVAL, "the namespaces made are not the ones asked for")
        socket.sethostname(config.hostname)
        if config.unshare_net and not lo_up:
            netdev.bring_up("lo")
        if config.tap:
            netdev.create_persistent_tap(config.tap)  # before the root is built: it needs the host's /dev/net/tun
        netlink = netdev.open_netlink() if config.want_netlink else None
        release_r, release_w = os.pipe()
        # Sockets, not pipes: the Console carries the pty's master. Close-on-exec, as the pipe is: the report
        # socket's end of stream says that the command runs.
        report_r, report_w = (end.detach() for end in socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET))
    except OSError as exc:
        _send_or_exit(sock, Failed(messages.STEP_SETUP, exc.strerror or str(exc), exc.errno or 0))
        os._exit(125)
    _send_or_exit(sock, Ready(), [release_w, report_r] + ([netlink.fileno()] if netlink is not None else []))
    # The runtime's now; holding none of them, we see end of file on the release pipe if the runtime dies.
    for end in (release_w, report_r):
        os.close(end)
    if netlink is not None:
        netlink.close()
    sock.close()
    build_and_exec(config, release_r, report_w, trees)


def _send_or_exit(sock: socket.socket, message: Message, fds: list[int] | None = None) -> None:
    """Send to the runtime. If it is gone (a cancelled set-up), leave quietly, never with a traceback on the
    container's stderr."""
    try:
        messages.send(sock, message, fds)
    except OSError as exc:
        if fds and exc.errno in (errno.EMFILE, errno.ENFILE, errno.ETOOMANYREFS):
            # The fds could not go (ETOOMANYREFS: more of the user's fds in flight than our limit): say why
            # without them, so that the runtime says it in one line.
            try:
                messages.send(sock, Failed(messages.STEP_SETUP, exc.strerror or str(exc), exc.errno or 0))
            except OSError:
                pass
        os._exit(125)


def build_and_exec(config: Config, release_r: int, report_w: int, trees: Trees | None = None) -> NoReturn:
    """Build the root, wait for the release, harden, exec. Our id maps are written: the fork server wrote them
    before anyone heard of us, so before the Config could come."""
    try:
        become_root()
        if config.unshare_net:
            harden.allow_ping()  # the network namespace's own sysctl, while the host's /proc is still ours
        mounts.build(config, trees)
        env = dict(config.env)
        try:
            enter_workdir(config.workdir)
        except (FileExistsError, NotADirectoryError):
            report(report_w, Failed(messages.STEP_WORKDIR, f"{config.workdir} is not a directory", errno.ENOTDIR))
            os._exit(126)
        if config.tty:
            send_console(report_w, config.user[0] if config.user is not None else None)
        if os.read(release_r, 1) != messages.RELEASE:
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
