"""Cases that run in the embedded interpreter (``bench.worker``), and the runner's side of its pipes.

The start and batch cases share one worker for the whole run, started before
the first round, so they interleave with the command cases like any other. It
is a process apart from the runner so that the runner's own work (timing the
other cases, the throughput server) never shares its event loop. The memory
case starts a fresh worker per run (see ``MemoryCase``).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procfs import KIB_PER_MIB
from bench.runner import Metric

CALL_TIMEOUT = 600.0


class Worker:
    """The embedded interpreter, started once; ``call`` sends a request and waits for its answer."""

    def __init__(self, rootfs: Path, backend: str) -> None:
        self.backend = backend
        requests_r, self._requests = os.pipe()
        self._responses, responses_w = os.pipe()
        argv = [sys.executable, "-m", "bench.worker", "--rootfs", str(rootfs), "--backend", backend]
        argv += ["--requests", str(requests_r), "--responses", str(responses_w)]
        cwd = Path(__file__).resolve().parent.parent  # where the bench package is importable
        try:
            self.process = subprocess.Popen(
                argv, pass_fds=(requests_r, responses_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd=cwd
            )
        finally:
            os.close(requests_r)
            os.close(responses_w)
        self._reader = os.fdopen(self._responses, "rb")

    def call(self, op: str, **args: Any) -> dict[str, float]:
        os.write(self._requests, json.dumps({"op": op, "args": args}).encode() + b"\n")
        ready, _, _ = select.select([self._reader], [], [], CALL_TIMEOUT)
        line = self._reader.readline() if ready else b""
        if not line:
            raise RuntimeError(f"the embedded worker gave no answer to {op} (exit status {self.process.poll()})")
        reply = json.loads(line)
        if not reply["ok"]:
            raise RuntimeError(reply["error"])
        result: dict[str, float] = reply["result"]
        return result

    def close(self) -> None:
        os.close(self._requests)  # end of file: the worker's loop ends
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.close()


@dataclass
class WorkerCase:
    """One request to the worker per run; ``convert`` turns its answer into metric values."""

    name: str
    metrics: tuple[Metric, ...]
    repetitions: int
    worker: Worker
    op: str
    args: dict[str, Any]
    convert: Callable[[dict[str, float]], dict[str, float]]

    def run(self) -> Mapping[str, float]:
        return self.convert(self.worker.call(self.op, **self.args))


def _milliseconds(name: str) -> Callable[[dict[str, float]], dict[str, float]]:
    return lambda answer: {name: answer["seconds"] * 1000}


def start(worker: Worker, network: bool, repetitions: int) -> WorkerCase:
    """One /bin/true after another in the running interpreter."""
    name = "embedded.net" if network else "embedded.none"
    what = "slirp4netns" if network else "none"
    metric = Metric(name, "ms", f"aiocontain.run(/bin/true), network {what}, {worker.backend}, warm interpreter")
    args = {"network": "slirp4netns" if network else "none"}
    return WorkerCase(name, (metric,), repetitions, worker, "start", args, _milliseconds(name))


BACK_TO_BACK = 10  # containers in a row in one run of embedded.back_to_back


def back_to_back(worker: Worker, repetitions: int) -> WorkerCase:
    """BACK_TO_BACK containers without network one after another, with no pause between: per container. Beside
    embedded.none (a pause before each), what a start costs the next one (work left to do after a container
    exits, a spare made ready) when containers come in a row."""
    name = "embedded.back_to_back"
    what = f"aiocontain.run(/bin/true) x {BACK_TO_BACK}, network none, no pause between, per container"
    metric = Metric(name, "ms", f"{what}, {worker.backend}")
    args = {"count": BACK_TO_BACK, "concurrent": False, "network": "none"}

    def per_container(answer: dict[str, float]) -> dict[str, float]:
        return {name: answer["seconds"] * 1000 / BACK_TO_BACK}

    return WorkerCase(name, (metric,), repetitions, worker, "batch", args, per_container)


def batch(worker: Worker, count: int, concurrent: bool, repetitions: int) -> WorkerCase:
    """count networked containers from one event loop: concurrently, or one after another."""
    name = "batch.concurrent" if concurrent else "batch.sequential"
    how = "at once in one task group" if concurrent else "one after another"
    metric = Metric(name, "ms", f"{count} networked /bin/true {how}, until all exited")
    args = {"count": count, "concurrent": concurrent}
    return WorkerCase(name, (metric,), repetitions, worker, "batch", args, _milliseconds(name))


MEMORY_METRICS = {
    "memory.runtime_rss_growth": "embedding interpreter's RSS growth per running container",
    "memory.slirp4netns_rss": "RSS of one slirp4netns",
    "memory.slirp4netns_pss": "PSS of one slirp4netns",
    "memory.total_per_container": "runtime growth + slirp4netns PSS (PID 1 is the command by then: none of ours)",
}
_MEASURED_BY_WORKER = (
    "runtime_rss_growth",
    "slirp4netns_rss",
    "slirp4netns_pss",
)


@dataclass
class MemoryCase:
    """count networked containers running sleep at once; what each costs the runtime (MiB).

    Each run has a worker of its own, warmed by one container: in the shared
    worker, the arenas that a 50-container batch left behind would absorb the
    growth and hide it.
    """

    rootfs: Path
    backend: str
    count: int
    repetitions: int
    name: str = "memory"
    metrics: tuple[Metric, ...] = ()

    def __post_init__(self) -> None:
        self.metrics = tuple(
            Metric(name, "MiB", f"{what} ({self.count} running)") for name, what in MEMORY_METRICS.items()
        )

    def run(self) -> Mapping[str, float]:
        worker = Worker(self.rootfs, self.backend)
        try:
            worker.call("start", network="slirp4netns")
            answer = worker.call("memory", count=self.count)
        finally:
            worker.close()
        if answer["helpers_seen"] != self.count:
            raise RuntimeError(f"expected {self.count} helper processes, found {answer['helpers_seen']:g}")
        values = {f"memory.{key}": answer[key] / KIB_PER_MIB for key in _MEASURED_BY_WORKER}
        values["memory.total_per_container"] = values["memory.runtime_rss_growth"] + values["memory.slirp4netns_pss"]
        return values
