"""``ExecProcess``: a command run in a running container (``Container.exec``, ``aiocontain exec``).

Each one is a helper process of its own, a fresh ``python -I -S`` running
``aiocontain.child.join.main``, not a fork of the fork server: joining a user
namespace needs a single-threaded process that is not in a user namespace of its
own already (the fork server is, one the container's is nested in), and the helper
must be outside the container's PID namespace to fork into it. The helper joins the
container, forks the command into it and follows it; it is started in a session of
its own (a ^C to the caller's process group is the caller's to pass on) and kills
the command when its control socket ends, so a runtime that dies takes its exec'd
commands along. No polling: its pidfd and the command's say when they exit.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio

from aiocontain import fdlimit, messages, proc, processes, registry, stdfds, ulimits, users
from aiocontain.channels import failure_error
from aiocontain.errors import AiocontainError, CommandNotExecutable, SetupError, UnexpectedMessage
from aiocontain.forkserver.stdio import PtyStream, Stdio
from aiocontain.messages import Console, Exec, Exited, Failed, Forked
from aiocontain.spec import ContainerSpec

START_TIMEOUT = 10.0  # for the helper's start-up (a fresh interpreter) and its join, under load
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
_BOOT = "import sys;sys.path.insert(0,{root!r});from aiocontain.child.join import main;main(3)"
_CONTROL_FD = 3


def request(
    spec: ContainerSpec,
    pid: int,
    argv: Sequence[str],
    *,
    base_env: Mapping[str, str],
    seccomp: str | None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    user: str | None = None,
    container_user: users.ExecUser | None = None,
    tty: bool = False,
) -> Exec:
    """The Exec for argv in the container of spec whose PID 1 is pid: its environment (base_env) with env on top,
    its working directory, its user (or ``user`` resolved in the container's own /etc/passwd, as podman does),
    and PID 1's capabilities, seccomp filter (compiled, as in the Config), no_new_privs and rlimits.
    AiocontainError (one line) for a user that cannot be resolved or a container that is gone."""
    if not argv:
        raise AiocontainError("exec needs a command", fix="give the command to run in the container")
    start_time = proc.start_time(pid)
    if start_time is None:
        raise AiocontainError(f"the container is not running (its process {pid} has exited)")
    exec_user = container_user
    if user is not None:
        from aiocontain.forkserver import userns

        exec_user = users.resolve(user, (), Path(f"/proc/{pid}/root"), userns.planned())
    environment = dict(base_env)
    if user is not None and exec_user is not None and "HOME" not in spec.env:
        environment["HOME"] = exec_user.home
    environment.update(env or {})
    return Exec(
        pid=pid,
        start_time=start_time,
        argv=list(argv),
        env=environment,
        workdir=cwd if cwd is not None else spec.workdir,
        hostname=spec.effective_hostname,
        caps=spec.capabilities,
        seccomp=seccomp,
        no_new_privs=spec.no_new_privileges,
        rlimits=[list(limit) for limit in ulimits.parse(spec.ulimits)],
        user=None if exec_user is None else [exec_user.uid, exec_user.gid, *exec_user.groups],
        tty=tty,
    )


# What of a recorded spec an exec needs: the rest (mounts, network, limits) is the running container's already.
_SPEC_FIELDS = (
    "command",
    "id",
    "name",
    "hostname",
    "env",
    "workdir",
    "cap_add",
    "cap_drop",
    "privileged",
    "seccomp",
    "no_new_privileges",
    "user",
    "group_add",
    "ulimits",
)


def for_record(
    record: registry.Record,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    user: str | None = None,
    tty: bool = False,
) -> Exec:
    """``request`` for a container another process runs, found in the registry (``aiocontain exec``): its spec
    as recorded, its user resolved in its own /etc/passwd, its seccomp filter compiled again (cached)."""
    from aiocontain.forkserver import userns
    from aiocontain.seccomp import filter_for

    spec = ContainerSpec(**{key: record.spec[key] for key in _SPEC_FIELDS if key in record.spec})
    container_user = None
    if spec.user is not None or spec.group_add:
        container_user = users.resolve(spec.user, spec.group_add, Path(f"/proc/{record.pid}/root"), userns.planned())
    base_env = spec.environment(None)
    if container_user is not None and "HOME" not in spec.env:
        base_env["HOME"] = container_user.home
    message = request(
        spec,
        record.pid,
        argv,
        base_env=base_env,
        seccomp=filter_for(spec),
        env=env,
        cwd=cwd,
        user=user,
        container_user=container_user,
        tty=tty,
    )
    if message.start_time != record.start_time:
        raise AiocontainError(f"container {record.name} is not running", fix="aiocontain ps -a shows its state")
    return message


class ExecProcess:
    """A command running in a container: ``pid`` (host pid), ``wait()`` for its exit code (128+N when signal N
    ended it), ``send_signal``, ``kill``; ``stdin``/``stdout``/``stderr`` for ``subprocess.PIPE``, ``tty`` (the
    master of its terminal) with ``tty=True``. Use as ``async with``, or ``aclose`` it: either kills it if it still
    runs and reaps it. A cancelled ``wait`` does the same."""

    def __init__(self, helper: int, helper_pidfd: int, control: socket.socket, stdio: Stdio) -> None:
        self.pid = 0  # the command's host pid, once it runs
        self.returncode: int | None = None
        self.stdin = stdio.stdin
        self.stdout = stdio.stdout
        self.stderr = stdio.stderr
        self.tty: PtyStream | None = None
        self._helper = helper
        self._helper_pidfd = helper_pidfd
        self._pidfd = -1  # the command's
        self._control = control
        self._helper_status: int | None = None

    @classmethod
    async def start(cls, message: Exec, stdin: Any = None, stdout: Any = None, stderr: Any = None) -> ExecProcess:
        """Start the helper and wait until the command runs (raises as ``run`` does: 127 not found, 126 not
        executable, 125 anything else). stdio as for ``anyio.open_process``; ignored with a tty, whose slave is
        the command's stdio."""
        if message.tty:
            stdin = stdout = stderr = subprocess.DEVNULL
        stdfds.ensure()  # this process's stdio is the command's, never an fd of ours on a closed one's number
        stdio = Stdio.open(stdin, stdout, stderr)
        try:
            control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except BaseException:
            stdio.close_child_ends()
            stdio.close()
            raise
        try:
            messages.send(control, message)  # waits in the socket until the helper reads it
            pid = _spawn([*stdio.child_fds, theirs.fileno()])
            helper_pidfd = os.pidfd_open(pid)  # not reaped until we wait: the pid is still ours
        except BaseException:
            control.close()
            stdio.close()
            raise
        finally:
            theirs.close()
            stdio.close_child_ends()
        control.setblocking(False)
        process = cls(pid, helper_pidfd, control, stdio)
        try:
            with anyio.move_on_after(START_TIMEOUT) as timeout:
                await process._started(message.argv[0])
        except BaseException:
            await process.aclose()
            raise
        if timeout.cancelled_caught:
            await process.aclose()
            raise SetupError(f"the exec helper did not start the command within {START_TIMEOUT:g} s")
        return process

    async def _started(self, command: str) -> None:
        """Read the helper's answers up to Forked (the command runs) or a failure."""
        while True:
            message, fds = await self._receive()
            if isinstance(message, Console) and len(fds) == 1 and self.tty is None:
                self.tty = PtyStream(fds[0])
                continue
            if isinstance(message, Forked) and len(fds) == 1:
                self.pid, self._pidfd = message.pid, fds[0]
                return
            messages.close_fds(fds)
            if isinstance(message, Failed):
                if message.errno == errno.ESRCH:  # the container's PID 1 is gone: join.gone() says so
                    raise AiocontainError(message.message)
                if message.step == messages.STEP_WORKDIR:  # podman exec's 126 too; exec makes no directory
                    raise CommandNotExecutable(
                        f"the working directory {message.message}", fix="give a directory the container has"
                    )
                raise failure_error(command, message)
            if message is None or isinstance(message, Exited):
                raise SetupError("the exec helper exited before the command ran")
            raise UnexpectedMessage("exec helper", "Forked", message)

    async def _receive(self) -> tuple[messages.Message | None, list[int]]:
        while True:
            await anyio.wait_readable(self._control)
            try:
                return messages.recv(self._control)
            except BlockingIOError:
                continue
            except OSError as exc:
                if fdlimit.exhausted(exc):
                    raise
                return None, []

    async def wait(self) -> int:
        """Wait for the command's exit and return its code; cancelled, kill it and reap it first."""
        if self.returncode is None and self._helper_pidfd >= 0:
            try:
                await anyio.wait_readable(self._helper_pidfd)  # the helper exits right after the command
            except BaseException:
                await self.aclose()
                raise
            self._collect()
        if self.returncode is None:
            raise AiocontainError(
                f"the exec helper (pid {self._helper}) was killed: the command was killed with it and its exit "
                "status is lost"
            )
        return self.returncode

    def _collect(self) -> None:
        """Once the helper has exited: reap it, and take the command's status from its Exited (else its own)."""
        if self._helper_status is None:
            _, self._helper_status = os.waitpid(self._helper, 0)
        while self.returncode is None and self._control.fileno() >= 0:
            try:
                message, fds = messages.recv(self._control)
            except OSError:
                break
            messages.close_fds(fds)
            if message is None:
                break
            if isinstance(message, Exited):
                self.returncode = 128 + message.signal if message.signal is not None else int(message.code or 0)
        if self.returncode is None and not os.WIFSIGNALED(self._helper_status):
            self.returncode = os.waitstatus_to_exitcode(self._helper_status)  # it exits with the command's code

    def send_signal(self, signum: int) -> bool:
        """Send signum to the command, through its pidfd; False once it has exited."""
        if self._pidfd < 0 or self.returncode is not None:
            return False
        try:
            signal.pidfd_send_signal(self._pidfd, signum)
        except ProcessLookupError:
            return False
        return True

    def resize(self, rows: int, cols: int) -> None:
        """Set its terminal's window size (the command gets SIGWINCH)."""
        if self.tty is None:
            raise RuntimeError("the command has no terminal: exec it with tty=True")
        self.tty.resize(rows, cols)

    def kill(self) -> bool:
        return self.send_signal(signal.SIGKILL)

    async def aclose(self) -> None:
        """Kill the command if it still runs (closing the control socket makes the helper do it too), reap the
        helper, close every fd. Shielded: it runs on every path."""
        if self._helper_pidfd < 0:
            return
        with anyio.CancelScope(shield=True):
            if self._pidfd < 0:
                # Not running yet: the helper goes, and its child with it (a parent-death signal).
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(self._helper_pidfd, signal.SIGKILL)
            self.kill()
            with contextlib.suppress(OSError):
                self._control.shutdown(socket.SHUT_WR)  # the helper kills the command too, should it still run
            await anyio.wait_readable(self._helper_pidfd)
            self._collect()
            for stream in (self.stdin, self.stdout, self.stderr, self.tty):
                if stream is not None:
                    await stream.aclose()
        self._control.close()
        for fd in (self._pidfd, self._helper_pidfd):
            if fd >= 0:
                os.close(fd)
        self._pidfd = self._helper_pidfd = -1

    async def __aenter__(self) -> ExecProcess:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def _spawn(fds: list[int]) -> int:
    """posix_spawn the helper with fds as its 0, 1, 2 and control socket, in a session of its own."""
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _CONTROL_FD + 1) for fd in fds]  # no dup2 clobbers a source
    try:
        actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(moved)]
        return os.posix_spawn(
            sys.executable,
            [sys.executable, "-I", "-S", "-c", _BOOT.format(root=_PACKAGE_ROOT)],
            processes.environment(),
            file_actions=actions,
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT),
            setsigmask=(signal.SIGINT,),  # held through the interpreter's start, until join.main unblocks it
            setsid=True,
        )
    finally:
        for fd in moved:
            os.close(fd)
