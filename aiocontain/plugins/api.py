"""The plugin interface, version 1: a base class with one async method per lifecycle point.

A plugin subclasses ``Plugin`` and overrides the hooks it needs; the others are
never called. Hooks are awaited inside the container's task group, one plugin
after another, each under its own timeout:

- ``prepare``  before anything is started: set environment variables, add bind
  mounts, add files, or veto the run.
- ``prestart`` the namespaces, cgroup and network exist, the command has not
  started: add port forwards through slirp4netns's API, inspect, or veto.
- ``started``  the command runs.
- ``exited``   the command ended: its status and resource use. Run in reverse
  order, as teardown is; a failure here is reported and the status stands.

Order: plugins run by ``order`` (lower first), then by name; ``exited`` hooks
in the reverse of that, so the first plugin to see a container is the last to
let go of it.

Failures: a hook that raises, vetoes or times out stops the run; the caller
gets one ``AiocontainError`` naming the plugin (the CLI prints it as one line
and exits 125) and everything started is torn down. An ``AiocontainError`` the
hook raises keeps its own message and fix, as one from ``configure`` does.

``api_version`` says which version of this interface a plugin was written for;
aiocontain keeps every version it lists in ``SUPPORTED_API_VERSIONS`` working,
and skips (with a warning) a plugin that speaks another.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, Protocol

from aiocontain.mounts import Mount

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiocontain.events import Event, EventStream
    from aiocontain.spec import ContainerSpec
    from aiocontain.status import ExitStatus

API_VERSION = 1
SUPPORTED_API_VERSIONS = frozenset({1})
HOOKS = ("prepare", "prestart", "started", "exited")


class ContainerHandle(Protocol):
    """What a plugin's hooks see of a container: ``aiocontain.Container`` is one (see its documentation)."""

    id: str
    name: str
    spec: ContainerSpec

    @property
    def pid(self) -> int | None: ...

    @property
    def cgroup(self) -> Path | None: ...

    @property
    def network(self) -> dict[str, Any]: ...

    def events(self) -> EventStream: ...

    def history(self) -> list[Event]:
        """Every event of the container so far, oldest first."""
        ...

    def send_signal(self, signum: int) -> bool: ...

    def kill(self) -> bool: ...

    def _plugin_event(self, plugin: str, kind: str, data: dict[str, Any]) -> None: ...


class Veto(Exception):
    """Raised by a hook (or ``context.veto(reason)``) to stop the run before the command starts."""


@dataclass
class BindMount(Mount):
    """A host file or directory bound into the container: read-only unless asked (``ContainerSpec.mounts``
    takes the same type, and ``Mount`` for tmpfs)."""

    readonly: bool = True


@dataclass
class PrepareContext:
    """What a ``prepare`` hook may change before anything starts."""

    container: ContainerHandle
    env: dict[str, str] = field(default_factory=dict)  # set on top of the spec's environment
    mounts: list[BindMount] = field(default_factory=list)
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # target -> (content, mode)
    ports: list[tuple[str, str, int, int]] = field(default_factory=list)  # (proto, host_addr, host_port, ctr_port)

    def add_mount(self, source: str | Path, target: str, *, readonly: bool = True) -> None:
        """Bind-mount a host file or directory at an absolute path in the container."""
        if not str(target).startswith("/"):
            raise ValueError(f"mount target {target!r} is not an absolute path")
        self.mounts.append(BindMount(str(Path(source).resolve()), str(target), readonly))

    def add_file(self, target: str, content: bytes | str, *, mode: int = 0o644) -> None:
        """Put a file at an absolute path in the container: bind-mounted, so the rootfs on disk gets at most an
        empty mount point (as for /etc/hosts), never the content."""
        if not target.startswith("/"):
            raise ValueError(f"file target {target!r} is not an absolute path")
        self.files[target] = (content.encode() if isinstance(content, str) else content, mode)

    def publish(self, proto: str, host_addr: str, host_port: int, container_port: int) -> None:
        """Publish a port from the network helper's start, for a driver that takes them only there (pasta's
        -t/-u); slirp4netns's are added in prestart through its API instead."""
        self.ports.append((proto, host_addr, host_port, container_port))

    def veto(self, reason: str) -> NoReturn:
        raise Veto(reason)


@dataclass
class PrestartContext:
    """The container exists (namespaces, cgroup, network); its command has not started."""

    container: ContainerHandle
    pid: int  # the container's PID 1, on the host
    network: dict[str, Any]
    cgroup: Path | None
    _api: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] | None = None  # the network driver's, if any

    async def slirp4netns_api(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request to slirp4netns's API socket, e.g. {"execute": "add_hostfwd", "arguments": {...}}."""
        if self._api is None:
            raise RuntimeError("this container's network has no slirp4netns API (--net none or host)")
        response: dict[str, Any] = await self._api(request)
        return response

    def veto(self, reason: str) -> NoReturn:
        raise Veto(reason)


@dataclass
class StartedContext:
    container: ContainerHandle
    pid: int


@dataclass
class ExitedContext:
    container: ContainerHandle
    status: ExitStatus


class Plugin:
    """Base class of aiocontain plugins (interface version 1). Override the hooks you need."""

    name: ClassVar[str] = ""  # defaults to the entry point's name
    description: ClassVar[str] = ""
    api_version: ClassVar[int] = API_VERSION
    enabled_by_default: ClassVar[bool] = True  # False: only with --enable-plugin NAME
    order: ClassVar[int] = 100  # lower runs first (exited hooks: last)
    hook_timeout: ClassVar[float] = 10.0  # seconds each hook may take
    # False: never reads the network's facts (context.network, container.network), so the CLI need not decode
    # them (pyroute2's import) just because this plugin is installed
    uses_network_facts: ClassVar[bool] = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this plugin's options to ``aiocontain run``."""

    def configure(self, args: argparse.Namespace) -> None:
        """Read this plugin's options after parsing."""

    async def prepare(self, context: PrepareContext) -> None:
        """Before anything starts."""

    async def prestart(self, context: PrestartContext) -> None:
        """Namespaces, cgroup and network are ready; the command has not started."""

    async def started(self, context: StartedContext) -> None:
        """The command runs."""

    async def exited(self, context: ExitedContext) -> None:
        """The command ended."""

    def emit(self, container: ContainerHandle, kind: str, **data: Any) -> None:
        """Emit this plugin's own event on the container's stream: ``plugin.event`` with plugin, kind and data."""
        container._plugin_event(self.display_name(), kind, data)

    def overrides(self, hook: str) -> bool:
        """Whether this plugin has its own ``hook`` (the base class's do nothing and are not called)."""
        return getattr(type(self), hook, None) is not getattr(Plugin, hook)

    def display_name(self) -> str:
        return self.name or type(self).__name__
