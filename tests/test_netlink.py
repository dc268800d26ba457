"""rtnetlink events folded into an interface's state, built with pyroute2's own message classes."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import anyio
import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from aiocontain import netlink, rtnl
from aiocontain.netlink import RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE, InterfaceState

pytestmark = pytest.mark.anyio

IFF_UP = 0x1
IFF_BROADCAST = 0x2
IFF_RUNNING = 0x40


def link(name: str, index: int, *, up: bool = True, mtu: int = 65520) -> bytes:
    msg = ifinfmsg()
    msg["header"]["type"] = RTM_NEWLINK
    msg["family"] = socket.AF_UNSPEC
    msg["index"] = index
    msg["flags"] = (IFF_UP | IFF_RUNNING if up else 0) | IFF_BROADCAST
    msg["change"] = 0xFFFFFFFF
    msg["attrs"] = [("IFLA_IFNAME", name), ("IFLA_MTU", mtu)]
    msg.encode()
    return bytes(msg.data)


def addr(
    index: int,
    *,
    local: str | None = "10.0.2.100",
    address: str | None = None,
    label: str | None = "tap0",
    prefixlen: int = 24,
) -> bytes:
    msg = ifaddrmsg()
    msg["header"]["type"] = RTM_NEWADDR
    msg["family"] = socket.AF_INET
    msg["prefixlen"] = prefixlen
    msg["index"] = index
    attrs = []
    if address is not None:
        attrs.append(("IFA_ADDRESS", address))
    if local is not None:
        attrs.append(("IFA_LOCAL", local))
    if label is not None:
        attrs.append(("IFA_LABEL", label))
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data)


def route(*, gateway: str | None = "10.0.2.2", dst: str | None = None, dst_len: int = 0, oif: int = 2) -> bytes:
    msg = rtmsg()
    msg["header"]["type"] = RTM_NEWROUTE
    msg["family"] = socket.AF_INET
    msg["dst_len"] = dst_len
    msg["table"] = 254
    msg["proto"] = 4
    msg["scope"] = 0 if gateway else 253
    msg["type"] = 1
    attrs: list[tuple[str, int | str]] = [("RTA_TABLE", 254), ("RTA_OIF", oif)]
    if dst is not None:
        attrs.append(("RTA_DST", dst))
    if gateway is not None:
        attrs.append(("RTA_GATEWAY", gateway))
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data)


def fold(name: str, *datagrams: bytes) -> InterfaceState:
    state = InterfaceState(name)
    for datagram in datagrams:
        for kind, raw in netlink.split(datagram):
            netlink.update(state, kind, raw)
    return state


# split


def test_split_one_message() -> None:
    raw = link("tap0", 2)
    assert list(netlink.split(raw)) == [(RTM_NEWLINK, raw)]


def test_split_several_concatenated_messages() -> None:
    parts = [link("lo", 1), link("tap0", 2), addr(2), route(), addr(2, local="10.0.2.101", label="tap0:1")]
    found = list(netlink.split(b"".join(parts)))
    assert [kind for kind, _ in found] == [RTM_NEWLINK, RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE, RTM_NEWADDR]
    assert [raw for _, raw in found] == parts


def test_split_honours_4_byte_alignment() -> None:
    # A message whose length is not a multiple of 4 is followed by padding up to the next boundary.
    first = bytearray(link("tap0", 2))
    first[0:4] = (len(first) - 3).to_bytes(4, "little")  # claim a length of len-3: 1 byte is padding
    second = route()
    found = list(netlink.split(bytes(first) + second))
    assert len(found) == 2
    assert found[0] == (RTM_NEWLINK, bytes(first[: len(first) - 3]))
    assert found[1] == (RTM_NEWROUTE, second)


def test_split_empty_and_short_data() -> None:
    assert list(netlink.split(b"")) == []
    assert list(netlink.split(b"\x00" * 15)) == []  # shorter than a header


def test_split_stops_at_a_corrupt_length() -> None:
    good = link("tap0", 2)
    corrupt = b"\x04\x00\x00\x00" + b"\x00" * 12  # length 4 < header size
    assert list(netlink.split(good + corrupt + route())) == [(RTM_NEWLINK, good)]


# update


def test_link_of_the_watched_interface() -> None:
    state = fold("tap0", link("tap0", 2, up=True, mtu=1500))
    assert state.index == 2
    assert state.up is True
    assert state.mtu == 1500
    assert not state.configured


def test_other_interfaces_are_ignored() -> None:
    state = fold("tap0", link("lo", 1), link("eth0", 3), link("tap01", 4), addr(3, label="eth0"))
    assert state == InterfaceState("tap0")


def test_link_going_down_again() -> None:
    state = fold("tap0", link("tap0", 2, up=True))
    assert state.up
    state = fold("tap0", link("tap0", 2, up=True) + link("tap0", 2, up=False))
    assert state.up is False
    assert state.index == 2


def test_address_by_label_before_the_link_is_known() -> None:
    state = fold("tap0", addr(2, local="10.0.2.100", label="tap0", prefixlen=24))
    assert state.address == "10.0.2.100"
    assert state.prefixlen == 24
    assert state.index is None


def test_address_by_index_without_label() -> None:
    state = fold("tap0", link("tap0", 7), addr(7, local="10.0.2.100", label=None, prefixlen=16))
    assert state.address == "10.0.2.100"
    assert state.prefixlen == 16


def test_address_of_another_index_without_label_is_ignored() -> None:
    state = fold("tap0", link("tap0", 7), addr(8, local="192.168.1.5", label=None))
    assert state.address is None
    assert state.prefixlen is None


def test_address_from_ifa_address_when_ifa_local_is_missing() -> None:
    state = fold("tap0", addr(2, local=None, address="10.0.2.55"))
    assert state.address == "10.0.2.55"


def test_ifa_local_is_preferred_over_ifa_address() -> None:
    # Point-to-point: IFA_ADDRESS is the peer, IFA_LOCAL our own address.
    state = fold("tap0", addr(2, local="10.0.2.100", address="10.0.2.1"))
    assert state.address == "10.0.2.100"


def test_default_route_sets_the_gateway() -> None:
    state = fold("tap0", route(gateway="10.0.2.2", dst_len=0))
    assert state.gateway == "10.0.2.2"


def test_non_default_route_does_not_set_the_gateway() -> None:
    state = fold("tap0", route(gateway="10.0.2.3", dst="10.1.0.0", dst_len=16))
    assert state.gateway is None


def test_default_route_without_gateway_is_ignored() -> None:
    state = fold("tap0", route(gateway=None, dst_len=0))
    assert state.gateway is None


def test_link_route_then_default_route() -> None:
    state = fold("tap0", route(gateway=None, dst="10.0.2.0", dst_len=24), route(gateway="10.0.2.2"))
    assert state.gateway == "10.0.2.2"


def test_unrelated_message_types_are_ignored() -> None:
    raw = bytearray(link("tap0", 2))
    raw[4:6] = (17).to_bytes(2, "little")  # RTM_DELLINK
    state = fold("tap0", bytes(raw))
    assert state == InterfaceState("tap0")


# configured


@pytest.mark.parametrize(
    "parts, expected",
    [
        ((), False),
        (("up",), False),
        (("addr",), False),
        (("gw",), False),
        (("up", "addr"), False),
        (("up", "gw"), False),
        (("addr", "gw"), False),
        (("down", "addr", "gw"), False),
        (("up", "addr", "gw"), True),
        (("addr", "gw", "up"), True),
        (("up", "addr", "gw", "down"), False),
    ],
)
def test_configured_needs_up_address_and_gateway(parts: tuple[str, ...], expected: bool) -> None:
    pieces = {
        "up": link("tap0", 2, up=True),
        "down": link("tap0", 2, up=False),
        "addr": addr(2),
        "gw": route(),
    }
    state = fold("tap0", b"".join(pieces[p] for p in parts))
    assert state.configured is expected


def test_configured_state_as_dict() -> None:
    state = fold("tap0", link("tap0", 2, mtu=65520) + addr(2) + route())
    assert state.configured
    assert state.as_dict() == {"interface": "tap0", "address": "10.0.2.100/24", "gateway": "10.0.2.2", "mtu": 65520}


# wait_configured, on a real datagram socket pair


@pytest.fixture
def dgram_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        yield a, b


async def test_wait_configured_reads_until_configured(dgram_pair: tuple[socket.socket, socket.socket]) -> None:
    writer, reader = dgram_pair
    datagrams = [
        link("lo", 1) + link("tap0", 2, up=False),
        link("tap0", 2, up=True, mtu=1500),
        addr(2, local="10.0.2.100", prefixlen=24),
        route(gateway=None, dst="10.0.2.0", dst_len=24) + route(gateway="10.0.2.2"),
    ]

    async def feed() -> None:
        for datagram in datagrams:
            await anyio.sleep(0.01)
            writer.send(datagram)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            state = await netlink.wait_configured(reader, "tap0")
    assert state.configured
    assert state.as_dict() == {"interface": "tap0", "address": "10.0.2.100/24", "gateway": "10.0.2.2", "mtu": 1500}
    assert state.index == 2


async def test_wait_configured_with_everything_already_queued(
    dgram_pair: tuple[socket.socket, socket.socket],
) -> None:
    writer, reader = dgram_pair
    writer.send(link("tap0", 3) + addr(3) + route())
    with anyio.fail_after(5):
        state = await netlink.wait_configured(reader, "tap0")
    assert state.configured
    assert state.index == 3


async def test_a_burst_of_datagrams_is_one_wake_up(
    dgram_pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events come in bursts (a tap's link, address and routes at once): every datagram already queued is read
    before waiting again, so a burst costs one readiness wait (an epoll registration and its removal), not one
    per datagram. The count of waits is the probe; the control is the datagrams' number."""
    writer, reader = dgram_pair
    datagrams = [link("lo", 1), link("tap0", 2), addr(2), route(gateway=None, dst="10.0.2.0", dst_len=24), route()]
    for datagram in datagrams:
        writer.send(datagram)
    waits = 0
    wait_readable = anyio.wait_readable

    async def counted(sock: socket.socket) -> None:
        nonlocal waits
        waits += 1
        await wait_readable(sock)

    monkeypatch.setattr(netlink.anyio, "wait_readable", counted)
    with anyio.fail_after(5):
        state = await netlink.wait_configured(reader, "tap0")
    assert state.configured and len(datagrams) == 5
    assert waits == 1


async def test_wait_configured_keeps_waiting_without_gateway(
    dgram_pair: tuple[socket.socket, socket.socket],
) -> None:
    writer, reader = dgram_pair
    writer.send(link("tap0", 2))
    writer.send(addr(2))
    writer.send(route(gateway=None, dst="10.0.2.0", dst_len=24))
    finished = False
    with anyio.move_on_after(0.3) as scope:
        await netlink.wait_configured(reader, "tap0")
        finished = True
    assert scope.cancelled_caught
    assert not finished
    # every datagram was consumed while it waited
    with pytest.raises(BlockingIOError):
        reader.recv(1 << 16)


async def test_wait_configured_ignores_another_interface(dgram_pair: tuple[socket.socket, socket.socket]) -> None:
    writer, reader = dgram_pair
    writer.send(link("eth0", 5) + addr(5, label="eth0") + route())
    with anyio.move_on_after(0.3) as scope:
        await netlink.wait_configured(reader, "tap0")
    assert scope.cancelled_caught


def test_link_attributes_read_as_pyroute2_reads_them_from_real_kernel_messages():
    """Every link of this host's namespace, dumped by the kernel with all its attributes (nested ones too):
    the attribute walk finds the same name and MTU as pyroute2's full decode."""
    import struct

    from aiocontain.netlink import IFLA_IFNAME, IFLA_MTU, attributes, split

    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        request = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0)
        sock.send(struct.pack("=IHHII", 16 + len(request), 18, 0x301, 1, 0) + request)  # RTM_GETLINK, dump
        links = []
        while True:
            data = sock.recv(1 << 16)
            messages = list(split(data))
            links += [raw for kind, raw in messages if kind == RTM_NEWLINK]
            if any(kind == 3 for kind, _ in messages):  # NLMSG_DONE
                break
    assert links
    for raw in links:
        decoded = ifinfmsg(raw)
        decoded.decode()
        attrs = attributes(raw, 32)
        assert attrs[IFLA_IFNAME].rstrip(b"\0").decode() == decoded.get_attr("IFLA_IFNAME")
        assert struct.unpack("=I", attrs[IFLA_MTU])[0] == decoded.get_attr("IFLA_MTU")
        state = InterfaceState(decoded.get_attr("IFLA_IFNAME"))
        netlink.update(state, RTM_NEWLINK, raw)
        assert (state.index, state.up, state.mtu) == (
            decoded["index"],
            bool(decoded["flags"] & IFF_UP),
            decoded.get_attr("IFLA_MTU"),
        )
        name = decoded.get_attr("IFLA_IFNAME")
        assert rtnl.link(raw) == (decoded["index"], decoded["flags"], name.encode(), decoded.get_attr("IFLA_MTU"))


def _dump(request_type: int, header: bytes) -> list[bytes]:
    """Every message of one rtnetlink dump of this host's namespace (RTM_GETADDR, RTM_GETROUTE)."""
    import struct

    found: list[bytes] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        sock.send(struct.pack("=IHHII", 16 + len(header), request_type, 0x301, 1, 0) + header)  # NLM_F_DUMP
        while True:
            messages = list(netlink.split(sock.recv(1 << 16)))
            found += [raw for kind, raw in messages if kind not in (2, 3)]  # not NLMSG_ERROR or NLMSG_DONE
            if any(kind == 3 for kind, _ in messages):
                return found


def test_ipv4_addresses_and_default_routes_folded_from_real_kernel_messages() -> None:
    """This host's IPv4 addresses and routes, dumped by the kernel: update folds in each address of the
    interface it watches, and a gateway from default routes only."""
    addresses = _dump(22, bytes(8))  # RTM_GETADDR; struct ifaddrmsg, family unspecified
    assert any(raw[16] == socket.AF_INET for raw in addresses)  # 127.0.0.1 at least
    for raw in addresses:
        decoded = ifaddrmsg(raw)
        decoded.decode()
        if decoded["family"] != socket.AF_INET:
            continue
        state = InterfaceState(decoded.get_attr("IFA_LABEL"))
        netlink.update(state, RTM_NEWADDR, raw)
        expected = decoded.get_attr("IFA_LOCAL") or decoded.get_attr("IFA_ADDRESS")
        assert (state.address, state.prefixlen) == (expected, decoded["prefixlen"])
    routes = _dump(26, bytes(12))  # RTM_GETROUTE; struct rtmsg
    for raw in routes:
        decoded = rtmsg(raw)
        decoded.decode()
        if decoded["family"] != socket.AF_INET:
            continue
        state = InterfaceState("any")
        netlink.update(state, RTM_NEWROUTE, raw)
        default = decoded["dst_len"] == 0 and decoded.get_attr("RTA_GATEWAY") is not None
        assert state.gateway == (decoded.get_attr("RTA_GATEWAY") if default else None)


# the kernel's filter on the event socket (aiocontain.child.netdev)

# In a network namespace of its own: lo and a persistent tap brought up, an address, a default route and a
# route to a subnet added, then the subnet route and the address removed. Prints, per socket, each event as
# (type, family, destination length).
_EVENTS_PROBE = """
import json, os, socket, sys
from pyroute2 import IPRoute
from aiocontain import rtnl
from aiocontain.child import netdev
filtered = netdev.open_netlink()
control = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
control.bind((0, 0x1 | 0x10 | 0x40 | 0x100 | 0x400))  # the same groups, no filter
netdev.bring_up("lo")
netdev.create_persistent_tap("tap0")
with IPRoute() as ipr:
    index = ipr.link_lookup(ifname="tap0")[0]
    ipr.addr("add", index=index, address="10.0.2.100", prefixlen=24)
    ipr.route("add", dst="0.0.0.0/0", gateway="10.0.2.2", oif=index)
    ipr.route("add", dst="192.0.2.0/24", gateway="10.0.2.2", oif=index)
    ipr.route("del", dst="192.0.2.0/24", gateway="10.0.2.2", oif=index)
    ipr.addr("del", index=index, address="10.0.2.100", prefixlen=24)
def events(sock):
    sock.setblocking(False)
    return [(kind, raw[16], raw[17]) for kind, raw in rtnl.pending(sock)]
json.dump({"filtered": events(filtered), "control": events(control)}, sys.stdout)
"""


def test_the_event_socket_passes_only_link_and_address_news_and_default_routes() -> None:
    """The kernel drops, on the tap stage's event socket, what the stage never reads (removals, routes that are
    not default routes): the control, an unfiltered socket on the same groups, sees those events."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("util-linux unshare is not installed")
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        pytest.skip("/dev/net/tun is not usable")
    done = subprocess.run(
        [unshare, "--user", "--map-root-user", "--net", sys.executable, "-c", _EVENTS_PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    control = [tuple(event) for event in seen["control"]]
    filtered = [tuple(event) for event in seen["filtered"]]

    def wanted(event: tuple[int, int, int]) -> bool:
        kind, _family, dst_len = event
        return kind in (RTM_NEWLINK, RTM_NEWADDR) or (kind == RTM_NEWROUTE and dst_len == 0)

    assert any(not wanted(event) for event in control)  # removals and other routes were there to drop
    assert (RTM_NEWROUTE, socket.AF_INET, 0) in control
    assert filtered == [event for event in control if wanted(event)]


def addr6(index: int, address: str, *, flags: int = 0, scope: int = 0) -> bytes:
    msg = ifaddrmsg()
    msg["header"]["type"] = RTM_NEWADDR
    msg["family"] = socket.AF_INET6
    msg["prefixlen"] = 64
    msg["index"] = index
    msg["scope"] = scope
    msg["attrs"] = [("IFA_ADDRESS", address), ("IFA_FLAGS", flags)]
    msg.encode()
    return bytes(msg.data)


def route6(gateway: str, *, oif: int = 2, dst_len: int = 0) -> bytes:
    msg = rtmsg()
    msg["header"]["type"] = RTM_NEWROUTE
    msg["family"] = socket.AF_INET6
    msg["dst_len"] = dst_len
    msg["table"] = 254
    msg["type"] = 1
    msg["attrs"] = [("RTA_TABLE", 254), ("RTA_OIF", oif), ("RTA_GATEWAY", gateway)]
    msg.encode()
    return bytes(msg.data)


IFA_F_TENTATIVE = 0x40
RT_SCOPE_LINK = 253


def test_ipv6_needs_a_usable_global_address_and_a_default_route_of_the_interface() -> None:
    from aiocontain.rtnl import Ipv6State

    state = Ipv6State("tap0")
    steps = [
        (link("tap0", 2), False),
        (addr6(2, "fe80::1", scope=RT_SCOPE_LINK), False),  # link-local: not reachable beyond the router
        (addr6(2, "fd00::5", flags=IFA_F_TENTATIVE), False),  # duplicate address detection not done
        (addr6(3, "fd00::9"), False),  # another interface's
        (route6("fe80::2", oif=3), False),  # another interface's default route
        (route6("fe80::2", dst_len=64), False),  # not a default route
        (addr6(2, "fd00::5"), False),
        (route6("fe80::2"), True),
    ]
    for raw, configured in steps:
        for kind, message in netlink.split(raw):
            state.update(kind, message)
        assert state.configured == configured, raw
    assert (state.address, state.prefixlen, state.gateway) == ("fd00::5", 64, "fe80::2")


def test_ipv4_waits_for_ipv6_when_asked_and_reports_both() -> None:
    from aiocontain.rtnl import Ipv6State

    state = InterfaceState("tap0", ipv6=Ipv6State("tap0"))
    for raw in (link("tap0", 2), addr(2), route(), addr(2), addr6(2, "fd00::5")):
        for kind, message in netlink.split(raw):
            netlink.update(state, kind, message)
    assert not state.configured  # IPv4 is, IPv6 has no route yet
    for kind, message in netlink.split(route6("fe80::2")):
        netlink.update(state, kind, message)
    assert state.configured
    facts = state.as_dict()
    assert (facts["address"], facts["address6"], facts["gateway6"]) == ("10.0.2.100/24", "fd00::5/64", "fe80::2")
