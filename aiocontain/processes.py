"""Host helper processes (slirp4netns): started so that no path can orphan one.

``Helper.spawn`` uses posix_spawn (vfork and exec) and follows the process
through a pidfd, rather than the event loop's subprocess machinery: under
asyncio that starts a child-watcher thread for every process, and with many
containers starting at once those threads, their locks and the extra wake-ups
cost the runtime's event loop about a millisecond per container. glibc's
posix_spawn, through ``syscalls.spawn``, rather than ``os.posix_spawn``: the
helper handles the container's traffic, and must start with no fd but its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from collections.abc import Mapping, Sequence

import anyio

from aiocontain import syscalls
from aiocontain.forkserver.stdio import FdReceiveStream

FIRST_PASSED_FD = 3


def environment() -> Mapping[bytes, bytes] | Mapping[str, str]:
    """This process's environment for posix_spawn, as the plain dict of bytes that ``os.environ`` keeps in step
    with putenv. posix_spawn reads a mapping's keys and values once: given ``os.environ`` itself, each one is
    decoded and encoded again in Python (~80 calls for a few dozen variables, for every helper started)."""
    data = getattr(os.environ, "_data", None)  # CPython's; any other interpreter gets the public mapping
    return data if isinstance(data, dict) else os.environ


def _spawn(argv: Sequence[str], dup2: list[tuple[int, int]], close_from: int) -> int:
    """posix_spawn argv with the dup2s (source, target) and no other fd from close_from on: a helper that
    handles the container's traffic holds nothing of the runtime's (other containers' sockets and pipes) or of
    the caller's (an embedding program's inheritable fds, a shell's leaked ones). In a session of its own, out
    of reach of a signal sent to the caller's process group; the signals Python ignores at their default."""
    sigdefault = (int(signal.SIGPIPE), int(signal.SIGXFSZ))
    if syscalls.spawn_closes_other_fds():
        env = [key + b"=" + value for key, value in _environment_bytes().items()]
        return syscalls.spawn([os.fsencode(arg) for arg in argv], env, dup2, close_from, sigdefault)
    # Before glibc 2.34: close what is inheritable now, found in /proc (~1 us an open fd).
    actions: list[tuple[int, ...]] = [(os.POSIX_SPAWN_DUP2, source, target) for source, target in dup2]
    actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds(close_from)]
    return os.posix_spawn(
        argv[0], list(argv), environment(), file_actions=actions, setsigdef=sigdefault, setsigmask=(), setsid=True
    )


def _environment_bytes() -> Mapping[bytes, bytes]:
    found = environment()
    if found is os.environ:
        return {os.fsencode(key): os.fsencode(value) for key, value in os.environ.items()}
    return found  # type: ignore[return-value]


def _inheritable_fds(first: int) -> list[int]:
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd >= first:
            try:
                if os.get_inheritable(fd):
                    found.append(fd)
            except OSError:
                pass  # the listing's own fd, closed again
    return found


class Helper:
    """A running helper: ``pid``, ``returncode`` once reaped, its ``stderr`` as a byte stream.

    The caller owns it from ``spawn`` on and must ``aclose`` it on every path.
    """

    def __init__(self, pid: int, pidfd: int, stderr: int) -> None:
        self.pid = pid
        self.returncode: int | None = None  # as subprocess: -N when signal N killed it
        self.stderr = FdReceiveStream(stderr)
        self._pidfd = pidfd

    @classmethod
    def spawn(cls, argv: Sequence[str], fds: Sequence[int] = ()) -> Helper:
        """Start argv (argv[0] an absolute path), in a session of its own, with stdin and stdout on /dev/null,
        stderr a pipe, and fds as 3, 4, ... in that order. The signals Python ignores (SIGPIPE, SIGXFSZ) are
        default again, and none is blocked (the command holds its stop signals until its handlers are in place)."""
        # The dup2s run in order: a source on the number of an earlier target (stdio included) would be
        # overwritten first, so those are moved above the targets.
        targets = range(FIRST_PASSED_FD, FIRST_PASSED_FD + len(fds))
        opened: list[int] = []  # ours to close once the helper has its copies (or failed to start)
        stderr_r = -1
        try:
            moved = {}
            for fd in fds:
                if fd < targets.stop:
                    moved[fd] = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, targets.stop)
                    opened.append(moved[fd])
            stderr_r, stderr_w = os.pipe()
            opened.append(stderr_w)
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            opened.append(null)
            dup2 = [(null, 0), (null, 1), (stderr_w, 2)]
            dup2 += [(moved.get(fd, fd), target) for fd, target in zip(fds, targets, strict=True)]
            pid = _spawn(argv, dup2, targets.stop)
            try:
                pidfd = os.pidfd_open(pid)  # not reaped until we wait: the pid is still ours
            except BaseException:
                os.kill(pid, signal.SIGKILL)  # out of fds: a helper we cannot follow must not run
                os.waitpid(pid, 0)
                raise
        except BaseException:
            if stderr_r >= 0:
                os.close(stderr_r)
            raise
        finally:
            for fd in opened:
                os.close(fd)
        return cls(pid, pidfd, stderr_r)

    async def wait(self) -> int:
        """Wait for the exit (the kernel says so through the pidfd), reap, and return the status."""
        if self.returncode is None:
            await anyio.wait_readable(self._pidfd)
            self._reap()
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        """SIGKILL, through the pidfd (no pid reuse race); nothing once it is reaped."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    async def aclose(self) -> None:
        """Kill it if it still runs, reap it, close its stderr and pidfd. Shielded: it runs on every path."""
        if self._pidfd < 0:
            return
        with anyio.CancelScope(shield=True):
            if self.returncode is None:
                self.kill()
                await self.wait()
            await self.stderr.aclose()
        os.close(self._pidfd)
        self._pidfd = -1

    def _reap(self) -> None:
        _, status = os.waitpid(self.pid, 0)  # at once: the pidfd said it exited
        self.returncode = os.waitstatus_to_exitcode(status)
