"""Facts about a process read from /proc, for state kept across runs (a recorded pid may be reused).

Stdlib-only and import-light: the OCI runtime's light subcommands and ``aiocontain ps`` use it.
"""

from __future__ import annotations


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/PID/stat from field 3 (state) on, or None when no such process exists."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces or ')'.
    return stat[stat.rindex(b")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None when no
    such process exists. A pid recorded with its start time names the same process only while both match."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def is_alive(pid: int, recorded_start: int) -> bool:
    """Whether pid still names the process that started at recorded_start, and it has not become a zombie."""
    fields = _stat_fields(pid) if pid > 0 else None
    return fields is not None and int(fields[19]) == recorded_start and fields[0] != b"Z"
