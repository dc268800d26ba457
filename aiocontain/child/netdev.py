"""Network devices seen from inside the container's network namespace."""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import sys

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = "16sh22x"  # struct ifreq: name, flags, padding to 40 bytes

_TUNSETIFF = 0x400454CA
_TUNSETPERSIST = 0x400454CB
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_TUN_IFREQ = "16sH22x"  # struct ifreq: name, flags (unsigned short), padding to 40 bytes

_RTMGRP_LINK = 0x1
_RTMGRP_IPV4_IFADDR = 0x10
_RTMGRP_IPV4_ROUTE = 0x40
_RTMGRP_IPV6_IFADDR = 0x100
_RTMGRP_IPV6_ROUTE = 0x400

_SO_ATTACH_FILTER = 26
_RTM_NEWLINK = 16
_RTM_NEWADDR = 20
_RTM_NEWROUTE = 24


def _event_filter() -> tuple[ctypes.Array[ctypes.c_char], bytes]:
    """A classic BPF program for the event socket: only link and address news and default routes pass.

    The tap stage reads ~25 rtnetlink events a container, of which it uses ten: the rest are the removals
    and the local, broadcast, multicast and subnet routes of both families. The kernel drops those here
    (each notification is one message a datagram), so that the runtime is not woken for them. Made once, at
    import: the child passes the buffer's address only, and never touches ctypes itself.
    """

    def insn(code: int, jt: int, jf: int, k: int) -> bytes:
        return struct.pack("=HBBI", code, jt, jf, k)

    ld_h, ld_b, jeq, ret = 0x28, 0x30, 0x15, 0x06  # BPF_LD|BPF_H|BPF_ABS, BPF_LD|BPF_B|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K

    # Absolute loads read in network byte order; nlmsg_type is the host's: compare it in the order loaded.
    def loaded(value: int) -> int:
        return int.from_bytes(value.to_bytes(2, sys.byteorder), "big")

    program = b"".join(
        [
            insn(ld_h, 0, 0, 4),  # nlmsghdr.nlmsg_type
            insn(jeq, 4, 0, loaded(_RTM_NEWLINK)),  # -> accept
            insn(jeq, 3, 0, loaded(_RTM_NEWADDR)),  # -> accept
            insn(jeq, 0, 3, loaded(_RTM_NEWROUTE)),  # else -> drop
            insn(ld_b, 0, 0, 17),  # rtmsg.rtm_dst_len, after the 16-byte header and rtm_family
            insn(jeq, 0, 1, 0),  # a default route -> accept, else -> drop
            insn(ret, 0, 0, 0xFFFFFFFF),  # accept: the whole message
            insn(ret, 0, 0, 0),  # drop
        ]
    )
    buffer = ctypes.create_string_buffer(program, len(program))
    return buffer, struct.pack("@HP", len(program) // 8, ctypes.addressof(buffer))  # struct sock_fprog


_FILTER_PROGRAM, _FILTER = _event_filter()  # the program's buffer must live as long as the process


def bring_up(name: str) -> None:
    """Set IFF_UP on an interface (podman brings lo up in every new network namespace)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        raw = fcntl.ioctl(sock, _SIOCGIFFLAGS, struct.pack(_IFREQ, name.encode(), 0))
        flags = struct.unpack(_IFREQ, raw)[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack(_IFREQ, name.encode(), flags | _IFF_UP))


def create_persistent_tap(name: str) -> None:
    """Create a tap device that outlives its file descriptor (IFF_PERSIST), for slirp4netns to attach to.

    A tap that dies with the descriptor of its last user is unregistered when
    slirp4netns exits, and unregistering waits for RCU grace periods: ~20 ms
    in the exiting slirp4netns, on the path of every networked container's
    teardown. A persistent one goes with its network namespace instead, which
    the kernel destroys in the background once nothing holds it.
    """
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, _TUNSETIFF, struct.pack(_TUN_IFREQ, name.encode(), _IFF_TAP | _IFF_NO_PI))
            fcntl.ioctl(fd, _TUNSETPERSIST, 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot create {name} through /dev/net/tun: {exc.strerror}") from None
    _quick_ipv6(name)


def _quick_ipv6(name: str) -> None:
    """IPv6 on the tap at once, so the address and route the tap stage waits for come within milliseconds of
    the helper attaching. Harmless without IPv6.

    - No duplicate address detection (the user-mode router is its only neighbour) and no random delay of up
      to a second before the router solicitation.
    - Up before the helper attaches: IPv6 starts only once the kernel's link watch has marked the link
      operational, and it handles the carrier coming on at once only for a running device; for a device
      still down it batches the event, up to a second after its last run (one start in twenty here).
    """
    bring_up(name)
    for setting in ("accept_dad", "router_solicitation_delay"):
        try:
            # os, not open(): the text layer's objects, made in a forked child, cost ~80 us and 20 page faults
            fd = os.open(f"/proc/sys/net/ipv6/conf/{name}/{setting}", os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            continue  # a kernel without IPv6: nothing to speed up
        try:
            os.write(fd, b"0")
        except OSError:
            pass
        finally:
            os.close(fd)


def open_netlink() -> socket.socket:
    """A NETLINK_ROUTE socket subscribed to link, address and route events (IPv4 and IPv6), filtered by the
    kernel to those the tap stage uses (``_event_filter``).

    It is opened here, inside the new network namespace, because the unprivileged
    parent cannot setns() into it; the parent receives it over SCM_RIGHTS and
    learns from its events when the network is up, without polling.
    """
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, _FILTER)  # before bind: no event comes unfiltered
    except OSError:
        pass  # only a saving: the tap stage passes over the events the filter would drop, too
    sock.bind((0, _RTMGRP_LINK | _RTMGRP_IPV4_IFADDR | _RTMGRP_IPV4_ROUTE | _RTMGRP_IPV6_IFADDR | _RTMGRP_IPV6_ROUTE))
    return sock
