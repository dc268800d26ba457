"""What the intermediate process costs: PID 1 forked by an intermediate, against PID 1 cloned straight in.

A container's namespaces are made today by an intermediate: the fork server
forks it, it unshares the user, mount, PID, UTS, IPC and network namespaces,
and forks PID 1 (the first process of the new PID namespace). A ``clone`` with
those flags makes PID 1 in one step instead, and works from Python when the
interpreter's own before- and after-fork calls surround the syscall, as
``os.fork`` does. This measures the difference outside the runtime, on what
both have in common: a process with the fork server's imports starts ``--count``
at once, writes each one's id maps, releases them, and waits for them all; PID 1
sets its hostname and execs /bin/true. The intermediate here does nothing but
unshare, fork and wait, so the difference is the least it costs.

    python -m bench.process_model [--count 50] [--rounds 8]

Run it as an unprivileged user (the user namespace is what lets it make the
others). It prints, per way, the median wall time and the CPU the whole machine
was busy for (from /proc/stat), which includes the kernel's work on the
namespaces and the exits.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import signal
import socket
import statistics
import time
from collections.abc import Callable

from aiocontain.child import forkserver  # noqa: F401 - the fork server's imports: its memory, as forks copy it

_SYS_CLONE = 56  # x86_64
_CLONE_NEWNS = 0x00020000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
NAMESPACES = _CLONE_NEWNS | _CLONE_NEWUTS | _CLONE_NEWIPC | _CLONE_NEWUSER | _CLONE_NEWPID | _CLONE_NEWNET

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_api = ctypes.pythonapi

Start = Callable[[], tuple[int, int]]  # starts one: (its host pid, the write end of its release pipe)


def clone(flags: int) -> int:
    """fork(2) into new namespaces: the child's pid, or 0 in the child."""
    _api.PyOS_BeforeFork()
    pid = _libc.syscall(_SYS_CLONE, ctypes.c_ulong(flags | signal.SIGCHLD), None, None, None, None)
    error = ctypes.get_errno()
    if pid == 0:
        _api.PyOS_AfterFork_Child()
    else:
        _api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(error, os.strerror(error))
    return int(pid)


def _pid1(release: int) -> None:
    os.read(release, 1)  # its maps are written
    socket.sethostname("bench")
    os.execv("/bin/true", ["true"])


def through_intermediate() -> tuple[int, int]:
    """Fork an intermediate that unshares the namespaces, says so, and forks PID 1 once released."""
    release_r, release_w = os.pipe()
    unshared_r, unshared_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(release_w)
            os.close(unshared_r)
            if _libc.unshare(NAMESPACES) != 0:
                os._exit(125)
            os.write(unshared_w, b"u")
            child = os.fork()
            if child == 0:
                _pid1(release_r)
            os.waitpid(child, 0)
        finally:
            os._exit(0)
    os.close(release_r)
    os.close(unshared_w)
    os.read(unshared_r, 1)  # the maps go to the namespace it made
    os.close(unshared_r)
    return pid, release_w


def cloned() -> tuple[int, int]:
    """Clone PID 1 straight into the namespaces."""
    release_r, release_w = os.pipe()
    pid = clone(NAMESPACES)
    if pid == 0:
        try:
            os.close(release_w)
            _pid1(release_r)
        finally:
            os._exit(127)
    os.close(release_r)
    return pid, release_w


def _map(pid: int) -> None:
    for name, content in (
        ("setgroups", "deny"),
        ("uid_map", f"0 {os.getuid()} 1\n"),
        ("gid_map", f"0 {os.getgid()} 1\n"),
    ):
        fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY)
        try:
            os.write(fd, content.encode())
        finally:
            os.close(fd)


def batch(start: Start, count: int) -> None:
    """count at once: each started and mapped, then all released, then all waited for."""
    started = []
    for _ in range(count):
        pid, release = start()
        _map(pid)
        started.append((pid, release))
    for _, release in started:
        os.write(release, b"g")
        os.close(release)
    for pid, _ in started:
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"a container exited {os.waitstatus_to_exitcode(status)}")


def _busy_ms() -> float:
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    ticks = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    return ticks * 1000 / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description="What the intermediate process costs, against PID 1 cloned in.")
    parser.add_argument("--count", type=int, default=50, help="containers started at once")
    parser.add_argument("--rounds", type=int, default=8, help="batches of each way, alternated")
    args = parser.parse_args()
    if os.getuid() == 0:
        raise SystemExit("bench.process_model: run it as an unprivileged user")
    gc.freeze()
    ways: dict[str, Start] = {"fork, unshare, fork (an intermediate)": through_intermediate, "clone": cloned}
    for start in ways.values():
        batch(start, args.count)  # warm-up
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, start in ways.items():
            time.sleep(0.4)  # the kernel's cleanup of the last batch's namespaces, outside the next one's time
            busy, wall = _busy_ms(), time.perf_counter()
            batch(start, args.count)
            wall = (time.perf_counter() - wall) * 1000
            time.sleep(0.4)
            samples[name].append((wall, _busy_ms() - busy))
    for name, values in samples.items():
        wall = statistics.median(value[0] for value in values)
        busy = statistics.median(value[1] for value in values)
        print(f"{name:40s} {args.count} at once: wall {wall:5.0f} ms, CPU {busy:5.0f} ms")


if __name__ == "__main__":
    main()
