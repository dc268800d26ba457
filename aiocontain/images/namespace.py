"""Work done as root of a user namespace mapped as the containers' is, in a child process.

An unprivileged user cannot chown files to its subordinate ids; root of a user namespace whose ids 1..N map
to them can, as ``podman unshare`` does. The child unshares its user namespace, the parent maps it from
outside exactly as the fork server's is mapped (``aiocontain.forkserver.userns``: newuidmap/newgidmap, or
the user's own id alone), and the child then runs the work. Its outcome comes back as one JSON line.

Signals: SIGINT, SIGTERM and SIGHUP sent to the parent are passed on to the child, and the parent's death
sends it SIGTERM; the child turns each into an exception, so the work's own clean-up runs before it exits.
Run as real root, there is nothing to map: the child keeps the host's ids.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from aiocontain import messages, syscalls
from aiocontain.errors import AiocontainError
from aiocontain.forkserver import userns

_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(AiocontainError):
    """The work was stopped by a signal, and cleaned up after itself."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}; nothing was imported")
        self.exit_code = 128 + signum


class _Stop(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def run(work: Callable[[str], dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Run work(mode) in a mapped child; returns the mode ("subordinate", "single" or "root") and its result.

    work's AiocontainError comes back as the same one line; anything else as one line naming it.
    """
    to_parent_r, to_parent_w = os.pipe2(os.O_CLOEXEC)
    to_child_r, to_child_w = os.pipe2(os.O_CLOEXEC)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:
            os.close(to_parent_r)
            os.close(to_child_w)
            _child(work, to_parent_w, to_child_r, os.getuid() == 0)  # never returns
        os.close(to_parent_w)
        os.close(to_child_r)
        return _parent(pid, to_parent_r, to_child_w, old_mask)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _parent(pid: int, from_child: int, to_child: int, mask: set[int | signal.Signals]) -> tuple[str, dict[str, Any]]:
    def forward(signum: int, _frame: FrameType | None) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    previous = {signum: signal.signal(signum, forward) for signum in _SIGNALS}
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    try:
        with os.fdopen(from_child, "rb") as reader, os.fdopen(to_child, "wb") as writer:
            first = reader.readline()
            mode = "root"
            if first == b"unshared\n":
                try:
                    mode = userns.map_from_outside(pid).mode
                except (AiocontainError, OSError) as err:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    if isinstance(err, AiocontainError):
                        raise
                    raise userns.namespace_error(messages.Failed(messages.STEP_NAMESPACES, str(err))) from err
            if first in (b"unshared\n", b"root\n"):
                try:
                    writer.write(mode.encode() + b"\n")
                    writer.flush()
                except BrokenPipeError:
                    pass  # the child died: its status says how
                last = reader.read()
            else:
                last = first
        _, status = os.waitpid(pid, 0)
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return mode, _outcome(last, status)


def _outcome(last: bytes, status: int) -> dict[str, Any]:
    try:
        message = json.loads(last) if last.strip() else None
    except ValueError:
        message = None
    if isinstance(message, dict):
        if "result" in message:
            return dict(message["result"])
        if "signal" in message:
            raise Interrupted(int(message["signal"]))
        if "error" in message:
            error = AiocontainError(str(message["error"]))
            error.exit_code = int(message.get("code", 125))
            raise error
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        raise AiocontainError(f"the import's helper process was killed by {name}")
    raise AiocontainError(f"the import's helper process ended without a result (status {status})")


def _child(work: Callable[[str], dict[str, Any]], to_parent: int, from_parent: int, as_root: bool) -> None:
    """The child's whole life: unshare, wait to be mapped, work, report, _exit (never the parent's clean-up)."""
    code = 1
    try:
        with os.fdopen(to_parent, "wb") as writer:
            try:
                code = _child_work(work, writer, from_parent, as_root)
            except BaseException:  # noqa: BLE001 - this process must reach os._exit, whatever happens
                pass
    finally:
        os._exit(code)


def _child_work(work: Callable[[str], dict[str, Any]], writer: Any, from_parent: int, as_root: bool) -> int:
    def stop(signum: int, _frame: FrameType | None) -> None:
        for other in _SIGNALS:
            signal.signal(other, signal.SIG_IGN)  # one stop is enough: the clean-up must not be cut short
        raise _Stop(signum)

    for signum in _SIGNALS:
        signal.signal(signum, stop)

    def send(message: dict[str, Any]) -> None:
        writer.write(json.dumps(message).encode() + b"\n")
        writer.flush()

    try:
        parent = os.getppid()
        syscalls.set_parent_death_signal(signal.SIGTERM)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        if os.getppid() != parent:
            raise _Stop(signal.SIGTERM)  # the parent died before the death signal was set
        if as_root:
            send_line = b"root\n"
        else:
            try:
                syscalls.unshare(syscalls.CLONE_NEWUSER)
            except OSError as err:
                raise userns.namespace_error(messages.Failed(messages.STEP_NAMESPACES, str(err))) from err
            send_line = b"unshared\n"
        writer.write(send_line)
        writer.flush()
        with os.fdopen(from_parent, "rb") as reader:
            mode = reader.readline().decode().strip()
        if not mode:
            return 1  # the parent could not map us and has given up
        os.umask(0)  # modes are the image's, exactly
        send({"result": work(mode)})
        return 0
    except _Stop as stop_signal:
        send({"signal": stop_signal.signum})
        return 128 + stop_signal.signum
    except AiocontainError as err:
        send({"error": err.line(), "code": err.exit_code})
        return err.exit_code
    except Exception as err:  # noqa: BLE001 - reported as one line by the parent
        send({"error": f"unexpected error: {type(err).__name__}: {err} (this is a bug)"})
        return 125
    finally:
        sys.stdout.flush()
