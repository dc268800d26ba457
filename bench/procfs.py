"""Memory and process-tree facts from /proc, for the memory case (stdlib only).

RSS counts every resident page a process maps, shared or not; PSS divides
shared pages among the processes that share them: the fairer per-container
cost of a helper (slirp4netns) whose pages its copies share, and RSS the upper
bound. Both are reported.
"""

from __future__ import annotations

from pathlib import Path

KIB_PER_MIB = 1024


def _field(path: str, name: str) -> int:
    """A ``Name:  N kB`` line of a /proc file, in KiB."""
    for line in Path(path).read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise LookupError(f"{name} not in {path}")


def rss_kib(pid: int | str = "self") -> int:
    return _field(f"/proc/{pid}/status", "VmRSS")


def pss_kib(pid: int | str = "self") -> int:
    return _field(f"/proc/{pid}/smaps_rollup", "Pss")


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def children(pid: int | str = "self") -> list[int]:
    """Direct children of pid, from every thread's children list."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found
