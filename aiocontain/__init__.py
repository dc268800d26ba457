"""aiocontain: a rootless Linux container runtime that is a first-class async library.

    async with aiocontain.Container(aiocontain.ContainerSpec(["/bin/true"])) as c:
        status = await c.wait()

The public names are loaded on first use, so that the container's own child
process (which imports ``aiocontain.child``) and the CLI's cold start do not pay
for anyio, structlog or pyroute2 before they need them.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not from typing: the child imports this package on the start-up hot path

__version__ = "0.1.0"

__all__ = [
    "AiocontainError",
    "AttachedContainer",
    "CgroupError",
    "CgroupsMode",
    "CommandNotExecutable",
    "CommandNotFound",
    "Container",
    "ContainerSpec",
    "ExecProcess",
    "ExitStatus",
    "HostPrerequisiteError",
    "NetworkError",
    "NetworkMode",
    "PluginError",
    "ResourceUsage",
    "SetupError",
    "attach",
    "run",
]

_LAZY = {
    "AiocontainError": "aiocontain.errors",
    "CommandNotExecutable": "aiocontain.errors",
    "CommandNotFound": "aiocontain.errors",
    "SetupError": "aiocontain.errors",
    "NetworkError": "aiocontain.errors",
    "CgroupError": "aiocontain.errors",
    "PluginError": "aiocontain.errors",
    "HostPrerequisiteError": "aiocontain.errors",
    "Container": "aiocontain.container",
    "ExitStatus": "aiocontain.status",
    "ExecProcess": "aiocontain.execprocess",
    "run": "aiocontain.container",
    "ContainerSpec": "aiocontain.spec",
    "NetworkMode": "aiocontain.spec",
    "CgroupsMode": "aiocontain.spec",
    "ResourceUsage": "aiocontain.cgroups.leaf",
    "attach": "aiocontain.attach",
    "AttachedContainer": "aiocontain.attach",
}

if TYPE_CHECKING:
    from typing import Any

    from aiocontain.attach import AttachedContainer, attach
    from aiocontain.cgroups.leaf import ResourceUsage
    from aiocontain.container import Container, run
    from aiocontain.errors import (
        AiocontainError,
        CgroupError,
        CommandNotExecutable,
        CommandNotFound,
        HostPrerequisiteError,
        NetworkError,
        PluginError,
        SetupError,
    )
    from aiocontain.execprocess import ExecProcess
    from aiocontain.spec import CgroupsMode, ContainerSpec, NetworkMode
    from aiocontain.status import ExitStatus


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aiocontain' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
