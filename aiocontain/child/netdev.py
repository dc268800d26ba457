"""Network devices seen from inside the container's network namespace."""

from __future__ import annotations

import fcntl
import socket
import struct

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = "16sh22x"  # struct ifreq: name, flags, padding to 40 bytes

_RTMGRP_LINK = 0x1
_RTMGRP_IPV4_IFADDR = 0x10
_RTMGRP_IPV4_ROUTE = 0x40


def bring_up(name: str) -> None:
    """Set IFF_UP on an interface (podman brings lo up in every new network namespace)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        raw = fcntl.ioctl(sock, _SIOCGIFFLAGS, struct.pack(_IFREQ, name.encode(), 0))
        flags = struct.unpack(_IFREQ, raw)[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack(_IFREQ, name.encode(), flags | _IFF_UP))


def open_netlink() -> socket.socket:
    """A NETLINK_ROUTE socket subscribed to link, IPv4 address and route events.

    It is opened here, inside the new network namespace, because the unprivileged
    parent cannot setns() into it; the parent receives it over SCM_RIGHTS and
    learns from its events when the network is up, without polling.
    """
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    sock.bind((0, _RTMGRP_LINK | _RTMGRP_IPV4_IFADDR | _RTMGRP_IPV4_ROUTE))
    return sock
