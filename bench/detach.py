"""A detached container's round trip: ``run -d`` then ``rm -f``, aiocontain's against podman's (information only).

- detach.aiocontain: ``aiocontain run -d --net none --rootfs DIR /bin/sleep 600``, then ``aiocontain rm -f ID``;
- detach.podman: ``podman run -d --network none --rootfs DIR /bin/sleep 600``, then ``podman rm -f -t 0 ID``
  (runc, cgroupfs: bench/podman.py's flags; ``-t 0`` kills at once, as aiocontain's ``rm -f`` does, instead of
  waiting out the stop timeout for a PID 1 that ignores SIGTERM).

Each pair is timed whole (the metric of the case's name) and by half (``_run``, ``_rm``): ``run -d`` returns once
the container is set up and recorded, ``rm -f`` once it is dead and its record gone. aiocontain's ``run -d``
starts its monitor as a second interpreter (aiocontain/detached.py), which the run server does not serve. No
target is set for the ratio: the report prints it as information.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench import podman
from bench.external import aiocontain_executable
from bench.runner import Metric

COMMAND = ["/bin/sleep", "600"]  # alive until rm -f kills it: both runtimes really stop a running container
CASES = ("detach.aiocontain", "detach.podman")


def _output(argv: list[str], timeout: float = 120) -> str:
    """argv's stdout, stripped; RuntimeError with the tail of its stderr when it fails."""
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} exited {done.returncode}: {done.stderr.strip()[-400:]}")
    return done.stdout.strip()


@dataclass
class PairCase:
    """``run -d`` and ``rm -f`` of one container per run; either failing ends the case with its stderr's tail."""

    name: str
    run_argv: list[str]
    rm_argv: list[str]
    description: str
    repetitions: int
    metrics: tuple[Metric, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = (
            Metric(self.name, "ms", self.description),
            Metric(f"{self.name}_run", "ms", f"{self.description}: run -d alone"),
            Metric(f"{self.name}_rm", "ms", f"{self.description}: rm -f alone"),
        )

    def run(self) -> Mapping[str, float]:
        started = time.perf_counter()
        container = _output(self.run_argv).splitlines()[-1]
        detached = time.perf_counter()
        _output([*self.rm_argv, container])
        removed = time.perf_counter()
        return {
            self.name: (removed - started) * 1000,
            f"{self.name}_run": (detached - started) * 1000,
            f"{self.name}_rm": (removed - detached) * 1000,
        }


def build(name: str, rootfs: Path, repetitions: int) -> PairCase:
    """The case of that name (one of CASES)."""
    if name == "detach.podman":
        run = ["podman", *podman.GLOBAL_FLAGS, "run", "-d", "--network", "none", "--rootfs", str(rootfs), *COMMAND]
        rm = ["podman", *podman.GLOBAL_FLAGS, "rm", "-f", "-t", "0"]
        return PairCase(name, run, rm, "podman run -d --network none, then podman rm -f -t 0", repetitions)
    aiocontain = aiocontain_executable()
    run = [aiocontain, "run", "-d", "--net", "none", "--rootfs", str(rootfs), *COMMAND]
    return PairCase(name, run, [aiocontain, "rm", "-f"], "aiocontain run -d --net none, then rm -f", repetitions)


def tools(name: str) -> tuple[str, ...]:
    return ("podman", "runc") if name == "detach.podman" else ()


def unusable(name: str) -> str | None:
    return podman.unusable() if name == "detach.podman" else None
