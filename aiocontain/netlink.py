"""Read rtnetlink events from a socket and tell when an interface is configured.

pyroute2 decodes the address and route messages; the socket itself comes from the child, opened
inside the container's network namespace (see ``aiocontain.child.netdev``), and
is awaited with anyio, so readiness is learnt from the kernel, never by polling.

Link messages are read by a short attribute walk instead: each carries some
fifty attributes (statistics, per-family settings) that pyroute2 turns into
objects, ~250 us a message, where only the name and the MTU are needed. With
many containers starting at once that was the runtime's biggest cost.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio

# At import, not on the first message: the tap stage imports this module before its deadline starts, and
# pyroute2's package init (100-300 ms here, seconds under emulation) must not eat into network_timeout.
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

RTM_NEWLINK = 16
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
IFLA_IFNAME = 3
IFLA_MTU = 4
_IFF_UP = 0x1
_HEADER = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_ATTR = struct.Struct("=HH")  # length (header included), type
_U32 = struct.Struct("=I")


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

    @property
    def configured(self) -> bool:
        return self.up and self.address is not None and self.gateway is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "interface": self.name,
            "address": f"{self.address}/{self.prefixlen}",
            "gateway": self.gateway,
            "mtu": self.mtu,
        }


def split(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Each (type, bytes) netlink message of one datagram."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, _seq, _pid = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            return
        yield kind, data[offset : offset + length]
        offset += (length + 3) & ~3


def update(state: InterfaceState, kind: int, raw: bytes) -> None:
    """Fold one rtnetlink message into the state of the interface being watched."""
    if kind == RTM_NEWLINK:
        _family, _type, index, flags, _change = _IFINFO.unpack_from(raw, _HEADER.size)
        attrs = attributes(raw, _HEADER.size + _IFINFO.size)
        if attrs.get(IFLA_IFNAME, b"").rstrip(b"\0") == state.name.encode():
            state.index = index
            state.up = bool(flags & _IFF_UP)
            if IFLA_MTU in attrs:
                (state.mtu,) = _U32.unpack_from(attrs[IFLA_MTU])
    elif kind == RTM_NEWADDR:
        addr = ifaddrmsg(raw)
        addr.decode()
        if addr.get_attr("IFA_LABEL") == state.name or (state.index is not None and addr["index"] == state.index):
            state.address = addr.get_attr("IFA_LOCAL") or addr.get_attr("IFA_ADDRESS")
            state.prefixlen = addr["prefixlen"]
    elif kind == RTM_NEWROUTE:
        route = rtmsg(raw)
        route.decode()
        if route["dst_len"] == 0 and route.get_attr("RTA_GATEWAY"):
            state.gateway = route.get_attr("RTA_GATEWAY")


def attributes(raw: bytes, offset: int) -> dict[int, bytes]:
    """The top-level attributes (rtattr: length, type, payload; 4-byte aligned) from offset on: type -> payload."""
    found: dict[int, bytes] = {}
    while offset + _ATTR.size <= len(raw):
        length, kind = _ATTR.unpack_from(raw, offset)
        if length < _ATTR.size:
            break
        found.setdefault(kind & 0x3FFF, raw[offset + _ATTR.size : offset + length])  # without NESTED/BYTEORDER
        offset += (length + 3) & ~3
    return found


async def wait_configured(sock: socket.socket, name: str) -> InterfaceState:
    """Read events until ``name`` is up with an IPv4 address and a default route exists."""
    sock.setblocking(False)
    state = InterfaceState(name)
    while not state.configured:
        await anyio.wait_readable(sock)
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            continue
        for kind, raw in split(data):
            update(state, kind, raw)
    return state
