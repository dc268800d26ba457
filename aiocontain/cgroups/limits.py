"""Resource limits with podman's names and units, and the cgroup v2 files they become.

Parsing happens before anything starts, so a malformed value is one clear line
and nothing is created.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

from aiocontain.errors import AiocontainError

CPU_PERIOD = 100_000  # microseconds, the kernel's default cpu.max period
MAX_BYTES = (1 << 63) - 1  # memory.max and memory.swap.max are signed 64-bit counts
MAX_PIDS = 1 << 22  # the kernel's PID_MAX_LIMIT: pids.max takes no more
# podman's default where the pids controller is there: a fork bomb inside stops at it, rather than at the user's
# RLIMIT_NPROC, which every process of the user's on the host shares.
DEFAULT_PIDS = 2048
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
# podman (docker's units.RAMInBytes): "512k", "2m", "2MB", "2MiB", "1.5g", or plain bytes
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?$", re.IGNORECASE)


def parse_size(text: str | int, option: str = "--memory") -> int:
    """Bytes from podman's size syntax; binary multiples (1k = 1024), as podman's are."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _SIZE.match(str(text).strip())
        if match is None:
            raise AiocontainError(f"invalid {option} {text!r}", fix="give a size such as 2m, 512k, 1g or plain bytes")
        value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise AiocontainError(f"invalid {option} {text!r}: must be more than 0 bytes", fix="give a size such as 2m")
    if value > MAX_BYTES:
        raise AiocontainError(f"invalid {option} {text!r}: more than the kernel can take", fix="give less than 8 EiB")
    return value


def format_size(size: int) -> str:
    """2097152 -> '2 MiB': how a limit is shown in messages."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            amount = size / factor
            return f"{amount:.0f} {unit}" if amount == int(amount) else f"{amount:.1f} {unit}"
    return f"{size} B"


@dataclass(frozen=True)
class Limits:
    """What a container may use; None leaves the kernel's default (no limit).

    ``memory_swap`` is podman's memory *plus* swap (-1: unlimited swap); unset
    with ``memory`` set, the container may swap as much again, as in podman.
    ``pids`` unset is podman's default, ``DEFAULT_PIDS`` where the pids controller
    is delegated (``with_defaults``); 0 or -1 is no limit, as ``--pids-limit`` is in
    podman, and needs no cgroup: a new group's pids.max is already "max".
    """

    memory: int | None = None
    memory_swap: int | None = None
    pids: int | None = None
    cpus: float | None = None

    @classmethod
    def parse(
        cls,
        memory: str | int | None = None,
        memory_swap: str | int | None = None,
        pids: int | None = None,
        cpus: float | None = None,
    ) -> Limits:
        """Check and normalise user values; raises AiocontainError (one line, with the fix) on bad input."""
        mem = parse_size(memory) if memory is not None else None
        swap: int | None = None
        if memory_swap is not None and str(memory_swap).strip() not in ("", "0"):
            if mem is None:
                raise AiocontainError("--memory-swap needs --memory", fix="give -m/--memory as well")
            swap = -1 if str(memory_swap).strip() == "-1" else parse_size(memory_swap, "--memory-swap")
            if swap != -1 and swap < mem:
                raise AiocontainError(
                    f"--memory-swap {memory_swap} is less than --memory {memory}",
                    fix="--memory-swap is memory plus swap: give at least the memory limit, or -1 for unlimited swap",
                )
        if pids is not None and (isinstance(pids, bool) or not isinstance(pids, int) or not -1 <= pids <= MAX_PIDS):
            raise AiocontainError(f"invalid --pids-limit {pids!r}", fix="give a number of processes, -1 for no limit")
        if cpus is not None:
            available = os.cpu_count() or 1
            if not isinstance(cpus, int | float) or not 0.01 <= cpus <= available:
                fix = f"give a number of CPUs from 0.01 to {available}, as many as this host has"
                raise AiocontainError(f"invalid --cpus {cpus!r}", fix=fix)
        return cls(memory=mem, memory_swap=swap, pids=pids, cpus=None if cpus is None else float(cpus))

    def __bool__(self) -> bool:
        """Whether anything is limited: only then must a cgroup be had."""
        return any(value is not None for value in (self.memory, self.memory_swap, self.cpus)) or self._pids_limited

    @property
    def _pids_limited(self) -> bool:
        return self.pids is not None and self.pids > 0

    def with_defaults(self, controllers: tuple[str, ...]) -> Limits:
        """These limits in a leaf with these controllers enabled: podman's pids.max where none was given."""
        if self.pids is None and "pids" in controllers:
            return replace(self, pids=DEFAULT_PIDS)
        return self

    def controllers(self) -> tuple[str, ...]:
        """The cgroup v2 controllers these limits need, in the order the kernel lists them."""
        wanted = {
            "cpu": self.cpus is not None,
            "memory": self.memory is not None,
            "pids": self._pids_limited,
        }
        return tuple(name for name, needed in wanted.items() if needed)

    def files(self) -> dict[str, str]:
        """The interface files of the container's leaf and what to write into each."""
        files: dict[str, str] = {}
        if self.memory is not None:
            files["memory.max"] = str(self.memory)
            if self.memory_swap == -1:
                files["memory.swap.max"] = "max"
            else:
                total = self.memory_swap if self.memory_swap is not None else 2 * self.memory
                files["memory.swap.max"] = str(total - self.memory)
        if self._pids_limited:
            files["pids.max"] = str(self.pids)
        if self.cpus is not None:
            files["cpu.max"] = f"{max(1000, round(self.cpus * CPU_PERIOD))} {CPU_PERIOD}"
        return files

    def optional_files(self) -> frozenset[str]:
        """Files to skip when the kernel lacks them: swap accounting for a swap limit nobody asked for."""
        return frozenset({"memory.swap.max"}) if self.memory_swap is None else frozenset()

    def describe(self) -> dict[str, object]:
        """The limits as event fields."""
        return {
            key: value
            for key, value in (
                ("memory", self.memory),
                ("memory_swap", self.memory_swap),
                ("pids_limit", self.pids),
                ("cpus", self.cpus),
            )
            if value is not None
        }
