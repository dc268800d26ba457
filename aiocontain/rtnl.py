"""rtnetlink messages read by a short walk of their fixed headers and attributes, without pyroute2.

The tap stage learns the IPv6 side of tap0 (a global address and a default route,
from slirp4netns's router advertisement) from the same event socket as the IPv4
side. These few fields are cheap to read by hand, so a run that needs only
readiness, not the decoded facts, never imports pyroute2 (100-300 ms).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import anyio

RTM_NEWLINK = 16
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
IFLA_IFNAME = 3
IFLA_MTU = 4
IFA_ADDRESS = 1
IFA_FLAGS = 8
RTA_OIF = 4
RTA_GATEWAY = 5
_IFA_F_TENTATIVE = 0x40
_IFA_F_DADFAILED = 0x08
_RT_SCOPE_UNIVERSE = 0
HEADER = struct.Struct("=IHHII")
IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_ATTR = struct.Struct("=HH")  # length (header included), type
_U32 = struct.Struct("=I")


def split(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Each (type, bytes) netlink message of one datagram."""
    offset = 0
    while offset + HEADER.size <= len(data):
        length, kind, _flags, _seq, _pid = HEADER.unpack_from(data, offset)
        if length < HEADER.size:
            return
        yield kind, data[offset : offset + length]
        offset += (length + 3) & ~3


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


def link(raw: bytes) -> tuple[int, int, bytes | None, int | None]:
    """A link message's index, flags, name (without its NUL) and MTU.

    The walk stops once it has the name and the MTU: the kernel puts them among the first five of some
    fifty attributes (statistics, per-family settings), and with many containers starting at once the full
    walk of every link message, four a container, was the biggest part of the tap stage's CPU.
    """
    _family, _type, index, flags, _change = IFINFO.unpack_from(raw, HEADER.size)
    name: bytes | None = None
    mtu: int | None = None
    offset = HEADER.size + IFINFO.size
    while offset + _ATTR.size <= len(raw):
        length, kind = _ATTR.unpack_from(raw, offset)
        if length < _ATTR.size:
            break
        kind &= 0x3FFF
        if kind == IFLA_IFNAME and name is None:
            name = raw[offset + _ATTR.size : offset + length].rstrip(b"\0")
        elif kind == IFLA_MTU and mtu is None and length >= _ATTR.size + _U32.size:
            (mtu,) = _U32.unpack_from(raw, offset + _ATTR.size)
        if name is not None and mtu is not None:
            break
        offset += (length + 3) & ~3
    return index, flags, name, mtu


def family(raw: bytes) -> int:
    """The address family of an address or route message (the first byte after the netlink header)."""
    return raw[HEADER.size] if len(raw) > HEADER.size else 0


@dataclass
class Ipv6State:
    """The IPv6 side of one interface: a usable global address and a default route through it."""

    name: str
    index: int | None = None
    address: str | None = None
    prefixlen: int | None = None
    gateway: str | None = None

    @property
    def configured(self) -> bool:
        return self.address is not None and self.gateway is not None

    def update(self, kind: int, raw: bytes) -> None:
        """Fold one message in: the link's index by name, then its IPv6 address and default route."""
        if kind == RTM_NEWLINK:
            index, _flags, name, _mtu = link(raw)
            if name == self.name.encode():
                self.index = index
        elif kind == RTM_NEWADDR and family(raw) == socket.AF_INET6:
            _family, prefixlen, flags, scope, index = IFADDR.unpack_from(raw, HEADER.size)
            attrs = attributes(raw, HEADER.size + IFADDR.size)
            if IFA_FLAGS in attrs:
                (flags,) = _U32.unpack_from(attrs[IFA_FLAGS])
            # A tentative address cannot be used yet (DAD); link-local ones do not reach beyond the router.
            usable = scope == _RT_SCOPE_UNIVERSE and not flags & (_IFA_F_TENTATIVE | _IFA_F_DADFAILED)
            if index == self.index and usable and IFA_ADDRESS in attrs:
                self.address = socket.inet_ntop(socket.AF_INET6, attrs[IFA_ADDRESS])
                self.prefixlen = prefixlen
        elif kind == RTM_NEWROUTE and family(raw) == socket.AF_INET6 and raw[HEADER.size + 1] == 0:
            # A default route only (destination length, the rtmsg's second byte, 0): most are not, and are
            # passed over before their attributes are read.
            attrs = attributes(raw, HEADER.size + RTMSG.size)
            oif = _U32.unpack_from(attrs[RTA_OIF])[0] if RTA_OIF in attrs else None
            if RTA_GATEWAY in attrs and (oif is None or oif == self.index):
                self.gateway = socket.inet_ntop(socket.AF_INET6, attrs[RTA_GATEWAY])


async def wait_ipv6(sock: socket.socket, state: Ipv6State) -> Ipv6State:
    """Read events until the interface has a global IPv6 address and an IPv6 default route."""
    sock.setblocking(False)
    while not state.configured:
        await anyio.wait_readable(sock)
        for kind, raw in pending(sock):
            state.update(kind, raw)
    return state


def pending(sock: socket.socket) -> Iterator[tuple[int, bytes]]:
    """Each message of every datagram the non-blocking sock holds now: a burst of events is one wake-up."""
    while True:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return
        yield from split(data)
