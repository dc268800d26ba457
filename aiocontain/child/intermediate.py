"""The intermediate process: makes the namespaces, forks PID 1, hands up its pipes, reports its exit.

The fork server forks it and runs ``main(fd)`` with one end of the control
socket. It reads the Config, unshares the namespaces (saying Unshared, so that
the runtime writes the id maps meanwhile; with slirp4netns it also creates tap0,
persistent, in the new network namespace), forks the init (PID 1 of the new PID
namespace, ``fork_init``), hands it the Config and the container's stdio
(``hand_over``: PID 1 builds the root from then on, blocked on its release pipe
before the exec), and sends Ready with the init's release pipe, its report
socket (a failed set-up or exec; the pty's master with ``tty``) and the netlink
socket: the runtime releases the init and learns that the command runs with no
hop through this process. From then on it waits: for Release, which names the
container's cgroup, and for the init's exit, whose status it sends as Exited
and makes its own exit code. If the runtime goes away (the control socket
reaches end of stream) it kills the init, and with it the whole PID namespace,
and removes the container's cgroup that the runtime can no longer remove.

As the fork server's spare (``aiocontain.child.forkserver``) it has made the
namespaces, brought lo up and forked PID 1 before any request
(``unshare_namespaces``, ``fork_init``): ``main`` is then given them (``made``,
``pid1``) and skips those steps, so that neither the fork nor PID 1's start is on
the container's path.
"""

from __future__ import annotations

import array
import errno
import os
import select
import signal
import socket
import time

from aiocontain import messages, syscalls
from aiocontain.child import init, netdev
from aiocontain.messages import Config, Exited, Failed, Message, Ready, Release, Unshared

TYPE_CHECKING = False  # typing is a heavy import for the child
if TYPE_CHECKING:
    from typing import NoReturn

_EMPTY_TIMEOUT = 5.0
# The container's leaf, once the Release named it: (fd of its parent directory, its name). Its host path is
# resolved from _host_root, the root we started with: the init's pivot_root, which it does before the release,
# moves our root too (we share its mount namespace), and the old root stays reachable only through an fd.
_cgroup: tuple[int, str] | None = None
_host_root = -1

_NAMESPACES = (
    syscalls.CLONE_NEWUSER
    | syscalls.CLONE_NEWNS
    | syscalls.CLONE_NEWPID
    | syscalls.CLONE_NEWUTS
    | syscalls.CLONE_NEWIPC
)


def unshare_namespaces(unshare_net: bool) -> None:
    """The container's namespaces: this process's, while the init it forks is the new PID namespace's first."""
    syscalls.unshare(_NAMESPACES | (syscalls.CLONE_NEWNET if unshare_net else 0))


class InitProcess:
    """PID 1, forked and waiting for its handover: its pid and pidfd, and this process's ends of its handover
    socket, release pipe and report socket."""

    __slots__ = ("handover", "pid", "pidfd", "release_w", "report_r")

    def __init__(self, pid: int, pidfd: int, handover: int, release_w: int, report_r: int) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.handover = handover
        self.release_w = release_w
        self.report_r = report_r

    def fds(self) -> list[int]:
        return [self.pidfd, self.handover, self.release_w, self.report_r]

    def kill(self) -> None:
        """No container came (a spare let go): end PID 1 and reap it, so that nothing of it outlives us."""
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except OSError:
            pass  # gone already
        os.waitpid(self.pid, 0)


def fork_init(name: bytes | None = None) -> InitProcess:
    """Fork PID 1 of the namespaces this process made (its PID namespace's first child). PID 1 holds nothing of
    ours but its ends of three channels, and waits on the handover socket for its Config and stdio. name is
    given for a spare's PID 1, forked ahead: see ``init.main``."""
    release_r, release_w = os.pipe()
    # Sockets, not pipes: the handover carries the stdio as SCM_RIGHTS, and the init's Console its pty master.
    # Close-on-exec, as the pipe is: the report socket's end of stream says that the command runs.
    report_r, report_w = (end.detach() for end in socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET))
    handover_r, handover_w = (end.detach() for end in socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET))
    pid = os.fork()
    if pid == 0:
        # Nothing of this process's stays open in the init (its control socket, a spare's socket to the fork
        # server, the netlink socket): with --init it stays PID 1, and the container could reach them through
        # /proc/1/fd. Its stdio comes with the handover; 0-2 stay taken till then.
        mine = sorted((release_r, report_w, handover_r))
        os.closerange(3, mine[0])
        os.closerange(mine[0] + 1, mine[1])
        os.closerange(mine[1] + 1, mine[2])
        os.closerange(mine[2] + 1, os.sysconf("SC_OPEN_MAX"))
        try:
            init.main(handover_r, release_r, report_w, name)
        finally:
            os._exit(125)  # never back into our frames (or the fork server's) in the init
    for fd in (release_r, report_w, handover_r):
        os.close(fd)
    return InitProcess(pid, os.pidfd_open(pid), handover_w, release_w, report_r)


def hand_over(pid1: InitProcess, config: bytes, stdio: list[int]) -> None:
    """Give PID 1 its Config (as the runtime encoded it) and the container's stdin, stdout and stderr: it builds
    the root from now on, so whatever this process still does through the host's root is done by now."""
    with socket.socket(fileno=pid1.handover) as handover:
        handover.sendmsg([config], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", stdio))])
    pid1.handover = -1


def main(fd: int, made: bool | None = None, pid1: InitProcess | None = None) -> NoReturn:
    """made: None in a fresh fork, which unshares here; else the namespaces exist already (a spare made them,
    with its network namespace if made is True, brought its lo up, and forked pid1)."""
    global _host_root
    sock = socket.socket(fileno=fd)
    try:
        raw, _ = messages.recv_raw(sock)
        config = messages.decode(raw) if raw else None
    except (OSError, ValueError):
        config = None  # the runtime went away before we started
    if not isinstance(config, Config):
        os._exit(125)
    step = messages.STEP_NAMESPACES
    try:
        # Before PID 1 builds the root: its pivot_root moves our root too (we share its mount namespace).
        _host_root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        if made is None:
            unshare_namespaces(config.unshare_net)
            _send_or_exit(sock, Unshared())  # the runtime writes our id maps while PID 1 is forked
        elif made != config.unshare_net:
            raise OSError(errno.EINVAL, "the namespaces made ahead are not the ones asked for")
        step = messages.STEP_SETUP  # the namespaces exist: what fails from here is their set-up
        if pid1 is None:
            pid1 = fork_init()
        if not config.tap:
            hand_over(pid1, raw, [0, 1, 2])  # at once: PID 1 builds while we finish here
        if made is not None:
            _send_or_exit(sock, Unshared(), None, pid1.pid, pid1.pidfd)
        socket.sethostname(config.hostname)
        if config.unshare_net and made is None:
            netdev.bring_up("lo")
        if config.tap:
            netdev.create_persistent_tap(config.tap)  # before the handover: it needs the host's /dev/net/tun
            hand_over(pid1, raw, [0, 1, 2])
        netlink = netdev.open_netlink() if config.want_netlink else None
    except OSError as exc:
        _send_or_exit(sock, Failed(step, exc.strerror or str(exc), exc.errno or 0))
        if pid1 is not None:
            pid1.kill()
        os._exit(125)

    pid, pidfd = pid1.pid, pid1.pidfd
    # PID 1's pidfd too: one that failed to build its root may be reaped (below) before the runtime reads Ready.
    fds = [pid1.release_w, pid1.report_r, pidfd] + ([netlink.fileno()] if netlink is not None else [])
    _send_or_exit(sock, Ready(init_pid=pid), fds, pid, pidfd)
    for fd in (pid1.release_w, pid1.report_r):
        os.close(fd)  # the runtime's now: the init sees end of file on release if the runtime dies
    if netlink is not None:
        netlink.close()
    _follow(sock, pid, pidfd)


def _follow(sock: socket.socket, pid: int, pidfd: int) -> NoReturn:
    global _cgroup  # read by _kill_and_exit, which every exit path reaches
    poller = select.poll()
    for fd in (sock.fileno(), pidfd):
        poller.register(fd, select.POLLIN)
    while True:
        # The exit is handled last so that a Release sent just before it is never lost to it.
        for fd, _event in sorted(poller.poll(), key=lambda item: item[0] == pidfd):
            if fd == sock.fileno():
                try:
                    message, _ = messages.recv(sock)
                except OSError:
                    message = None
                if message is None:
                    _kill_and_exit(pid, pidfd, cleanup=True)
                if isinstance(message, Release) and message.cgroup and _cgroup is None:
                    parent, name = os.path.split(message.cgroup)
                    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
                    try:
                        _cgroup = os.open(parent.lstrip("/") or ".", flags, dir_fd=_host_root), name
                    except OSError:
                        pass  # the runtime removes it, as on every path where it lives
            elif fd == pidfd:
                _, status = os.waitpid(pid, 0)
                signum = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
                code = 128 + signum if signum is not None else os.waitstatus_to_exitcode(status)
                try:
                    messages.send(sock, Exited(code=None if signum else code, signal=signum))
                except OSError:
                    pass  # the runtime has gone; our exit code still tells
                os._exit(code)


def _send_or_exit(
    sock: socket.socket, message: Message | bytes, fds: list[int] | None = None, pid: int = 0, pidfd: int = -1
) -> None:
    """Send upward. If the runtime is gone (a cancelled set-up), leave quietly, never with a traceback
    on the container's stderr, and take the container's init, if there is one, along."""
    try:
        if isinstance(message, bytes):
            sock.send(message)
        else:
            messages.send(sock, message, fds)
    except OSError as exc:
        if fds and exc.errno in (errno.EMFILE, errno.ENFILE, errno.ETOOMANYREFS):
            # The fds could not go (ETOOMANYREFS: more of the user's fds in flight than our limit): say why
            # without them, so that the runtime says it in one line.
            try:
                messages.send(sock, Failed(messages.STEP_SETUP, exc.strerror or str(exc), exc.errno or 0))
            except OSError:
                pass
        if pid:
            _kill_and_exit(pid, pidfd, cleanup=True)
        os._exit(125)


def _kill_and_exit(pid: int, pidfd: int, cleanup: bool = False) -> NoReturn:
    """The runtime is gone: kill the container and, with cleanup, remove its cgroup too."""
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass
    os.waitpid(pid, 0)
    if cleanup and _cgroup:
        _remove_cgroup(*_cgroup)
    os._exit(137)


def _remove_cgroup(parent: int, name: str) -> None:
    """cgroup.kill what is left, wait for cgroup.events to say empty (poll's POLLPRI: no sleeping), rmdir.

    The runtime's own path (``aiocontain.cgroups.leaf.Leaf.remove``) does the same with inotify through its
    event loop; this one runs only when the runtime is gone, stdlib-only, relative to the host's root fd.
    """
    try:
        kill = os.open(name + "/cgroup.kill", os.O_WRONLY, dir_fd=parent)
        try:
            os.write(kill, b"1")
        finally:
            os.close(kill)
        events = os.open(name + "/cgroup.events", os.O_RDONLY, dir_fd=parent)
    except OSError:
        return
    try:
        poller = select.poll()
        poller.register(events, select.POLLPRI)
        deadline = time.monotonic() + _EMPTY_TIMEOUT
        while b"populated 1" in os.pread(events, 4096, 0):
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                break
    finally:
        os.close(events)
    try:
        os.rmdir(name, dir_fd=parent)
    except OSError:
        pass
