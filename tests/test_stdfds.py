"""A caller with stdin, stdout or stderr closed: the container gets /dev/null there, never an fd of the runtime's.

A process started with a standard fd closed gives that number to the next fd it opens. Before the fix, the
runtime's own fds took it: the CLI's fork server request socket sat at 0 and a container started with the
caller's stdin got it as its own, from where it could ask the fork server for a PID 1 of its own Config. Each
probe closes the caller's fds, then checks from inside that each standard fd is /dev/null and no socket. The
shell's ``[`` is a builtin: /proc/self is the shell itself, whose fds are the container's. The same probe runs
under podman, which gives a container /dev/null for a stdin its caller does not have.

Then the other way round: a stdout or stderr whose reader has gone (`aiocontain --help | head -1`) ends a command
quietly with 141, and does not stop a run whose events it carried.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from aiocontain import stdfds
from tests.conftest import cli_argv, leftovers

pytestmark = pytest.mark.container

# Of the fds given as arguments: exit 10+N at the first that is not /dev/null (20+N: a socket), else 0; with a
# listing of the shell's fds on stderr, for the failure's message (where stderr is still the test's pipe).
PROBE = (
    'for n in "$@"; do'
    " [ -S /proc/self/fd/$n ] && { ls -l /proc/self/fd/ >&2; exit 2$n; };"
    " [ /proc/self/fd/$n -ef /dev/null ] || { ls -l /proc/self/fd/ >&2; exit 1$n; };"
    " done"
)

# Each as a shell redirection of the caller, and the fds it closes.
CLOSED = {
    "stdin": ("<&-", ["0"]),
    "stdout": (">&-", ["1"]),
    "stderr": ("2>&-", ["2"]),
    "all three": ("<&- >&- 2>&-", ["0", "1", "2"]),
}


def _closed(argv: list[str], redirection: str, **options: object) -> subprocess.CompletedProcess[str]:
    """argv run with the caller's fds closed as redirection says (a shell does the closing, as a user's would)."""
    shell = ["/bin/sh", "-c", f'exec "$@" {redirection}', "sh", *argv]
    return subprocess.run(shell, capture_output=True, text=True, timeout=60, **options)  # type: ignore[call-overload]


@pytest.mark.parametrize("served", ["1", "0"], ids=["run server", "own run"])
@pytest.mark.parametrize("closed", CLOSED)
def test_a_closed_standard_fd_of_the_caller_is_dev_null_inside(rootfs, closed, served, monkeypatch):
    before = leftovers()
    monkeypatch.setenv("AIOCONTAIN_RUN_SERVER", served)
    redirection, fds = CLOSED[closed]
    result = _closed(cli_argv(rootfs, "--net", "none", "--", "/bin/sh", "-c", PROBE, "sh", *fds), redirection)
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert leftovers() == before


def test_with_stdin_closed_cat_ends_at_once_with_nothing_read(rootfs):
    # Before: cat read the runtime's fork server socket and waited for ever.
    result = _closed(cli_argv(rootfs, "--net", "none", "--", "cat"), "<&-")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_podman_gives_dev_null_for_a_closed_stdin_too(rootfs, podman):
    # (With stdout or stderr closed, podman itself fails: 126, nothing said.)
    redirection, fds = CLOSED["stdin"]
    closing = ["/bin/sh", "-c", f'exec "$@" {redirection}', "sh"]
    result = podman("--network", "none", "/bin/sh", "-c", PROBE, "sh", *fds, prefix=closing)
    assert result.code == 0, result


EMBEDDED = textwrap.dedent(
    """
    import os
    import anyio
    from aiocontain import Container, ContainerSpec, NetworkMode, run

    ROOTFS, CLOSED, WHEN, STATUS = {rootfs!r}, {closed!r}, {when!r}, {status_fd}
    PROBE = ["/bin/sh", "-c", {probe!r}, "sh", *map(str, CLOSED)]

    def close():
        for fd in CLOSED:
            os.close(fd)  # the event loop's own fds are open already: the next fds opened are the runtime's

    async def main():
        if WHEN == "before the first container":
            close()
            status = await run(ContainerSpec(PROBE, rootfs=ROOTFS, network=NetworkMode.NONE))
        elif WHEN == "before a fork server of its own":
            from aiocontain.forkserver import ForkServer

            close()
            server = ForkServer.start()
            try:
                spec = ContainerSpec(PROBE, rootfs=ROOTFS, network=NetworkMode.NONE)
                async with Container(spec, fork_server=server) as box:
                    status = await box.wait()
            finally:
                server.close()
        elif WHEN == "between two containers":
            await run(ContainerSpec(["true"], rootfs=ROOTFS, network=NetworkMode.NONE))  # the fork server is up
            close()
            status = await run(ContainerSpec(PROBE, rootfs=ROOTFS, network=NetworkMode.NONE))
        else:  # execs into a running container, the probe's while another runs (and holds its sockets)
            async with Container(ContainerSpec(["sleep", "60"], rootfs=ROOTFS, network=NetworkMode.NONE)) as box:
                close()
                await box.exec(["sleep", "60"])
                status = await (await box.exec(PROBE)).wait()
                box.kill()
        os.write(STATUS, str(getattr(status, "code", status)).encode())

    anyio.run(main)
    """
)


@pytest.mark.parametrize(
    "when",
    ["before the first container", "before a fork server of its own", "between two containers", "between two execs"],
)
@pytest.mark.parametrize("closed", [(0,), (1,), (0, 1, 2)], ids=["stdin", "stdout", "all three"])
def test_an_embedding_program_with_closed_standard_fds_hands_none_of_the_runtimes(rootfs, closed, when):
    """A program that closed its stdio (as a careless daemon does), then runs a container or an exec with the
    default stdio, its own: every fd the runtime opens after that (its fork server's socket, a container's
    sockets, an exec's) must stay off 0-2. (What the program itself opens there is its own stdio as far as the
    runtime can tell, as for subprocess.)"""
    before = leftovers()
    read, write = os.pipe()
    try:
        script = EMBEDDED.format(closed=closed, when=when, probe=PROBE, rootfs=str(rootfs), status_fd=write)
        proc = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=90, pass_fds=(write,)
        )
        os.close(write)
        write = -1
        code = os.read(read, 16).decode()
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)
    assert (proc.returncode, code) == (0, "0"), (proc.returncode, code, proc.stderr)
    assert leftovers() == before


def test_fill_leaves_open_fds_alone_and_fills_only_the_closed():
    """The boundary itself, in a child started with stdout closed (so Python made sys.stdout None): 1 becomes
    /dev/null, inheritable as stdio is, with a stream on it again; 0 and 2 stay what they were."""
    script = textwrap.dedent(
        """
        import os, sys
        started_without = sys.stdout is None
        keep0, keep2 = os.fstat(0), os.fstat(2)
        from aiocontain import stdfds
        stdfds.fill(python_streams=True)
        same = lambda a, b: (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
        ok = same(os.fstat(0), keep0) and same(os.fstat(2), keep2) and same(os.fstat(1), os.stat(os.devnull))
        ok = ok and os.get_inheritable(1) and started_without and sys.stdout is not None
        print("into /dev/null", flush=True)
        os.write(2, b"ok" if ok else b"bad")
        """
    )
    proc = _closed([sys.executable, "-c", script], ">&-")
    assert (proc.returncode, proc.stderr) == (0, "ok"), proc.stderr
    assert stdfds.fill() is None  # here all three are open: nothing to do


def test_fill_for_the_runtime_never_touches_an_embedding_programs_sys():
    """``ensure``'s fill: fd 1 gets /dev/null, but the program's own sys.stdout stays as Python left it."""
    script = textwrap.dedent(
        """
        import os, sys
        from aiocontain import stdfds
        stdfds.ensure()
        same = lambda a, b: (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
        ok = same(os.fstat(1), os.stat(os.devnull)) and sys.stdout is None
        os.write(2, b"ok" if ok else b"bad")
        """
    )
    proc = _closed([sys.executable, "-c", script], ">&-")
    assert (proc.returncode, proc.stderr) == (0, "ok"), proc.stderr


@pytest.mark.parametrize("broken", [(), (1,), (2,), (1, 2)])
def test_output_is_broken_only_where_a_reader_has_gone_and_silenced_on_both(broken):
    """After a BrokenPipeError: which of stdout and stderr lost its reader decides whether the command ends
    quietly (141); a live pipe never counts. Silenced, both then write into /dev/null."""
    script = textwrap.dedent(
        """
        import os, sys
        from aiocontain import stdfds
        verdict = stdfds.output_broken()
        stdfds.silence_output()
        null = os.stat(os.devnull)
        silenced = all((os.fstat(fd).st_dev, os.fstat(fd).st_ino) == (null.st_dev, null.st_ino) for fd in (1, 2))
        os.write({report}, b"%d %d" % (verdict, silenced))
        """
    )
    ends = [_broken_pipe() if fd in broken else None for fd in (1, 2)]
    live_r, live_w = os.pipe()
    report_r, report_w = os.pipe()
    try:
        out, err = (live_w if end is None else end for end in ends)
        proc = subprocess.run(
            [sys.executable, "-c", script.format(report=report_w)],
            stdout=out,
            stderr=err,
            pass_fds=(report_w,),
            timeout=60,
        )
        os.close(report_w)
        report_w = -1
        assert proc.returncode == 0
        assert os.read(report_r, 16) == (b"1 1" if broken else b"0 1")
    finally:
        for fd in (live_r, live_w, report_r, *(end for end in ends if end is not None)):
            os.close(fd)
        if report_w >= 0:
            os.close(report_w)


def _broken_pipe() -> int:
    """The write end of a pipe whose reader has gone: the first write to it fails with EPIPE."""
    read, write = os.pipe()
    os.close(read)
    return write


@pytest.mark.parametrize(
    "args",
    [["--help"], ["run", "--help"], ["doctor"], ["rootfs", "--help"]],
    ids=lambda args: " ".join(args),
)
def test_printing_into_a_pipe_with_no_reader_ends_quietly_with_141(args):
    """`aiocontain ... | head -1` whose head has exited: quiet, 128+SIGPIPE, as any Unix tool ended by SIGPIPE;
    before, --help printed a traceback and doctor called it a bug."""
    broken = _broken_pipe()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "aiocontain", *args], stdout=broken, stderr=subprocess.PIPE, text=True, timeout=120
        )
    finally:
        os.close(broken)
    assert (proc.returncode, proc.stderr) == (141, "")  # 128 + SIGPIPE, what a shell shows


def test_a_run_whose_log_reader_has_gone_runs_to_its_end_with_its_own_exit_code(rootfs, tmp_path):
    """`aiocontain run --log-level info ... 2>&1 | head -1`: the events that find no reader are dropped; the
    container is not stopped for it (before, the run failed at its first event, exit 1)."""
    before = leftovers()
    out = tmp_path / "out"
    out.mkdir()
    broken = _broken_pipe()
    try:
        argv = cli_argv(
            rootfs, "--log-level", "info", "-v", f"{out}:/out", "--", "/bin/sh", "-c", "touch /out/ran; exit 3"
        )
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=broken, stdin=subprocess.DEVNULL, timeout=60)
    finally:
        os.close(broken)
    assert proc.returncode == 3
    assert (out / "ran").exists()
    assert leftovers() == before
