"""Publish container ports on the host: ``-p [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|/udp]``, as podman's ``--publish``.

A container on ``--net slirp4netns`` has its own network namespace behind
user-mode NAT: it reaches out, but nothing on the host reaches in. slirp4netns
can listen on a host port and forward each connection (or datagram) to the
container; its API socket's ``add_hostfwd`` asks it to. This plugin validates
the mappings before anything starts and adds them in its ``prestart`` hook, so
they are in place before the command runs; they go with slirp4netns when the
container ends.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from aiocontain.errors import AiocontainError
from aiocontain.plugins import ContainerHandle, Plugin, PrepareContext, PrestartContext

__all__ = ["DEFAULT_HOST_ADDR", "FORMAT", "Mapping", "PortForward"]

FORMAT = "[HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|/udp]"
DEFAULT_HOST_ADDR = "0.0.0.0"  # as podman: every host address
GUEST_ADDR = "10.0.2.100"  # tap0's address: slirp4netns --configure always gives it this one
_FIX = f"use -p {FORMAT}, e.g. -p 127.0.0.1:8080:80"


@dataclass(frozen=True)
class Mapping:
    """One published port: host_addr:host_port on the host to container_port in the container."""

    host_addr: str
    host_port: int
    container_port: int
    proto: str = "tcp"

    @classmethod
    def parse(cls, text: str) -> Mapping:
        """``[HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|/udp]``; AiocontainError naming what is wrong."""

        def bad(why: str) -> AiocontainError:
            return AiocontainError(f"invalid -p {text!r}: {why}", fix=_FIX)

        ports, slash, proto = text.partition("/")
        if not slash:
            proto = "tcp"
        elif proto not in ("tcp", "udp"):
            raise bad(f"protocol {proto!r} is not tcp or udp")
        parts = ports.split(":")
        if len(parts) == 2:
            parts.insert(0, DEFAULT_HOST_ADDR)
        if ports.startswith("[") or len(parts) > 3:
            raise bad("IPv6 is not supported; the host address must be IPv4")
        if len(parts) != 3:
            raise bad("expected HOSTPORT:CONTAINERPORT, with an optional IPv4 HOSTIP: in front")
        host, host_port, container_port = parts
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            raise bad(f"host address {host!r} is not an IPv4 address") from None
        return cls(str(address), _port(host_port, "host", bad), _port(container_port, "container", bad), proto)

    def __str__(self) -> str:
        return f"{self.host_addr}:{self.host_port}:{self.container_port}/{self.proto}"


def _port(text: str, which: str, bad: Callable[[str], AiocontainError]) -> int:
    # int() alone would take " 80", "+80" and "8_0"
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise bad(f"{which} port {text!r} is not a number from 1 to 65535")
    return int(text)


def _validated(mappings: list[Mapping]) -> list[Mapping]:
    """Refuse a host port published twice: slirp4netns would fail on the second one, after set-up."""
    for index, mapping in enumerate(mappings):
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
    proto, id) for each forward added.
    """

    name = "portforward"
    description = f"publish container ports on the host: -p {FORMAT} (slirp4netns)"
    order = 50  # before plugins of the default order: their prestart hooks see the forwards in place
    uses_network_facts = False  # tap0 has slirp4netns --configure's fixed address (GUEST_ADDR)

    def __init__(self, publish: Iterable[str | Mapping] = ()) -> None:
        self.mappings = _validated([m if isinstance(m, Mapping) else Mapping.parse(m) for m in publish])

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "-p",
            "--publish",
            action="append",
            default=[],
            metavar=FORMAT,
            help="publish a container port on the host (HOSTIP defaults to 0.0.0.0, as in podman); repeatable",
        )

    def configure(self, args: argparse.Namespace) -> None:
        self.mappings = _validated([Mapping.parse(text) for text in args.publish])
        if self.mappings and args.net != "slirp4netns":
            raise AiocontainError(f"-p needs --net slirp4netns: {_no_ports(args.net)}", fix="drop -p or --net")

    async def prepare(self, context: PrepareContext) -> None:
        # Embedders skip configure(): refuse here, before anything starts, rather than in prestart.
        network = str(context.container.spec.network)
        if self.mappings and network != "slirp4netns":
            context.veto(f"ports are published only with the slirp4netns network: {_no_ports(network)}")

    async def prestart(self, context: PrestartContext) -> None:
        for mapping in self.mappings:
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

    def _forwarded(self, container: ContainerHandle, mapping: Mapping, forward_id: object) -> None:
        self.emit(
            container,
            "forward",
            host_addr=mapping.host_addr,
            host_port=mapping.host_port,
            container_port=mapping.container_port,
            proto=mapping.proto,
            id=forward_id,
        )


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
