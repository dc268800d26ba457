"""Cases that are one command each, timed from before its start to after its exit.

aiocontain's CLI, bubblewrap, podman and the shell baseline all run ``/bin/true``
in the same rootfs with the same namespaces (user, mount, pid, uts, ipc, net),
with stdin and stdout on /dev/null. The wall time of the whole process is what a
user of the command waits for, so that is what is measured.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench import podman
from bench.runner import Metric

TRUE = ["/bin/true"]
SHELL_BASELINE = Path(__file__).with_name("slirp_baseline.sh")


def timed(argv: list[str], copies: int = 1, timeout: float = 120, env: Mapping[str, str] | None = None) -> float:
    """Seconds from starting copies of argv at once until all have exited; raises when one fails, with the
    tail of its stderr. env: variables set for it, on top of this process's."""
    environment = {**os.environ, **env} if env else None
    started = time.perf_counter()
    running = [
        subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment
        )
        for _ in range(copies)
    ]
    try:
        results = [process.communicate(timeout=timeout) for process in running]
    except BaseException:
        for process in running:
            process.kill()  # none left behind, as subprocess.run does on a timeout
            process.wait()
        raise
    elapsed = time.perf_counter() - started
    for process, (_, stderr) in zip(running, results, strict=True):
        if process.returncode != 0:
            tail = stderr.decode(errors="replace").strip()[-400:]
            raise RuntimeError(f"{argv[0]} exited {process.returncode}: {tail}")
    return elapsed


@dataclass
class CommandCase:
    """One command per run (copies of it at once); its metric (milliseconds until all exited) has the case's name."""

    name: str
    argv: list[str]
    description: str
    repetitions: int
    copies: int = 1
    env: dict[str, str] | None = None
    metrics: tuple[Metric, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = (Metric(self.name, "ms", self.description),)

    def run(self) -> Mapping[str, float]:
        return {self.name: timed(self.argv, self.copies, env=self.env) * 1000}


def aiocontain_executable() -> str:
    """The console script next to this interpreter (the staged venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "aiocontain"
    return str(beside) if beside.exists() else shutil.which("aiocontain") or "aiocontain"


def cli_network(rootfs: Path, name: str, repetitions: int) -> CommandCase:
    """``aiocontain run`` with another network than the default: cli.pasta (--net pasta), cli.net4 (slirp4netns
    with --ipv6=false, so that the cost of waiting for IPv6 shows)."""
    options = ["--net", "pasta"] if name == "cli.pasta" else ["--ipv6=false"]
    argv = [aiocontain_executable(), "run", "--rootfs", str(rootfs), *options]
    return CommandCase(name, [*argv, *TRUE], f"aiocontain run {' '.join(options)} /bin/true", repetitions)


def cli(rootfs: Path, network: bool, repetitions: int, overlay: bool = False, own: bool = False) -> CommandCase:
    """``aiocontain run``, a fresh interpreter each time; networking is the CLI's default (slirp4netns).
    overlay: ``--rootfs DIR:O``, the throwaway overlay, without network. By default the run server serves the
    runs (the warm-up round starts it); own: every run in the command's own process (cli.none_own, cli.net_own)."""
    argv = [aiocontain_executable(), "run", "--rootfs", f"{rootfs}:O" if overlay else str(rootfs)]
    if not network:
        argv += ["--net", "none"]
    name = "cli.overlay" if overlay else "cli.net" if network else "cli.none"
    what = "--rootfs DIR:O --net none" if overlay else "with slirp4netns" if network else "--net none"
    if own:
        return CommandCase(
            f"{name}_own", [*argv, *TRUE], f"aiocontain run {what} /bin/true, no run server", repetitions,
            env={"AIOCONTAIN_RUN_SERVER": "0"},
        )  # fmt: skip
    return CommandCase(name, [*argv, *TRUE], f"aiocontain run {what} /bin/true", repetitions)


class RunServers:
    """The run servers (aiocontain.runserver) that the CLI cases start: stopped at the end, as podman's pause
    process is, when this benchmark started them."""

    def __init__(self) -> None:
        self.before = set(self._pids())

    @staticmethod
    def _pids() -> list[int]:
        from aiocontain import runserver

        return list(runserver.running().values())

    def stop(self) -> None:
        for pid in set(self._pids()) - self.before:
            if pid > 0:
                os.kill(pid, signal.SIGTERM)


ISOLATION = {
    "cli.unconfined": (["--security-opt", "seccomp=unconfined"], "--net none, no seccomp filter"),
    "cli.privileged": (["--privileged"], "--net none --privileged (every capability, no filter, no masked paths)"),
    "cli.seccomp_cold": ([], "--net none, the seccomp cache empty: libseccomp loaded, the profile compiled"),
    "cli.tty": (["-t", "-i=false"], "--net none -t: a terminal of its own, relayed"),
}


@dataclass
class ColdCacheCase(CommandCase):
    """A command run with an empty XDG_CACHE_HOME each time: what a first run (or a new profile) costs."""

    def run(self) -> Mapping[str, float]:
        with tempfile.TemporaryDirectory(prefix="aiocontain-bench-cache-") as cache:
            os.environ["XDG_CACHE_HOME"] = cache
            try:
                return super().run()
            finally:
                del os.environ["XDG_CACHE_HOME"]


def cli_isolation(rootfs: Path, name: str, repetitions: int) -> CommandCase:
    """``aiocontain run --net none`` with one isolation feature off or changed (``ISOLATION``): beside cli.none,
    what the seccomp filter (compiled, or from the cache), the capability set and a terminal cost at start-up."""
    options, what = ISOLATION[name]
    argv = [aiocontain_executable(), "run", "--rootfs", str(rootfs), "--net", "none", *options, *TRUE]
    kind = ColdCacheCase if name == "cli.seccomp_cold" else CommandCase
    return kind(name, argv, f"aiocontain run {what} /bin/true", repetitions)


def bwrap(rootfs: Path, repetitions: int) -> CommandCase:
    """bubblewrap with aiocontain's namespaces (not --unshare-all: that adds a cgroup namespace)."""
    argv = ["bwrap", "--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
    argv += ["--uid", "0", "--gid", "0", "--hostname", "bench", "--bind", str(rootfs), "/"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", *TRUE]
    return CommandCase("bwrap.none", argv, "bwrap, same namespaces, /bin/true", repetitions)


def podman_run(rootfs: Path, network: bool, repetitions: int, overlay: bool = False) -> CommandCase:
    mode = "slirp4netns" if network else "none"
    if overlay:
        argv = podman.run_argv(Path(f"{rootfs}:O"), mode, TRUE)
        return CommandCase("podman.overlay", argv, "podman run --rootfs DIR:O --network none", repetitions)
    name = "podman.net" if network else "podman.none"
    return CommandCase(name, podman.run_argv(rootfs, mode, TRUE), f"podman run --network {mode}", repetitions)


def shell_baseline(rootfs: Path, repetitions: int) -> CommandCase:
    """unshare + slirp4netns --ready-fd in a small sh script: the floor for a networked start."""
    argv = ["sh", str(SHELL_BASELINE), str(rootfs), *TRUE]
    return CommandCase("shell.net", argv, "unshare + slirp4netns --ready-fd (sh)", repetitions)


def shell_batch(rootfs: Path, count: int, repetitions: int, sandboxed: bool = False) -> CommandCase:
    """count shell baselines at once: the floor for count networked starts at once on this machine. sandboxed:
    their slirp4netns confines itself as aiocontain's does (batch.shell_sandboxed, information only)."""
    argv = ["sh", str(SHELL_BASELINE), *(["--sandbox"] if sandboxed else []), str(rootfs), *TRUE]
    options = " --enable-sandbox --enable-seccomp" if sandboxed else ""
    what = f"{count} shell baselines (unshare + slirp4netns{options} --ready-fd) at once, until all exited"
    return CommandCase("batch.shell_sandboxed" if sandboxed else "batch.shell", argv, what, repetitions, copies=count)


def missing(*tools: str) -> list[str]:
    """The tools of a case that are not installed (the case is then skipped, and the report says why)."""
    return [tool for tool in tools if shutil.which(tool) is None]
