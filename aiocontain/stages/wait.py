"""Stage 8, wait: follow the container to its exit, then teardown.

The child reports the exit status of the container's PID 1 as Exited; when the
child itself was killed before it could, its own exit status (from the fork
server that reaped it) stands in. A helper
failure (slirp4netns exiting early) fails the wait instead. Teardown is the
stage stack unwound in reverse by ``Container`` on every path.
"""

from __future__ import annotations

from aiocontain.errors import AiocontainError
from aiocontain.messages import Exited
from aiocontain.stages.context import StageContext


async def run(ctx: StageContext) -> tuple[int, int | None]:
    """(code, signal) of the container's command; code is 128+N when signal N killed it."""
    code: int | None = None
    signum: int | None = None
    while True:
        message, _ = await ctx.receive()
        if message is None:
            break
        if isinstance(message, Exited):
            code, signum = message.code, message.signal
    if ctx.failure is not None:
        raise ctx.failure
    if code is None and signum is None:
        assert ctx.process is not None
        returncode = await ctx.process.wait()
        if returncode is None:
            raise AiocontainError(
                "the container's monitor process ended and the fork server with it: the command's exit status is lost"
            )
        if returncode < 0:
            # Killed before it could report: the command's status went with it, and PID 1 died with it.
            name = _signal_name(-returncode)
            raise AiocontainError(
                f"the container's monitor process (pid {ctx.process.pid}) was killed by {name}; the container was"
                " killed with it and its command's exit status is lost",
                fix="do not signal aiocontain's own processes; stop the container through aiocontain",
            )
        code, signum = returncode, None
    return (128 + signum if signum is not None else int(code or 0)), signum


def _signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
