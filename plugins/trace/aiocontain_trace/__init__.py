"""Where a container's start-up time goes: its stages as a Chrome trace, and a table of them.

aiocontain times each set-up stage (``stage.finished``/``skipped``/``failed``
carry ``duration_ms``) and each plugin hook (``hook.finished``). This plugin
turns a container's events into Chrome's Trace Event Format, which
chrome://tracing and https://ui.perfetto.dev open: one row (thread) per
container, a complete ("X") event per stage and hook nested in one for the
container's whole run, and instant events for ``command.started`` and
``container.exited``. One ``StageTrace`` can serve many containers: they share
the file, each on its own row.

The file is rewritten whole, atomically (a temporary file renamed over it),
each time a container exits, so a reader never sees half a trace.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from aiocontain.errors import AiocontainError
from aiocontain.plugins import ExitedContext, Plugin, PrepareContext

if TYPE_CHECKING:
    from aiocontain.events import Event
    from aiocontain.plugins import ContainerHandle

__all__ = ["StageTrace"]

_STAGE_ENDS = {"stage.finished": "finished", "stage.skipped": "skipped", "stage.failed": "failed"}
_INSTANTS = ("command.started", "container.exited")


class StageTrace(Plugin):
    """``--trace FILE`` on the CLI; ``StageTrace(path)`` shared by any number of containers when embedded.

    Inactive without a path. Emits no events of its own: its output is the file,
    and on the CLI a table of the stages (count, median and max ms) on stderr.
    """

    name = "trace"
    description = "write each container's stage timings as a Chrome trace (--trace FILE) and print a table"
    order = 10  # first in, so its exited hook runs last (reverse order): the others' hook timings are in
    uses_network_facts = False

    def __init__(self, path: str | os.PathLike[str] | None = None, *, table: TextIO | None = None) -> None:
        """path: the trace file (None: inactive); table: where to print the stage table after each exit."""
        self.path = Path(path) if path is not None else None
        self.table_stream = table
        self._pid = os.getpid()  # the runtime's: one process row, a thread row per container
        self._events: list[dict[str, Any]] = [_metadata("process_name", self._pid, 0, {"name": "aiocontain"})]
        self._rows: dict[str, int] = {}  # container id -> tid
        self._durations: dict[str, list[float]] = {}  # stage -> ms, of every container so far
        self._written = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--trace",
            type=Path,
            metavar="FILE",
            help="write the container's stage timings to FILE as a Chrome trace (chrome://tracing, Perfetto)",
        )

    def configure(self, args: argparse.Namespace) -> None:
        self.path = args.trace
        if self.path is not None:
            self.table_stream = sys.stderr
            self._write()  # an unwritable path is one line now, before anything starts

    async def prepare(self, context: PrepareContext) -> None:
        if self.path is not None and not self._written:
            self._write()

    async def exited(self, context: ExitedContext) -> None:
        if self.path is None:
            return
        self.add(context.container)
        self._write()
        if self.table_stream is not None:
            print(self.table(), file=self.table_stream, flush=True)

    def add(self, container: ContainerHandle) -> None:
        """Add a container's events so far (a row of its own) to the trace; written at its next exit."""
        tid = self._rows.setdefault(container.id, len(self._rows) + 1)
        short_id = container.spec.short_id
        label = container.name if container.name == short_id else f"{container.name} ({short_id})"
        self._events.append(_metadata("thread_name", self._pid, tid, {"name": label}))
        self._events.append(_metadata("thread_sort_index", self._pid, tid, {"sort_index": tid}))
        history = container.history()
        span = [event.time for event in history if event.name in ("container.created", "container.exited")]
        if len(span) == 2:
            command = {"command": " ".join(container.spec.command)}
            self._events.append(
                _event("container", "container", "X", (self._pid, tid), span[0], span[1] - span[0], command)
            )
        converted = (_converted(event, (self._pid, tid)) for event in history)
        self._events += [item for item in converted if item is not None]
        for event in history:
            if event.name in _STAGE_ENDS:
                self._durations.setdefault(str(event.fields["stage"]), []).append(float(event.fields["duration_ms"]))

    def table(self) -> str:
        """The stages of every container so far: count, median and max duration in ms."""
        import statistics  # here, not at the top: every CLI start imports the installed plugins

        rows = [("stage", "count", "median ms", "max ms")]
        for stage, durations in self._durations.items():
            rows.append((stage, str(len(durations)), f"{statistics.median(durations):.3f}", f"{max(durations):.3f}"))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        containers = len(self._rows)
        lines = [f"aiocontain: trace: {containers} container{'s' * (containers != 1)} in {self.path}"]
        for stage, *numbers in rows:
            cells = [
                stage.ljust(widths[0]),
                *(cell.rjust(width) for cell, width in zip(numbers, widths[1:], strict=True)),
            ]
            lines.append("  ".join(cells))
        return "\n".join(lines)

    def _write(self) -> None:
        import json

        assert self.path is not None
        document = {"traceEvents": self._events, "displayTimeUnit": "ms"}
        try:
            _replace(self.path, json.dumps(document, default=str, indent=None) + "\n")
        except OSError as exc:
            raise AiocontainError(f"cannot write the trace file {self.path}: {exc.strerror or exc}") from None
        self._written = True


def _replace(path: Path, text: str) -> None:
    """Write path whole or not at all: a temporary file next to it, renamed over it."""
    import tempfile

    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _us(seconds: float) -> float:
    return round(seconds * 1e6, 3)


def _metadata(name: str, pid: int, tid: int, args: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "ph": "M", "pid": pid, "tid": tid, "args": args}


def _event(
    name: str,
    category: str,
    phase: str,
    row: tuple[int, int],
    start: float,
    duration: float | None,
    args: dict[str, Any],
) -> dict[str, Any]:
    """One trace event on row (pid, tid); times in seconds here, in microseconds in the file (the format's unit)."""
    pid, tid = row
    event = {"name": name, "cat": category, "ph": phase, "pid": pid, "tid": tid, "ts": _us(start), "args": args}
    if duration is not None:
        event["dur"] = _us(duration)
    if phase == "i":
        event["s"] = "t"  # an instant on the container's row only
    return event


def _converted(event: Event, row: tuple[int, int]) -> dict[str, Any] | None:
    """A stage or hook as a complete event (it ended at event.time, after duration_ms), an instant, or None."""
    if event.name in _STAGE_ENDS or event.name == "hook.finished":
        duration = float(event.fields["duration_ms"]) / 1000
        if event.name == "hook.finished":
            name, category, args = f"{event.fields['plugin']}.{event.fields['hook']}", "hook", {}
        else:
            name, category, args = str(event.fields["stage"]), "stage", {"result": _STAGE_ENDS[event.name]}
            if "error" in event.fields:
                args["error"] = str(event.fields["error"])
        return _event(name, category, "X", row, event.time - duration, duration, args)
    if event.name in _INSTANTS:
        return _event(event.name, "container", "i", row, event.time, None, dict(event.fields))
    return None
