"""``--net pasta``: pasta (Debian's ``passt`` package), podman 5's default rootless network.

pasta joins the child's user and network namespaces (given the child's PID),
attaches to the tap0 the child made persistent, and (``--config-net``) copies
the host's addresses and routes onto it, IPv6 included where the host has it.
Unlike slirp4netns it terminates the container's TCP and UDP flows on sockets of
the host, so nothing is emulated but the link layer.

Isolation, as podman sets pasta up: ``-T none -U none`` (pasta's default would
bind in the container's loopback every port bound on the host's loopback, and so
reach host loopback services), ``-t none -u none`` unless ports are published
(its default would publish every port the container listens on), and
``--no-map-gw`` unless host loopback is allowed (then the gateway's address
reaches the host's 127.0.0.1, as 10.0.2.2 does with slirp4netns).

Readiness comes from the kernel: pasta writes its PID to its pid file once its
set-up is done (addresses, routes and published ports bound), and that file is a
FIFO whose read end the runtime holds, so the write makes it readable. The facts
(address, gateway, MTU) are then decoded from the rtnetlink events already
queued on the socket the child opened. pasta has no exit fd: it runs in the
foreground as the runtime's child with a parent-death signal (``setpriv
--pdeathsig KILL``), so it dies with a SIGKILLed runtime, and is killed at
teardown; an early exit fails the run with its own last words.
"""

from __future__ import annotations

import os
import shutil
import socket

import anyio

from aiocontain import events, processes
from aiocontain.errors import AiocontainError, HostPrerequisiteError, NetworkError
from aiocontain.network.driver import Api, Cleanup, NetworkHost, NetworkInfo
from aiocontain.network.slirp4netns import TAP
from aiocontain.network.supervisor import Supervisor
from aiocontain.spec import DEFAULT_MTU

_TUN = "/dev/net/tun"
_LOOPBACK_RESOLVERS = ("127.", "::1")
_MAX_MTU = 65520  # pasta's largest (slirp4netns takes one more)


class Pasta:
    name = "pasta"
    unshare_netns = True
    tap: str | None = TAP  # created persistent by the child: pasta's TUNSETIFF attaches to it
    api: Api | None = None  # ports are published from its start instead (publish)

    def __init__(
        self, *, mtu: int, allow_host_loopback: bool, timeout: float, describe_network: bool = True, ipv6: bool = True
    ) -> None:
        self.mtu = mtu
        self.allow_host_loopback = allow_host_loopback
        self.timeout = timeout
        self.ipv6 = ipv6
        self.describe_network = describe_network
        self.wants_netlink = describe_network  # its pid file is written once IPv6 is configured too
        self.binary: str | None = None
        self.setpriv: str | None = None
        self.ports: list[str] = []  # -t/-u options, from publish()
        self._ready_fd = -1
        self._supervisor = Supervisor("pasta")

    def check(self) -> None:
        if self.mtu > _MAX_MTU:
            raise AiocontainError(f"invalid MTU {self.mtu} for pasta", fix=f"use a value from 68 to {_MAX_MTU}")
        self.binary = shutil.which("pasta")
        if self.binary is None:
            raise HostPrerequisiteError(
                "pasta is not installed", fix="sudo apt-get install passt, or run with --net slirp4netns"
            )
        self.setpriv = shutil.which("setpriv")  # util-linux, essential on Debian
        if self.setpriv is None:
            raise HostPrerequisiteError(
                "setpriv is not installed, so pasta could outlive a killed runtime",
                fix="sudo apt-get install util-linux",
            )
        if not os.access(_TUN, os.R_OK | os.W_OK):
            raise HostPrerequisiteError(
                f"{_TUN} is not usable by this user, so pasta cannot attach to tap0",
                fix=f"sudo chmod 0666 {_TUN}, or run with --net none",
            )

    def publish(self, ports: list[tuple[str, str, int, int]]) -> None:
        """Publish (proto, host_addr, host_port, container_port) from pasta's start, through its -t/-u options:
        pasta binds them before it says it is ready. 0.0.0.0 is every host address, IPv6 too, as podman's."""
        for proto, host_addr, host_port, container_port in ports:
            where = "" if host_addr == "0.0.0.0" else f"{host_addr}/"
            self.ports += ["-t" if proto == "tcp" else "-u", f"{where}{host_port}:{container_port}"]

    def resolv_conf(self) -> str:
        """The host's resolvers, reached through pasta as any host address is; not loopback ones, which
        inside would be the container's own loopback."""
        try:
            with open("/etc/resolv.conf") as f:
                lines = f.read().splitlines()
        except OSError:
            return ""
        kept = [line for line in lines if not _loopback_resolver(line)]
        return "".join(f"{line}\n" for line in kept)

    def hosts_line(self, hostname: str) -> str:
        return f"127.0.1.1\t{hostname}\n"  # tap0 gets the host's address, known only once pasta has run

    def argv(self, pid: int, pid_file: str) -> list[str]:
        assert self.binary is not None and self.setpriv is not None
        argv = [self.setpriv, "--pdeathsig", "KILL", "--", self.binary]
        argv += ["--foreground", "--quiet", "--config-net", "--ns-ifname", TAP, "--pid", pid_file]
        if self.mtu != DEFAULT_MTU:
            argv += ["--mtu", str(self.mtu)]
        argv += self.ports
        for option in ("-t", "-u"):
            if option not in self.ports[::2]:
                argv += [option, "none"]  # else pasta publishes whatever the container listens on
        argv += ["-T", "none", "-U", "none"]
        if not self.allow_host_loopback:
            argv.append("--no-map-gw")
        if not self.ipv6:
            argv.append("--ipv4-only")
        return [*argv, str(pid)]

    async def start(self, host: NetworkHost) -> Cleanup:
        pid_file = str(host.runtime_dir / "pasta.pid")
        os.mkfifo(pid_file, 0o600)
        # Open before pasta does: its open for writing then does not block, and its write makes ours readable.
        self._ready_fd = os.open(pid_file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            process = processes.Helper.spawn(self.argv(host.pid, pid_file))
        except BaseException:
            os.close(self._ready_fd)
            raise
        supervisor = self._supervisor

        async def stop() -> None:
            supervisor.stopping = True
            try:
                process.kill()  # no state to save: its flows go with the container
                await supervisor.done.wait()
                await process.aclose()
            finally:
                os.close(self._ready_fd)

        supervisor.start(host, process)
        host.log.debug(
            events.PASTA_STARTED,
            pid=process.pid,
            mtu=self.mtu,
            host_loopback=self.allow_host_loopback,
            ipv6=self.ipv6,
            ports=" ".join(self.ports),
        )
        return stop

    async def wait_ready(self, netlink: socket.socket | None) -> NetworkInfo:
        if self.describe_network:
            from aiocontain.netlink import wait_configured  # only where the facts are wanted
        try:
            with anyio.fail_after(self.timeout):
                await anyio.wait_readable(self._ready_fd)
                if not os.read(self._ready_fd, 64):
                    raise await self._supervisor.exited_early()  # its supervisor fails the run with its stderr
                if not self.describe_network:
                    return NetworkInfo(TAP)
                assert netlink is not None
                # pasta configured everything before it wrote its PID: these events are queued already.
                state = await wait_configured(netlink, TAP)
        except TimeoutError:
            raise NetworkError(
                f"{TAP} did not come up within {self.timeout:g}s", fix="check pasta (aiocontain doctor)"
            ) from None
        return NetworkInfo(**state.as_dict())


def _loopback_resolver(line: str) -> bool:
    words = line.split()
    return len(words) >= 2 and words[0] == "nameserver" and words[1].startswith(_LOOPBACK_RESOLVERS)
