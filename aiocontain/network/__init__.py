"""Network drivers: one small interface, one module each (as rootlesskit does).

A driver says whether the container gets its own network namespace, what its
/etc/resolv.conf and /etc/hosts say, starts its host-side helper against the
child (``start``) and decides when the network is ready (``wait_ready``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from aiocontain.spec import ContainerSpec
    from aiocontain.stages.context import StageContext


class NetworkDriver(Protocol):
    name: str
    unshare_netns: bool
    wants_netlink: bool
    tap: str | None  # a persistent tap device the child creates in the new namespace, for the host side

    def check(self) -> None:
        """Refuse to start, with a one-line fix, when the host lacks what the driver needs."""

    def resolv_conf(self) -> str: ...

    def hosts_line(self, hostname: str) -> str: ...

    async def start(self, ctx: StageContext) -> bool:
        """Start the host side; False when there is nothing to start."""
        ...

    async def wait_ready(self, ctx: StageContext) -> dict[str, Any] | None:
        """Return facts about the ready network (address, gateway, mtu), or None if nothing to wait for."""
        ...


def driver_for(spec: ContainerSpec, describe: bool = True) -> NetworkDriver:
    """The spec's driver. describe=False: learn readiness without decoding what the kernel reports
    (slirp4netns's ready fd), so that pyroute2 is never imported; the facts are then only the interface."""
    from aiocontain.spec import NetworkMode

    if spec.network is NetworkMode.SLIRP4NETNS:
        from aiocontain.network.slirp4netns import Slirp4netns

        return Slirp4netns(
            mtu=spec.mtu,
            allow_host_loopback=spec.allow_host_loopback,
            timeout=spec.network_timeout,
            describe=describe,
            ipv6=spec.ipv6,
        )
    if spec.network is NetworkMode.PASTA:
        from aiocontain.network.pasta import Pasta

        return Pasta(
            mtu=spec.mtu,
            allow_host_loopback=spec.allow_host_loopback,
            timeout=spec.network_timeout,
            describe=describe,
            ipv6=spec.ipv6,
        )
    if spec.network is NetworkMode.HOST:
        from aiocontain.network.host import HostNetwork

        return HostNetwork()
    from aiocontain.network.none import NoNetwork

    return NoNetwork()
