"""The spare's prefault: every readable mapping of a forked process mapped at once, nothing copied."""

from __future__ import annotations

import json
import os

from aiocontain.child import prefault


def _mapped(pid: int) -> dict[str, tuple[int, int, int]]:
    """Each file mapping of pid with execute permission: (size, resident, private dirty) in kB."""
    found: dict[str, tuple[int, int, int]] = {}
    current = None
    sizes: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                is_file = len(fields) > 5 and fields[5].startswith("/")  # not [vdso] or [vsyscall]: the kernel's
                current = f"{fields[0]} {fields[5]}" if fields[1][2] == "x" and is_file else None
            elif current is not None and fields[0] in ("Size:", "Rss:", "Private_Dirty:"):
                sizes[fields[0]] = int(fields[1])
                if fields[0] == "Private_Dirty:":
                    found[current] = (sizes["Size:"], sizes["Rss:"], sizes["Private_Dirty:"])
    return found


def _in_a_fork(populate: bool) -> dict[str, tuple[int, int, int]]:
    """The code mappings of a fresh fork of this process, with or without prefault()."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            if populate:
                prefault.prefault()
            os.write(write, json.dumps(_mapped(os.getpid())).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return {name: tuple(values) for name, values in json.loads(data).items()}


def test_a_fork_maps_its_code_at_once_and_copies_nothing():
    # fork copies no file mapping's page tables: a fresh fork has mapped only the code it ran since (the control).
    # prefault maps all of it: every page of every code mapping resident, and no page of it made private.
    fresh, populated = _in_a_fork(populate=False), _in_a_fork(populate=True)
    interpreter = next(name for name in fresh if "python" in name.split(" ", 1)[1])
    size, resident, _ = fresh[interpreter]
    assert resident < size  # the control: most of the interpreter's code is not mapped in a fresh fork
    assert all(resident == size for size, resident, _ in populated.values()), populated
    assert all(dirty == 0 for _, _, dirty in populated.values()), populated
