"""Joining a running container: its namespaces and cgroup, then a process in it, hardened as its PID 1 was.

``Container.exec`` and ``aiocontain exec`` start a helper process for each exec'd
process (``python -I -S`` running ``main``, with the command's stdio and a control
socket); ``aiocontain-oci exec`` forks one of its own and calls ``open_namespaces``,
``join_cgroup``, ``enter`` and ``become`` the same way.

The helper opens every namespace of the container's PID 1 up front (through a
pidfd, so that a pid reused meanwhile is noticed), joins its cgroup while the
host's cgroup tree is still in view, then joins the namespaces: the user namespace
first (its capabilities allow the rest), the PID namespace last (it applies to
children only). Joining the mount namespace sets root and working directory to the
namespace's root, which PID 1's pivot_root made the container's root. It then forks:
the child is in the container's PID namespace and becomes the command. The helper
stays outside, relays the child's report, and follows it to its exit.

What the command must not be given: the helper is not dumpable from before the first
setns, so nothing in the container can ptrace it or open its /proc files (its fds,
its executable) while it holds host resources; the child keeps no fd but its stdio
(and the report socket, close-on-exec); it leads a session of its own (no TIOCSTI or
kill(0) into the caller's), and gets PID 1's capability bounding set, keyring,
no_new_privs, rlimits, user and seccomp filter (child/harden.py's ``lock_down``).
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket

from aiocontain import messages, proc, syscalls
from aiocontain.child import harden, init
from aiocontain.messages import Console, Exec, Exited, Failed, Forked

TYPE_CHECKING = False  # typing is a heavy import for the child
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import NoReturn

# In the order they are joined.
NAMESPACES = (
    ("user", syscalls.CLONE_NEWUSER),
    ("mnt", syscalls.CLONE_NEWNS),
    ("uts", syscalls.CLONE_NEWUTS),
    ("ipc", syscalls.CLONE_NEWIPC),
    ("net", syscalls.CLONE_NEWNET),
    ("cgroup", syscalls.CLONE_NEWCGROUP),
    ("pid", syscalls.CLONE_NEWPID),
)


def gone(pid: int) -> ProcessLookupError:
    return ProcessLookupError(errno.ESRCH, f"the container is not running (its process {pid} has exited)")


def open_namespaces(pid: int, start_time: int | None) -> list[tuple[int, int]]:
    """(fd, nstype) of each namespace of pid's that is not ours already, in joining order (--net host shares the
    host's network namespace, which the container's user namespace could not join). ProcessLookupError when pid is
    not, or no longer, the process that started at start_time."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise gone(pid) from None
    opened: list[tuple[int, int]] = []
    try:
        for name, nstype in NAMESPACES:
            try:
                fd = os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise gone(pid) from None
            theirs, ours = os.fstat(fd), os.stat(f"/proc/self/ns/{name}")
            if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
                os.close(fd)
            else:
                opened.append((fd, nstype))
        # Still alive through the pidfd, and the start time still the recorded one: the namespaces opened are
        # that process's, not those of a process that took its pid meanwhile.
        signal.pidfd_send_signal(pidfd, 0)
        if start_time is not None and not proc.is_alive(pid, start_time):
            raise gone(pid)
    except BaseException:
        for fd, _ in opened:
            os.close(fd)
        raise
    finally:
        os.close(pidfd)
    return opened


def _unified_group(path: str) -> str | None:
    """The cgroup v2 group in a /proc/PID/cgroup file (its ``0::`` line)."""
    with open(path) as lines:
        for line in lines:
            if line.startswith("0::"):
                return line[3:].strip()
    return None


def cgroup_procs(pid: int) -> str | None:
    """The cgroup.procs file of pid's cgroup v2 group, as seen from here, when that group is not ours."""
    theirs = _unified_group(f"/proc/{pid}/cgroup")
    if theirs is None or theirs == _unified_group("/proc/self/cgroup"):
        return None
    with open("/proc/self/mountinfo") as lines:
        return procs_path(theirs, lines)


def procs_path(group: str, mountinfo: Iterable[str]) -> str | None:
    """Where group's cgroup.procs is, on the first cgroup2 mount (mountinfo's lines) that shows it: its mount
    point plus the group's path below the mount's root (a cgroup namespace's mount shows only its subtree)."""
    for line in mountinfo:
        fields = line.split()
        if fields[fields.index("-") + 1] != "cgroup2":
            continue
        root, point = fields[3].rstrip("/"), fields[4].rstrip("/")
        if group == root or group.startswith(root + "/"):
            return point + group[len(root) :] + "/cgroup.procs"
    return None


def join_cgroup(pid: int) -> None:
    """Move this process into pid's cgroup (its limits count us too) where we may write its cgroup.procs: a
    container without a cgroup of its own shares ours, or one we may not enter."""
    path = cgroup_procs(pid)
    if path is None or not os.access(path, os.W_OK):
        return
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, str(os.getpid()).encode())
    finally:
        os.close(fd)


def enter(namespaces: list[tuple[int, int]]) -> int:
    """Join the namespaces (closing their fds), then fork: 0 in the child, which is in the container's PID
    namespace too; the child's host pid in the parent."""
    try:
        for fd, nstype in namespaces:
            syscalls.setns(fd, nstype)
    finally:
        for fd, _ in namespaces:
            os.close(fd)
    return os.fork()


def become(
    message: Exec,
    report_w: int,
    *,
    die_with_parent: bool = True,
    parent: int = 0,
    lock_down: Callable[[], None] | None = None,
) -> NoReturn:
    """In the forked child: leave every fd but stdio, lead a session of our own, become root (or the user, in
    lock_down), enter the working directory, open the terminal, harden, exec. Failures go on report_w as PID 1's
    do (setup 125, workdir 126, exec 126 or 127). die_with_parent: SIGKILL when parent (its pid as seen before the
    fork) exits. lock_down: what hardens us instead of ``harden.lock_down``."""
    try:
        os.closerange(3, report_w)
        os.closerange(report_w + 1, os.sysconf("SC_OPEN_MAX"))
        os.setsid()  # before anything runs in the container: no moment inside the caller's session
        if die_with_parent:
            syscalls.set_parent_death_signal(signal.SIGKILL)
            if os.getppid() not in (0, parent):  # 0: outside our PID namespace. Else it died before the prctl
                os._exit(125)
        init.become_root()
        try:
            os.chdir(message.workdir)
        except (FileNotFoundError, NotADirectoryError) as exc:
            reason = "does not exist" if isinstance(exc, FileNotFoundError) else "is not a directory"
            init.report(report_w, Failed(messages.STEP_WORKDIR, f"{message.workdir} {reason}", exc.errno or 0))
            os._exit(126)
        if message.tty:
            init.send_console(report_w, message.user[0] if message.user is not None else None)
        if lock_down is None:
            harden.lock_down(message)
        else:
            lock_down()
    except Exception as exc:  # noqa: BLE001 - any failure here must reach the runtime as one line
        init.report(report_w, Failed(messages.STEP_SETUP, init.describe(exc), getattr(exc, "errno", 0) or 0))
        os._exit(125)
    init.exec_command(message.argv, message.env, report_w)


def main(fd: int) -> NoReturn:
    """The exec helper (``python -I -S`` with stdio for the command and its control socket at fd): read Exec, run
    it in the container, answer Console (tty) and Forked, or Failed; Exited last, and exit with the same code.
    End of stream on the control socket (the runtime went away or cancelled it) kills the command.

    SIGINT is blocked from our first instruction (``execprocess``): no KeyboardInterrupt, which would print its
    traceback on the command's stderr. Here it gets its default action, as SIGTERM has, and is let through: a
    helper killed from the host is one line of the runtime's."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    os.set_inheritable(fd, False)
    os.closerange(fd + 1, os.sysconf("SC_OPEN_MAX"))  # anything the runtime left inheritable is not ours
    sock = socket.socket(fileno=fd)
    try:
        message, _ = messages.recv(sock)
    except OSError:
        message = None
    if not isinstance(message, Exec):
        os._exit(125)
    try:
        syscalls.set_dumpable(False)
        namespaces = open_namespaces(message.pid, message.start_time)
        join_cgroup(message.pid)
        report_r, report_w = (end.detach() for end in socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET))
        helper = os.getpid()
        pid = enter(namespaces)
    except BaseException as exc:  # noqa: BLE001 - a Failed line, never a traceback on the caller's stderr
        _send(sock, Failed(messages.STEP_SETUP, init.describe(exc), getattr(exc, "errno", 0) or 0))
        os._exit(125)
    if pid == 0:
        become(message, report_w, parent=helper)
    os.close(report_w)
    pidfd = os.pidfd_open(pid)
    if relay(socket.socket(fileno=report_r), lambda found, fds: _send(sock, found, fds)):
        _send(sock, Forked(pid), [pidfd])
    follow(sock, pid, pidfd)


def relay(report: socket.socket, forward: Callable[[messages.Message, list[int]], None]) -> bool:
    """Pass the child's report on (Console with its master, Failed) to its end: True once the command runs."""
    executed = True
    with report:
        while True:
            message, fds = messages.recv(report)
            if message is None:
                return executed
            if isinstance(message, (Console, Failed)):
                executed = executed and not isinstance(message, Failed)
                forward(message, fds)
            messages.close_fds(fds)


def wait_status(pid: int) -> tuple[int, int | None]:
    """Reap pid: (exit code, 128+N when signal N killed it; the signal or None)."""
    _, status = os.waitpid(pid, 0)
    signum = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    return (128 + signum if signum is not None else os.waitstatus_to_exitcode(status)), signum


def follow(sock: socket.socket, pid: int, pidfd: int) -> NoReturn:
    """Until the command exits (send Exited, exit with its code) or the control socket ends (kill it)."""
    poller = select.poll()
    for fd in (sock.fileno(), pidfd):
        poller.register(fd, select.POLLIN)
    while True:
        for fd, _event in poller.poll():
            if fd == pidfd:
                code, signum = wait_status(pid)
                _send(sock, Exited(code=None if signum else code, signal=signum))
                os._exit(code)
            try:
                message, fds = messages.recv(sock)
            except OSError:
                message, fds = None, []
            messages.close_fds(fds)
            if message is None:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                os._exit(wait_status(pid)[0])


def _send(sock: socket.socket, message: messages.Message, fds: list[int] | None = None) -> None:
    try:
        messages.send(sock, message, fds)
    except OSError:
        pass  # the runtime went away: follow() sees the end of the socket and kills the command
