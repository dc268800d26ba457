"""The container's /etc/hosts and /etc/resolv.conf: ``--add-host``, ``--dns``, ``--dns-search``, ``--dns-option``.

The runtime writes both into its runtime directory and PID 1 bind-mounts them, as
podman does; the rootfs's own are never changed. Their layout is podman's: in
hosts the ``--add-host`` lines first, then localhost, ``host.containers.internal``
and the container's own name; in resolv.conf ``search``, then the nameservers,
then ``options``. ``--dns`` replaces the network driver's nameserver.

``host.containers.internal`` names the host: 10.0.2.2, slirp4netns's gateway, which
reaches the host's loopback only with ``--allow-host-loopback``, so the name is
there only then. (podman 4.3 points it at the host's own non-loopback address in
every mode; podman 5 adds ``host.docker.internal`` too.)
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from aiocontain.errors import AiocontainError

HOST_NAME = "host.containers.internal"
HOST_ADDRESS = "10.0.2.2"  # slirp4netns's gateway: the host, loopback included with --allow-host-loopback
_NAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$")
_OPTION = re.compile(r"^[A-Za-z0-9_-]+(:[0-9]+)?$")


def parse_add_host(item: str) -> tuple[str, str]:
    """``NAME:IP`` (IPv6 as is, or in brackets) into (name, address); names may be joined with ';'."""
    name, sep, address = item.partition(":")
    address = address.strip("[]") if address.startswith("[") else address
    names = name.split(";")
    if not sep or not all(_NAME.match(n) for n in names) or not _is_ip(address):
        raise AiocontainError(f"invalid --add-host {item!r}", fix="use NAME:IP, e.g. --add-host db:10.0.2.2")
    return " ".join(names), address


def check(dns: Sequence[str], dns_search: Sequence[str], dns_options: Sequence[str], add_hosts: Sequence[str]) -> None:
    """Refuse malformed values before anything starts."""
    for server in dns:
        if not _is_ip(server):
            raise AiocontainError(f"invalid --dns {server!r}: not an IP address", fix="give the server's address")
    for domain in dns_search:
        if domain != "." and not _NAME.match(domain):
            raise AiocontainError(f"invalid --dns-search {domain!r}", fix="give a domain name, or . for none")
    for option in dns_options:
        if not _OPTION.match(option):
            raise AiocontainError(f"invalid --dns-option {option!r}", fix="give a resolv.conf option, e.g. ndots:2")
    for item in add_hosts:
        parse_add_host(item)


def hosts(own_line: str, add_hosts: Sequence[str], host_loopback: bool) -> str:
    lines = ["{1}\t{0}\n".format(*parse_add_host(item)) for item in add_hosts]
    lines.append("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    if host_loopback:
        lines.append(f"{HOST_ADDRESS}\t{HOST_NAME}\n")
    lines.append(own_line)
    return "".join(lines)


def resolv_conf(driver_conf: str, dns: Sequence[str], dns_search: Sequence[str], dns_options: Sequence[str]) -> str:
    """The driver's resolv.conf with the user's servers, search domains and options in place of its own."""
    kept = driver_conf.splitlines(keepends=True)
    lines: list[str] = []
    if dns_search:
        domains = [domain for domain in dns_search if domain != "."]  # podman's "." means no search domain
        lines += [f"search {' '.join(domains)}\n"] if domains else []
        kept = [line for line in kept if not line.startswith(("search ", "domain "))]
    if dns:
        lines += [f"nameserver {server}\n" for server in dns]
        kept = [line for line in kept if not line.startswith("nameserver")]
    lines += kept
    if dns_options:
        lines = [line for line in lines if not line.startswith("options ")]
        lines.append(f"options {' '.join(dns_options)}\n")
    return "".join(lines)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
