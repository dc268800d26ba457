"""IPv6 on slirp4netns (``--ipv6``, on by default as in podman 4.3): the address and route are there when the
command starts, because the tap stage waits for them by netlink; the same probe runs under podman."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.container

PROBE = ["/bin/sh", "-c", "ip -6 addr show dev tap0 scope global; ip -6 route | grep ^default || true"]


def _global_and_default(stdout: str) -> tuple[list[str], list[str]]:
    addresses = [line.split()[1] for line in stdout.splitlines() if line.strip().startswith("inet6 ")]
    defaults = [line.split()[2] for line in stdout.splitlines() if line.startswith("default via")]
    return addresses, defaults


def test_ipv6_address_and_default_route_are_up_before_the_command(cli):
    result = cli("--", *PROBE)  # the command's first act: nothing waits for the router advertisement but the runtime
    assert result.code == 0, result.stderr
    addresses, defaults = _global_and_default(result.stdout)
    assert len(addresses) == 1 and addresses[0].startswith("fd00::") and addresses[0].endswith("/64"), result.stdout
    assert defaults == ["fe80::2"], result.stdout


def test_ipv6_false_leaves_tap0_with_ipv4_only(cli):
    result = cli("--ipv6=false", "--", *PROBE)
    assert result.code == 0, result.stderr
    assert _global_and_default(result.stdout) == ([], [])


def test_network_ready_names_the_ipv6_address_and_gateway(cli):
    result = cli("--log-format", "json", "--log-level", "info", "--", "true")
    (ready,) = [e for e in result.events() if e["event"] == "network.ready"]
    assert str(ready["address6"]).startswith("fd00::") and ready["gateway6"] == "fe80::2", ready


def test_ipv6_matches_podman_slirp4netns(podman):
    # podman 4.3's slirp4netns has enable_ipv6=true unless told otherwise: the same prefix and router.
    default = podman("--network", "slirp4netns", *PROBE)
    assert default.code == 0, default.stderr
    addresses, defaults = _global_and_default(default.stdout)
    assert [a.split(":")[0] for a in addresses] == ["fd00"] and defaults == ["fe80::2"], default.stdout
    off = podman("--network", "slirp4netns:enable_ipv6=false", *PROBE)
    assert off.code == 0, off.stderr
    assert _global_and_default(off.stdout) == ([], [])


def _fetch6(port: int) -> list[str]:
    return ["/bin/sh", "-c", f"nc -w 3 fd00::2 {port} </dev/null"]


def test_host_loopback_over_ipv6_only_when_allowed(cli, loopback6_server):
    # The IPv6 gateway is the host's ::1 as 10.0.2.2 is its 127.0.0.1: denied unless --allow-host-loopback.
    port, token = loopback6_server
    denied = cli("--", *_fetch6(port))
    assert denied.code != 0 and token.decode() not in denied.stdout, denied
    allowed = cli("--allow-host-loopback", "--", *_fetch6(port))
    assert allowed.code == 0, allowed.stderr
    assert allowed.stdout.strip() == token.decode()


def test_podman_denies_host_loopback_over_ipv6_too(podman, loopback6_server):
    port, token = loopback6_server
    denied = podman("--network", "slirp4netns", *_fetch6(port))
    assert denied.code != 0 and token.decode() not in denied.stdout, denied
    allowed = podman("--network", "slirp4netns:allow_host_loopback=true", *_fetch6(port))
    assert allowed.code == 0, allowed.stderr
    assert allowed.stdout.strip() == token.decode()
