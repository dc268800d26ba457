"""Who runs aiocontain, as its messages name them."""

from __future__ import annotations

import os
import pwd


def name() -> str:
    """This process's user's name; its uid where the user has no passwd entry (e.g. in a container)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())
