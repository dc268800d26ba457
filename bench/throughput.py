"""TCP throughput between a container and the host's loopback, through slirp4netns or pasta.

Outbound: the server is this process, on 127.0.0.1; the container reaches it as
its gateway (``--allow-host-loopback``: 10.0.2.2 with slirp4netns, the host's
gateway address with pasta). The rate is measured on the server side, from the
first payload byte to the last, so the container's start does not count.

Published (``-p``): this process connects to the container's busybox httpd
through ``-p 127.0.0.1:PORT:80`` and downloads a file (httpd sends it with
sendfile, so the sender's syscalls do not set the pace); the rate is measured
here, from the first body byte to the last.

The sender is what the busybox rootfs has. busybox ``nc`` copies stdin to the
socket 1 KiB per write(2), so with it the sender's syscalls, not the link, set
the pace and the MTU barely shows. ``wget --post-file`` writes its whole body
in one call, so the default sender is wget (an HTTP POST; the server answers
200 after Content-Length bytes); ``nc`` stays selectable for comparison.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.external import aiocontain_executable
from bench.runner import Metric

SENDERS = ("wget", "nc")
CONNECT_TIMEOUT = 60.0
TRANSFER_TIMEOUT = 120.0
_MB = 1_000_000
_HEADER_END = b"\r\n\r\n"
_ATTEMPTS = 3  # of a transfer cut short (see ThroughputCase.run)


GATEWAY = "$(ip route | awk '/^default/ {print $3}')"  # 10.0.2.2 with slirp4netns; the host's gateway with pasta


def sender_script(sender: str, megabytes: int, port: int, host: str = "10.0.2.2") -> str:
    """The shell command run in the container: send megabytes MiB to host:port."""
    size = megabytes * 1024 * 1024
    if sender == "nc":
        return f"dd if=/dev/zero bs=64k count={size // 65536} 2>/dev/null | nc {host} {port}"
    # wget sends the file as a C string, so the payload has no NUL bytes. Not `yes | head -c`: in an
    # aiocontain container SIGPIPE is ignored (inherited from the Python PID 1), so yes never ends.
    payload = "/tmp/payload"
    return (
        f"dd if=/dev/zero bs=64k count={size // 65536} 2>/dev/null | tr '\\0' a >{payload}"
        f" && wget -q -O /dev/null --post-file {payload} http://{host}:{port}/"
    )


def receive(connection: socket.socket) -> tuple[int, float]:
    """Read one sender's payload; (bytes after the first chunk, seconds from the first chunk to the last).

    The first chunk only starts the clock. A payload that starts with ``POST``
    is wget's: its header is skipped, Content-Length bytes are read, and 200 is
    answered; anything else is read to end of file.
    """
    connection.settimeout(TRANSFER_TIMEOUT)
    buffer = bytearray(1 << 20)
    chunk = _recv(connection, buffer)
    expected: int | None = None
    if chunk.startswith(b"POST "):
        while _HEADER_END not in chunk:
            chunk += _recv(connection, buffer)
        header, _, chunk = chunk.partition(_HEADER_END)
        expected = _content_length(header)
        if not chunk:
            chunk = _recv(connection, buffer)
    received = len(chunk)
    first = last = time.perf_counter()
    while expected is None or received < expected:
        size = connection.recv_into(buffer)
        if not size:
            break
        received += size
        last = time.perf_counter()
    if expected is not None:
        if received < expected:
            raise ShortPayload(f"{received} of {expected} bytes arrived")
        connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
        _close_gracefully(connection, buffer)
    if last <= first:
        raise RuntimeError(f"too little payload to measure ({received} bytes)")
    return received - len(chunk), last - first


class ShortPayload(RuntimeError):
    """The connection ended before Content-Length bytes arrived: the rate of a part would mean nothing."""


def _close_gracefully(connection: socket.socket, buffer: bytearray) -> None:
    """Our end of the stream, then wait for the sender's: closed with anything unread, the kernel would answer
    with a reset, which can reach wget before the 200 it has not read yet ("Connection reset by peer")."""
    try:
        connection.shutdown(socket.SHUT_WR)
        while connection.recv_into(buffer):
            pass
    except OSError:
        pass  # gone already: its answer was read, or it will say so in its exit status


def _recv(connection: socket.socket, buffer: bytearray) -> bytes:
    size = connection.recv_into(buffer)
    if not size:
        raise RuntimeError("the sender closed before its payload")
    return bytes(buffer[:size])


def _content_length(header: bytes) -> int:
    for line in header.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise RuntimeError("POST without Content-Length")


@dataclass
class ThroughputCase:
    """One aiocontain CLI container sending to the server here per run; MB/s (10^6 bytes) as seen by the server."""

    name: str
    rootfs: Path
    mtu: int | None  # None: aiocontain's default
    megabytes: int
    sender: str
    repetitions: int
    net: str = "slirp4netns"
    metrics: tuple[Metric, ...] = field(init=False)

    def __post_init__(self) -> None:
        which = "the default MTU" if self.mtu is None else f"--mtu {self.mtu}"
        via = "10.0.2.2" if self.net == "slirp4netns" else "the gateway"
        what = f"{self.megabytes} MiB container -> host 127.0.0.1 via {via}, {self.net}, {which}, busybox {self.sender}"
        self.metrics = (Metric(self.name, "MB/s", what, higher_is_better=True),)

    def run(self) -> Mapping[str, float]:
        """One transfer, whole. The pasta of Debian 12 (2023-03-09) now and then ends a large transfer
        through the gateway halfway: it takes the whole body from wget, delivers part of it here, then closes
        our end and resets wget's ("error getting response: Connection reset by peer"). The rate of a part
        would mean nothing, so such a transfer is made again, at most twice, and said on stderr; one that
        fails every time fails the case."""
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                rate, code = self._once()
            except ShortPayload as exc:
                failure = f"the transfer was cut short: {exc}"
            else:
                if code == 0:
                    return {self.name: rate}
                failure = f"the sending container exited {code}"
            if attempt < _ATTEMPTS:
                print(f"bench: {self.name}: {failure}; again", file=sys.stderr)
        raise RuntimeError(f"{failure}, {_ATTEMPTS} times in a row")

    def _once(self) -> tuple[float, int]:
        """(MB/s, the container's exit code); ShortPayload when the connection ended before the payload did."""
        with socket.create_server(("127.0.0.1", 0)) as server:
            port = server.getsockname()[1]
            argv = [aiocontain_executable(), "run", "--rootfs", str(self.rootfs), "--allow-host-loopback"]
            argv += ["--net", self.net]
            if self.mtu is not None:
                argv += ["--mtu", str(self.mtu)]
            host = "10.0.2.2" if self.net == "slirp4netns" else GATEWAY
            argv += ["--", "sh", "-c", sender_script(self.sender, self.megabytes, port, host)]
            with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL) as process:
                try:
                    connection = _accept(server, process)
                    with connection:
                        counted, seconds = receive(connection)
                    code = process.wait(timeout=TRANSFER_TIMEOUT)
                finally:
                    if process.poll() is None:
                        process.kill()
        return counted / seconds / _MB, code


@dataclass
class PublishedCase:
    """The host downloads a file from the container's httpd through -p on 127.0.0.1; MB/s as seen here."""

    name: str
    rootfs: Path
    net: str
    megabytes: int
    repetitions: int
    metrics: tuple[Metric, ...] = field(init=False)

    def __post_init__(self) -> None:
        what = f"{self.megabytes} MiB host 127.0.0.1 -> -p -> container httpd (download), {self.net}, default MTU"
        self.metrics = (Metric(self.name, "MB/s", what, higher_is_better=True),)

    def run(self) -> Mapping[str, float]:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        size = self.megabytes * 1024 * 1024
        # httpd binds before it goes to the background, so "ready" means it listens; cat holds the container.
        script = (
            f"mkdir /tmp/www && dd if=/dev/zero bs=64k count={size // 65536} of=/tmp/www/payload 2>/dev/null"
            " && httpd -p 80 -h /tmp/www && echo ready && cat >/dev/null"
        )
        argv = [sys.executable, "-m", "bench.publish", self.net, str(port), str(self.rootfs), script]
        with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as process:
            assert process.stdin is not None and process.stdout is not None
            try:
                if process.stdout.readline() != b"ready\n":
                    raise RuntimeError(f"the serving container exited {process.wait()} before it was ready")
                with socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT) as connection:
                    counted, seconds = _download(connection, size)
                process.stdin.close()
                code = process.wait(timeout=TRANSFER_TIMEOUT)
            finally:
                if process.poll() is None:
                    process.kill()
        if code != 0:
            raise RuntimeError(f"the serving container exited {code}")
        return {self.name: counted / seconds / _MB}


def _download(connection: socket.socket, size: int) -> tuple[int, float]:
    """GET /payload; (body bytes after the first chunk, seconds from the first body chunk to the last)."""
    connection.settimeout(TRANSFER_TIMEOUT)
    connection.sendall(b"GET /payload HTTP/1.0\r\n\r\n")
    buffer = bytearray(1 << 20)
    head = b""
    while _HEADER_END not in head:
        head += _recv(connection, buffer)
    _, _, body = head.partition(_HEADER_END)
    if not body:
        body = _recv(connection, buffer)
    received, first = len(body), time.perf_counter()
    last = first
    while received < size:
        got = connection.recv_into(buffer)
        if not got:
            raise RuntimeError(f"the download ended after {received} of {size} bytes")
        received += got
        last = time.perf_counter()
    if last <= first:
        raise RuntimeError("too little payload to measure")
    return received - len(body), last - first


def _accept(server: socket.socket, process: subprocess.Popen[bytes]) -> socket.socket:
    """The sender's connection; fails at once when the container exits without connecting (its pidfd says so)."""
    pidfd = os.pidfd_open(process.pid)
    try:
        ready, _, _ = select.select([server.fileno(), pidfd], [], [], CONNECT_TIMEOUT)
    finally:
        os.close(pidfd)
    if server.fileno() in ready:
        return server.accept()[0]
    if ready:
        process.wait()
        raise RuntimeError(f"the sending container exited {process.returncode} without connecting")
    raise RuntimeError(f"no connection within {CONNECT_TIMEOUT:g}s")
