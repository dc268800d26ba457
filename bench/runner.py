"""Interleave the cases and collect their samples.

Every repetition is one round over all cases still due, so that whatever else
loads this shared machine while the benchmark runs (another test suite, a VM)
is spread over every case alike instead of landing on the one that happened to
run then. The order within a round rotates by one each round, so that no case
always follows the same neighbour (a 50-container burst leaves the machine busy
for a moment). Warm-up rounds run first and are not recorded: they fill the page
cache, let podman create its storage and the embedded interpreter import what it
imports lazily.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Metric:
    """One measured quantity; a case yields one sample of each of its metrics per run."""

    name: str
    unit: str
    description: str
    higher_is_better: bool = False


class Case(Protocol):
    """Something to measure: ``run`` performs it once and returns a value per metric name."""

    name: str
    metrics: tuple[Metric, ...]
    repetitions: int

    def run(self) -> Mapping[str, float]: ...


@dataclass
class Summary:
    """The samples of one metric and their median."""

    metric: Metric
    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


@dataclass
class Results:
    """What a run measured: per metric its samples; per failed case its error."""

    summaries: dict[str, Summary] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def median(self, metric: str) -> float | None:
        summary = self.summaries.get(metric)
        return summary.median if summary and summary.samples else None


def run_interleaved(
    cases: Sequence[Case], warmup: int = 1, progress: Callable[[str], None] | None = None, settle: float = 0.0
) -> Results:
    """Run ``warmup`` unrecorded rounds, then rounds until every case has its repetitions.

    A case that raises is dropped from the later rounds and its error kept: the
    other cases still finish, and the report says what failed. ``settle`` seconds
    pass, untimed, before each run: what a run leaves to do in the background (a
    fork server's spare made ready, a helper's exit, the kernel's cleanup of its
    namespaces) then lands in no other case's time.
    """
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    results = Results()
    for case in cases:
        for metric in case.metrics:
            results.summaries[metric.name] = Summary(metric, [])
    started = time.perf_counter()
    rounds = max((case.repetitions for case in cases), default=0)
    for number in range(-warmup, rounds):
        due = [case for case in cases if number < case.repetitions and case.name not in results.errors]
        if not due:
            continue
        shift = number % len(due)
        label = f"warm-up {number + warmup + 1}/{warmup}" if number < 0 else f"round {number + 1}/{rounds}"
        say(f"bench: {label}: {', '.join(case.name for case in due)}")
        for case in due[shift:] + due[:shift]:
            time.sleep(settle)
            try:
                sample = case.run()
            except Exception as exc:  # noqa: BLE001 - one broken case must not hide the others' numbers
                results.errors[case.name] = f"{type(exc).__name__}: {exc}"
                say(f"bench: {case.name} failed, dropped: {results.errors[case.name]}")
                continue
            if number >= 0:
                for name, value in sample.items():
                    results.summaries[name].samples.append(value)
    results.seconds = time.perf_counter() - started
    return results
