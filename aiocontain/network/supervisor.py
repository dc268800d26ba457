"""A network helper's supervisor (slirp4netns, pasta): its stderr kept, its early exit made the run's error.

Both helpers run as long as their container. One that exits when nobody asked it to (killed, or failing on
its own) takes the container's network with it: the supervisor then fails the run with the helper's last
words (``host.failed``). Its stop, which differs per helper, sets ``stopping`` first, so that the exit it
causes is not taken for such a failure.
"""

from __future__ import annotations

import anyio

from aiocontain import processes
from aiocontain.errors import NetworkError
from aiocontain.network.driver import NetworkHost

_STDERR_KEEP = 4096


class Supervisor:
    def __init__(self, helper: str) -> None:
        self.helper = helper
        self.stopping = False  # set by the driver's stop: the exit that follows is asked for
        self.done = anyio.Event()  # its stderr reached end of file and it has been reaped
        self.error: NetworkError | None = None  # why it exited early, once it has
        self._stderr = bytearray()

    def start(self, host: NetworkHost, process: processes.Helper) -> None:
        host.tg.start_soon(self._supervise, host, process)

    async def _supervise(self, host: NetworkHost, process: processes.Helper) -> None:
        try:
            await watch(process, self._stderr)
        finally:
            self.done.set()
        if not self.stopping:
            self.error = exit_error(process.returncode, self._stderr, self.helper)
            host.failed(self.error)

    async def exited_early(self) -> NetworkError:
        """Once the helper has been seen to end before it was ready: the error to raise."""
        await self.done.wait()
        return self.error or NetworkError(f"{self.helper} exited before tap0 was ready")


def exit_error(code: int | None, stderr: bytearray, helper: str) -> NetworkError:
    """Why the helper ended: a signal (its last words are then only progress, not a cause), or its stderr."""
    if code is not None and code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return NetworkError(
            f"{helper} was killed by {name}, so the container lost its network and was stopped",
            fix="something outside killed it (an OOM kill, a kill of the user's processes); run the container again",
        )
    lines = [line for line in stderr.decode(errors="replace").splitlines() if line.strip() and not _noise(line)]
    detail = lines[-1] if lines else "no message"
    return NetworkError(f"{helper} exited early with status {code}: {detail}")


def _noise(line: str) -> bool:
    """pasta's complaint, after each line it logs, that there is no syslog to log it to."""
    return line.startswith("Failed to send ") and line.endswith(" to syslog")


async def watch(process: processes.Helper, stderr: bytearray) -> None:
    """Keep the tail of the helper's stderr until it ends, then reap it."""
    try:
        async for chunk in process.stderr:
            stderr.extend(chunk)
            del stderr[:-_STDERR_KEEP]
    except anyio.ClosedResourceError:
        pass  # the teardown stopped reading
    await process.wait()
