"""Awaiting the plugins' hooks: in order, each under its timeout, failures named after the plugin."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import anyio

from aiocontain import events
from aiocontain.errors import AiocontainError, PluginError
from aiocontain.events import EventLog
from aiocontain.plugins.api import Plugin, Veto


async def run_hooks(plugins: Sequence[Plugin], hook: str, context: Any, log: EventLog) -> bool:
    """Await ``hook`` of every plugin that has one; False when none has.

    A veto, an exception or a timeout stops the run: it becomes an
    AiocontainError naming the plugin (an AiocontainError the hook raised keeps
    its message and fix, as from ``configure``), and the caller's teardown undoes
    everything (the container and its helpers included). ``exited`` hooks run in
    reverse order and their failures are only reported: the command has ended,
    and its status stands.
    """
    ordered = list(reversed(plugins)) if hook == "exited" else list(plugins)
    called = False
    for plugin in ordered:
        if not plugin.overrides(hook):
            continue
        called = True
        name = plugin.display_name()
        started = time.perf_counter()
        try:
            with anyio.fail_after(plugin.hook_timeout):
                await getattr(plugin, hook)(context)
        except Exception as exc:  # noqa: BLE001 - any failure of a plugin is reported as that plugin's
            error = _describe(name, hook, plugin.hook_timeout, exc)
            if hook != "exited":
                # info: the error itself stops the run and reaches the caller (the CLI's one line)
                log.info(events.HOOK_FAILED, plugin=name, hook=hook, error=error.message)
                raise error from None
            log.warning(events.HOOK_FAILED, plugin=name, hook=hook, error=error.message)
            continue
        log.debug(
            events.HOOK_FINISHED, plugin=name, hook=hook, duration_ms=round((time.perf_counter() - started) * 1000, 3)
        )
    return called


def _describe(name: str, hook: str, timeout: float, exc: Exception) -> PluginError:
    if isinstance(exc, Veto):
        return PluginError(f"plugin {name} stopped the run: {exc}", plugin=name)
    if isinstance(exc, TimeoutError):
        return PluginError(
            f"plugin {name}: its {hook} hook did not return within {timeout:g}s",
            plugin=name,
            fix=f"--disable-plugin {name}",
        )
    if isinstance(exc, AiocontainError):  # the plugin's own error for the user, with its own fix: as from configure
        return PluginError(f"plugin {name}: {exc.message}", plugin=name, fix=exc.fix)
    return PluginError(
        f"plugin {name} failed in its {hook} hook: {type(exc).__name__}: {exc}",
        plugin=name,
        fix=f"--disable-plugin {name}",
    )
