"""The run server's process: the CLI's modules imported once, then a child forked for each request.

One server per environment (interpreter and ``sys.path``) and user, made sure of
by an exclusive ``flock`` on its lock file, held for its life (the kernel drops
it with a dead server), which also holds its pid for ``aiocontain doctor``. The
socket is bound under a temporary name and renamed into place, so a client never
finds half a server; the server removes it, still holding the lock, when it exits
after ``IDLE`` seconds without a request, or when what it imported is no longer
what is installed (``key``): the next run starts a fresh one.

The child of a request is single-threaded and has run nothing yet, as the
command's own process is when it starts: it checks that it can stand in for the
client (``runserver.attributes``), takes on the client's stdio, environment,
working directory and umask, tells the client its pid, and runs the command
(``aiocontain.cli``), forking its own fork server first as the command does.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]
import array
import fcntl
import gc
import os
import select
import socket
import struct
import sys
import threading

from aiocontain import runserver
from aiocontain.runserver.client import DECLINED, EXITED, READY, STARTED, STOP_SIGNALS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

_MAX_REQUEST = 16 << 20  # argv and environment together: far above what execve takes


def main(socket_path: str, lock_path: str) -> NoReturn:
    """Serve until idle or stale; exits at once when another server already serves this environment."""
    os.chdir("/")  # never keep a directory of the client's busy
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # what the command that started it held open is not ours to keep
    lock = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os._exit(0)
    os.ftruncate(lock, 0)
    os.write(lock, f"{os.getpid()}\n".encode())
    key = runserver.key()
    import aiocontain.command  # noqa: F401 - stop signals held and collection off: as each run must start

    _preload()
    if runserver.key() != key:
        os._exit(0)  # changed while it was imported: a mix of old and new code must not serve
    gc.freeze()  # shared with every child, never walked (and so never copied) by their collections
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    temporary = f"{socket_path}.{os.getpid()}"
    listener.bind(temporary)
    os.rename(temporary, socket_path)  # whole or not at all; the lock keeps other servers from renaming over it
    listener.listen(128)
    _signal.signal(_signal.SIGCHLD, _signal.SIG_IGN)  # the kernel reaps the children: nothing waits for them
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, STOP_SIGNALS)  # the server itself ends on them
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    idle = float(os.environ.get("AIOCONTAIN_RUN_SERVER_IDLE", runserver.IDLE))
    while poller.poll(int(idle * 1000)):
        connection, _ = listener.accept()
        if runserver.key() != key:
            _send(connection, DECLINED)  # upgraded or edited: this run is the command's, the next starts a server
            break
        if os.fork() == 0:
            listener.close()
            os.close(lock)
            _child(connection, key)
        connection.close()
    os.unlink(socket_path)  # still holding the lock: the path is this server's
    os._exit(0)


# What a run imports (a quiet run's sys.modules, with and without network), and what its fork server imports:
# imported here once, no child imports them again. One missing here only costs its import in each run.
PRELOAD = (
    "cgroups",
    "cgroups.hierarchy",
    "cgroups.leaf",
    "cgroups.limits",
    "cgroups.watch",
    "channels",
    "child.forkserver",
    "cli",
    "cli_users",
    "container",
    "elf",
    "entrypoints",
    "envfile",
    "errors",
    "etcfiles",
    "events",
    "fdlimit",
    "forkserver",
    "forkserver.process",
    "forkserver.server",
    "forkserver.stdio",
    "forkserver.userns",
    "hostuser",
    "messages",
    "mounts",
    "names",
    "network",
    "network.driver",
    "network.none",
    "network.slirp4netns",
    "network.slirp_sandbox",
    "network.supervisor",
    "processes",
    "rootfs",
    "rtnl",
    "runtimedir",
    "seccomp",
    "seccomp.cache",
    "security",
    "security.capabilities",
    "security.paths",
    "spec",
    "stages",
    "stages.cgroup",
    "stages.context",
    "stages.idmap",
    "stages.network",
    "stages.prepare",
    "stages.prestart",
    "stages.release",
    "stages.spawn",
    "stages.tap",
    "status",
    "subids",
    "syscalls",
    "ulimits",
    "users",
)


def _preload() -> None:
    import importlib

    import anyio._backends._asyncio
    import anyio.to_thread  # noqa: F401

    import aiocontain.cli

    for name in PRELOAD:
        importlib.import_module(f"aiocontain.{name}")
    aiocontain.cli.prebuild()  # a run without plugins parses with it (with plugins, each run builds its own)


def _child(connection: socket.socket, key: str) -> NoReturn:
    """One request: stand in for the client, or decline; then run the command and send its exit code."""
    code = 125
    try:
        _signal.pthread_sigmask(_signal.SIG_BLOCK, STOP_SIGNALS)  # as the command holds them from its start
        _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
        connection.sendall(READY + bytes(4))  # the client sends its request, and its stdio, only now
        argv = _take_over(connection, key)
        if argv is None:
            _send(connection, DECLINED)
            os._exit(0)
        pidfd = os.pidfd_open(os.getpid())
        try:
            connection.sendmsg([STARTED + os.getpid().to_bytes(4, "little")], [_rights(pidfd)])
        finally:
            os.close(pidfd)
        code = _run(connection, argv)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        _send(connection, EXITED, code & 0xFF)
    finally:
        os._exit(code)


def _take_over(connection: socket.socket, key: str) -> list[str] | None:
    """Read the request; None when this process cannot stand in for the client (it then runs the command)."""
    pid, uid, _gid = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    if uid != os.getuid() or pid <= 0:
        return None  # pid 0: a peer in a PID namespace this one does not see (a container's)
    if runserver.confinement(pid) != runserver.confinement("self"):
        return None  # read from /proc, not taken from the request: confined alike, or the client runs it itself
    fds = array.array("i")
    data, ancillary, _flags, _ = connection.recvmsg(65536, socket.CMSG_SPACE(3 * fds.itemsize), socket.MSG_CMSG_CLOEXEC)
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    while 0 < len(data) < 4:  # a stream: the length itself may come in pieces
        more = connection.recv(4 - len(data))
        if not more:
            return None
        data += more
    size = int.from_bytes(data[:4], "little")
    if len(fds) != 3 or len(data) < 4 or size > _MAX_REQUEST:
        return None
    while len(data) < 4 + size:
        more = connection.recv(4 + size - len(data))
        if not more:
            return None
        data += more
    fields = runserver.decode(data[4:])
    if len(fields) < 6 or fields[0] != runserver.FORMAT or fields[1] != key:
        return None
    their_attributes, cwd, umask, count = fields[2], fields[3], int(fields[4]), int(fields[5])
    if their_attributes != runserver.attributes():
        return None
    argv, environment = fields[6 : 6 + count], fields[6 + count :]
    try:
        os.chdir(cwd)
    except OSError:
        return None
    for number, fd in enumerate(fds):
        os.dup2(fd, number)  # dup2 leaves 0, 1 and 2 inheritable, as the command's own are
        os.close(fd)
    os.umask(umask)
    os.environ.clear()
    for item in environment:
        name, sep, value = item.partition("=")
        if sep:
            os.environ[name] = value
    sys.argv = argv
    return argv


def _run(connection: socket.socket, argv: list[str]) -> int:
    """``aiocontain.cli.main(fork_server=True)``, and the watch on the client between its fork and the run."""
    from aiocontain import cli, fdlimit, forkserver

    fdlimit.raise_to_hard_limit()
    forkserver.install(forkserver.ForkServer.fork_here())  # before the watch: forked while single-threaded
    threading.Thread(target=_watch, args=(connection,), name="aiocontain-run-client", daemon=True).start()
    try:
        return cli._main(argv[1:])
    finally:
        forkserver.close_default()


def _watch(connection: socket.socket) -> None:
    """The client sends nothing more: the stream ends when it exits. Before the exit code, that is its death,
    and this run dies as the command would have (its fork server, containers and helpers follow)."""
    try:
        connection.recv(1)
    except OSError:
        pass
    os.kill(os.getpid(), _signal.SIGKILL)


def _rights(fd: int) -> tuple[int, int, bytes]:
    return socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes()


def _send(connection: socket.socket, kind: bytes, number: int = 0) -> None:
    try:
        connection.sendall(kind + number.to_bytes(4, "little"))
    except OSError:
        pass  # the client is gone: the watch ends this run
