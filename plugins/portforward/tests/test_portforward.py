"""Port forwarding: a server in the container answers on the host's 127.0.0.1 (only loopback is ever bound)."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from aiocontain_portforward import Mapping, PortForward

from aiocontain import Container, ContainerSpec, NetworkMode
from aiocontain.elf import elf_interpreter
from aiocontain.errors import AiocontainError
from aiocontain.plugins import Plugin
from tests.conftest import Result, cli_argv, leftovers


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("8080:80", Mapping("0.0.0.0", 8080, 80, "tcp")),
        ("80", Mapping("0.0.0.0", 0, 80, "tcp")),  # a free host port, picked at start
        ("127.0.0.1::53/udp", Mapping("127.0.0.1", 0, 53, "udp")),
        ("127.0.0.1:8080:80", Mapping("127.0.0.1", 8080, 80, "tcp")),
        ("127.0.0.1:5353:53/udp", Mapping("127.0.0.1", 5353, 53, "udp")),
        ("65535:1/tcp", Mapping("0.0.0.0", 65535, 1, "tcp")),
    ],
)
def test_mappings_parse_as_podman_writes_them(text, expected):
    assert Mapping.parse(text) == expected


@pytest.mark.parametrize(
    "text, why",
    [
        ("127.0.0.1:8080", "host port '127.0.0.1' is not a number from 1 to 65535"),
        ("8000-8002:80-81", "host ports 8000-8002 are 3, container ports 80-81 are 2"),
        ("8002-8000:80-82", "host port range '8002-8000' ends before it starts"),
        ("8000-:80", "host port '' is not a number"),
        ("8000-8001", "a range publishes 2 ports"),
        ("0:80", "host port '0' is not a number from 1 to 65535"),
        ("8080:65536", "container port '65536' is not a number"),
        ("8080:+80", "container port '+80' is not a number"),
        ("8080:80/sctp", "protocol 'sctp' is not tcp or udp"),
        ("300.1.1.1:8080:80", "host address '300.1.1.1' is not an IPv4 address"),
        ("[::1]:8080:80", "IPv6 is not supported"),
    ],
)
def test_bad_mappings_are_refused_with_what_is_wrong(text, why):
    with pytest.raises(AiocontainError) as caught:
        Mapping.parse(text)
    assert f"invalid -p {text!r}: {why}" in caught.value.message
    assert caught.value.fix is not None and "HOSTPORT:]CONTAINERPORT" in caught.value.fix


def test_ranges_publish_each_pair_in_order():
    assert Mapping.parse_all("127.0.0.1:8000-8002:80-82/udp") == [
        Mapping("127.0.0.1", 8000 + i, 80 + i, "udp") for i in range(3)
    ]
    assert Mapping.parse_all("80-81") == [Mapping("0.0.0.0", 0, 80), Mapping("0.0.0.0", 0, 81)]
    with pytest.raises(AiocontainError, match="host port 8001/tcp is published twice"):
        PortForward(["8000-8001:80-81", "8001:90"])


def test_a_host_port_published_twice_is_refused():
    with pytest.raises(AiocontainError, match="host port 8080/tcp is published twice"):
        PortForward(["127.0.0.1:8080:80", "8080:81"])
    assert len(PortForward(["127.0.0.1:8080:80", "127.0.0.1:8080:80/udp", "127.0.0.2:8081:80"]).mappings) == 3


def run(*args: str) -> Result:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(result: Result, *needles: str) -> None:
    assert result.code == 125, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aiocontain: plugin portforward"), result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.container
@pytest.mark.parametrize(
    "args, needles",
    [
        (["-p", "127.0.0.1:8080"], ["invalid -p '127.0.0.1:8080'", "(fix: use -p [[HOSTIP:]HOSTPORT:]"]),
        (["-p", "127.0.0.1:99999:80"], ["host port '99999' is not a number from 1 to 65535"]),
        (["-p", "127.0.0.1:8080:80/icmp"], ["protocol 'icmp' is not tcp or udp"]),
        (["-p", "localhost:8080:80"], ["host address 'localhost' is not an IPv4 address"]),
        (["-p", "127.0.0.1:8000-8002:80-81"], ["host ports 8000-8002 are 3, container ports 80-81 are 2"]),
        (["-p", "127.0.0.1:8002-8000:80-82"], ["host port range '8002-8000' ends before it starts"]),
        (["--net", "pasta", "-p", "127.0.0.1:80-:80"], ["host port '' is not a number"]),
        (["--net", "none", "-p", "127.0.0.1:8080:80"], ["-p needs --net slirp4netns or pasta", "no network to"]),
        (["--net", "host", "-p", "127.0.0.1:8080:80"], ["-p needs --net slirp4netns or pasta", "the host's ports"]),
    ],
)
def test_bad_publish_options_are_one_line_and_start_nothing(rootfs, args, needles):
    before = leftovers()
    assert_one_line_error(run(*cli_argv(rootfs, *args, "--", "true")), *needles)
    assert leftovers() == before


@pytest.mark.container
def test_a_host_port_in_use_is_one_line_and_leaves_nothing(rootfs):
    before = leftovers()
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run(*cli_argv(rootfs, "-p", f"127.0.0.1:{port}:80", "--", "true"))
    assert_one_line_error(
        result,
        f"cannot publish 127.0.0.1:{port}:80/tcp: 127.0.0.1:{port}/tcp: Address already in use",
        "(fix: choose another host port",
    )
    assert leftovers() == before


@pytest.mark.container
def test_a_privileged_host_port_is_refused_with_the_reason(rootfs):
    start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    if start <= 1:
        pytest.skip("every port is unprivileged on this host")
    result = run(*cli_argv(rootfs, "-p", f"127.0.0.1:{start - 1}:80", "--", "true"))
    assert_one_line_error(
        result, f"host port {start - 1} is privileged", f"(fix: publish on a host port from {start} up)"
    )


@pytest.mark.container
def test_a_web_server_in_the_container_answers_on_host_loopback(rootfs):
    port, token = free_port(), os.urandom(8).hex()
    # busybox httpd binds before it goes to the background: "ready" means it is listening
    script = f"mkdir /tmp/www && echo {token} > /tmp/www/index.html && httpd -p 80 -h /tmp/www && echo ready"
    script += " && cat >/dev/null"  # until the test closes stdin
    argv = cli_argv(rootfs, "-p", f"127.0.0.1:{port}:80", "--", "/bin/sh", "-c", script)
    with subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
        try:
            assert proc.stdout.readline() == "ready\n", proc.stderr.read()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # no proxy, unlike urllib
            connection.request("GET", "/index.html")
            response = connection.getresponse()
            assert (response.status, response.read().decode()) == (200, f"{token}\n")
            connection.close()
        finally:
            proc.stdin.close()  # cat ends, and with it the container
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
        assert proc.stderr.read() == ""


# A TCP server that answers with a token and a UDP echo, in Python: busybox has no UDP server.
SERVER = """
import socket, sys
tcp = socket.create_server(("0.0.0.0", 80))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", 53))
print("ready", flush=True)
data, peer = udp.recvfrom(512)
print("udp", data.decode(), flush=True)
udp.sendto(b"echo " + data, peer)
conn, _ = tcp.accept()
conn.sendall(sys.argv[1].encode())
conn.close()
"""


def host_python_in_container() -> tuple[list[str], dict[str, str]]:
    """The host's own Python, run inside the container from a read-only bind of /usr at /tmp/host/usr through
    its dynamic loader (the busybox rootfs has none): the command and environment, or a skip."""
    python = Path(os.path.realpath(sys.executable))
    interpreter = elf_interpreter(python)
    loader = Path(os.path.realpath(interpreter)) if interpreter else None
    if loader is None or not python.is_relative_to("/usr") or not loader.is_relative_to("/usr"):
        pytest.skip(f"{python} and its loader are not both under /usr")
    inside = Path("/tmp/host")
    command = [str(inside / loader.relative_to("/")), "--library-path", str(inside / loader.parent.relative_to("/"))]
    command += [str(inside / python.relative_to("/")), "-S", "-s", "-c", SERVER]
    return command, {"PYTHONHOME": str(inside / "usr")}


class HostUsr(Plugin):
    """Binds the host's /usr read-only at /tmp/host/usr (on the container's tmpfs: nothing lands in the rootfs)."""

    name = "host-usr"

    async def prepare(self, context):
        context.add_mount("/usr", "/tmp/host/usr")


async def read_line(stream) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        line += await stream.receive()
    return line


@pytest.mark.container
@pytest.mark.anyio
@pytest.mark.parametrize(
    "network, allow_host_loopback",
    [(NetworkMode.SLIRP4NETNS, False), (NetworkMode.SLIRP4NETNS, True), (NetworkMode.PASTA, False)],
)
async def test_embedded_tcp_and_udp_forwards_reach_a_server_in_the_container(rootfs, network, allow_host_loopback):
    command, env = host_python_in_container()
    tcp_port, udp_port, token = free_port(), free_port(socket.SOCK_DGRAM), os.urandom(8).hex()
    forward = PortForward([f"127.0.0.1:{tcp_port}:80", f"127.0.0.1:{udp_port}:53/udp"])
    spec = ContainerSpec(
        [*command, token],
        rootfs=rootfs,
        env=env,
        stdout=subprocess.PIPE,
        allow_host_loopback=allow_host_loopback,
        network=network,
    )
    async with Container(spec, plugins=[HostUsr(), forward]) as container:
        with anyio.fail_after(30):
            assert await read_line(container.stdout) == b"ready\n"
            async with await anyio.create_connected_udp_socket("127.0.0.1", udp_port) as udp:
                await udp.send(b"ping")
                assert await read_line(container.stdout) == b"udp ping\n"
                if allow_host_loopback:
                    # Only then: a datagram from host loopback arrives from 10.0.2.2, and slirp4netns's
                    # --disable-host-loopback drops replies to that address (podman#4586); TCP is not affected.
                    # Debian 12's pasta (2023-03) loses the reply too (see the README's Limits).
                    assert await udp.receive() == b"echo ping"
            async with await anyio.connect_tcp("127.0.0.1", tcp_port) as tcp:
                assert await tcp.receive() == token.encode()
            assert (await container.wait()).ok
    forwards = [e.fields["data"] async for e in container.events() if e.name == "plugin.event"]
    assert [(f["host_port"], f["container_port"], f["proto"]) for f in forwards] == [
        (tcp_port, 80, "tcp"),
        (udp_port, 53, "udp"),
    ]
    ids = int if network is NetworkMode.SLIRP4NETNS else type(None)  # slirp4netns numbers its forwards
    assert all(f["host_addr"] == "127.0.0.1" and isinstance(f["id"], ids) for f in forwards)


@pytest.mark.container
@pytest.mark.anyio
async def test_embedded_publish_without_slirp4netns_is_refused_before_anything_starts(rootfs):
    before = leftovers()
    spec = ContainerSpec(["true"], rootfs=rootfs, network=NetworkMode.NONE)
    with pytest.raises(AiocontainError) as caught:
        async with Container(spec, plugins=[PortForward(["127.0.0.1:8080:80"])]):
            pass
    assert caught.value.message == (
        "plugin portforward stopped the run: ports are published only with the slirp4netns or pasta network: "
        "with --net none the container has no network to forward to"
    )
    assert leftovers() == before
