"""The runtime's side of the fork server, whose own code is ``aiocontain.child.forkserver``.

Every container's PID 1 is a Python process until it execs the command: it sets
its namespaces up and builds the root. Starting a Python interpreter for each
costs tens of milliseconds of CPU; the fork server starts once and clones each
PID 1 into its new namespaces on request, so only the first container pays for it.

- ``server``: ``ForkServer`` (start one, ask it to fork, close it) and the
  process-wide default that ``Container`` uses.
- ``process``: ``ForkedProcess``, one PID 1: its pid and pidfd, its exit
  status (from the fork server, which reaps it), kill, and its stdio streams.
- ``stdio``: PID 1's stdin, stdout and stderr as fds to pass, and anyio byte
  streams for the runtime's ends of pipes.

Import-light (no anyio here): the CLI imports this before anything else, to fork
its fork server while only the standard library is loaded.
"""

from __future__ import annotations

from aiocontain.forkserver.server import ForkServer, close_default, current, default, install

__all__ = ["ForkServer", "close_default", "current", "default", "install"]
