"""Map this process's code and data now, while it waits, rather than on a container's path.

fork copies the page tables of a process's private memory but not those of its
files' mappings: a forked Python process maps the interpreter's and the
libraries' code and data again, page by page, as it runs them, a fault each
(several microseconds here, ~50 on a container's path). The spare, which
becomes a container's intermediate, and the PID 1 it forks ahead both wait idle
first, so they take those faults at once before any request (MADV_POPULATE_READ
on every readable mapping). Nothing is copied: the pages are the page cache's,
shared. Writes are left alone: populating for writing would copy every private
page (megabytes a process, held for the container's life) and make PID 1's exec
free them all on the container's path.
"""

from __future__ import annotations

import errno

from aiocontain import syscalls


def prefault() -> None:
    """Populate every readable mapping of ours (best-effort: a kernel without the advice skips it)."""
    with open("/proc/self/maps", "rb") as maps:
        lines = maps.read().splitlines()
    for line in lines:
        fields = line.split()
        if fields[1][:1] != b"r" or (len(fields) > 5 and fields[5].startswith(b"[v")):
            continue  # guard pages; [vvar], [vdso] and [vsyscall] are the kernel's
        start, end = (int(edge, 16) for edge in fields[0].split(b"-"))
        try:
            syscalls.madvise(start, end - start, syscalls.MADV_POPULATE_READ)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return  # a kernel older than 5.14: no such advice
            # EFAULT: a file mapped past its end; the pages before it are mapped, which is all we want
