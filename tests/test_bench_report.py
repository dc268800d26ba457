"""bench/report.py's range of resampled runs: what says whether a ratio near its target is met reliably."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmark is not part of the package

from bench.report import Ratio, table
from bench.runner import Metric, Results, Summary


def _results(**samples: list[float]) -> Results:
    results = Results()
    for name, values in samples.items():
        results.summaries[name] = Summary(Metric(name, "ms", name), values)
    return results


def test_rounds_are_resampled_in_pairs_so_a_drift_both_sides_share_cancels() -> None:
    # The machine's speed drifts threefold over the run, on both sides alike: every round's ratio is 1.5.
    drift = [1 + 2 * i / 20 for i in range(21)]
    results = _results(a=[150 * f for f in drift], b=[100 * f for f in drift])
    interval = Ratio("a / b", "a", "b", 1.6).interval(results)
    assert interval == pytest.approx((1.5, 1.5))
    # Control: the sides drawn apart, as if measured at unrelated times, would spread from ~1 to ~2.
    shuffled = _results(a=[150 * f for f in drift], b=[100 * f for f in reversed(drift)])
    low, high = Ratio("a / b", "a", "b").interval(shuffled) or (0, 0)
    assert low < 1.2 and high > 1.8


def test_a_ratio_whose_rounds_straddle_its_target_gets_a_range_across_it() -> None:
    # Rounds at 1.1x and 1.3x in turn: the ratio of medians lands on one side or the other by luck.
    results = _results(a=[110.0, 130.0] * 8, b=[100.0] * 16)
    ratio = Ratio("a / b", "a", "b", 1.2)
    low, high = ratio.interval(results) or (0, 0)
    assert low < 1.2 < high
    assert low >= 1.1 and high <= 1.3


def test_no_range_from_too_few_rounds_or_a_side_not_measured() -> None:
    assert Ratio("a / b", "a", "b").interval(_results(a=[1.0] * 4, b=[1.0] * 4)) is None
    assert Ratio("a / b", "a", "b").interval(_results(a=[1.0] * 9)) is None


def test_the_table_shows_the_range_beside_the_ratio() -> None:
    results = _results(a=[150.0, 160.0, 140.0, 150.0, 155.0], b=[100.0] * 5)
    row = next(line for line in table(results, [Ratio("a / b", "a", "b", 1.2)], {}).splitlines() if "a / b" in line)
    assert row.startswith("| a / b | 1.5 | <= 1.2 | **no** | 1.4-1.6")


def test_a_batchs_cpu_per_container_is_the_machines_busy_time_over_the_run_and_its_tail() -> None:
    from bench import machinecpu

    ticks = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal guest guest_nice: only user, nice, system, irq and softirq count
    stats = iter(
        [
            "cpu  100 10 50 9000 30 5 5 70 40 0\ncpu0 1 2 3\n",
            f"cpu  {100 + 3 * ticks} 10 {50 + ticks} {9000 + 50 * ticks} {30 + ticks} 5 {5 + ticks} {70 + ticks} 40 0",
        ]
    )
    waited: list[float] = []

    class Batch:
        name = "batch.concurrent"
        metrics = (Metric("batch.concurrent", "ms", "wall"),)
        repetitions = 3

        def run(self) -> dict[str, float]:
            return {"batch.concurrent": 420.0}

    case = machinecpu.CpuPerContainer(Batch(), 50, read_stat=lambda: next(stats), wait=waited.append)
    assert [metric.name for metric in case.metrics] == ["batch.concurrent", "batch.concurrent.cpu"]
    assert case.name == "batch.concurrent" and case.repetitions == 3
    sample = case.run()
    # 3 s of user, 1 of system and 1 of softirq over 50 containers; the idle, iowait and steal seconds do not count.
    assert sample == {"batch.concurrent": 420.0, "batch.concurrent.cpu": pytest.approx(100.0)}
    assert waited == [machinecpu.TAIL]


def test_the_busy_time_is_read_from_this_machines_proc_stat() -> None:
    from bench import machinecpu

    with open("/proc/stat") as stat:
        first = machinecpu.busy_seconds(stat.read())
    sum(range(3_000_000))  # busy for a moment
    with open("/proc/stat") as stat:
        second = machinecpu.busy_seconds(stat.read())
    assert 0 < first <= second
    with pytest.raises(ValueError):
        machinecpu.busy_seconds("intr 1 2 3\n")
