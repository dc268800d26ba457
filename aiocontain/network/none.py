"""``--net none``: a network namespace of its own with loopback only."""

from __future__ import annotations

from typing import Any

from aiocontain.stages.context import StageContext


class NoNetwork:
    name = "none"
    unshare_netns = True
    wants_netlink = False
    tap: str | None = None

    def check(self) -> None:
        pass

    def resolv_conf(self) -> str:
        return ""

    def hosts_line(self, hostname: str) -> str:
        return f"127.0.1.1\t{hostname}\n"

    async def start(self, ctx: StageContext) -> bool:
        return False

    async def wait_ready(self, ctx: StageContext) -> dict[str, Any] | None:
        return None
