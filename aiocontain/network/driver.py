"""The network driver interface: what a driver is given, what it returns, and the protocol it follows."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from aiocontain.errors import AiocontainError
    from aiocontain.events import EventLog

Cleanup = Callable[[], Awaitable[None]]
Api = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class NetworkInfo:
    """What a ready network looks like from inside: its interface and, when decoded, address, gateway and MTU."""

    interface: str
    address: str | None = None  # with its prefix length: "10.0.2.100/24"
    gateway: str | None = None
    mtu: int | None = None
    address6: str | None = None  # IPv6, where the driver waited for it: "fd00::5054:ff:fe12:3456/64"
    gateway6: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """As network.ready and ``Container.network`` show it: the interface alone when nothing was decoded."""
        if self.address is None:
            return {"interface": self.interface}
        facts = {"interface": self.interface, "address": self.address, "gateway": self.gateway, "mtu": self.mtu}
        if self.address6 is not None:
            facts |= {"address6": self.address6, "gateway6": self.gateway6}
        return facts


@dataclass(frozen=True)
class NetworkHost:
    """What a driver's host side is given: never the container's whole state."""

    pid: int  # the process whose user and network namespaces the helper joins
    runtime_dir: Path  # the container's runtime directory, for the helper's sockets; gone once the command runs
    tg: TaskGroup  # for the helper's supervisor, which ends with the container
    failed: Callable[[AiocontainError], None]  # the helper failed: the run stops with this error
    log: EventLog


class NetworkDriver(Protocol):
    name: str
    unshare_netns: bool
    describe_network: bool  # decode the facts (netlink socket, pyroute2), rather than only learn readiness
    wants_netlink: bool  # the child opens a netlink socket in the new namespace: for the facts, or for what
    # the helper's own readiness does not cover (slirp4netns's IPv6, which comes later by RA)
    tap: str | None  # a persistent tap device the child creates in the new namespace, for the host side

    @property
    def api(self) -> Api | None:
        """The helper's API for the plugins (``PrestartContext.slirp4netns_api``), None when it has none."""
        ...

    def check(self) -> None:
        """Refuse to start, with a one-line fix, when the host lacks what the driver needs."""

    def resolv_conf(self) -> str: ...

    def hosts_line(self, hostname: str) -> str: ...

    async def start(self, host: NetworkHost) -> Cleanup | None:
        """Start the host side; its cleanup, or None when there is nothing to start."""
        ...

    async def wait_ready(self, netlink: socket.socket | None) -> NetworkInfo | None:
        """The ready network's facts, or None if there is nothing to wait for."""
        ...
