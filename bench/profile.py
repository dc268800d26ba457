"""Where a container's time goes: ``python -m bench.profile --rootfs DIR`` (run as the bench user).

The benchmark says how long; this says where, from aiocontain's own events
(each stage's duration, and the timestamps of created, command.started, exited
and teardown.finished) and from ``python -X importtime``:

- the CLI: process start to ``container.created`` (interpreter and imports), the
  stages, teardown, and ``teardown.finished`` to process exit (interpreter
  finalization);
- embedded: the same stages in a warm interpreter;
- a batch from one event loop, at once and one after another: wall time, how
  many cores its processes kept busy (runtime and reaped children, from
  getrusage), and each stage's median and maximum;
- the imports of the CLI and of the fork server (once per process): the total, the
  biggest top-level imports (cumulative), and self time by top-level package.

Medians of ``--runs`` runs after one unrecorded run. docs/performance.md has what
it found on the build machine.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio

import aiocontain
from aiocontain import ContainerSpec, NetworkMode, events, run
from bench.external import aiocontain_executable

Event = dict[str, Any]
_IMPORT = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)")


def _when(event: Event) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def phases(found: list[Event], started: float, ended: float | None) -> dict[str, float]:
    """Milliseconds per phase of one run, from its events and the wall-clock start (and end) around it."""
    first = {event["event"]: _when(event) for event in reversed(found)}
    out = {"start -> container.created": (first[events.CREATED] - started) * 1000}
    for event in found:
        if event["event"] in (events.STAGE_FINISHED, events.STAGE_SKIPPED):
            out[f"stage {event['stage']}"] = event["duration_ms"]
    out["command.started -> exited"] = (first[events.EXITED] - first[events.COMMAND_STARTED]) * 1000
    out["exited -> teardown.finished"] = (first[events.TEARDOWN_FINISHED] - first[events.EXITED]) * 1000
    if ended is not None:
        out["teardown.finished -> process exit"] = (ended - first[events.TEARDOWN_FINISHED]) * 1000
    out["total"] = ((ended or first[events.TEARDOWN_FINISHED]) - started) * 1000
    return out


def show(title: str, runs: list[dict[str, float]]) -> None:
    print(f"{title} (median of {len(runs)}, ms)")
    for key in runs[0]:
        print(f"  {key:36s} {statistics.median(run[key] for run in runs):8.1f}")


def _json_lines(text: str) -> list[Event]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def cli(rootfs: Path, network: str, runs: int) -> None:
    argv = [aiocontain_executable(), "run", "--log-format", "json", "--log-level", "info", "--rootfs", str(rootfs)]
    argv += ["--net", network, "/bin/true"]
    found = []
    for number in range(runs + 1):
        started = time.time()
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=True)
        ended = time.time()
        if number:
            found.append(phases(_json_lines(done.stderr), started, ended))
    show(f"CLI, --net {network}", found)


def _spec(rootfs: Path, network: str) -> ContainerSpec:
    return ContainerSpec(["/bin/true"], rootfs=rootfs, network=NetworkMode(network))


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


async def embedded(rootfs: Path, runs: int, batch: int) -> None:
    """Single runs, then the batch, all in this interpreter with events captured as JSON."""
    stream = io.StringIO()
    events.configure("json", "info", stream=stream)
    for network in ("none", "slirp4netns"):
        found = []
        for number in range(runs + 1):
            stream.seek(0)
            stream.truncate()
            started = time.time()
            await run(_spec(rootfs, network))
            if number:
                found.append(phases(_json_lines(stream.getvalue()), started, time.time()))
        show(f"embedded, network {network}", found)
    for network in ("none", "slirp4netns"):
        for concurrent in (True, False):
            stream.seek(0)
            stream.truncate()
            cpu, started = _cpu_seconds(), time.perf_counter()
            if concurrent:
                async with anyio.create_task_group() as tg:
                    for _ in range(batch):
                        tg.start_soon(run, _spec(rootfs, network))
            else:
                for _ in range(batch):
                    await run(_spec(rootfs, network))
            wall = time.perf_counter() - started
            busy = (_cpu_seconds() - cpu) / wall
            stages: dict[str, list[float]] = {}
            for event in _json_lines(stream.getvalue()):
                if event["event"] == events.STAGE_FINISHED:
                    stages.setdefault(event["stage"], []).append(event["duration_ms"])
            how = "at once" if concurrent else "one after another"
            print(f"{batch} containers, network {network}, {how}: {wall * 1000:.0f} ms, {busy:.2f} cores busy")
            print(
                "  stage median/max ms: "
                + ", ".join(f"{k} {statistics.median(v):.0f}/{max(v):.0f}" for k, v in stages.items())
            )


def imports(title: str, argv: list[str]) -> None:
    """The import profile of argv run with ``-X importtime`` (the second of two runs: a warm page cache)."""
    command = [sys.executable, "-X", "importtime", *argv]
    subprocess.run(command, capture_output=True, stdin=subprocess.DEVNULL, check=True)
    rows = _import_rows(subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL).stderr)
    top = [row for row in rows if row[2] == 0]
    by_package: dict[str, int] = {}
    for own, _, _, name in rows:
        by_package[name.split(".")[0]] = by_package.get(name.split(".")[0], 0) + own
    print(f"{title}: {sum(row[1] for row in top) / 1000:.0f} ms of imports in {len(rows)} modules")
    print("  biggest top-level (cumulative ms): " + _listing((row[3], row[1]) for row in top))
    print("  self time by package (ms): " + _listing(by_package.items()))


def _import_rows(text: str) -> list[tuple[int, int, int, str]]:
    """(self us, cumulative us, depth, module) per -X importtime line."""
    rows = []
    for line in text.splitlines():
        match = _IMPORT.match(line)
        if match:
            rows.append((int(match[1]), int(match[2]), len(match[3]) // 2, match[4]))
    return rows


def _listing(pairs: Iterable[tuple[str, int]], most: int = 8) -> str:
    ordered = sorted(pairs, key=lambda pair: -pair[1])[:most]
    return ", ".join(f"{name} {microseconds / 1000:.0f}" for name, microseconds in ordered)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("--rootfs", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    for network in ("none", "slirp4netns"):
        cli(args.rootfs, network, args.runs)
    for network in ("none", "slirp4netns"):
        imports(
            f"CLI, --net {network}",
            ["-m", "aiocontain", "run", "--rootfs", str(args.rootfs), "--net", network, "/bin/true"],
        )
    # The fork server as an embedding process starts it: python -I -S, the package's directory on sys.path.
    root = Path(aiocontain.__file__).resolve().parent.parent
    boot = f"import sys; sys.path.insert(0, {str(root)!r}); import aiocontain.child.forkserver"
    imports("fork server (python -I -S, once per process)", ["-I", "-S", "-c", boot])
    anyio.run(embedded, args.rootfs, args.runs, args.batch)


if __name__ == "__main__":
    main()
