"""The run server: a per-user process with the CLI's modules imported, which forks each ``aiocontain run``.

A CLI run spends most of its time importing (asyncio, anyio, the stages: some
70 ms of ~100) before its container's ~15 ms. The run server pays the imports
once: ``aiocontain run`` (the client, ``client.py``) connects to it through a
socket in the user's runtime directory and sends its request (argv, environment,
working directory, umask, and its stdin, stdout and stderr as fds); the server
(``server.py``) forks a child that takes them on and runs ``aiocontain.cli`` as the
command itself would, fork server and all; the client forwards SIGINT, SIGTERM
and SIGHUP to it and exits with its exit code. The server is started on demand by
a run that found none (after that run), and exits after ``IDLE`` seconds
without a request, or at once when the code it has imported is no longer what
is installed.

A run is served only when the child would be the command's exact stand-in, else
it runs in the command's own process as before (the first run, a terminal,
another cgroup or namespace, other limits, another interpreter or code):

- ``key``: the interpreter, its flags and ``sys.path`` (each directory's time),
  and the time of every file of the package: what was imported is what is
  installed;
- ``attributes``: everything a container inherits from the process that starts
  it and the client cannot hand over: credentials and groups, namespaces, cgroup,
  capabilities, no_new_privs, seccomp mode, LSM label, resource limits (the
  open-file limit's hard one: every run raises the soft one to it), scheduling
  (nice, CPU affinity), OOM score adjustment, and the variables the interpreter
  itself reads at start-up (``PYTHON*``, the locale);
- no terminal on stdin, stdout or stderr (job control, window size and the
  controlling terminal stay the command's own business).

The child dies at once (SIGKILL) when the client's connection ends before it
has sent the exit code, as the command would have if killed: its fork server,
the containers and their helpers follow it, as they follow a killed command.
The client sends its request only once the child has said READY (its stdio never
waits in the backlog of a server that may not take it), gives up on a server
that has not started the run within ``client.ANSWER_TIMEOUT`` (stopped or stuck:
it runs the container itself), and ends at once, with 128+N, on a stop signal
that comes while it waits: asking a server is never a moment when the command
cannot be stopped.
Stdlib only and import-light: the client runs on every ``aiocontain run``.
"""

from __future__ import annotations

import os
import sys

FORMAT = "aiocontain-run-1"
IDLE = 300.0  # seconds without a request before the server exits
ENABLE = "AIOCONTAIN_RUN_SERVER"  # "0": every run in the command's own process, no server started
_NAMESPACES = ("cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts")
_INHERITED_VARIABLES = ("PYTHON", "LANG", "LC_", "LD_", "GLIBC_TUNABLES", "MALLOC_")


def enabled() -> bool:
    # A detached container's monitor (aiocontain.detached) holds its report pipe and stays the container's
    # supervisor itself: it is never handed to a server.
    return os.environ.get(ENABLE, "1") != "0" and "AIOCONTAIN_MONITOR" not in os.environ


def directory() -> str:
    """The user's directory for the server's socket and lock: in XDG_RUNTIME_DIR, else the temporary directory.

    Not "aiocontain-...": the runtime-directory sweep (aiocontain.runtimedir) owns that prefix."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "aiocontain.run")
    return os.path.join(os.environ.get("TMPDIR") or "/tmp", f"aiocontain.run-{os.getuid()}")


def paths() -> tuple[str, str]:
    """(socket, lock file) of the server for this interpreter, its flags and sys.path: one server per
    environment. The flags too: a run under ``python -X dev`` gets a server started with them (``key`` holds a
    server to them), not one that would decline each of its runs."""
    import zlib

    flags = [repr(sys.flags), repr(sorted(sys._xoptions.items())), repr(sys.warnoptions)]
    environment = "\0".join([sys.executable, *sys.path, *flags]).encode()
    name = f"{zlib.crc32(environment):08x}"
    where = directory()
    return os.path.join(where, f"{name}.sock"), os.path.join(where, f"{name}.lock")


def key() -> str:
    """What the imported code depends on: the interpreter, its flags, sys.path and the package's files' times."""
    import aiocontain

    parts = [FORMAT, sys.executable, repr(sys.flags), repr(sorted(sys._xoptions.items())), repr(sys.warnoptions)]
    for directory in sys.path:
        where = os.path.abspath(directory or ".")
        try:
            parts.append(f"{where}={os.stat(where).st_mtime_ns}")
        except OSError:
            parts.append(f"{where}=-")
    package = os.path.dirname(os.path.abspath(aiocontain.__file__))
    pending = [package]
    while pending:
        with os.scandir(pending.pop()) as files:
            for file in files:
                if file.name == "__pycache__":
                    continue
                if file.is_dir(follow_symlinks=False):
                    pending.append(file.path)
                parts.append(f"{file.path}={file.stat(follow_symlinks=False).st_mtime_ns}")
    return "\n".join(sorted(parts))


def attributes() -> str:
    """Everything of this process that a container inherits and a request cannot carry, as one string."""
    import resource

    parts = [f"ids={os.getresuid()} {os.getresgid()} {sorted(os.getgroups())}", confinement("self")]
    parts.append(f"oom_score_adj={_read('/proc/self/oom_score_adj')}")
    for number in sorted({getattr(resource, name) for name in vars(resource) if name.startswith("RLIMIT_")}):
        soft, hard = resource.getrlimit(number)
        parts.append(
            f"rlimit.{number}={hard}" if number == resource.RLIMIT_NOFILE else f"rlimit.{number}={soft},{hard}"
        )
    parts.append(f"nice={os.getpriority(os.PRIO_PROCESS, 0)} cpus={sorted(os.sched_getaffinity(0))}")
    parts += sorted(f"env.{k}={v}" for k, v in os.environ.items() if k.startswith(_INHERITED_VARIABLES))
    return "\n".join(parts)


def confinement(pid: int | str) -> str:
    """What confines process pid, read from /proc by whoever asks: its namespaces, cgroup, LSM label,
    capabilities, no_new_privs and seccomp mode. The server reads the client's itself (its pid from
    SO_PEERCRED), since a client's own account of itself proves nothing: a sandboxed process of the same user
    (a container with the runtime directory mounted) would otherwise have an unconfined container run for it."""
    parts = []
    for name in _NAMESPACES:
        try:
            parts.append(f"ns.{name}={os.readlink(f'/proc/{pid}/ns/{name}')}")
        except FileNotFoundError:
            parts.append(f"ns.{name}=-")  # a kernel without it (time): the same for both sides
        except OSError as exc:
            parts.append(f"ns.{name}=unreadable {exc.errno}")
    for name in ("cgroup", "attr/current", "personality"):
        parts.append(f"{name}={_read(f'/proc/{pid}/{name}')}")
    try:  # chrt's policy: a container inherits it
        parts.append(f"sched={os.sched_getscheduler(0 if pid == 'self' else int(pid))}")
    except OSError as exc:
        parts.append(f"sched=unreadable {exc.errno}")
    status = _read(f"/proc/{pid}/status")
    parts += [line for line in status.splitlines() if line.startswith(("Cap", "NoNewPrivs", "Seccomp"))]
    return "\n".join(parts)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read().strip()
    except OSError:
        return "-"


def encode(fields: list[str]) -> bytes:
    """Fields joined by NUL (none of them can hold one: argv, environment, paths), with a length first."""
    data = "\0".join(fields).encode("utf-8", "surrogateescape")
    return len(data).to_bytes(4, "little") + data


def decode(data: bytes) -> list[str]:
    return data.decode("utf-8", "surrogateescape").split("\0")


def running(where: str | None = None) -> dict[str, int]:
    """The servers alive in a directory (default: this user's), lock file -> pid: those whose lock is held."""
    import fcntl

    where = where or directory()
    try:
        names = sorted(name for name in os.listdir(where) if name.endswith(".lock"))
    except OSError:
        return {}
    found = {}
    for name in names:
        path = os.path.join(where, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).strip()
            found[path] = int(pid) if pid.isdigit() else 0  # 0: its pid not written yet
        finally:
            os.close(fd)
    return found


def status() -> str:
    """One line for ``aiocontain doctor``: whether runs of this environment are served, and by which process."""
    if not enabled():
        return f"off ({ENABLE}=0): every run imports the CLI in its own process"
    socket_path, lock = paths()
    pid = running().get(lock)
    if pid is None:
        return "not running: the next `aiocontain run` starts one, for the runs after it"
    return f"running (pid {pid}), socket {socket_path}; it exits after {IDLE:g} s without a run"
