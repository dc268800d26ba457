"""``--net slirp4netns``: user-mode networking, no root and no bridges.

slirp4netns joins the child's user and network namespaces, attaches to tap0,
which the child created persistent there (``aiocontain.child.netdev``), and
(``--configure``) gives it 10.0.2.100/24 with 10.0.2.2 as gateway and 10.0.2.3
as DNS. It gets an exit fd, so it ends when the runtime closes the other end,
and it is supervised: an early exit fails the run with its own stderr. Its API
socket (in the runtime directory) lets plugins add port forwards before the
command starts (``api``).

Readiness comes from the kernel either way, never by polling: rtnetlink events
on the socket the child opened in the container's namespace, decoded with
pyroute2 (which also gives the address, gateway and MTU), or, when nobody wants
those facts (``describe_network=False``: the CLI unless it logs info), slirp4netns's own
``--ready-fd``, written once tap0 is configured, which spares importing pyroute2.

It runs in its own sandbox where its build has one, as podman runs it
(``slirp_sandbox``): slirp4netns enters it after binding its API socket and
before writing the ready fd, so the socket keeps working and readiness covers it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from typing import Any

import anyio

from aiocontain import events, processes, rtnl
from aiocontain.errors import HostPrerequisiteError, NetworkError
from aiocontain.network import slirp_sandbox
from aiocontain.network.driver import Api, Cleanup, NetworkHost, NetworkInfo
from aiocontain.network.supervisor import Supervisor

TAP = "tap0"
ADDRESS = "10.0.2.100"
DNS = "10.0.2.3"
_TUN = "/dev/net/tun"


class Slirp4netns:
    name = "slirp4netns"
    unshare_netns = True
    tap: str | None = TAP  # created persistent by the child: see aiocontain.child.netdev.create_persistent_tap

    def __init__(
        self, *, mtu: int, allow_host_loopback: bool, timeout: float, describe_network: bool = True, ipv6: bool = True
    ) -> None:
        self.mtu = mtu
        self.allow_host_loopback = allow_host_loopback
        self.timeout = timeout
        self.ipv6 = ipv6
        self.describe_network = describe_network
        self.wants_netlink = describe_network or ipv6  # the ready fd says nothing of IPv6, which comes later by RA
        self.binary: str | None = None
        self.sandbox: tuple[str, ...] = ()
        self.api_socket: str | None = None
        self._ready_fd = -1  # our end of --ready-fd
        self._supervisor = Supervisor("slirp4netns")

    def check(self) -> None:
        self.binary = shutil.which("slirp4netns")
        if self.binary is None:
            raise HostPrerequisiteError(
                "slirp4netns is not installed", fix="sudo apt-get install slirp4netns, or run with --net none"
            )
        if not os.access(_TUN, os.R_OK | os.W_OK):
            raise HostPrerequisiteError(
                f"{_TUN} is not usable by this user, so slirp4netns cannot create tap0",
                fix=f"sudo chmod 0666 {_TUN}, or run with --net none",
            )
        self.sandbox = slirp_sandbox.options(self.binary)  # here, before the event loop runs the set-up

    def resolv_conf(self) -> str:
        return f"nameserver {DNS}\n"

    def hosts_line(self, hostname: str) -> str:
        return f"{ADDRESS}\t{hostname}\n"

    async def start(self, host: NetworkHost) -> Cleanup:
        assert self.binary is not None
        self.api_socket = str(host.runtime_dir / "slirp4netns.sock")
        # Always a ready fd: slirp4netns writes it only once its API socket listens, after tap0 is up. Until
        # then the runtime directory that holds the socket must stay, and the release removes that directory.
        self._ready_fd, ready_w = os.pipe()
        try:
            exit_r, exit_w = os.pipe()
        except BaseException:
            os.close(ready_w)  # out of fds: nothing of this start may stay open
            os.close(self._ready_fd)
            raise
        exit_fd, ready_fd = processes.FIRST_PASSED_FD, processes.FIRST_PASSED_FD + 1  # as the helper sees them
        argv = [
            self.binary,
            "--configure",
            f"--mtu={self.mtu}",
            f"--exit-fd={exit_fd}",
            f"--ready-fd={ready_fd}",
            f"--api-socket={self.api_socket}",
        ]
        if not self.allow_host_loopback:
            argv.append("--disable-host-loopback")
        if self.ipv6:
            argv.append("--enable-ipv6")  # fd00::/64 by router advertisement, default route via fe80::2
        argv += self.sandbox
        argv += [str(host.pid), TAP]
        try:
            process = processes.Helper.spawn(argv, [exit_r, ready_w])
        except BaseException:
            os.close(exit_w)
            os.close(self._ready_fd)
            raise
        finally:
            os.close(exit_r)
            os.close(ready_w)
        supervisor = self._supervisor

        async def stop() -> None:
            supervisor.stopping = True
            try:
                os.close(exit_w)  # slirp4netns exits when its exit fd sees end of file
                with anyio.move_on_after(5):
                    await supervisor.done.wait()
                if not supervisor.done.is_set():
                    process.kill()
                    process.stderr.close_fd()  # stop reading: a lingering child of its own may hold stderr open
                    await supervisor.done.wait()  # the supervisor reaps it, killed
                await process.aclose()
            finally:
                os.close(self._ready_fd)

        supervisor.start(host, process)
        host.log.debug(
            events.SLIRP_STARTED, pid=process.pid, mtu=self.mtu, host_loopback=self.allow_host_loopback, ipv6=self.ipv6
        )
        return stop

    @property
    def api(self) -> Api:
        """slirp4netns's API socket, for the plugins' prestart hooks (port forwards)."""
        return self._request

    async def _request(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request to slirp4netns's API (one JSON object a connection), e.g. add_hostfwd.

        The socket lives in the runtime directory, which goes once the command
        runs: this is for hooks before the release.
        """
        if self.api_socket is None:
            raise RuntimeError("slirp4netns has not been started")
        async with await anyio.connect_unix(self.api_socket) as stream:
            await stream.send(json.dumps(request).encode())
            reply = bytearray()
            with anyio.fail_after(self.timeout):
                try:
                    while True:
                        reply += await stream.receive()
                except anyio.EndOfStream:
                    pass
        answer: dict[str, Any] = json.loads(reply)
        if "error" in answer:
            detail = answer["error"].get("desc", answer["error"]) if isinstance(answer["error"], dict) else answer
            raise NetworkError(f"slirp4netns refused {request.get('execute')}: {detail}")
        return answer

    async def wait_ready(self, netlink: socket.socket | None) -> NetworkInfo:
        if self.describe_network:
            from aiocontain.netlink import wait_configured  # only where the facts are wanted
        try:
            with anyio.fail_after(self.timeout):
                if not self.describe_network:
                    await self._wait_ready_fd()
                    if self.ipv6:  # its address and route come after the ready fd, from slirp4netns's RA
                        assert netlink is not None
                        await rtnl.wait_ipv6(netlink, rtnl.Ipv6State(TAP))
                    return NetworkInfo(TAP)
                assert netlink is not None
                state = await wait_configured(netlink, TAP, ipv6=self.ipv6)
                await self._wait_ready_fd()  # and its API socket listens
        except TimeoutError:
            what = "with its IPv6 address and route " if self.ipv6 else ""
            raise NetworkError(
                f"{TAP} did not come up {what}within {self.timeout:g}s",
                fix="check slirp4netns (aiocontain doctor)" + (", or run with --ipv6=false" if self.ipv6 else ""),
            ) from None
        return NetworkInfo(**state.as_dict())

    async def _wait_ready_fd(self) -> None:
        await anyio.wait_readable(self._ready_fd)
        if os.read(self._ready_fd, 1):
            return
        # End of file: slirp4netns exited first. Its supervisor fails the run with its stderr.
        raise await self._supervisor.exited_early()
