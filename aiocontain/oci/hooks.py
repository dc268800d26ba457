"""The runtime spec's hooks: each program gets the container's state as JSON on its stdin.

prestart, createRuntime and createContainer run during ``create``, startContainer in the init just before its
exec, poststart at the end of ``start``, poststop at the end of ``delete``. A failing hook before the process
runs is the container's error (create or start fails); poststart and poststop failures are only logged, as
the spec has it.
"""

from __future__ import annotations

import os

from aiocontain.oci.errors import OciError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from aiocontain.oci.state import ContainerState

KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")


def check(hooks: object) -> None:
    """OciError for a ``hooks`` object that is not the spec's shape (before anything is built)."""
    if hooks is None:
        return
    if not isinstance(hooks, dict):
        raise OciError("config.json: hooks must be an object")
    for kind, entries in hooks.items():
        if kind not in KINDS:
            raise OciError(f"config.json: unknown hook kind {kind!r}")
        if not isinstance(entries, list):
            raise OciError(f"config.json: hooks.{kind} must be a list")
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
                raise OciError(f"config.json: every hook in hooks.{kind} needs a path")
            if "\0" in entry["path"]:
                raise OciError(f"config.json: hook path {entry['path']!r} holds a NUL byte")
            if not os.path.isabs(entry["path"]):
                raise OciError(f"config.json: hook path {entry['path']!r} is not absolute")
            timeout = entry.get("timeout")
            if timeout is not None and (not isinstance(timeout, int) or timeout <= 0):
                raise OciError(f"config.json: hook {entry['path']}: timeout must be a positive integer")
            for field in ("args", "env"):
                if any("\0" in str(item) for item in entry.get(field) or []):
                    raise OciError(f"config.json: hook {entry['path']}: {field} hold a NUL byte")


def run(
    hooks: dict[str, list[dict[str, object]]] | None,
    kind: str,
    state: bytes,
    running: Callable[[int], None] | None = None,
) -> None:
    """Run the hooks of one kind in order; OciError naming the first one that fails (or times out).

    Each runs as the leader of a process group of its own, which a timeout kills whole: a hook's children
    would otherwise outlive it, holding its stderr pipe and so this wait, for ever. (What a hook that succeeded
    leaves running is its own business, as a daemon a network hook starts.) ``running`` is told the
    leader's pid while it runs, and 0 after (create records it, so that delete can end a hook stuck in it).
    With ``running``, the hook is executed only once it has returned (``_GATE``): a create killed before its
    record leaves no hook that nobody can find.
    """
    entries = (hooks or {}).get(kind, [])
    if not entries:
        return
    import signal
    import subprocess  # only where there are hooks (the container's init imports it before pivot_root)

    for entry in entries:
        path = str(entry["path"])
        args = [str(arg) for arg in entry.get("args") or [path]]  # type: ignore[attr-defined]
        env = [str(item) for item in entry.get("env") or []]  # type: ignore[attr-defined]
        timeout = entry.get("timeout")
        gate_r = gate_w = -1
        kept: tuple[int, ...] = ()
        if running is None:
            argv, executable, environment = args, path, dict(item.partition("=")[::2] for item in env)
        else:
            import sys

            gate_r, gate_w = os.pipe()
            argv = [sys.executable, "-I", "-S", "-c", _GATE, str(gate_r), path, *args]
            executable, environment, kept = sys.executable, {}, (gate_r,)
        try:
            process = subprocess.Popen(
                argv,
                executable=executable,
                stdin=subprocess.PIPE,
                env=environment,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                close_fds=True,
                pass_fds=kept,
                process_group=0,
            )
        except OSError as exc:
            if gate_w >= 0:
                os.close(gate_w)
            raise OciError(f"{kind} hook {path} cannot run: {exc.strerror}") from None
        finally:
            if gate_r >= 0:
                os.close(gate_r)
        try:
            if running is not None:
                try:
                    running(process.pid)
                    _open_gate(gate_w, env)
                finally:
                    os.close(gate_w)
            try:
                _, stderr = process.communicate(state, timeout=timeout if isinstance(timeout, int) else None)
            except subprocess.TimeoutExpired:
                raise OciError(f"{kind} hook {path} did not finish in {timeout} s") from None
        finally:
            if process.returncode is None:  # timed out (or we were interrupted): the whole group goes
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.communicate()  # every writer of its stderr is gone now: end of file
            if running is not None:
                running(0)
        if process.returncode == _GATE_EXEC_FAILED and stderr.startswith(_GATE_SAYS):
            reason = stderr[len(_GATE_SAYS) :].decode(errors="replace").strip()
            raise OciError(f"{kind} hook {path} cannot run: {reason}")
        if process.returncode != 0:
            said = stderr.decode(errors="replace").strip().splitlines()
            detail = f": {said[-1]}" if said else ""
            raise OciError(f"{kind} hook {path} failed with exit status {process.returncode}{detail}")


def _open_gate(gate_w: int, env: list[str]) -> None:
    """Let the hook run: "g" and the length of its environment, a newline, then the environment, NUL-separated.
    Through the pipe, not the gate's argv, which every user on the host can read in /proc (a hook's env may hold
    secrets). The length: a create killed halfway through a long environment leaves a message the gate refuses,
    never a hook run with part of its environment."""
    data = memoryview(_gate_message(env))
    try:
        while data:
            data = data[os.write(gate_w, data) :]
    except BrokenPipeError:
        pass  # the gate is gone (killed): its exit status says so


def _gate_message(env: list[str]) -> bytes:
    body = b"\0".join(os.fsencode(item) for item in env)
    return b"g%d\n" % len(body) + body


# The hook's first program while create records its pid: it reads the gate pipe to its end, then executes the
# hook with the hook's own argv and the environment that came through the pipe. Without the whole message
# (create died before its record, or while it wrote) it exits without running the hook. argv: the gate's fd, the
# path, the args.
_GATE_EXEC_FAILED = 127
_GATE_SAYS = b"aiocontain-hook-gate: "
_GATE = f"""
import os, sys
a = sys.argv
gate = int(a[1])
data = b""
while chunk := os.read(gate, 65536):
    data += chunk
head, _, body = data.partition(b"\\n")
if head[:1] != b"g" or not head[1:].isdigit() or int(head[1:]) != len(body):
    os._exit(125)
os.close(gate)
env = dict(item.partition(b"=")[::2] for item in body.split(b"\\0") if item)
try:
    os.execve(a[2], a[3:], env)
except OSError as exc:
    os.write(2, {_GATE_SAYS!r} + (exc.strerror or str(exc)).encode())
    os._exit({_GATE_EXEC_FAILED})
"""


def run_recorded(container: ContainerState, kind: str, status: str) -> None:
    """poststart and poststop, from the hooks recorded at create (a config.json changed since must not
    affect the container): every hook runs; each failure is a warning on stderr, as the spec wants."""
    entries = container.hooks.get(kind) or []
    for entry in entries:
        try:
            run({kind: [entry]}, kind, container.hook_state(status))
        except OciError as exc:
            import sys

            sys.stderr.write(f"aiocontain-oci: warning: {exc.message}\n")
