"""Network drivers: one narrow interface, one module each (as rootlesskit's are).

A driver says whether the container gets a network namespace of its own, what
its /etc/resolv.conf and /etc/hosts say, and whether it needs the netlink socket
PID 1 can open in its new namespace. ``start`` is given what it may
use (``NetworkHost``: the process whose namespaces to join, the runtime
directory, a task group for its supervisor, a failure callback and the event
log) and returns a cleanup, or None when there is nothing to start;
``wait_ready`` returns a typed ``NetworkInfo`` once the network is ready. A
driver that offers an API to the plugins (slirp4netns's socket) has it as
``api``. Drivers know nothing of the stages: the network and tap stages call them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiocontain.network.driver import Api, Cleanup, NetworkDriver, NetworkHost, NetworkInfo

if TYPE_CHECKING:
    from aiocontain.spec import ContainerSpec

__all__ = ["Api", "Cleanup", "NetworkDriver", "NetworkHost", "NetworkInfo", "driver_for"]


def driver_for(spec: ContainerSpec, describe_network: bool = True) -> NetworkDriver:
    """The spec's driver. describe_network=False: learn readiness without decoding what the kernel reports
    (slirp4netns's ready fd), so that pyroute2 is never imported; the facts are then only the interface."""
    from aiocontain.spec import NetworkMode

    if spec.network is NetworkMode.SLIRP4NETNS:
        from aiocontain.network.slirp4netns import Slirp4netns

        return Slirp4netns(
            mtu=spec.mtu,
            allow_host_loopback=spec.allow_host_loopback,
            timeout=spec.network_timeout,
            describe_network=describe_network,
            ipv6=spec.ipv6,
        )
    if spec.network is NetworkMode.PASTA:
        from aiocontain.network.pasta import Pasta

        return Pasta(
            mtu=spec.mtu,
            allow_host_loopback=spec.allow_host_loopback,
            timeout=spec.network_timeout,
            describe_network=describe_network,
            ipv6=spec.ipv6,
        )
    if spec.network is NetworkMode.HOST:
        from aiocontain.network.host import HostNetwork

        return HostNetwork()
    from aiocontain.network.none import NoNetwork

    return NoNetwork()
