"""Shared fixtures. Container tests start real containers as the (unprivileged) user running pytest.

``nox -s tests`` runs the suite as an unprivileged test user when invoked as root;
``AIOCONTAIN_TEST_ROOTFS`` names a prepared root filesystem (else one is built once).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# The run server (aiocontain.runserver) outlives the run that starts it, and leftovers() counts every process of
# the user: the suite's runs are the command's own, unless AIOCONTAIN_TEST_RUN_SERVER=1 sends them through one
# (leftovers() then leaves the server out). tests/test_runserver.py starts servers of its own.
if os.environ.get("AIOCONTAIN_TEST_RUN_SERVER") != "1":
    os.environ["AIOCONTAIN_RUN_SERVER"] = "0"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        return
    skip = pytest.mark.skip(
        reason="container tests run unprivileged: use `nox -s tests`, which runs them as a test user"
    )
    for item in items:
        if "container" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def fork_server() -> Iterator[int]:
    """This process's fork server (aiocontain.forkserver), started before the first container.

    It is a long-lived child of the test process that clones every container's
    PID 1. Started here (autouse, session scope: before every function
    fixture), before any test takes its leftovers() and open_fds() snapshot, it
    is in every snapshot alike (leftovers() lists it without its changing state);
    closed at the end of the session. test_forkserver checks that closing one
    leaves nothing, on a server of its own.
    """
    from aiocontain import forkserver

    server = forkserver.default()
    yield server.pid
    forkserver.close_default()


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prepared = os.environ.get("AIOCONTAIN_TEST_ROOTFS")
    if prepared:
        return Path(prepared)
    from aiocontain.rootfs import init_rootfs

    path = tmp_path_factory.mktemp("rootfs") / "root"
    init_rootfs(path)
    return path


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def events(self) -> list[dict[str, object]]:
        found = []
        for line in self.stderr.splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
        return found

    def names(self) -> list[str]:
        return [str(event["event"]) for event in self.events()]


@pytest.fixture
def cli(rootfs: Path):
    """Run `aiocontain run` as a real process; returns a function (args, **kw) -> Result."""

    def run(
        *args: str, rootfs_dir: Path | None = None, env: dict[str, str] | None = None, timeout: float = 60
    ) -> Result:
        argv = [sys.executable, "-m", "aiocontain", "run", "--rootfs", str(rootfs_dir or rootfs), *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run


def cli_argv(rootfs: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "aiocontain", "run", "--rootfs", str(rootfs), *args]


@contextlib.contextmanager
def started(argv: Sequence[str], marker: str = "ready", **options: Any) -> Iterator[subprocess.Popen[str]]:
    """argv (text mode, stdout and stderr piped, stdin /dev/null unless given) once it has printed marker.

    On the way out, on every path (a failed assertion too), it is killed if still running, reaped, and its
    pipes are closed: a failing test must leave no process or fd to the tests that come after it.
    """
    options.setdefault("stdin", subprocess.DEVNULL)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == marker, (line, proc.stderr.read() if proc.poll() is not None else "")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()  # its fork server and the container follow it (parent-death signals, exit fds)
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def loopback_server() -> Iterator[tuple[int, bytes]]:
    """A TCP server on the host's 127.0.0.1 that answers every connection with a token, then closes."""
    yield from _token_server(socket.AF_INET, "127.0.0.1")


@pytest.fixture
def loopback6_server() -> Iterator[tuple[int, bytes]]:
    """The same on the host's ::1, which slirp4netns's IPv6 gateway (fd00::2) reaches when loopback is allowed."""
    yield from _token_server(socket.AF_INET6, "::1")


def _token_server(family: socket.AddressFamily, address: str) -> Iterator[tuple[int, bytes]]:
    import threading

    token = os.urandom(8).hex().encode()
    server = socket.socket(family)
    server.bind((address, 0))
    server.listen(16)
    stop_r, stop_w = os.pipe()  # written to stop the server: select wakes on it, no polling

    def serve() -> None:
        while True:
            ready, _, _ = select.select([server, stop_r], [], [])
            if stop_r in ready:
                return
            conn, _ = server.accept()
            with conn:
                conn.sendall(token + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], token
    os.write(stop_w, b"x")
    thread.join()
    server.close()
    os.close(stop_r)
    os.close(stop_w)


# Processes of the test user that are not a test's to count: rootless podman's pause process, which outlives
# `podman run` by design (it holds podman's user namespace). The podman fixture names its pid files here.
_PODMAN_PAUSE_FILES: list[Path] = []


def user_processes(keep: Iterable[int] = ()) -> set[int]:
    """Every process of this user but those in keep."""
    uid = os.getuid()
    kept = set(keep)
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in kept:
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    found.add(int(name))
            except OSError:
                continue  # gone meanwhile
    return found


def settle(pids: Iterable[int], timeout: float = 5.0) -> set[int]:
    """Those of pids still running after timeout; all are waited for at once through their pidfds, since a
    process may be exiting right now (a helper killed by a parent-death signal, a reaper not yet run)."""
    pidfds: dict[int, int] = {}
    for pid in pids:
        try:
            pidfds[os.pidfd_open(pid)] = pid
        except OSError:
            continue  # gone already
    try:
        poller = select.poll()
        for fd in pidfds:
            poller.register(fd, select.POLLIN)
        pending = set(pidfds)
        deadline = time.monotonic() + timeout
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for fd, _ in poller.poll(left * 1000):  # readable: the process has exited
                poller.unregister(fd)
                pending.discard(fd)
        return {pidfds[fd] for fd in pending}
    finally:
        for fd in pidfds:
            os.close(fd)


def _spares(server_pid: int) -> list[int]:
    """The fork server's spare (aiocontain.child.forkserver): a child of it, a PID 1 cloned ahead, that still
    waits under its own name."""
    from aiocontain.child.forkserver import SPARE_NAME

    named: dict[int, int] = {}  # pid -> parent
    for pid in user_processes():
        try:
            comm = Path(f"/proc/{pid}/comm").read_bytes().rstrip(b"\n")
            described = _describe(pid)
        except OSError:
            continue
        if comm == SPARE_NAME and described is not None:
            named[pid] = described[2]
    return [pid for pid, parent in named.items() if parent == server_pid]


def _describe(pid: int) -> tuple[int, str, int, str] | None:
    """(pid, state, parent, command line) of a process; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    state, parent = stat.rsplit(")", 1)[1].split()[:2]
    return pid, state, int(parent), cmdline.replace(b"\0", b" ").decode(errors="replace").strip()[:80]


def slirp4netns_pids() -> list[int]:
    """The user's slirp4netns processes, as they are now."""
    found = []
    for pid in user_processes():
        described = _describe(pid)
        if described is not None and described[3].split(" ")[0].endswith("slirp4netns"):
            found.append(pid)
    return sorted(found)


def run_server_pids(directory: str | None = None) -> list[int]:
    """The run servers (aiocontain.runserver) alive in a runtime directory's aiocontain.run (default: the user's)."""
    from aiocontain import runserver

    return sorted(runserver.running(directory).values())


def _run_servers() -> list[int]:
    """Every run server of the user, wherever its runtime directory (a test may set one of its own)."""
    found = []
    for pid in user_processes():
        described = _describe(pid)
        if described is not None and "aiocontain.runserver.server import main" in _cmdline(pid):
            found.append(pid)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


_first_listing = [True]  # the current test has not listed leftovers yet


@pytest.fixture(autouse=True)
def earlier_runtime_dirs_swept_at_first_listing() -> None:
    """Each test's first ``leftovers`` sweeps the runtime directories whose runtime died in an earlier test
    (aiocontain.runtimedir), as any new runtime's first container would. Otherwise a run in this test could sweep
    them and make its before-and-after count differ by what it never made."""
    _first_listing[0] = True


def leftovers(timeout: float = 5.0) -> dict[str, object]:
    """What containers could leave behind, counted over everything the test user owns.

    - processes: every process of the user but this test process and its session fork server (listed by pid
      alone: it forks and sleeps) and podman's pause process. A process that is exiting is waited for through
      its pidfd, up to timeout (never polled); a zombie counts only when this process should have reaped it
      (the fork server reaps its containers' PID 1 after their exit, as init does orphans: in its own time);
    - runtime_dirs: the user's runtime directories (aiocontain-*) in XDG_RUNTIME_DIR and /tmp (a test's first
      listing sweeps those an earlier test's dead runtime left: see earlier_runtime_dirs_swept_at_first_listing);
    - records: the files of the user's container records (aiocontain.registry: records and detached logs),
      once those of dead foreground runs are removed as any listing removes them;
    - mounts: the user's own mounts (their root is the user's) in the mount namespaces of this process and
      its fork server (the host's): mounts are made only in the containers' own mount namespaces, which go
      with their processes.
    """
    from aiocontain import forkserver

    server = forkserver.current()
    server_pid = server.pid if server is not None else None
    keep = {os.getpid(), *_podman_pause_pids(), *_run_servers()}
    if server_pid is not None:
        keep.add(server_pid)

    def others() -> set[int]:
        # The server's spare, a PID 1 cloned ahead, holds nothing of a container. It is cloned when a PID 1 is
        # reaped, which may be now: looked for after the listing (it is named from its clone on).
        found = user_processes(keep)
        return found - set(_spares(server_pid)) if server_pid is not None else found

    settle(others(), timeout)
    processes: list[tuple[int, str, str]] = []
    for pid in sorted(others()):
        described = _describe(pid)
        if described is None:
            continue
        _, state, parent, cmdline = described
        if state == "Z" and parent != os.getpid():
            continue  # exited; its reaper (the fork server, init, a subreaper) takes it in its own time
        processes.append((pid, state if state == "Z" else "alive", cmdline))
    if server_pid is not None:
        processes.append((server_pid, "fork server", ""))
    dirs: list[str] = []
    uid = os.getuid()
    if _first_listing[0]:
        _first_listing[0] = False
        from aiocontain import runtimedir

        for base in {os.environ.get("XDG_RUNTIME_DIR") or None, None}:
            runtimedir.sweep(base)  # unlocked ones only: a live runtime's are kept, and counted below
    for base in {os.environ.get("XDG_RUNTIME_DIR") or "/tmp", "/tmp"}:
        if os.path.isdir(base):
            for name in os.listdir(base):
                try:
                    ours = name.startswith("aiocontain-") and os.lstat(os.path.join(base, name)).st_uid == uid
                except OSError:
                    continue  # gone meanwhile
                if ours:  # another user's containers are not ours to count
                    dirs.append(name)
    # The user's mounts in each mount namespace of the processes that stay (this one, its fork server): a
    # container's mount must never reach them.
    mounts: dict[str, list[str]] = {}
    for pid in (os.getpid(), server_pid or os.getpid()):
        try:
            mounts.setdefault(os.readlink(f"/proc/{pid}/ns/mnt"), _own_mounts(pid, uid))
        except OSError:
            continue  # the fork server is gone: the processes list says so
    from aiocontain import names, registry

    registry.records()  # removes the records that no monitor will: a killed foreground run's
    try:
        records = sorted(os.listdir(names.private_directory(registry.DIRECTORY)))
    except FileNotFoundError:
        records = []
    return {"processes": processes, "runtime_dirs": sorted(dirs), "records": records, "mounts": mounts}


def _own_mounts(pid: int, uid: int) -> list[str]:
    """The lines of process pid's mount table whose mounted root belongs to uid. Other users' mounts are not
    the test's to count: on a shared machine they come and go (another user's tmpfs, root's)."""
    own = []
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4])  # space, tab, \\: octal
        try:
            if os.lstat(f"/proc/{pid}/root{point}").st_uid == uid:
                own.append(line)
        except OSError:
            continue  # unmounted meanwhile, or not ours to look into
    return own


def _podman_pause_pids() -> set[int]:
    """The user's podman pause processes: the podman fixture's (by its pid file) and any other's, such as a
    test's own podman state (podman 4 runs `catatonit -P` as its pause process), which live on by design."""
    found = set()
    for path in _PODMAN_PAUSE_FILES:
        try:
            found.add(int(path.read_text().strip()))
        except (OSError, ValueError):
            continue  # no pause process (yet)
    for pid in user_processes():
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes() == b"catatonit\0-P\0":
                found.add(pid)
        except OSError:
            continue
    return found


def open_fds() -> dict[int, str]:
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the fd listdir itself used
    return found


def rootfs_with_symlinked_tmp(tmp_path: Path) -> Path:
    """A fresh busybox rootfs whose /tmp is a symlink to / (a mount point the container must refuse)."""
    from aiocontain.rootfs import init_rootfs

    root = tmp_path / "root"
    init_rootfs(root)
    tmp = root / "tmp"
    if tmp.is_dir() and not tmp.is_symlink():
        tmp.rmdir()
    tmp.symlink_to("/")
    return root


PODMAN_FLAGS = ("--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file")


@pytest.fixture(scope="session")
def podman(rootfs: Path):
    """Run a command under rootless podman (runc) on the same rootfs, to compare an isolation probe with it.

    Skips when podman is not installed. Returns a function (podman run options..., command...) -> Result;
    options come before ``--rootfs``, e.g. ``podman("--network", "none", "/bin/sh", "-c", "...")``;
    ``prefix`` is a command that runs podman (e.g. in a session keyring of the test's making). Its ``argv``
    (the same arguments) and ``env`` start one that the test holds itself.
    podman keeps its state under a short directory of its own (podman 4.3 waits 20 s on a long
    XDG_RUNTIME_DIR).
    """
    import shutil

    if shutil.which("podman") is None:
        pytest.skip("podman is not installed: nothing to compare with")
    base = Path(tempfile.mkdtemp(prefix="pm-", dir="/tmp"))
    (base / "home").mkdir()
    (base / "run").mkdir(mode=0o700)
    env = {**os.environ, "HOME": str(base / "home"), "XDG_RUNTIME_DIR": str(base / "run")}
    _PODMAN_PAUSE_FILES.append(base / "run" / "libpod" / "tmp" / "pause.pid")

    def argv(*args: str, rootfs_dir: Path | None = None, prefix: Sequence[str] = ()) -> list[str]:
        options, command = _split_podman_args(args)
        return [
            *prefix,
            "podman",
            *PODMAN_FLAGS,
            "run",
            "--rm",
            *options,
            "--rootfs",
            str(rootfs_dir or rootfs),
            *command,
        ]

    def run(
        *args: str,
        rootfs_dir: Path | None = None,
        timeout: float = 120,
        stdin: int | None = subprocess.DEVNULL,
        prefix: Sequence[str] = (),
    ) -> Result:
        command = argv(*args, rootfs_dir=rootfs_dir, prefix=prefix)
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, stdin=stdin)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    # For a podman run that a test holds while it looks at it from outside (with ``started``).
    run.argv = argv  # type: ignore[attr-defined]
    run.env = env  # type: ignore[attr-defined]
    yield run
    subprocess.run(["podman", "system", "reset", "--force"], env=env, capture_output=True, timeout=120)
    shutil.rmtree(base, ignore_errors=True)


def _split_podman_args(args: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """podman run's options are those before the first argument that is a path (the command)."""
    for index, arg in enumerate(args):
        if arg.startswith("/") and (index == 0 or args[index - 1] not in _PODMAN_VALUED):
            return list(args[:index]), list(args[index:])
    raise ValueError(f"no absolute command path in {args}")


_PODMAN_VALUED = {"--network", "--net", "--cap-add", "--cap-drop", "--security-opt", "-e", "--env", "--name", "-w"}
_PODMAN_VALUED |= {"--env-file"}
_PODMAN_VALUED |= {"-v", "--volume", "--mount", "--tmpfs"}


class Probes:
    """A busybox rootfs of the session's own, with static C programs built into it on demand.

    An isolation claim is tested by a program that tries to break it from inside; busybox has no tool
    for most such calls (TIOCSTI, keyctl, io_uring_setup, ...), so each probe is a small static C
    program. ``build(name, source)`` compiles it once into ``/probes/NAME`` of ``rootfs`` and returns
    that path inside the container.
    """

    def __init__(self, rootfs: Path, work: Path) -> None:
        self.rootfs = rootfs
        self._work = work

    def build(self, name: str, source: str) -> str:
        import shutil

        target = self.rootfs / "probes" / name
        if not target.exists():
            gcc = shutil.which("gcc")
            if gcc is None:
                pytest.fail("gcc is needed to build the probes (scripts/host-setup.sh installs it)")
            target.parent.mkdir(exist_ok=True)
            c_file = self._work / f"{name}.c"
            c_file.write_text(source)
            subprocess.run([gcc, "-static", "-O1", "-o", str(target), str(c_file)], check=True)
        return f"/probes/{name}"


@pytest.fixture(scope="session")
def probes(tmp_path_factory: pytest.TempPathFactory) -> Probes:
    from aiocontain.rootfs import init_rootfs

    base = tmp_path_factory.mktemp("probes")
    init_rootfs(base / "root")
    return Probes(base / "root", base)
