"""The ``aiocontain`` command's entry point: the console script and ``python -m aiocontain``.

Importing this module holds SIGINT, SIGTERM and SIGHUP first of all: they are
blocked, so a signal waits as pending instead of raising KeyboardInterrupt into
whatever runs (an import, the fork server's start, the thread that maps its user
namespace) or killing the process half-way through set-up. ``run`` takes them
once its handlers are in place and stops with 128+N, having torn everything
down; the other subcommands take them back at once. Only this module does this,
so embedding aiocontain never touches the caller's signals.

What comes before the first instruction is the interpreter's: a SIGINT during
its own start-up (its site module, the script wrapper's ``import re``: some
15 ms) ends Python by its own KeyboardInterrupt handling, exit 1.

It also turns the cyclic garbage collector off: start-up makes some hundred
thousand objects that all live on (modules, classes, functions), and collecting
while importing them only walks them again and again (~3% of the start). The
CLI takes collection back, frozen past those objects, once the container's
command runs (``aiocontain.cli``); the fork server once it serves.

A closed stdin, stdout or stderr is filled with /dev/null before anything else
(``aiocontain.stdfds``): no fd of aiocontain's may take its number, or a
container given the caller's stdio would be given that fd.

``run`` goes to the user's run server where there is one that can stand in for
this process (``aiocontain.runserver``): then this process only sends it the
run, forwards the stop signals and exits with the run's code.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # not signal, which imports enum: a window of ~5 ms
import gc

STOP_SIGNALS = frozenset({_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP})
_signal.pthread_sigmask(_signal.SIG_BLOCK, STOP_SIGNALS)
gc.disable()

TYPE_CHECKING = False  # typing costs the command's cold start
if TYPE_CHECKING:
    from typing import NoReturn


def main() -> NoReturn:
    import os
    import sys

    from aiocontain import stdfds

    stdfds.fill_for_command("aiocontain", 125)  # before any fd of ours can take a closed one's number
    # Our own files stay ours to use: a umask that denies the owner keeps only its other bits, umask 777 is
    # taken as 077 (aiocontain.umask says why; not imported here, on every command's cold start).
    os.umask(os.umask(0o022) & 0o077)
    if sys.argv[1:2] == ["run"]:
        from aiocontain.runserver import client

        code = client.run(sys.argv)  # served by the run server: the imports below are its, not this process's
        if code is not None:
            os._exit(code)
        from aiocontain.cli import entry

        entry(after=client.start)
    from aiocontain.cli import entry

    entry()
