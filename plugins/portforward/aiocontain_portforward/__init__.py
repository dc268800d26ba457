"""Publish container ports on the host: ``-p [[HOSTIP:]HOSTPORT:]CONTAINERPORT[/tcp|/udp]``, as podman's ``--publish``.

A container on ``--net slirp4netns`` or ``--net pasta`` has its own network
namespace behind user-mode networking: it reaches out, but nothing on the host
reaches in. Both helpers can listen on a host port and forward each connection
(or datagram) to the container. slirp4netns is asked through its API socket's
``add_hostfwd``, in this plugin's ``prestart`` hook; pasta takes its forwards
only as options when it starts (``-t``/``-u``), so for it the ``prepare`` hook
hands them to the network driver. Either way they are in place before the
command runs, and go with the helper when the container ends.

Without a host port (``-p 80``) a free one is picked, as podman does, and the
CLI says which on stderr; ranges (``-p 8000-8009:80-89``) publish each pair.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import socket
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from aiocontain.errors import AiocontainError
from aiocontain.plugins import ContainerHandle, Plugin, PrepareContext, PrestartContext

__all__ = ["DEFAULT_HOST_ADDR", "FORMAT", "Mapping", "PortForward"]

FORMAT = "[[HOSTIP:]HOSTPORT:]CONTAINERPORT[/tcp|/udp]"
DEFAULT_HOST_ADDR = "0.0.0.0"  # as podman: every host address
GUEST_ADDR = "10.0.2.100"  # tap0's address: slirp4netns --configure always gives it this one
NETWORKS = ("slirp4netns", "pasta")
_FIX = f"use -p {FORMAT}, ports or ranges of ports (START-END), e.g. -p 127.0.0.1:8080:80"


@dataclass(frozen=True)
class Mapping:
    """One published port: host_addr:host_port on the host to container_port in the container.

    host_port 0: a free port is picked when the container starts (``-p 80``)."""

    host_addr: str
    host_port: int
    container_port: int
    proto: str = "tcp"

    @classmethod
    def parse(cls, text: str) -> Mapping:
        """One mapping; a range of more than one port is refused (``parse_all`` takes those)."""
        mappings = cls.parse_all(text)
        if len(mappings) != 1:
            raise AiocontainError(f"invalid -p {text!r}: a range publishes {len(mappings)} ports", fix=_FIX)
        return mappings[0]

    @classmethod
    def parse_all(cls, text: str) -> list[Mapping]:
        """``[[HOSTIP:]HOSTPORT:]CONTAINERPORT[/tcp|/udp]``, each port or a START-END range (host and container
        ranges of the same length); AiocontainError naming what is wrong."""

        def bad(why: str) -> AiocontainError:
            return AiocontainError(f"invalid -p {text!r}: {why}", fix=_FIX)

        ports, slash, proto = text.partition("/")
        if not slash:
            proto = "tcp"
        elif proto not in ("tcp", "udp"):
            raise bad(f"protocol {proto!r} is not tcp or udp")
        parts = ports.split(":")
        if ports.startswith("[") or len(parts) > 3:
            raise bad("IPv6 is not supported; the host address must be IPv4")
        host, host_ports, container_ports = [DEFAULT_HOST_ADDR, ""][: 3 - len(parts)] + parts
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            raise bad(f"host address {host!r} is not an IPv4 address") from None
        inside = _ports(container_ports, "container", bad)
        if not host_ports:  # "-p 80", "-p 127.0.0.1::80": free host ports, picked at start
            return [cls(str(address), 0, port, proto) for port in inside]
        outside = _ports(host_ports, "host", bad)
        if len(outside) != len(inside):
            raise bad(
                f"host ports {host_ports} are {len(outside)}, container ports {container_ports} are {len(inside)}"
            )
        return [cls(str(address), h, c, proto) for h, c in zip(outside, inside, strict=True)]

    def __str__(self) -> str:
        return f"{self.host_addr}:{self.host_port or ''}:{self.container_port}/{self.proto}"


def _ports(text: str, which: str, bad: Callable[[str], AiocontainError]) -> list[int]:
    """A port or a START-END range of them."""
    first, dash, last = text.partition("-")
    start = _port(first, which, bad)
    if not dash:
        return [start]
    end = _port(last, which, bad)
    if end < start:
        raise bad(f"{which} port range {text!r} ends before it starts")
    return list(range(start, end + 1))


def _port(text: str, which: str, bad: Callable[[str], AiocontainError]) -> int:
    # int() alone would take " 80", "+80" and "8_0"
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise bad(f"{which} port {text!r} is not a number from 1 to 65535")
    return int(text)


def _validated(mappings: list[Mapping]) -> list[Mapping]:
    """Refuse a host port published twice: the helper would fail on the second one, after set-up."""
    for index, mapping in enumerate(mappings):
        if not mapping.host_port:
            continue  # picked free at start
        for earlier in mappings[:index]:
            same_port = (earlier.host_port, earlier.proto) == (mapping.host_port, mapping.proto)
            addresses = {earlier.host_addr, mapping.host_addr}
            if same_port and (len(addresses) == 1 or DEFAULT_HOST_ADDR in addresses):
                raise AiocontainError(
                    f"host port {mapping.host_port}/{mapping.proto} is published twice ({earlier} and {mapping})",
                    fix="give each -p its own host port",
                )
    return mappings


class PortForward(Plugin):
    """``-p``/``--publish`` on the CLI; ``PortForward(["127.0.0.1:8080:80"])`` in ``Container(spec, plugins=...)``.

    Emits ``plugin.event`` kind ``forward`` (host_addr, host_port, container_port,
    proto, id) for each forward added; ``published`` holds them with the host ports picked.
    """

    name = "portforward"
    description = f"publish container ports on the host: -p {FORMAT} (slirp4netns, pasta)"
    order = 50  # before plugins of the default order: their prestart hooks see the forwards in place
    uses_network_facts = False  # tap0 has slirp4netns --configure's fixed address (GUEST_ADDR)

    def __init__(self, publish: Iterable[str | Mapping] = ()) -> None:
        self.mappings = _validated(_expand(publish))
        self.published: list[Mapping] = []
        self.announce = False  # the CLI: say on stderr which host ports were picked
        self._picked: set[Mapping] = set()

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "-p",
            "--publish",
            action="append",
            default=[],
            metavar=FORMAT,
            help="publish a container port (or START-END range) on the host; HOSTIP defaults to 0.0.0.0, as in "
            "podman; without HOSTPORT a free one is picked and printed; repeatable",
        )

    def configure(self, args: argparse.Namespace) -> None:
        self.mappings = _validated(_expand(args.publish))
        self.announce = True
        if self.mappings and args.net not in NETWORKS:
            raise AiocontainError(f"-p needs --net slirp4netns or pasta: {_no_ports(args.net)}", fix="drop -p or --net")

    async def prepare(self, context: PrepareContext) -> None:
        # Embedders skip configure(): refuse here, before anything starts, rather than in prestart.
        network = str(context.container.spec.network)
        if self.mappings and network not in NETWORKS:
            context.veto(f"ports are published only with the slirp4netns or pasta network: {_no_ports(network)}")
        if network != "pasta":
            return
        # pasta binds its forwards as it starts, so a port that cannot be had is found here, with the reason.
        for mapping in self._resolve():
            if why := _why_refused(mapping):
                raise AiocontainError(f"cannot publish {mapping}: {why}", fix=_fix_for(mapping))
            context.publish(mapping.proto, mapping.host_addr, mapping.host_port, mapping.container_port)
            self._forwarded(context.container, mapping, None)

    async def prestart(self, context: PrestartContext) -> None:
        if str(context.container.spec.network) != "slirp4netns":
            return
        for mapping in self._resolve():
            request = {
                "execute": "add_hostfwd",
                "arguments": {
                    "proto": mapping.proto,
                    "host_addr": mapping.host_addr,
                    "host_port": mapping.host_port,
                    "guest_addr": GUEST_ADDR,
                    "guest_port": mapping.container_port,
                },
            }
            try:
                reply = await context.slirp4netns_api(request)
            except AiocontainError as exc:
                raise AiocontainError(
                    f"cannot publish {mapping}: {_why_refused(mapping) or exc.message}", fix=_fix_for(mapping)
                ) from None
            self._forwarded(context.container, mapping, reply.get("return", {}).get("id"))

    def _resolve(self) -> list[Mapping]:
        """The mappings with a free host port for each that has none, all picked while each is held, so no
        two of them get the same one (as podman, the port is free when picked, and then is the helper's)."""
        with contextlib.ExitStack() as held:
            resolved = []
            for mapping in self.mappings:
                if not mapping.host_port:
                    kind = socket.SOCK_STREAM if mapping.proto == "tcp" else socket.SOCK_DGRAM
                    probe = held.enter_context(socket.socket(socket.AF_INET, kind))
                    probe.bind((mapping.host_addr, 0))
                    mapping = Mapping(mapping.host_addr, probe.getsockname()[1], mapping.container_port, mapping.proto)
                resolved.append(mapping)
        self._picked = {m for m, asked in zip(resolved, self.mappings, strict=True) if not asked.host_port}
        return resolved

    def _forwarded(self, container: ContainerHandle, mapping: Mapping, forward_id: object) -> None:
        self.published.append(mapping)
        if self.announce and mapping in self._picked:  # the only way a CLI user learns it (podman: `podman port`)
            where = f"{mapping.host_addr}:{mapping.host_port} -> {mapping.container_port}/{mapping.proto}"
            print(f"aiocontain: published {where}", file=sys.stderr, flush=True)
        self.emit(
            container,
            "forward",
            host_addr=mapping.host_addr,
            host_port=mapping.host_port,
            container_port=mapping.container_port,
            proto=mapping.proto,
            id=forward_id,
        )


def _expand(publish: Iterable[str | Mapping]) -> list[Mapping]:
    return [m for item in publish for m in ([item] if isinstance(item, Mapping) else Mapping.parse_all(item))]


def _no_ports(network: str) -> str:
    if network == "host":
        return "with --net host the container uses the host's ports directly"
    return f"with --net {network} the container has no network to forward to"


def _why_refused(mapping: Mapping) -> str | None:
    """slirp4netns says only that add_hostfwd failed: binding the address ourselves tells why (in use, denied)."""
    kind = socket.SOCK_STREAM if mapping.proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as probe:
        try:
            probe.bind((mapping.host_addr, mapping.host_port))
        except OSError as exc:
            if exc.errno == errno.EACCES and mapping.host_port < _unprivileged_port_start():
                return f"host port {mapping.host_port} is privileged (below net.ipv4.ip_unprivileged_port_start)"
            return f"{mapping.host_addr}:{mapping.host_port}/{mapping.proto}: {exc.strerror or exc}"
    return None


def _unprivileged_port_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def _fix_for(mapping: Mapping) -> str:
    if mapping.host_port < (start := _unprivileged_port_start()):
        return f"publish on a host port from {start} up"
    return "choose another host port, or stop what uses this one"
