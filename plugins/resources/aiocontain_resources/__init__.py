"""What each container used, at its exit: peak memory, CPU time, OOM kills and peak processes.

aiocontain reads these from the container's own cgroup v2 leaf when it ends
(``ExitStatus.usage``); this plugin turns them into one event per container, for
programs and ``--events FILE``, and on request one summary line for people. A
container without a cgroup (cgroup v1 or hybrid hosts, ``--cgroups disabled``,
no delegated subtree) has no usage to report, and the plugin says so rather
than guessing.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, TextIO

from aiocontain.plugins import ExitedContext, Plugin

if TYPE_CHECKING:  # only a type here: the CLI imports every plugin at start, cgroups code is not needed for that
    from aiocontain import ResourceUsage

__all__ = ["ResourceReport", "summary"]

PREFIX = "aiocontain: resources: "
FIELDS = ("memory_peak", "cpu_usec", "oom_kills", "pids_peak")  # the event's data besides cgroup; None: unknown


class ResourceReport(Plugin):
    """Emits ``plugin.event`` kind ``usage`` at each container's exit; prints a summary line when asked.

    CLI: ``--resources-summary`` prints the line on stderr (off by default: aiocontain's
    stderr carries warnings and errors only unless asked). Embedding:
    ``ResourceReport(summary=True, stream=...)`` writes the line to ``stream`` (stderr).
    """

    name = "resources"
    description = "peak memory, CPU time and OOM kills at exit (--resources-summary prints them)"
    uses_network_facts = False

    def __init__(self, summary: bool = False, stream: TextIO | None = None) -> None:
        self.summary = summary
        self.stream = stream

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--resources-summary",
            action="store_true",
            help="print the container's peak memory, CPU time and OOM kills on stderr when it exits",
        )

    def configure(self, args: argparse.Namespace) -> None:
        self.summary = args.resources_summary

    async def exited(self, context: ExitedContext) -> None:
        usage = context.status.usage
        fields = usage.fields() if usage is not None else dict.fromkeys(FIELDS)
        self.emit(context.container, "usage", cgroup=usage is not None, **fields)
        if self.summary:
            print(PREFIX + summary(usage), file=self.stream or sys.stderr, flush=True)


def summary(usage: ResourceUsage | None) -> str:
    """'peak memory 1.2 MiB, CPU 3.4 ms, OOM kills 0, peak processes 2'; or why there is nothing to say."""
    if usage is None:
        return "no cgroup, usage unknown"
    parts = [
        f"peak memory {_size(usage.memory_peak)}",
        f"CPU {_duration(usage.cpu_usec)}",
        f"OOM kills {usage.oom_kills}",
    ]
    if usage.pids_peak is not None:  # pids.peak needs Linux 6.1
        parts.append(f"peak processes {usage.pids_peak}")
    return ", ".join(parts)


def _size(size: int | None) -> str:
    if size is None:
        return "unknown"  # memory.peak needs Linux 5.19
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} B"


def _duration(usec: int | None) -> str:
    if usec is None:
        return "unknown"
    if usec >= 1_000_000:
        return f"{usec / 1_000_000:.2f} s"
    return f"{usec / 1000:.1f} ms"
