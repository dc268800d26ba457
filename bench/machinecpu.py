"""The whole machine's CPU time a case costs, per container, from /proc/stat (stdlib only).

The batch cases are bound by the machine's cores, so their wall times track the
CPU each container costs, but not alone: the shell baselines leave the cores
idle now and then (their shells wait on one another), so a slower phase of the
machine stretches them less than it stretches a batch that keeps both cores
busy. Their CPU per container, counted by the kernel for every process and
kernel thread (a namespace's teardown runs in a worker thread after its last
process has gone), says what the wall-time ratio moves around.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bench.runner import Case, Metric

# A container's namespaces are torn down by kernel workers after it has been reaped: counted within this long.
TAIL = 0.3
_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
_BUSY_FIELDS = (0, 1, 2, 5, 6)  # user, nice, system, irq, softirq; not idle, iowait, steal, nor guest (in user)


def busy_seconds(stat: str) -> float:
    """The machine's busy time so far, from the text of /proc/stat (its first, all-CPU line)."""
    fields = stat.split("\n", 1)[0].split()
    if not fields or fields[0] != "cpu":
        raise ValueError("/proc/stat does not start with the all-CPU line")
    values = [int(value) for value in fields[1:]]
    return sum(values[index] for index in _BUSY_FIELDS) / _TICKS_PER_SECOND


def _read_stat() -> str:
    with open("/proc/stat") as stat:
        return stat.read()


@dataclass
class CpuPerContainer:
    """Runs ``case`` and adds the metric ``<case>.cpu``: the machine's busy milliseconds per container over the
    run and TAIL after it."""

    case: Case
    containers: int
    read_stat: Callable[[], str] = _read_stat
    wait: Callable[[float], None] = time.sleep
    name: str = field(init=False)
    metrics: tuple[Metric, ...] = field(init=False)
    repetitions: int = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.case.name
        self.repetitions = self.case.repetitions
        what = f"the machine's busy CPU time per container in a run of {self.name} (every process, kernel threads too)"
        self.metrics = (*self.case.metrics, Metric(f"{self.name}.cpu", "ms", what))

    def run(self) -> Mapping[str, float]:
        before = busy_seconds(self.read_stat())
        sample = dict(self.case.run())
        self.wait(TAIL)
        after = busy_seconds(self.read_stat())
        sample[f"{self.name}.cpu"] = (after - before) * 1000 / self.containers
        return sample
