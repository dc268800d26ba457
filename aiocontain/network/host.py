"""``--net host``: share the host's network namespace (podman's --network host)."""

from __future__ import annotations

from pathlib import Path

from aiocontain.network.none import NoNetwork


class HostNetwork(NoNetwork):
    name = "host"
    unshare_netns = False

    def resolv_conf(self) -> str:
        try:
            return Path("/etc/resolv.conf").read_text()
        except OSError:
            return ""
