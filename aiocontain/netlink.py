"""Read rtnetlink events from a socket and tell when an interface is configured.

The socket comes from the child, opened inside the container's network namespace
(see ``aiocontain.child.netdev``), where a kernel filter passes only what can
matter, and is awaited with anyio, so readiness is learnt from the kernel, never
by polling.

pyroute2 decodes the IPv4 address and default route messages, one or two of
each a container. Link messages, four a container, are read by a short walk of
their fixed header and attributes instead (``aiocontain.rtnl``): each carries
some fifty attributes that a full decode turns into objects (~250 us a
message), where only the name, flags and MTU are needed; with many containers
starting at once that was the runtime's biggest cost in the tap stage.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

import anyio

# At import, not on the first message: the tap stage imports this module before its deadline starts, and
# pyroute2's package init (100-300 ms here, seconds under emulation) must not eat into network_timeout.
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from aiocontain.rtnl import (
    HEADER,
    IFLA_IFNAME,
    IFLA_MTU,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    Ipv6State,
    attributes,
    family,
    link,
    pending,
    split,
)

__all__ = ["IFLA_IFNAME", "IFLA_MTU", "InterfaceState", "attributes", "split", "update", "wait_configured"]

_IFF_UP = 0x1
_DST_LEN = 1  # struct rtmsg: family, then the destination's prefix length


@dataclass
class InterfaceState:
    """What has been seen of one interface: enough to call it configured."""

    name: str
    index: int | None = None
    up: bool = False
    address: str | None = None
    prefixlen: int | None = None
    mtu: int | None = None
    gateway: str | None = None
    ipv6: Ipv6State | None = None  # also wait for IPv6 (slirp4netns --enable-ipv6)

    @property
    def configured(self) -> bool:
        ipv4 = self.up and self.address is not None and self.gateway is not None
        return ipv4 and (self.ipv6 is None or self.ipv6.configured)

    def as_dict(self) -> dict[str, Any]:
        return {
            "interface": self.name,
            "address": f"{self.address}/{self.prefixlen}",
            "gateway": self.gateway,
            "mtu": self.mtu,
        } | (
            {"address6": f"{self.ipv6.address}/{self.ipv6.prefixlen}", "gateway6": self.ipv6.gateway}
            if self.ipv6 is not None
            else {}
        )


def update(state: InterfaceState, kind: int, raw: bytes) -> None:
    """Fold one rtnetlink message into the state of the interface being watched."""
    if kind == RTM_NEWLINK:
        index, flags, name, mtu = link(raw)  # read once for both families
        if name == state.name.encode():
            state.index = index
            state.up = bool(flags & _IFF_UP)
            if mtu is not None:
                state.mtu = mtu
            if state.ipv6 is not None:
                state.ipv6.index = index
        return
    if state.ipv6 is not None:
        state.ipv6.update(kind, raw)
    if kind == RTM_NEWADDR and family(raw) == socket.AF_INET:
        addr = ifaddrmsg(raw)
        addr.decode()
        if addr.get_attr("IFA_LABEL") == state.name or (state.index is not None and addr["index"] == state.index):
            state.address = addr.get_attr("IFA_LOCAL") or addr.get_attr("IFA_ADDRESS")
            state.prefixlen = addr["prefixlen"]
    elif kind == RTM_NEWROUTE and family(raw) == socket.AF_INET and raw[HEADER.size + _DST_LEN] == 0:
        # Only a default route (destination length 0) is wanted: the others (local, broadcast, the subnet's;
        # six of seven here, where the kernel's filter does not drop them already) are passed over before
        # pyroute2's decode, which costs far more than this test.
        route = rtmsg(raw)
        route.decode()
        if route.get_attr("RTA_GATEWAY"):
            state.gateway = route.get_attr("RTA_GATEWAY")


async def wait_configured(sock: socket.socket, name: str, *, ipv6: bool = False) -> InterfaceState:
    """Read events until ``name`` is up with an IPv4 address and a default route exists (and, with ipv6, a
    global IPv6 address and an IPv6 default route)."""
    sock.setblocking(False)
    state = InterfaceState(name, ipv6=Ipv6State(name) if ipv6 else None)
    while not state.configured:
        await anyio.wait_readable(sock)
        for kind, raw in pending(sock):
            update(state, kind, raw)
    return state
