"""The command's side of the run server: send the run, forward the stop signals, exit with its code.

``run`` returns None when the run is not served (no server, a terminal, the
server's answer that it cannot stand in for this process): the command then runs
it itself, and ``start`` (after that run) starts a server for the next one.
Nothing here imports more than a few builtin modules: it is the whole of a served
run's own start-up.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # not signal: its enum import costs more than the rest of this
import _socket
import os
import sys

from aiocontain import runserver

STOP_SIGNALS = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP)
STARTED, EXITED, DECLINED = b"P", b"X", b"F"
_BOOT = "import sys;sys.path[:]={path!r};from aiocontain.runserver.server import main;main({socket!r},{lock!r})"

_absent = False  # set by run: no server answered, so start one once this run is over


def run(argv: list[str]) -> int | None:
    """The exit code of argv (``aiocontain run ...``) served by the run server, or None: run it yourself."""
    global _absent
    if not runserver.enabled():
        return None
    try:
        if any(os.isatty(fd) for fd in (0, 1, 2)):
            return None
        for fd in (0, 1, 2):
            os.fstat(fd)  # a closed one cannot be handed over
    except OSError:
        return None
    socket_path, _lock = runserver.paths()
    connection = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        try:
            connection.connect(socket_path)
        except OSError:
            _absent = True
            return None
        return _served(connection, argv)
    finally:
        connection.close()


def _served(connection: _socket.socket, argv: list[str]) -> int | None:
    import array

    umask = os.umask(0o022)
    os.umask(umask)
    try:
        cwd = os.getcwd()
    except OSError:
        return None  # a removed working directory: the command's own run says so
    fields = [runserver.FORMAT, runserver.key(), runserver.attributes(), cwd, str(umask), str(len(argv)), *argv]
    fields += [f"{name}={value}" for name, value in os.environ.items()]
    fds = array.array("i", [0, 1, 2])
    try:
        connection.sendmsg([runserver.encode(fields)], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds.tobytes())])
        answer = _receive(connection)
    except OSError:
        return None
    if answer[:1] != STARTED or len(answer) != 5:
        return None  # declined (or a server going away): nothing was started
    child = int.from_bytes(answer[1:], "little")

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(child, signum)  # its own handlers do what the command's would: stop the container, or set-up
        except OSError:
            pass  # gone: its exit code is on the way

    for signum in STOP_SIGNALS:
        _signal.signal(signum, forward)
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, STOP_SIGNALS)  # held since the command's start: delivered now
    try:
        answer = _receive(connection)
    except OSError:
        answer = b""
    _signal.pthread_sigmask(_signal.SIG_BLOCK, STOP_SIGNALS)
    if answer[:1] == EXITED and len(answer) == 5:
        return int.from_bytes(answer[1:], "little")
    print("aiocontain: the run server's process for this run ended without an exit code", file=sys.stderr)
    return 125


def _receive(connection: _socket.socket) -> bytes:
    """One answer: a kind byte and four bytes (a pid or an exit code); b"" at end of stream."""
    data = b""
    while len(data) < 5:
        chunk = connection.recv(5 - len(data))
        if not chunk:
            break
        data += chunk
    return data


def start() -> None:
    """Start a server for this environment in the background, if the last ``run`` found none; never waits."""
    if not _absent:
        return
    socket_path, lock = runserver.paths()
    try:
        os.makedirs(runserver.directory(), mode=0o700, exist_ok=True)
        info = os.lstat(runserver.directory())
        if info.st_uid != os.getuid() or info.st_mode & 0o077:
            return  # not a private directory of ours: no socket of ours goes there
        path = [os.path.abspath(entry or ".") for entry in sys.path]  # "" is this directory, not the server's
        boot = _BOOT.format(path=path, socket=socket_path, lock=lock)
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            actions = [(os.POSIX_SPAWN_DUP2, null, fd) for fd in (0, 1, 2)]
            os.posix_spawn(
                sys.executable, [sys.executable, "-c", boot], dict(os.environ), file_actions=actions, setsid=True
            )
        finally:
            os.close(null)
    except OSError:
        pass  # no server: every run is the command's own, as without one
