"""Subordinate id ranges from /etc/subuid and /etc/subgid (shadow's format: NAME_OR_ID:START:COUNT)."""

from __future__ import annotations

import pwd
from pathlib import Path


def ranges(uid: int, path: Path) -> list[tuple[int, int]]:
    """The (start, count) ranges that ``path`` grants the user with this uid."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = None
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] not in (name, str(uid)):
            continue
        try:
            start, count = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        if count > 0:
            found.append((start, count))
    return found
