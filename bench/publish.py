"""``python -m bench.publish NET HOSTPORT ROOTFS SCRIPT``: one container with ``-p 127.0.0.1:HOSTPORT:80``.

Embedded with the portforward plugin from the checkout, not through the CLI: the
benchmark's stage installs no plugins, so that no other case pays for loading them.
The container's stdio is this process's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "plugins" / "portforward"))

from aiocontain_portforward import PortForward

from aiocontain import Container, ContainerSpec


async def main(net: str, port: int, rootfs: Path, script: str) -> int:
    spec = ContainerSpec(["/bin/sh", "-c", script], rootfs=rootfs, network=net)  # type: ignore[arg-type]
    async with Container(spec, plugins=[PortForward([f"127.0.0.1:{port}:80"])]) as container:
        return (await container.wait()).code


if __name__ == "__main__":
    net, port, rootfs, script = sys.argv[1:5]
    sys.exit(anyio.run(main, net, int(port), Path(rootfs), script))
