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
# The server's answers, each a kind byte and four more: READY (its process for this connection is listening:
# only then are the command's stdio sent, never into the backlog of a server that may not take them), STARTED
# (with the run's pidfd), EXITED (with the code), DECLINED.
READY, STARTED, EXITED, DECLINED = b"R", b"P", b"X", b"F"
# How long connecting and the server's STARTED may take (milliseconds, normally): a server that is stopped or
# stuck is given up on, and the command runs it itself. Its child, if it ever gets to the request, finds the
# connection closed when it says STARTED and runs nothing. AIOCONTAIN_RUN_SERVER_TIMEOUT sets it (tests).
ANSWER_TIMEOUT = 3.0
_BOOT = "import sys;sys.path[:]={path!r};from aiocontain.runserver.server import main;main({socket!r},{lock!r})"

_absent = False  # set by run: no server answered, so start one once this run is over


def run(argv: list[str]) -> int | None:
    """The exit code of argv (``aiocontain run ...``) served by the run server, or None: run it yourself."""
    global _absent
    if not runserver.enabled():
        return None
    if any("/dev/fd/" in arg or "/proc/self/fd/" in arg for arg in argv):
        return None  # names an fd of this process beyond the stdio a server is handed (--env-file <(...))
    try:
        if any(os.isatty(fd) for fd in (0, 1, 2)):
            return None
        for fd in (0, 1, 2):
            os.fstat(fd)  # a closed one cannot be handed over
    except OSError:
        return None
    socket_path, _lock = runserver.paths()
    if not _private(runserver.directory()):
        return None  # not a directory of ours alone: whatever listens there is not asked to run anything
    connection = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    connection.settimeout(float(os.environ.get("AIOCONTAIN_RUN_SERVER_TIMEOUT", ANSWER_TIMEOUT)))
    try:
        with _Interruptible():
            try:
                connection.connect(socket_path)
            except (BlockingIOError, TimeoutError):
                return None  # its backlog is full: a server that does not keep up
            except OSError:
                _absent = True
                return None
            peer = connection.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
            if int.from_bytes(peer[4:8], "little") != os.getuid():
                return None
            pidfd = _started(connection, argv)
        if pidfd is None:
            return None
        return _follow(connection, pidfd)
    except _Interrupted as stop:
        # Before the run started. Had its STARTED just come in, the run's process finds this connection closed
        # and is killed, with everything of the run, as a killed command's run is.
        return 128 + stop.signum
    finally:
        connection.close()


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Interruptible:
    """While the server is asked: a stop signal (held since the command's start) ends the command at once,
    as it would end the command's own set-up, rather than waiting on a server that may never answer."""

    def __enter__(self) -> None:
        self._before = {signum: _signal.signal(signum, _interrupt) for signum in STOP_SIGNALS}
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, STOP_SIGNALS)

    def __exit__(self, *_exc: object) -> None:
        _signal.pthread_sigmask(_signal.SIG_BLOCK, STOP_SIGNALS)
        for signum, handler in self._before.items():
            _signal.signal(signum, handler)  # still blocked, as before: the command's own run takes them


def _interrupt(signum: int, _frame: object) -> None:
    raise _Interrupted(signum)


def _private(directory: str) -> bool:
    """Ours and closed to everyone else; absent counts too (start makes it so)."""
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return info.st_uid == os.getuid() and not info.st_mode & 0o077 and (info.st_mode & 0o170000) == 0o040000


def _started(connection: _socket.socket, argv: list[str]) -> int | None:
    """Send the run; the pidfd of the server's process that runs it, or None: declined, or no timely answer."""
    import array

    umask = os.umask(0o022)
    os.umask(umask)
    try:
        cwd = os.getcwd()
    except OSError:
        return None  # a removed working directory: the command's own run says so
    fields = [runserver.FORMAT, runserver.key(), runserver.attributes(), cwd, str(umask), str(len(argv)), *argv]
    fields += [f"{name}={value}" for name, value in os.environ.items()]
    request = runserver.encode(fields)
    fds = array.array("i", [0, 1, 2])
    try:
        # Only once a process of the server's has taken this connection: fds sent into a stopped server's backlog
        # would stay there, holding the caller's pipes open (a caller reading them would wait for ever).
        if _receive(connection)[:1] != READY:
            return None
        sent = connection.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds.tobytes())])
        connection.sendall(request[sent:])  # a large environment may not fit the socket's buffer at once
        answer, ancillary, _flags, _ = connection.recvmsg(5, _socket.CMSG_SPACE(fds.itemsize), _socket.MSG_CMSG_CLOEXEC)
    except OSError:  # a timeout too
        return None
    received = array.array("i")
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
    if answer[:1] != STARTED or len(answer) != 5 or len(received) != 1:
        for fd in received:
            os.close(fd)
        return None  # declined (or a server going away): nothing was started
    return received[0]  # the run's process, by a pidfd: a signal never reaches a process that reused its pid


def _follow(connection: _socket.socket, pidfd: int) -> int:
    """Forward the stop signals to the run until its exit code comes; that code."""
    connection.settimeout(None)  # a run takes as long as its command

    def forward(signum: int, _frame: object) -> None:
        try:
            _signal.pidfd_send_signal(pidfd, signum)  # its handlers do what the command's would: stop the container
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
    os.close(pidfd)
    if answer[:1] == EXITED and len(answer) == 5:
        return int.from_bytes(answer[1:], "little")
    print("aiocontain: the run server's process for this run ended without an exit code", file=sys.stderr)
    return 125


def _receive(connection: _socket.socket) -> bytes:
    """One answer: a kind byte and four bytes (the exit code); b"" at end of stream."""
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
        if not _private(runserver.directory()):
            return  # not a private directory of ours: no socket of ours goes there
        path = [os.path.abspath(entry or ".") for entry in sys.path]  # "" is this directory, not the server's
        boot = _BOOT.format(path=path, socket=socket_path, lock=lock)
        import subprocess

        # Not posix_spawn: glibc's leaves signals 32 and 33 ignored in the new program, and so in every container
        # the server's runs would start (a disposition Python can neither read nor reset). This is the only
        # process left that was never waited for: the command exits right after, and it is init's to reap.
        flags = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]  # this run's: -X, -W, -B...
        subprocess.Popen(
            [sys.executable, *flags, "-c", boot],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        pass  # no server: every run is the command's own, as without one
