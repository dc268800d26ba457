"""Finding installed plugins through the ``aiocontain.plugins`` entry-point group.

A plugin that cannot be imported, is not a Plugin, or speaks an interface
version this aiocontain does not is skipped: it is listed with the reason, and
each run says so in one warning line and goes on without it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from aiocontain import entrypoints
from aiocontain.errors import AiocontainError
from aiocontain.plugins.api import SUPPORTED_API_VERSIONS, Plugin

ENTRY_POINT_GROUP = entrypoints.PLUGINS


@dataclass
class Installed:
    """One entry point of the group: the loaded plugin, or why it could not be."""

    name: str
    distribution: str  # "name version" of the package that provides it
    plugin: Plugin | None
    error: str | None = None
    options: list[tuple[str, str, object]] = field(default_factory=list)  # its run options: dest, spelling, default

    @property
    def enabled_by_default(self) -> bool:
        return self.plugin is not None and self.plugin.enabled_by_default


def discover(entries: Sequence[entrypoints.Entry] | None = None) -> list[Installed]:
    """Every installed plugin, in the order they run (``order``, then name); entries: the group's entry points,
    when the caller has them already (``aiocontain.entrypoints``, cached between runs)."""
    found: list[Installed] = []
    for name, value, dist in entrypoints.entry_points(ENTRY_POINT_GROUP) if entries is None else entries:
        try:
            plugin = _instantiate(_load(value))
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break aiocontain
            found.append(Installed(name, dist, None, f"cannot be loaded: {type(exc).__name__}: {exc}"))
            continue
        if plugin is None:
            found.append(Installed(name, dist, None, "is not an aiocontain.plugins.Plugin"))
        elif plugin.api_version not in SUPPORTED_API_VERSIONS:
            supported = ", ".join(map(str, sorted(SUPPORTED_API_VERSIONS)))
            error = f"speaks plugin interface version {plugin.api_version}; this aiocontain speaks {supported}"
            found.append(Installed(name, dist, None, error))
        else:
            if not plugin.name:
                # Known by its entry point's name: messages must name what --disable-plugin takes.
                setattr(plugin, "name", name)  # noqa: B010 - an instance's own name, not the ClassVar
            found.append(Installed(plugin.name, dist, plugin))
    return sorted(found, key=lambda item: (item.plugin.order if item.plugin else 0, item.name))


def _load(value: str) -> object:
    """Import "module:attr.sub" as an entry point names it (extras in [...] are ignored)."""
    module, _, attr = value.split("[", 1)[0].strip().partition(":")
    obj: object = importlib.import_module(module.strip())
    for part in filter(None, attr.strip().split(".")):
        obj = getattr(obj, part)
    return obj


def _instantiate(obj: object) -> Plugin | None:
    """The entry point names a Plugin subclass, a factory returning one, or an instance."""
    if isinstance(obj, Plugin):
        return obj
    if callable(obj):
        made = obj()
        return made if isinstance(made, Plugin) else None
    return None


def select(installed: list[Installed], enable: Iterable[str] = (), disable: Iterable[str] = ()) -> list[Plugin]:
    """The plugins of one run: those enabled by default or asked for, minus those disabled."""
    enable, disable = set(enable), set(disable)
    known = {item.name for item in installed}
    for name in sorted((enable | disable) - known):
        raise AiocontainError(f"no plugin named {name!r} is installed", fix="aiocontain plugins lists them")
    if enable & disable:
        raise AiocontainError(f"plugin {sorted(enable & disable)[0]!r} is both enabled and disabled")
    for item in installed:
        if item.name in enable and item.plugin is None:
            raise AiocontainError(f"--enable-plugin {item.name}: {item.error}", fix="aiocontain plugins says why")
    chosen = []
    for item in installed:
        wanted = (item.enabled_by_default or item.name in enable) and item.name not in disable
        if wanted and item.plugin is not None:
            chosen.append(item.plugin)
    return chosen
