"""Lifecycle events: the catalogue of stable names and fields, and how they are emitted.

Every event goes two ways at once: to structlog (``structlog.get_logger("aiocontain")``,
configured by the embedding program, or by the CLI through ``configure``) and,
as a typed ``Event``, to the container's own event stream
(``Container.events()``). The catalogue below is the contract: a test fails when
code emits an event or a field that it does not list, and docs/events.md is
checked against it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO, cast

import anyio

CREATED = "container.created"
STAGE_STARTED = "stage.started"
STAGE_FINISHED = "stage.finished"
STAGE_FAILED = "stage.failed"
STAGE_SKIPPED = "stage.skipped"
IDMAP_MAPPED = "idmap.mapped"
CGROUP_CREATED = "cgroup.created"
SLIRP_STARTED = "slirp4netns.started"
PASTA_STARTED = "pasta.started"
NETWORK_READY = "network.ready"
RELEASED = "container.released"
COMMAND_STARTED = "command.started"
SIGNAL_FORWARDED = "signal.forwarded"
KILLED = "container.killed"
OOM = "container.oom"
HELPER_FAILED = "helper.failed"
HOOK_FINISHED = "hook.finished"
HOOK_FAILED = "hook.failed"
EXITED = "container.exited"
TEARDOWN_FINISHED = "teardown.finished"
PLUGIN_SKIPPED = "plugin.skipped"
PLUGIN_EVENT = "plugin.event"

COMMON_FIELDS = ("container_id", "name")  # on every event of a container


@dataclass(frozen=True)
class EventSpec:
    """One catalogue entry: the level it is emitted at, its fields (beyond the common ones), what it means."""

    level: str  # "info/warning": either
    fields: tuple[str, ...]
    meaning: str
    container: bool = True  # False: emitted outside any container (plugin loading)


CATALOGUE: dict[str, EventSpec] = {
    CREATED: EventSpec(
        "info", ("command", "rootfs", "network", "labels", "annotations"), "the container's set-up begins"
    ),
    STAGE_STARTED: EventSpec("info", ("stage",), "a set-up stage begins"),
    STAGE_FINISHED: EventSpec("info", ("stage", "duration_ms"), "a set-up stage is done"),
    STAGE_SKIPPED: EventSpec("info", ("stage", "duration_ms"), "a stage had nothing to do (no network, no cgroup)"),
    STAGE_FAILED: EventSpec("info", ("stage", "duration_ms", "error"), "a stage failed or was cancelled"),
    IDMAP_MAPPED: EventSpec("debug", ("mode", "uid_range", "gid_range"), "uid/gid maps written: subordinate or single"),
    CGROUP_CREATED: EventSpec(
        "debug",
        ("path", "controllers", "memory", "memory_swap", "pids_limit", "cpus"),
        "the container's cgroup leaf exists with its limits",
    ),
    SLIRP_STARTED: EventSpec(
        "debug", ("pid", "mtu", "host_loopback", "ipv6"), "slirp4netns runs against the container"
    ),
    PASTA_STARTED: EventSpec(
        "debug", ("pid", "mtu", "host_loopback", "ipv6", "ports"), "pasta runs against the container"
    ),
    NETWORK_READY: EventSpec(
        "info",
        ("interface", "address", "gateway", "mtu", "address6", "gateway6"),
        "tap0 is up with its address and default route (and with IPv6 its IPv6 ones)",
    ),
    RELEASED: EventSpec("info", ("pid",), "PID 1 may build its root and exec the command"),
    COMMAND_STARTED: EventSpec("info", ("pid", "command"), "the command was executed"),
    SIGNAL_FORWARDED: EventSpec("info", ("signal",), "a signal was sent to the container's PID 1"),
    KILLED: EventSpec("info", (), "the container's PID 1 was sent SIGKILL"),
    OOM: EventSpec(
        "warning", ("pid", "oom_kills", "memory_limit", "limit"), "the OOM killer killed a process of the container"
    ),
    HELPER_FAILED: EventSpec(
        "info",
        ("helper", "error"),
        "a helper (slirp4netns, pasta) failed; the container is killed and the run fails with it",
    ),
    HOOK_FINISHED: EventSpec("debug", ("plugin", "hook", "duration_ms"), "a plugin's hook returned"),
    HOOK_FAILED: EventSpec(
        "info/warning",
        ("plugin", "hook", "error"),
        "a plugin's hook raised, timed out or vetoed (info: the error stops the run; warning: an exited hook)",
    ),
    EXITED: EventSpec(
        "info",
        (
            "pid",
            "exit_code",
            "signal",
            "duration_ms",
            "oom_killed",
            "memory_peak",
            "cpu_usec",
            "oom_kills",
            "pids_peak",
        ),
        "the command ended; resource use where the container had a cgroup",
    ),
    TEARDOWN_FINISHED: EventSpec(
        "info/warning", ("error",), "everything the container used is gone (warning: with an error)"
    ),
    PLUGIN_EVENT: EventSpec(
        "info", ("plugin", "kind", "data"), "a plugin's own event (Plugin.emit): its kind and data are the plugin's"
    ),
    PLUGIN_SKIPPED: EventSpec(
        "warning", ("plugin", "error"), "a plugin could not be loaded; runs go on without it", container=False
    ),
}


@dataclass(frozen=True)
class Event:
    """One lifecycle event, as embedders receive it from ``Container.events()``."""

    name: str
    level: str
    container_id: str
    container_name: str
    time: float  # time.time() when emitted
    fields: Mapping[str, Any] = field(default_factory=dict)


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# Set by ``configure`` (the CLI): events below the level never reach structlog, which is imported and set up
# only when the first event at the level comes (importing it costs the CLI tens of milliseconds). Without
# ``configure`` (embedding) every event goes to structlog, whose configuration is the application's.
_threshold = 0
_pending: tuple[str, str, TextIO | None] | None = None


def _structlog() -> Any:
    """structlog, imported now, and set up as ``configure`` asked if it has not been yet."""
    global _pending
    import structlog

    if _pending is not None:
        log_format, level, stream = _pending
        _pending = None
        renderer: Any = (
            structlog.processors.JSONRenderer() if log_format == "json" else structlog.dev.ConsoleRenderer(colors=False)
        )
        structlog.configure(
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                renderer,
            ],
            wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level.lower()]),
            logger_factory=structlog.PrintLoggerFactory(file=cast("TextIO", _Output(stream or sys.stderr))),
            cache_logger_on_first_use=False,
        )
    return structlog


class _Output:
    """The stream aiocontain's own structlog set-up prints events to. Once its reader has gone (a broken pipe:
    ``aiocontain run --log-level info ... 2>&1 | head``), events are dropped there instead of raised into the
    run: a container does not fail because nobody reads its log any more."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._broken = False

    def write(self, text: str) -> int:
        if not self._broken:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._broken = True
        return len(text)

    def flush(self) -> None:
        if not self._broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._broken = True


def _structlog_logger(**context: Any) -> Any:
    """structlog's logger for aiocontain.

    Until the application configures structlog, events go to stderr at warning
    level and above, not to structlog's default of everything on stdout: a
    container's stdout belongs to the container and the embedding program.
    """
    structlog = _structlog()
    if structlog.is_configured():
        return structlog.get_logger("aiocontain").bind(**context)
    return structlog.wrap_logger(
        structlog.PrintLogger(_Output(sys.stderr)),
        processors=[structlog.processors.add_log_level, structlog.dev.ConsoleRenderer(colors=False)],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    ).bind(**context)


class _Levels:
    """``debug``, ``info`` and ``warning``, each ``emit`` at that level."""

    def emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        raise NotImplementedError

    def debug(self, event: str, **fields: Any) -> None:
        self.emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self.emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.emit("warning", event, fields)


class _Logger(_Levels):
    """Events to structlog, bound to a context; structlog is imported at the first event let through."""

    def __init__(self, **context: Any) -> None:
        self._context = context
        self._log: Any = None

    def emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        if _LEVELS[level] < _threshold:
            return
        if self._log is None:
            if _LEVELS[level] < logging.WARNING and not _structlog().is_configured():
                # Unconfigured, structlog would drop it (see _structlog_logger): no logger made per container
                # for events nobody reads. Once the application configures structlog, its next event makes one.
                return
            self._log = _structlog_logger(**self._context)
        getattr(self._log, level)(event, **fields)


class EventLog(_Levels):
    """A container's emitter: each event goes to structlog and to the container's typed event stream.

    The stream keeps the container's whole history (a few dozen events), so a
    subscriber that starts late still sees every event from container.created on.
    """

    def __init__(self, container_id: str, name: str) -> None:
        self.container_id = container_id
        self.name = name
        self.history: list[Event] = []
        self.closed = False
        self._log = _Logger(container_id=container_id, name=name)
        self._changed: anyio.Event | None = None

    def emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        self._log.emit(level, event, fields)
        self.history.append(Event(event, level, self.container_id, self.name, time.time(), dict(fields)))
        self._wake()

    def close(self) -> None:
        """No more events: every stream ends once it has delivered the history."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def changed(self) -> None:
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    def stream(self) -> EventStream:
        return EventStream(self)


class EventStream:
    """``async for event in container.events()``: every event from the first, ending after teardown."""

    def __init__(self, log: EventLog) -> None:
        self._log = log
        self._index = 0

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        while self._index >= len(self._log.history):
            if self._log.closed:
                raise StopAsyncIteration
            await self._log.changed()
        event = self._log.history[self._index]
        self._index += 1
        return event


# Kept for code that emitted through a bare structlog logger (e.g. plugin loading, outside any container).
def logger(**context: Any) -> _Logger:
    return _Logger(**context)


def configure(log_format: str = "console", level: str = "warning", stream: TextIO | None = None) -> None:
    """Send events to stderr (never stdout: that is the container's), as console lines or JSON.

    structlog is set up when the first event at this level comes: a run that logs
    nothing never imports it.
    """
    global _threshold, _pending
    _threshold = _LEVELS[level.lower()]
    _pending = (log_format, level, stream)


def as_json(event: Event) -> dict[str, Any]:
    """One event as the JSON object `--events FILE` writes (one a line)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event.time)) + f".{int(event.time % 1 * 1e6):06d}Z"
    return {
        "event": event.name,
        "level": event.level,
        "timestamp": stamp,
        "container_id": event.container_id,
        "name": event.container_name,
        **event.fields,
    }


async def timed_stage(log: EventLog, stage: str, body: Callable[[], Awaitable[bool | None]]) -> None:
    """Run one set-up stage between its start and end events; a body returning False was skipped."""
    log.info(STAGE_STARTED, stage=stage)
    started = time.perf_counter()
    try:
        result = await body()
    except BaseException as exc:
        log.info(STAGE_FAILED, stage=stage, duration_ms=_ms(started), error=str(exc) or type(exc).__name__)
        raise
    log.info(STAGE_SKIPPED if result is False else STAGE_FINISHED, stage=stage, duration_ms=_ms(started))


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
