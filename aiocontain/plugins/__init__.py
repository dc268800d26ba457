"""Plugins: hooks into a container's lifecycle, found through entry points or passed in code.

Write one by subclassing ``Plugin`` (see ``aiocontain.plugins.api``) and
registering it in your package's ``[project.entry-points."aiocontain.plugins"]``;
the CLI loads what is installed (``aiocontain plugins`` lists it). Embedders
pass plugins explicitly: ``Container(spec, plugins=[MyPlugin()])``, or
``plugins=aiocontain.plugins.installed()`` for the installed ones.
"""

from __future__ import annotations

from aiocontain.plugins.api import (
    API_VERSION,
    HOOKS,
    SUPPORTED_API_VERSIONS,
    BindMount,
    ContainerHandle,
    ExitedContext,
    Plugin,
    PrepareContext,
    PrestartContext,
    StartedContext,
    Veto,
)
from aiocontain.plugins.loading import ENTRY_POINT_GROUP, Installed, discover, select


def installed() -> list[Plugin]:
    """The installed plugins that are enabled by default and could be loaded, in running order."""
    return select(discover())


__all__ = [
    "API_VERSION",
    "ENTRY_POINT_GROUP",
    "HOOKS",
    "SUPPORTED_API_VERSIONS",
    "BindMount",
    "ContainerHandle",
    "ExitedContext",
    "Installed",
    "Plugin",
    "PrepareContext",
    "PrestartContext",
    "StartedContext",
    "Veto",
    "discover",
    "installed",
    "select",
]
