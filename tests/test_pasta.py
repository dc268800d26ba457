"""``--net pasta``: real containers on real pasta; only loopback and the container's own addresses are touched."""

from __future__ import annotations

import os
import select
import signal
import subprocess
from pathlib import Path

import pytest

from aiocontain.network import pasta as pasta_module
from aiocontain.network.pasta import Pasta
from tests.conftest import cli_argv, leftovers, user_processes
from tests.test_cli_run import _start

pytestmark = pytest.mark.container


def _pastas() -> set[int]:
    """The user's pasta processes (setpriv until it has executed pasta, passt.avx2 where pasta re-executes)."""
    found = set()
    for pid in user_processes():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue  # gone meanwhile
        if command.endswith((b"pasta", b"passt", b"passt.avx2", b"setpriv")):
            found.add(pid)
    return found


def _host_ipv4() -> set[str]:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split()[3].split("/")[0] for line in out.splitlines() if " lo " not in line}


def test_pasta_gives_tap0_the_hosts_address_and_a_default_route(cli):
    result = cli("--net", "pasta", "--", "/bin/sh", "-c", "ip -4 -o addr show tap0; ip route | grep ^default")
    assert result.code == 0, result.stderr
    address = result.stdout.split()[3].split("/")[0]
    assert address in _host_ipv4(), result.stdout
    assert "default via" in result.stdout and "dev tap0" in result.stdout.splitlines()[-1]


def test_pasta_reaches_host_loopback_only_when_allowed(cli, loopback_server):
    port, token = loopback_server
    # pasta's default -T auto would bind, in the container's loopback, each port the host's loopback has bound:
    # 127.0.0.1 inside would then reach the host's server. The gateway reaches it only with --allow-host-loopback.
    inside = ["--", "/bin/sh", "-c", f"nc -w 3 127.0.0.1 {port} </dev/null"]
    denied = cli("--net", "pasta", *inside)
    assert denied.code != 0 and token.decode() not in denied.stdout
    gateway = "$(ip route | awk '/^default/ {print $3}')"
    # Debian 12's pasta (2023-03) often does not pass the server's FIN on this path: read the line, not to EOF.
    fetch = f"timeout 10 nc -w 3 {gateway} {port} </dev/null | head -n 1"
    allowed = cli("--net", "pasta", "--allow-host-loopback", "--", "/bin/sh", "-c", fetch)
    assert allowed.code == 0, allowed.stderr
    assert allowed.stdout.strip() == token.decode()
    also_denied = cli("--net", "pasta", "--allow-host-loopback", *inside)  # allowed through the gateway only
    assert also_denied.code != 0 and token.decode() not in also_denied.stdout


def test_pasta_reaches_host_ipv6_loopback_through_the_gateway_only(cli, loopback6_server):
    # The same over IPv6, where the host has it: with --allow-host-loopback the IPv6 gateway reaches ::1, and
    # ::1 inside still does not (-T none covers IPv6 too). Without it the gateway is the real one, not contacted
    # here: --no-map-gw is checked in pasta's options below.
    port, token = loopback6_server
    gateway = "$(ip -6 route | awk '/^default/ {print $3}')"
    probe = f'[ -n "{gateway}" ] || exit 77; timeout 10 nc -w 3 {gateway} {port} </dev/null | head -n 1'
    allowed = cli("--net", "pasta", "--allow-host-loopback", "--", "/bin/sh", "-c", probe)
    if allowed.code == 77:
        pytest.skip("the host has no IPv6 route for pasta to copy")
    assert allowed.code == 0, allowed.stderr
    assert allowed.stdout.strip() == token.decode()
    inside = cli("--net", "pasta", "--allow-host-loopback", "--", "/bin/sh", "-c", f"nc -w 3 ::1 {port} </dev/null")
    assert inside.code != 0 and token.decode() not in inside.stdout


def test_pasta_is_started_with_podmans_isolation_options():
    # The part the loopback test cannot show without contacting the real gateway: --no-map-gw by default.
    def argv(**kw: object) -> list[str]:
        pasta = Pasta(mtu=65520, allow_host_loopback=False, timeout=1, **kw)  # type: ignore[arg-type]
        pasta.binary, pasta.setpriv = "/usr/bin/pasta", "/usr/bin/setpriv"
        return pasta.argv(1234, "/run/x/pasta.pid")

    default = argv()
    assert default[:4] == ["/usr/bin/setpriv", "--pdeathsig", "KILL", "--"]
    text = " ".join(default)
    for option in ("-t none", "-u none", "-T none", "-U none", "--no-map-gw", "--config-net"):
        assert option in text
    assert default[-1] == "1234" and "--ipv4-only" not in default
    assert "--ipv4-only" in argv(ipv6=False)
    allowed = Pasta(mtu=65520, allow_host_loopback=True, timeout=1)
    allowed.binary, allowed.setpriv = "pasta", "setpriv"
    allowed.publish([("tcp", "127.0.0.1", 8080, 80), ("tcp", "0.0.0.0", 8081, 81)])
    text = " ".join(allowed.argv(1, "p"))
    assert "--no-map-gw" not in text and "-t none" not in text and "-u none" in text
    assert "-t 127.0.0.1/8080:80 -t 8081:81" in text


def _serving(rootfs, *args: str, ports: tuple[int, ...]) -> subprocess.Popen[str]:
    """A container whose busybox httpd on each port answers its own token ("p80"), started and listening."""
    script = "".join(f"mkdir /tmp/{p} && echo p{p} >/tmp/{p}/index.html && httpd -p {p} -h /tmp/{p} && " for p in ports)
    argv = cli_argv(rootfs, *args, "--", "/bin/sh", "-c", script + "echo ready && cat >/dev/null")
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n", proc.communicate(timeout=30)
    return proc


def _get(port: int) -> str:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # no proxy, unlike urllib
    try:
        connection.request("GET", "/")
        return connection.getresponse().read().decode().strip()
    finally:
        connection.close()


def _free_ports(count: int) -> list[int]:
    """count consecutive free ports on 127.0.0.1, found by binding them."""
    import contextlib
    import socket

    for start in range(42000, 60000, count):
        with contextlib.ExitStack() as held:
            try:
                for port in range(start, start + count):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
            return list(range(start, start + count))
    raise AssertionError("no free ports")


@pytest.mark.parametrize("net", ["pasta", "slirp4netns"])
def test_a_published_range_forwards_each_pair(rootfs, net):
    before = leftovers()
    low, high = _free_ports(2)
    proc = _serving(rootfs, "--net", net, "-p", f"127.0.0.1:{low}-{high}:80-81", ports=(80, 81))
    try:
        assert (_get(low), _get(high)) == ("p80", "p81")
    finally:
        proc.communicate("", timeout=30)
    assert proc.returncode == 0
    assert leftovers() == before


@pytest.mark.parametrize("net", ["pasta", "slirp4netns"])
def test_a_container_port_alone_gets_a_free_host_port_it_names(rootfs, net):
    proc = _serving(rootfs, "--net", net, "-p", "127.0.0.1::8080", ports=(8080,))
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline().strip()  # printed before the command starts
        prefix, _, target = line.partition(" -> ")
        assert prefix.startswith("aiocontain: published 127.0.0.1:") and target == "8080/tcp", line
        assert _get(int(prefix.rsplit(":", 1)[1])) == "p8080"
    finally:
        proc.communicate("", timeout=30)
    assert proc.returncode == 0


def test_without_pasta_net_pasta_is_one_line_and_leaves_nothing(rootfs, tmp_path):
    before = leftovers()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("newuidmap", "newgidmap", "setpriv"):  # everything but pasta
        (bin_dir / tool).symlink_to(f"/usr/bin/{tool}")
    env = {**os.environ, "PATH": str(bin_dir)}
    proc = subprocess.run(cli_argv(rootfs, "--net", "pasta", "true"), capture_output=True, text=True, env=env)
    assert proc.returncode == 125
    assert (
        proc.stderr
        == "aiocontain: pasta is not installed (fix: sudo apt-get install passt, or run with --net slirp4netns)\n"
    )
    assert leftovers() == before


def test_a_killed_pasta_is_one_line_naming_the_signal(rootfs):
    before, pastas = leftovers(), _pastas()
    with _start(rootfs, "--net", "pasta", "--", "/bin/sh", "-c", "echo ready; exec sleep 60") as proc:
        (pasta,) = _pastas() - pastas
        os.kill(pasta, signal.SIGKILL)
        assert proc.wait(timeout=30) == 125
        stderr = proc.stderr.read() if proc.stderr else ""
    assert stderr.strip().splitlines() == [
        "aiocontain: pasta was killed by SIGKILL, so the container lost its network and was stopped (fix: something"
        " outside killed it (an OOM kill, a kill of the user's processes); run the container again)"
    ], stderr
    assert leftovers() == before


def test_pasta_dies_with_a_sigkilled_runtime(rootfs):
    # pasta has no exit fd: its parent-death signal is what ends it when the runtime cannot.
    pastas = _pastas()
    with _start(rootfs, "--net", "pasta", "--", "/bin/sh", "-c", "echo ready; exec sleep 60") as proc:
        (pasta,) = _pastas() - pastas
        pidfd = os.pidfd_open(pasta)
        try:
            proc.kill()
            proc.wait(timeout=30)
            ready, _, _ = select.select([pidfd], [], [], 30)  # the kernel says when it exits
            assert ready, "pasta outlived the runtime"
        finally:
            os.close(pidfd)


def test_an_mtu_pasta_cannot_take_is_one_line(cli):
    before = leftovers()
    result = cli("--net", "pasta", "--mtu", "65521", "true")  # slirp4netns's largest, one more than pasta's
    assert (result.code, result.stderr) == (
        125,
        "aiocontain: invalid MTU 65521 for pasta (fix: use a value from 68 to 65520)\n",
    )
    assert leftovers() == before


def test_the_hosts_loopback_resolvers_are_left_out(monkeypatch, tmp_path):
    # Inside, 127.0.0.53 or ::1 would be the container's own loopback: only resolvers pasta can reach stay.
    host = tmp_path / "resolv.conf"
    kept = ["search example.test", "nameserver 192.0.2.53", "nameserver fd00::53", "# nameserver 127.0.0.1"]
    left_out = ["nameserver 127.0.0.53", "nameserver ::1", "nameserver 127.0.0.1 # local", "  nameserver 127.1.2.3"]
    host.write_text("\n".join([*left_out[:2], kept[0], left_out[2], *kept[1:], left_out[3]]) + "\n")
    real_open = open
    monkeypatch.setattr(
        pasta_module,
        "open",
        lambda path, *a: real_open(host if path == "/etc/resolv.conf" else path, *a),
        raising=False,
    )
    assert Pasta(mtu=65520, allow_host_loopback=False, timeout=1).resolv_conf() == "".join(f"{line}\n" for line in kept)
