"""The result: medians, the ratios the project sets targets for, the table and the JSON.

Absolute times on a shared machine are noise; two cases measured side by side
in the same rounds share the noise, so their ratio is the result. A target is
met, missed, or not known (a side was not measured); missing a target is a
finding, not a failure: the benchmark's exit status says only whether it ran.
Beside each ratio of medians stands the range that 90% of resampled runs give
(the rounds drawn again): a ratio whose range straddles its limit is met by one
run and missed by the next.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.runner import Results


@dataclass(frozen=True)
class Ratio:
    """numerator's median / denominator's median, with an optional target bound."""

    label: str
    numerator: str
    denominator: str
    limit: float | None = None
    at_least: bool = False  # the target is ratio >= limit (throughput) rather than <= limit (times)

    @property
    def target(self) -> str:
        if self.limit is None:
            return ""
        return f"{'>=' if self.at_least else '<='} {self.limit:g}"

    def value(self, results: Results) -> float | None:
        top, bottom = results.median(self.numerator), results.median(self.denominator)
        if top is None or not bottom:
            return None
        return top / bottom

    def met(self, value: float | None) -> bool | None:
        if value is None or self.limit is None:
            return None
        return value >= self.limit if self.at_least else value <= self.limit

    def interval(self, results: Results) -> tuple[float, float] | None:
        """The middle 90% of the ratio of medians over resampled runs: the rounds drawn again with replacement
        (each round's pair together, as the two sides shared its noise), the ratio of the medians taken each
        time. Whether a ratio near its limit would be met by another run of the same length."""
        top, bottom = results.summaries.get(self.numerator), results.summaries.get(self.denominator)
        if top is None or bottom is None:
            return None
        # Samples are kept in round order, one a run: the first n of each side are the same n rounds.
        pairs = list(zip(top.samples, bottom.samples, strict=False))
        if len(pairs) < 5:
            return None
        draw = random.Random(0)  # the same report for the same samples
        ratios = []
        for _ in range(_RESAMPLES):
            chosen = draw.choices(pairs, k=len(pairs))
            below = statistics.median(b for _, b in chosen)
            if below:
                ratios.append(statistics.median(a for a, _ in chosen) / below)
        if not ratios:
            return None
        cuts = statistics.quantiles(ratios, n=20, method="inclusive")
        return cuts[0], cuts[-1]


_RESAMPLES = 2000


# What podman pays on each call besides create and start. A console script as pip writes it cannot go below
# site and the wrapper's `import re`, about 2.2x a bare interpreter here (python.console); 3x leaves the runtime
# its own imports of about one interpreter start.
OCI_LIGHT_LIMIT = 3.0


def ratios(batch: int) -> list[Ratio]:
    """The targets first (start-up: the CLI against podman, the embedded API against bubblewrap, a networked
    batch against the bare tools' batch), then the earlier targets and ratios that explain them."""
    return [
        Ratio("CLI start-to-exit with network / podman", "cli.net", "podman.net", 0.5),
        Ratio("CLI start-to-exit, no network / podman", "cli.none", "podman.none", 0.4),
        Ratio("embedded start-to-exit, no network / bubblewrap", "embedded.none", "bwrap.none", 1.5),
        Ratio(f"{batch} networked at once / {batch} shell baselines at once", "batch.concurrent", "batch.shell", 1.2),
        Ratio("embedded with network / podman", "embedded.net", "podman.net", 0.5),
        Ratio("embedded, back to back / with a pause before each", "embedded.back_to_back", "embedded.none"),
        Ratio("throughput, default MTU / MTU 1500", "throughput.default_mtu", "throughput.mtu1500", 4.0, True),
        Ratio("CLI with network, no run server / podman", "cli.net_own", "podman.net"),
        Ratio("CLI, no network, no run server / podman", "cli.none_own", "podman.none"),
        Ratio("CLI, no network: served / no run server", "cli.none", "cli.none_own"),
        Ratio("CLI, no seccomp filter / the default filter from the cache", "cli.unconfined", "cli.none"),
        Ratio("CLI, --privileged / default isolation", "cli.privileged", "cli.none"),
        Ratio("CLI, the seccomp cache empty / the default filter from the cache", "cli.seccomp_cold", "cli.none"),
        Ratio("CLI, -t (a terminal, relayed) / none", "cli.tty", "cli.none"),
        Ratio(
            f"{batch} networked at once / {batch} shell baselines at once, the machine's CPU per container",
            "batch.concurrent.cpu",
            "batch.shell.cpu",
        ),
        Ratio(
            f"{batch} networked at once / {batch} shell baselines whose slirp4netns confines itself as ours does",
            "batch.concurrent",
            "batch.shell_sandboxed",
        ),
        Ratio(
            "the same, the machine's CPU per container",
            "batch.concurrent.cpu",
            "batch.shell_sandboxed.cpu",
        ),
        Ratio(f"{batch} concurrent / one networked container", "batch.concurrent", "embedded.net"),
        Ratio("CLI, --rootfs DIR:O / plain rootfs", "cli.overlay", "cli.none"),
        Ratio("podman, --rootfs DIR:O / plain rootfs", "podman.overlay", "podman.none"),
        Ratio("CLI, --rootfs DIR:O / podman's", "cli.overlay", "podman.overlay"),
        Ratio("CLI, no network / bubblewrap", "cli.none", "bwrap.none"),
        Ratio("embedded, no network / podman", "embedded.none", "podman.none"),
        Ratio("CLI with network / shell baseline", "cli.net", "shell.net"),
        Ratio("embedded with network / shell baseline", "embedded.net", "shell.net"),
        Ratio("podman with network / shell baseline", "podman.net", "shell.net"),
        Ratio(f"{batch} one after another / {batch} concurrent", "batch.sequential", "batch.concurrent"),
        Ratio(f"{batch} shell baselines at once / one", "batch.shell", "shell.net"),
        Ratio("CLI start-to-exit, pasta / slirp4netns (lower: pasta starts faster)", "cli.pasta", "cli.net"),
        Ratio("CLI start-to-exit, slirp4netns with IPv6 / without", "cli.net", "cli.net4"),
        Ratio(
            "throughput container -> host loopback, pasta / slirp4netns", "throughput.pasta", "throughput.default_mtu"
        ),
        Ratio("throughput host -> -p -> container, pasta / slirp4netns", "published.pasta", "published.slirp4netns"),
        Ratio("podman run --rm /bin/true, aiocontain-oci / runc", "oci.podman", "oci.podman_runc", 1.3),
        *(
            Ratio(f"aiocontain-oci {name} / python -I -S -c pass", f"oci.{name}", "python.pass", OCI_LIGHT_LIMIT)
            for name in ("state", "kill", "delete", "list")
        ),
        Ratio("a console script's floor / python -I -S -c pass", "python.console", "python.pass"),
        Ratio("run -d + rm -f, aiocontain / podman (information: no target)", "detach.aiocontain", "detach.podman"),
        Ratio("run -d alone, aiocontain / podman", "detach.aiocontain_run", "detach.podman_run"),
        Ratio("rm -f alone, aiocontain / podman", "detach.aiocontain_rm", "detach.podman_rm"),
    ]


def _first_line(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else None


def machine() -> dict[str, Any]:
    """What the numbers were measured on (the load average says how shared the machine was)."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        "unknown",
    )
    try:
        debian = Path("/etc/debian_version").read_text().strip()
    except OSError:
        debian = None
    try:
        version = metadata.version("aiocontain")
    except metadata.PackageNotFoundError:
        version = None
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "debian": debian,
        "python": platform.python_version(),
        "cgroups": "hybrid (v1 controllers + empty v2)" if Path("/sys/fs/cgroup/unified").is_dir() else "unified v2",
        "user": os.getuid(),
        "load_average": list(os.getloadavg()),
        "versions": {
            "aiocontain": version,
            "bwrap": _first_line(["bwrap", "--version"]),
            "podman": _first_line(["podman", "--version"]),
            "runc": _first_line(["runc", "--version"]),
            "slirp4netns": _first_line(["slirp4netns", "--version"]),
            "unshare": _first_line(["unshare", "--version"]),
        },
    }


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def table(results: Results, checks: list[Ratio], skipped: dict[str, str]) -> str:
    """Markdown: one table of medians, one of ratios with targets, then what was skipped or failed."""
    lines = ["| case | median | min | max | n | what |", "| --- | ---: | ---: | ---: | ---: | --- |"]
    for name, summary in results.summaries.items():
        samples = summary.samples
        cells = [_number(summary.median if samples else None), _number(min(samples, default=None))]
        cells += [_number(max(samples, default=None)), str(len(samples))]
        unit = summary.metric.unit
        lines.append(f"| {name} ({unit}) | {' | '.join(cells)} | {summary.metric.description} |")
    lines += [
        "",
        "| ratio of medians | value | target | met | 90% of resampled runs |",
        "| --- | ---: | --- | --- | --- |",
    ]
    for ratio in checks:
        value = ratio.value(results)
        met = ratio.met(value)
        verdict = "" if ratio.limit is None else {True: "yes", False: "**no**", None: "not measured"}[met]
        interval = ratio.interval(results)
        spread = f"{_number(interval[0])}-{_number(interval[1])}" if interval else ""
        lines.append(f"| {ratio.label} | {_number(value)} | {ratio.target} | {verdict} | {spread} |")
    notes = [f"- skipped {name}: {why}" for name, why in skipped.items()]
    notes += [f"- failed {name}: {error}" for name, error in results.errors.items()]
    return "\n".join([*lines, "", *notes] if notes else lines)


def document(
    results: Results, checks: list[Ratio], settings: dict[str, Any], extra: dict[str, Any], host: dict[str, Any]
) -> dict[str, Any]:
    """Everything in the table, plus every sample, the settings, the machine and podman's probe."""
    host = {**host, "load_average_end": list(os.getloadavg())}
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": host,
        "settings": settings,
        "seconds": round(results.seconds, 1),
        "metrics": {
            name: {
                "unit": summary.metric.unit,
                "description": summary.metric.description,
                "higher_is_better": summary.metric.higher_is_better,
                "median": summary.median if summary.samples else None,
                "samples": summary.samples,
            }
            for name, summary in results.summaries.items()
        },
        "ratios": [
            {
                "label": ratio.label,
                "numerator": ratio.numerator,
                "denominator": ratio.denominator,
                "value": ratio.value(results),
                "target": ratio.target or None,
                "met": ratio.met(ratio.value(results)),
                "interval_90": ratio.interval(results),
            }
            for ratio in checks
        ],
        "errors": results.errors,
        **extra,
    }


def write_json(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n")
