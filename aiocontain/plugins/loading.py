"""Finding installed plugins through the ``aiocontain.plugins`` entry-point group.

A plugin that cannot be imported, is not a Plugin, or speaks an interface
version this aiocontain does not is skipped: it is listed with the reason, and
each run says so in one warning line and goes on without it.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from aiocontain.errors import AiocontainError
from aiocontain.plugins.api import SUPPORTED_API_VERSIONS, Plugin

ENTRY_POINT_GROUP = "aiocontain.plugins"


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


def discover() -> list[Installed]:
    """Every installed plugin, in the order they run (``order``, then name)."""
    found: list[Installed] = []
    for name, value, dist in entry_points(ENTRY_POINT_GROUP):
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


def entry_points(group: str) -> Iterator[tuple[str, str, str]]:
    """(name, "module:attr", "distribution version") of each entry point in group, first on sys.path winning.

    Reads the installed distributions' entry_points.txt directly: importlib.metadata
    costs ~55 ms of imports on every CLI start, for a few small text files.
    """
    seen: set[str] = set()
    for directory in sys.path:
        try:
            names = sorted(os.listdir(directory or "."))
        except OSError:
            continue
        for info in names:
            if not info.endswith((".dist-info", ".egg-info")):
                continue
            dist, _, version = info.rsplit(".", 1)[0].partition("-")
            key = dist.lower().replace("-", "_")
            if key in seen:
                continue
            seen.add(key)
            try:
                with open(os.path.join(directory or ".", info, "entry_points.txt"), encoding="utf-8") as file:
                    text = file.read()
            except OSError:
                continue
            for name, value in _section(text, group):
                yield name, value, f"{dist} {version}".strip()


def _section(text: str, group: str) -> Iterator[tuple[str, str]]:
    """The ``name = value`` lines of one [group] of an entry_points.txt (an INI file)."""
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip()
        elif current == group and "=" in line:
            name, _, value = line.partition("=")
            yield name.strip(), value.strip()


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
