"""How a container's command ended: ``ExitStatus``, what ``Container.wait`` returns and the exited hooks see."""

from __future__ import annotations

from dataclasses import dataclass

from aiocontain.cgroups.leaf import ResourceUsage


@dataclass(frozen=True)
class ExitStatus:
    """How the container's command ended. ``code`` follows the shell: 128+N when killed by signal N.

    ``usage`` is read from the container's cgroup when it had one; ``oom_killed``
    says the OOM killer ended it (SIGKILL, with an OOM kill in its cgroup).
    """

    code: int
    signal: int | None = None
    usage: ResourceUsage | None = None
    oom_killed: bool = False

    @property
    def ok(self) -> bool:
        return self.code == 0
