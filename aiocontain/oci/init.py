"""The container's side of ``create``: two forked processes, stdlib-only, talking to ``create`` on one socket.

``namespaces`` (forked by create) joins the namespaces config.json names by path, makes the user namespace
(create writes its id maps and puts it in the cgroup meanwhile), unshares the others and forks the container's
process, whose host pid it reports before it exits. That process, ``container``, is PID 1 of a new pid
namespace; once ``namespaces`` exits it is reparented to the caller's subreaper (conmon, the containerd shim),
which outlives create and waits for it: there is no supervisor of ours in between, no parent-death signal.

``container`` builds the root (oci/rootfs.py), lets create run the prestart and createRuntime hooks, runs
createContainer, pivots, opens the terminal and sends its master over --console-socket, reports ``ready`` and
then blocks on the exec fifo until ``start`` writes its byte (docs/oci.md, the lifecycle). Only then it applies
the process object (oci/process.py) and execs, keeping its pid.

Messages are datagrams on a SOCK_SEQPACKET pair: ``ns``, ``pid N``, ``hooks``, ``ready`` up; ``go`` down (after
the maps; after the pid, so that the two processes never speak at once; with the hook state after the
hooks); ``error TEXT`` up for anything that failed. End of file on it means the process died: create never
waits for a message that cannot come.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import socket
import struct

from aiocontain import syscalls as sc
from aiocontain.child import console, harden
from aiocontain.oci import hooks, process, rootfs
from aiocontain.oci.config import NAMESPACE_FLAGS
from aiocontain.oci.errors import OciError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

    from aiocontain.oci.config import Plan

MESSAGE_SIZE = 65536


class Launch:
    """What the forked processes get besides the plan: the fds and create's options."""

    def __init__(self, plan: Plan, sync: socket.socket, fifo: int, console: socket.socket | None) -> None:
        self.plan = plan
        self.sync = sync
        self.fifo = fifo  # the exec fifo's reading end, opened by create
        self.console = console
        self.preserve_fds = 0
        self.no_pivot = False
        self.container_id = ""
        self.new_keyring = True  # without --no-new-keyring: a session keyring of the container's own


def receive(sync: socket.socket) -> bytes:
    """One message; OciError when the other side ended without one (it died)."""
    message = sync.recv(MESSAGE_SIZE)
    if not message:
        raise OciError("the container's process ended during set-up")
    if message.startswith(b"error "):
        raise OciError(message[6:].decode(errors="replace"))
    return message


def _fail(sync: socket.socket, exc: BaseException) -> NoReturn:
    """Report what went wrong to create (one line) and end this process."""
    if isinstance(exc, OciError):
        text = exc.message
    elif isinstance(exc, OSError):
        text = exc.strerror or str(exc)
        if exc.filename:
            text = f"{exc.filename}: {text}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    try:
        sync.send(b"error " + text.encode(errors="replace")[: MESSAGE_SIZE - 6])
    except OSError:
        pass
    os._exit(1)


def namespaces(launch: Launch) -> NoReturn:
    """The first forked process: namespaces, then fork the container's process and report its pid."""
    plan = launch.plan
    try:
        for kind, path in plan.join:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                sc.setns(fd, NAMESPACE_FLAGS[kind])
            except OSError as exc:
                raise OciError(f"cannot join the {kind} namespace {path}: {os.strerror(exc.errno or 0)}") from None
            finally:
                os.close(fd)
        if plan.new_namespaces & sc.CLONE_NEWUSER:
            sc.unshare(sc.CLONE_NEWUSER)
        launch.sync.send(b"ns")
        receive(launch.sync)  # create wrote our id maps and put us in the cgroup
        if plan.new_namespaces & sc.CLONE_NEWUSER:
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
        others = plan.new_namespaces & ~sc.CLONE_NEWUSER
        if others:
            sc.unshare(others)
        pid = os.fork()
    except BaseException as exc:  # noqa: BLE001 - everything is reported to create, nothing escapes a fork
        _fail(launch.sync, exc)
    if pid == 0:
        container(launch)
    launch.sync.send(b"pid %d" % pid)
    os._exit(0)


def container(launch: Launch) -> NoReturn:
    """The container's process: everything up to the exec fifo, then the process itself."""
    plan, sync = launch.plan, launch.sync
    try:
        os.setsid()  # a session of its own: no signal to the caller's process group reaches it, nor its tty
        receive(sync)  # create has our pid (namespaces sent it): from here on the socket is ours alone
        fifo = launch.fifo
        if plan.hostname:
            socket.sethostname(plan.hostname)
        if plan.domainname:
            sc.set_domain_name(plan.domainname)
        if launch.new_keyring:
            harden.join_session_keyring(launch.container_id)
        rootfs.mount_all(plan)
        sync.send(b"hooks")
        state = receive(sync)[3:]  # create ran prestart and createRuntime; b"go " + the hook state
        hooks.run(plan.hooks, "createContainer", state)
        if plan.hooks.get("startContainer"):
            import subprocess  # now, while the host's standard library is reachable: the hook runs after pivot

            assert subprocess
        rootfs.pivot(plan, launch.no_pivot)
        for key, value in plan.sysctl.items():  # before finish makes /proc/sys read-only
            write_file("/proc/sys/" + key.replace(".", "/"), value)
        rootfs.finish(plan)
        try:
            os.makedirs(plan.process.cwd, 0o755, exist_ok=True)  # as runc: a missing working directory is made
        except OSError:
            pass  # chdir says why, in process.apply
        process.check_executable(plan.process)
        if plan.process.terminal:
            _send_console(launch)
        ours = {fifo, sync.fileno()}  # ours even where they landed among the numbers to preserve
        for fd in range(3, 3 + launch.preserve_fds):
            if fd not in ours:
                try:
                    os.set_inheritable(fd, True)
                except OSError:
                    pass  # not open: nothing to keep
        sync.send(b"ready")
    except BaseException as exc:  # noqa: BLE001
        _fail(sync, exc)
    sync.close()
    # The caller's other fds (an engine's pipes): not held while waiting, where a caller reading to the end of one
    # would wait for start.
    process.close_fds(3 + launch.preserve_fds, fifo)
    _wait_for_start(fifo)
    try:
        hooks.run(plan.hooks, "startContainer", state.replace(b'"status": "creating"', b'"status": "created"'))
        process.apply(plan.process, close_from=3 + launch.preserve_fds, keep=fifo)
    except OciError as exc:
        _die(exc.message, 1)
    except Exception as exc:  # noqa: BLE001 - after ready, stderr is the only place left to say it
        _die(f"cannot apply config.json's process: {exc}", 1)
    try:
        process.execute(plan.process)
    except OSError as exc:
        code = 127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126
        _die(f"{plan.process.args[0]}: {exc.strerror}", code)


def _wait_for_start(fifo: int) -> None:
    """Block until ``start`` writes its byte. The fifo was opened without a writer, so poll sleeps until one
    writes (POLLIN), or one came and went without writing (POLLHUP): then this container never starts."""
    poller = select.poll()
    poller.register(fifo, select.POLLIN)
    while True:
        try:
            poller.poll()
            data = os.read(fifo, 1)
        except InterruptedError:
            continue
        if data:
            return  # the fifo stays open until the exec closes it: start waits for that
        _die("start closed the exec fifo without starting the container", 1)


def _die(message: str, code: int) -> NoReturn:
    """After ready, create is gone: the container's stderr is where the engine looks."""
    try:
        os.write(2, f"aiocontain-oci: {message}\n".encode(errors="replace"))
    except OSError:
        pass
    os._exit(code)


def write_file(path: str, value: str) -> None:
    """Write a /proc file in one write(2), as the kernel wants for sysctls and id maps."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _send_console(launch: Launch) -> None:
    """Open the pty in the container's devpts and hand its master to --console-socket, as runc does: one
    message with the pty's name and the fd (SCM_RIGHTS), no reply."""
    plan = launch.plan
    master = console.open_console(owner=plan.process.uid)
    try:
        if plan.process.console_size:
            rows, columns = plan.process.console_size
            fcntl.ioctl(0, sc.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        assert launch.console is not None
        socket.send_fds(launch.console, [os.ttyname(0).encode()], [master])
    finally:
        os.close(master)
    launch.console.close()


def run(launch: Launch) -> NoReturn:
    """Entry of the first forked process: never returns into create's code."""
    try:
        # Python's SIGINT handler would raise KeyboardInterrupt in the waiting container; without a handler,
        # PID 1 of its pid namespace ignores SIGINT from outside, as runc's init does.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        namespaces(launch)
    except BaseException as exc:  # noqa: BLE001
        _fail(launch.sync, exc)
