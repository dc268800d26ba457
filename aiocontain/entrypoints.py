"""The installed distributions' entry points of one group, read from their entry_points.txt, kept between runs.

The CLI needs the plugins' entry points before it can parse its own options (a
plugin adds options), so without a cache every run would list every ``sys.path``
directory and open every distribution's entry_points.txt: a fraction of a
millisecond in a small venv, tens in a big environment. The answer is kept in
``$XDG_CACHE_HOME/aiocontain/entry-points`` (``~/.cache``), keyed by each
``sys.path`` directory and its modification time: installing, upgrading or
removing a distribution adds or removes its dist-info directory, which changes
the time of the directory holding it, and the next run reads them again.

pip makes the dist-info directory before it writes entry_points.txt into it, and
that write does not touch the directory above; so a scan that ran while a
directory was changing (its time less than ``SETTLE`` seconds old: git's rule for
its index) is used but not kept. Reading or writing the cache only ever costs a
scan; stdlib only, no dataclasses: it runs on every CLI start.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator

from aiocontain import cachefile

PLUGINS = "aiocontain.plugins"  # the group aiocontain's plugins register in
FORMAT = "aiocontain-entry-points-1"
SETTLE = 2.0  # seconds: a directory changed more recently may still be mid-install

Entry = tuple[str, str, str]  # (name, "module:attr", "distribution version")


def entry_points(group: str = PLUGINS) -> list[Entry]:
    """The group's entry points (first on sys.path wins), from the cache while the environment is unchanged."""
    key, settled = _key(group)
    path = cache_path()
    cached = _load(path, key)
    if cached is not None:
        return cached
    found = list(scan(group))
    if settled:
        _store(path, key, found)
    return found


def cache_path() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "aiocontain", "entry-points")


def scan(group: str) -> Iterator[Entry]:
    """Read the installed distributions' entry_points.txt directly: importlib.metadata costs ~55 ms of imports."""
    seen: set[str] = set()
    for directory in sys.path:
        try:
            names = sorted(os.listdir(directory or "."))
        except OSError:
            continue
        for info in names:
            if not info.endswith((".dist-info", ".egg-info")):
                continue
            dist, _, version = info.rsplit(".", 1)[0].partition("-")
            name = dist.lower().replace("-", "_")
            if name in seen:
                continue
            seen.add(name)
            try:
                with open(os.path.join(directory or ".", info, "entry_points.txt"), encoding="utf-8") as file:
                    text = file.read()
            except OSError:
                continue
            for entry, value in _section(text, group):
                yield entry, value, f"{dist} {version}".strip()


def _section(text: str, group: str) -> Iterator[tuple[str, str]]:
    """The ``name = value`` lines of one [group] of an entry_points.txt (an INI file)."""
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip()
        elif current == group and "=" in line:
            name, _, value = line.partition("=")
            yield name.strip(), value.strip()


def _key(group: str) -> tuple[str, bool]:
    """One line naming the group and every sys.path directory with its time (ns); and whether all have settled."""
    parts = [FORMAT, group]
    newest = 0
    for directory in sys.path:
        where = os.path.abspath(directory or ".")
        try:
            changed = os.stat(where).st_mtime_ns
        except OSError:
            changed = -1  # absent now: its appearing later changes the key too
        newest = max(newest, changed)
        parts.append(f"{where}={changed}")
    return "\0".join(parts).replace("\n", "\\n"), newest < (time.time() - SETTLE) * 1e9


def _load(path: str, key: str) -> list[Entry] | None:
    data = cachefile.read(path)  # the user's own only: what it names is imported as a plugin
    if data is None:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    first, _, rest = text.partition("\n")
    if first != key:
        return None
    entries = []
    for line in rest.splitlines():
        fields = line.split("\t")
        if len(fields) != 3:
            return None  # not what _store writes: scan again
        entries.append((fields[0], fields[1], fields[2]))
    return entries


def _store(path: str, key: str, entries: list[Entry]) -> None:
    """Written under a temporary name and renamed: a reader sees the old file or the new one, never half."""
    if any("\t" in field or "\n" in field for entry in entries for field in entry):
        return  # not representable in the file's lines: such an environment is scanned every time
    lines = [key, *("\t".join(entry) for entry in entries)]
    cachefile.write(path, ("\n".join(lines) + "\n").encode("utf-8"))
