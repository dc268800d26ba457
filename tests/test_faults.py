"""Fault injection, bounded in count: signals at random moments of start-up, cancellation at random moments.

Each run must end within a deadline, print no traceback, exit with a documented
code, and leave nothing: no process of the user's, no runtime directory, no
mount, no fd of the embedding process. Delays come from a seeded generator whose
seed is in the test id, so a failure can be replayed.
"""

from __future__ import annotations

import random
import signal
import subprocess

import pytest

from tests.conftest import cli_argv, leftovers, open_fds

pytestmark = pytest.mark.container

RUNS = 12  # per signal and backend: ~100 runs in all, about a minute
DEADLINE = 30.0


@pytest.fixture
def nothing_left():
    before = leftovers()
    yield
    assert leftovers() == before  # every process of the user's, waited for while exiting


def _hold_stop_signals() -> None:
    """In the child, before exec: what aiocontain.command does as its first instruction, done at exec.

    The interpreter's own start-up (its site module, some 15 ms) comes before the entry point's first
    instruction, and a SIGINT there is Python's to handle (exit 1, its KeyboardInterrupt): not ours to test.
    With the signals held from exec on, every moment from the entry point on is tried.
    """
    from aiocontain.command import STOP_SIGNALS

    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def _signalled(argv: list[str], delay: float, signum: int) -> tuple[int, str]:
    """argv started with the stop signals held (as from its entry point on), sent signum after delay unless it
    ended before: (its exit status, its stderr). Fails the test if it then does not end within DEADLINE."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_hold_stop_signals
    )
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signum)
    try:
        _, err = proc.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"hung: {signum!r} after {delay:.3f} s did not end {argv[3:5]} within {DEADLINE} s")
    stderr = err.decode(errors="replace")
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, (delay, stderr)
    return proc.returncode, stderr


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_a_signal_at_any_moment_of_start_up(rootfs, nothing_left, backend, signum):
    rng = random.Random(f"{backend}-{signum}")
    outcomes = []
    for _ in range(RUNS):
        delay = rng.uniform(0.0, 0.25)  # from the interpreter's start to past the command's start
        # --init: a forwarded signal ends the command (PID 1 itself would drop one it has no handler for). One
        # that lands while the init is being executed, before it takes its signals, is dropped all the same: the
        # stop timeout's SIGKILL then ends the run (137), as `podman stop` would.
        argv = cli_argv(
            rootfs, "--backend", backend, "--net", "none", "--init", "--stop-timeout", "1", "--", "/bin/sleep", "30"
        )
        returncode, stderr = _signalled(argv, delay, signum)
        if signum == signal.SIGKILL:
            assert returncode == -signal.SIGKILL, (delay, stderr)
        else:
            # 128+N once the command runs (it dies by the forwarded signal), or before it (set-up stopped).
            assert returncode in (128 + signum, 137), (delay, returncode, stderr)
            assert stderr == "", (delay, stderr)
        outcomes.append(returncode)
    assert len(outcomes) == RUNS
    if signum == signal.SIGKILL:
        # A runtime killed during set-up cannot remove its runtime directory: the next start sweeps it.
        swept = subprocess.run(cli_argv(rootfs, "--net", "none", "true"), capture_output=True, timeout=DEADLINE)
        assert swept.returncode == 0, swept.stderr


@pytest.mark.anyio
async def test_cancellation_at_any_moment_leaves_nothing(rootfs, nothing_left, anyio_backend):
    import anyio

    from aiocontain import Container, ContainerSpec

    fds = open_fds()
    rng = random.Random(f"cancel-{anyio_backend}")
    for _ in range(RUNS * 2):
        delay = rng.uniform(0.0, 0.08)
        network = rng.choice(["none", "slirp4netns"])
        spec = ContainerSpec(["/bin/sh", "-c", "sleep 5"], rootfs=rootfs, network=network)
        with anyio.move_on_after(delay):
            async with Container(spec) as container:
                await container.wait()
    assert open_fds() == fds


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_at_any_moment_of_an_exec(rootfs, signum):
    """`aiocontain exec`: before the command runs the signal ends it by its default action (-N), after it the
    command gets it and ends by it (128+N); either way no traceback, and nothing of the exec stays, inside the
    container or out."""
    import uuid

    name = "faults-" + uuid.uuid4().hex[:8]
    started = subprocess.run(
        cli_argv(rootfs, "-d", "--name", name, "--net", "none", "--", "/bin/sleep", "1000"),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        stdin=subprocess.DEVNULL,
    )
    assert started.returncode == 0, started.stderr
    exec_argv = [*cli_argv(rootfs)[:3], "exec", name]
    try:
        before = leftovers()
        rng = random.Random(f"exec-{signum}")
        for _ in range(RUNS // 2):
            delay = rng.uniform(0.0, 0.4)  # from the entry point to past the command's start
            returncode, stderr = _signalled([*exec_argv, "/bin/sleep", "30"], delay, signum)
            assert returncode in (-signum, 128 + signum), (delay, returncode, stderr)
            inside = subprocess.run([*exec_argv, "/bin/ps", "-o", "args"], capture_output=True, text=True, timeout=60)
            assert inside.stdout.split("\n")[1:-2] == ["/bin/sleep 1000"], (delay, inside.stdout)  # and ps itself
        assert leftovers() == before
    finally:
        subprocess.run([*exec_argv[:3], "rm", "-f", name], capture_output=True, timeout=DEADLINE)
