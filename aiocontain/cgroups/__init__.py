"""cgroup v2 resource control: where a container's group goes, its limits, its usage.

``hierarchy`` decides where (before anything starts), ``limits`` parses podman's
options into interface files, ``leaf`` makes, watches and removes the group,
``watch`` waits for the kernel's change notifications.
"""

from __future__ import annotations

from aiocontain.cgroups.hierarchy import Placement, place
from aiocontain.cgroups.leaf import Leaf, ResourceUsage
from aiocontain.cgroups.limits import Limits, format_size, parse_size

__all__ = ["Leaf", "Limits", "Placement", "ResourceUsage", "format_size", "parse_size", "place"]
