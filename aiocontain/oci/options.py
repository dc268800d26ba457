"""The global options of ``aiocontain-oci`` (``--root``, ``--log``, ...), as every subcommand gets them.

A module of its own so that the subcommands (and ``aiocontain.oci.exec``) can name the type without importing
the command line that imports them.
"""

from __future__ import annotations


class Options:
    """The global options every subcommand sees (and ``aiocontain.oci.exec.main`` gets)."""

    def __init__(self) -> None:
        self.root: str | None = None
        self.log: str | None = None
        self.log_format = "text"
        self.debug = False
        self.systemd_cgroup = False
        self.rootless: str | None = None
        self.version = False

    def state_root(self) -> str:
        """--root, else ``state.default_root()``."""
        if self.root:
            return self.root
        from aiocontain.oci.state import default_root

        return default_root()
