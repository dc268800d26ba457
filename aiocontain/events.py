"""Structured events: stable names, and the structlog pipeline the CLI writes them with.

The library only emits through ``structlog.get_logger("aiocontain")``; an
embedding service configures structlog as it likes. The CLI calls ``configure``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import structlog

CREATED = "container.created"
STAGE_STARTED = "stage.started"
STAGE_FINISHED = "stage.finished"
STAGE_FAILED = "stage.failed"
STAGE_SKIPPED = "stage.skipped"
NETWORK_READY = "network.ready"
RELEASED = "container.released"
COMMAND_STARTED = "command.started"
SIGNAL_FORWARDED = "signal.forwarded"
KILLED = "container.killed"
OOM = "container.oom"
EXITED = "container.exited"
HELPER_FAILED = "helper.failed"
TEARDOWN_FINISHED = "teardown.finished"

Logger = Any  # structlog's BoundLogger is a protocol-like proxy; keep the public surface simple


def logger(**context: Any) -> Logger:
    """The container's event logger.

    Until the application configures structlog, events go to stderr at warning
    level and above, not to structlog's default of everything on stdout: a
    container's stdout belongs to the container and the embedding program.
    """
    if structlog.is_configured():
        return structlog.get_logger("aiocontain").bind(**context)
    return structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr),
        processors=[structlog.processors.add_log_level, structlog.dev.ConsoleRenderer(colors=False)],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    ).bind(**context)


def configure(log_format: str = "console", level: str = "warning", stream: TextIO | None = None) -> None:
    """Send events to stderr (never stdout: that is the container's), as console lines or JSON."""
    renderer: Any = (
        structlog.processors.JSONRenderer() if log_format == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


async def timed_stage(log: Logger, stage: str, body: Callable[[], Awaitable[bool | None]]) -> None:
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
