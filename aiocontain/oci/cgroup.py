"""The container's cgroup v2 directory (``linux.cgroupsPath``) and its resources (memory, pids, cpu).

Filled in with ``create``; ``remove`` is what ``delete`` needs.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from aiocontain.oci.state import ContainerState


def remove(container: ContainerState) -> None:
    """Remove the container's cgroup directory, if it made one (none yet)."""
