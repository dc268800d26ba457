"""``--net none``: a network namespace of its own with loopback only."""

from __future__ import annotations

import socket

from aiocontain.network.driver import Api, Cleanup, NetworkHost, NetworkInfo


class NoNetwork:
    name = "none"
    unshare_netns = True
    describe_network = False
    wants_netlink = False
    tap: str | None = None
    api: Api | None = None

    def check(self) -> None:
        pass

    def resolv_conf(self) -> str:
        return ""

    def hosts_line(self, hostname: str) -> str:
        return f"127.0.1.1\t{hostname}\n"

    async def start(self, host: NetworkHost) -> Cleanup | None:
        return None

    async def wait_ready(self, netlink: socket.socket | None) -> NetworkInfo | None:
        return None
