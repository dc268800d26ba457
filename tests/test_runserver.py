"""The run server: a served run looks like the command's own from outside, dies with its client, and steps
aside where it cannot stand in for it or its code changed.

Each test has a runtime directory, and so a server, of its own (stopped at its end); the rest of the suite runs
without one (tests/conftest.py).
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiocontain import syscalls
from tests.conftest import run_server_pids, settle, started, user_processes

pytestmark = pytest.mark.timeout(120)

IN_MOVED_TO = 0x80
COMMAND = str(Path(sys.executable).parent / "aiocontain")  # the console script, as users run it


def cli_argv(rootfs: Path | str, *args: str) -> list[str]:
    return [COMMAND, "run", "--rootfs", str(rootfs), *args]


@pytest.fixture
def served() -> Iterator[dict[str, str]]:
    """The environment of a command whose runs go to a run server in a runtime directory of the test's own (short:
    slirp4netns's API socket goes in there too); the server ends with the test."""
    run = Path(tempfile.mkdtemp(prefix="aic-rs-"))
    env = {**os.environ, "AIOCONTAIN_RUN_SERVER": "1", "XDG_RUNTIME_DIR": str(run)}
    env["AIOCONTAIN_RUN_SERVER_IDLE"] = "60"
    try:
        yield env
    finally:
        servers = run_server_pids(str(run / "aiocontain.run"))
        for pid in servers:
            os.kill(pid, signal.SIGTERM)
        assert settle(servers, 10) == set()
        shutil.rmtree(run)


def _start(env: dict[str, str], rootfs: Path, argv: list[str] | None = None) -> None:
    """One run (the command's own: no server yet), then wait until the server it starts has bound its socket."""
    directory = Path(env["XDG_RUNTIME_DIR"]) / "aiocontain.run"
    directory.mkdir(mode=0o700, exist_ok=True)
    watch = syscalls.inotify_init1()
    try:
        syscalls.inotify_add_watch(watch, str(directory), IN_MOVED_TO)
        argv = argv or cli_argv(rootfs, "--net", "none", "true")
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        readable, _, _ = select.select([watch], [], [], 30)
        assert readable, "no run server bound its socket"
    finally:
        os.close(watch)
    assert run_server_pids(str(directory))


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_a_served_run_is_the_commands_own_from_outside(served, rootfs, tmp_path):
    _start(served, rootfs)
    stdin = tmp_path / "input"
    stdin.write_text("typed\n")
    argv = cli_argv(rootfs.name, "--net", "none", "-e", "GREETING", "--", "/bin/sh", "-c", "echo $GREETING; cat; ")
    argv[-1] += "grep SigIgn /proc/self/status; echo to-stderr >&2; exit 7"
    with stdin.open() as typed:
        proc = subprocess.run(
            argv,
            env={**served, "GREETING": "hi"},
            cwd=rootfs.parent,  # --rootfs is relative to the command's working directory
            stdin=typed,
            capture_output=True,
            text=True,
            timeout=60,
        )
    # Nothing ignored either (the server is not started by posix_spawn, which leaves signals 32 and 33 ignored).
    assert (proc.returncode, proc.stderr) == (7, "to-stderr\n")
    assert proc.stdout.split() == ["hi", "typed", "SigIgn:", "0000000000000000"]

    # Served: the command forks no fork server of its own; and a SIGTERM to it reaches the container.
    sleeper = cli_argv(rootfs, "--net", "none", "--init", "--", "/bin/sh", "-c", "echo ready; exec sleep 60")
    with started(sleeper, env=served) as proc:
        assert _children(proc.pid) == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    # Control: the command's own run has its fork server as a child.
    with started(sleeper, env={**served, "AIOCONTAIN_RUN_SERVER": "0"}) as proc:
        assert _children(proc.pid) != []


def test_the_run_dies_with_its_client(served, rootfs):
    _start(served, rootfs)
    before = user_processes()
    argv = cli_argv(rootfs, "--", "/bin/sh", "-c", "echo ready; exec sleep 60")  # with slirp4netns, a helper too
    with started(argv, env=served) as proc:
        run = user_processes() - before - {proc.pid}
        assert len(run) >= 4  # the run's process, its fork server, PID 1, slirp4netns
        proc.kill()
        proc.wait()
    assert settle(run, 10) == set()  # every one of them ended, as with the command's own run


def test_a_run_the_server_cannot_stand_in_for_is_the_commands_own(served, rootfs):
    import resource

    _start(served, rootfs)
    argv = cli_argv(rootfs, "--net", "none", "--", "/bin/sh", "-c", "echo ready; ulimit -c; exec sleep 60")

    def lower_core_limit() -> None:  # a limit the container inherits, which the server's process has not
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    with started(argv, env=served, preexec_fn=lower_core_limit) as proc:
        assert _children(proc.pid) != []  # its own fork server: not served
        proc.kill()


def test_a_changed_installation_retires_the_server(served, rootfs, tmp_path):
    extra = tmp_path / "extra"  # a sys.path directory: installing or removing a package there changes its time
    extra.mkdir()
    env = {**served, "PYTHONPATH": str(extra)}
    _start(env, rootfs)
    [server] = run_server_pids(str(Path(served["XDG_RUNTIME_DIR"]) / "aiocontain.run"))
    (extra / "new_package.py").write_text("")
    proc = subprocess.run(cli_argv(rootfs, "--net", "none", "true"), env=env, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert settle([server], 10) == set()  # declined the run (the command ran it) and exited


def test_doctor_shows_the_server(served, rootfs):
    doctor = [COMMAND, "doctor"]
    assert "not running" in subprocess.run(doctor, env=served, capture_output=True, text=True, timeout=60).stdout
    _start(served, rootfs)
    listed = subprocess.run(doctor, env=served, capture_output=True, text=True, timeout=60).stdout
    [line] = [line for line in listed.splitlines() if "run server" in line]
    assert f"running (pid {run_server_pids(str(Path(served['XDG_RUNTIME_DIR']) / 'aiocontain.run'))[0]})" in line


CLIENT = """
import sys
before = set(sys.modules)
import aiocontain.command  # what the console script imports: its module holds the stop signals
from aiocontain.runserver import client
code = client.run(sys.argv)
if code is None:
    client.start()  # after the command's own run, as the command does
print(code, *sorted(set(sys.modules) - before))
"""


def test_a_served_run_imports_next_to_nothing(served, rootfs, tmp_path):
    where = tmp_path / "client"
    where.mkdir()
    (where / "client.py").write_text(CLIENT)
    argv = [sys.executable, str(where / "client.py"), "run", "--rootfs", str(rootfs), "--net", "none", "true"]
    _start(served, rootfs, argv)
    proc = subprocess.run(argv, env=served, capture_output=True, text=True, timeout=60)
    code, *imported = proc.stdout.split()
    assert code == "0", proc.stderr  # served: the run's code
    assert {"aiocontain.runserver.client", "_socket"} <= set(imported)  # the listing is real
    heavy = {"asyncio", "anyio", "argparse", "dataclasses", "inspect", "ast", "typing", "enum", "signal", "socket"}
    assert heavy & set(imported) == set()
    assert not any(
        name.startswith(("aiocontain.cli", "aiocontain.container", "aiocontain.stages")) for name in imported
    )


def test_a_client_is_judged_by_what_proc_shows_not_by_what_it_says(served, rootfs):
    """A process of the same user in namespaces of its own (as a container with the runtime directory mounted
    would be) that sends the server's own account of itself is still declined: the server reads the client's
    namespaces, capabilities and seccomp mode from /proc. The control: the same forged request from outside
    is served."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed")
    _start(served, rootfs)
    # As the console script runs: its interpreter, its directory first on sys.path (the server's environment).
    python = Path(COMMAND).read_text().splitlines()[0].removeprefix("#!").strip()
    like_the_script = f"import sys; sys.path[0] = {str(Path(COMMAND).parent)!r}; "
    code = like_the_script + (
        "from aiocontain import runserver; from aiocontain.runserver import client; "
        "runserver.attributes = lambda: sys.argv[1]; "
        f"print(client.run(['aiocontain', 'run', '--rootfs', {str(rootfs)!r}, '--net', 'none', '/bin/true']))"
    )
    outside = subprocess.run(
        [python, "-c", like_the_script + "from aiocontain import runserver; print(runserver.attributes(), end='')"],
        env=served,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    forged = [python, "-c", code, outside]
    control = subprocess.run(forged, env=served, capture_output=True, text=True, timeout=60)
    assert control.stdout.strip() == "0", control  # served: the forgery is faithful
    sandboxed = [unshare, "--user", "--map-current-user", "--net", *forged]
    inside = subprocess.run(sandboxed, env=served, capture_output=True, text=True, timeout=60)
    assert inside.stdout.strip() == "None", inside  # declined: the command would run it itself, confined


def test_an_argument_naming_an_fd_of_the_command_is_the_commands_own_run(served, rootfs):
    """Only stdio is handed to the server: `--env-file <(...)` names another fd of the command, so the command
    runs it itself and the file is read."""
    _start(served, rootfs)
    read, write = os.pipe()
    argv = cli_argv(rootfs, "--net", "none", "--env-file", f"/dev/fd/{read}", "--", "/bin/sh", "-c", "echo $FROM_FD")
    os.write(write, b"FROM_FD=yes\n")
    os.close(write)
    try:
        proc = subprocess.run(argv, env=served, capture_output=True, text=True, timeout=60, pass_fds=(read,))
    finally:
        os.close(read)
    assert (proc.returncode, proc.stdout) == (0, "yes\n"), proc.stderr


def test_a_caller_with_another_scheduling_policy_or_personality_runs_it_itself(served, rootfs):
    """chrt's policy and setarch's personality are inherited by a container: a caller with others than the
    server's is not stood in for (the policy, field 41 of /proc/self/stat, is SCHED_BATCH inside)."""
    chrt, setarch = shutil.which("chrt"), shutil.which("setarch")
    if chrt is None or setarch is None:
        pytest.skip("chrt and setarch (util-linux) are not installed")
    _start(served, rootfs)
    inside = ["--net", "none", "--", "/bin/sh", "-c", "cut -d' ' -f41 /proc/self/stat; cat /proc/self/personality"]
    batch = subprocess.run([chrt, "-b", "0", *cli_argv(rootfs, *inside)], env=served, capture_output=True, text=True)
    assert (batch.returncode, batch.stdout.split()) == (0, ["3", "00000000"]), batch.stderr
    norandom = subprocess.run([setarch, "-R", *cli_argv(rootfs, *inside)], env=served, capture_output=True, text=True)
    assert (norandom.returncode, norandom.stdout.split()) == (0, ["0", "00040000"]), norandom.stderr


def _a_server_and_a_logging_run(env: dict[str, str], rootfs: Path, tmp_path: Path) -> tuple[int, Path, list[str]]:
    """A running server's pid, and a run that adds a line to out/log each time it really runs."""
    _start(env, rootfs)
    [server] = run_server_pids(str(Path(env["XDG_RUNTIME_DIR"]) / "aiocontain.run"))
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    argv = cli_argv(rootfs, "--net", "none", "-v", f"{out}:/out", "--", "/bin/sh", "-c", "echo ran >> /out/log")
    return server, out, argv


def _waits_for_the_server(pid: int) -> bool:
    """The command is blocked on its connection to the server (the kernel's wait channel: poll, with a timeout)."""
    wchan = Path(f"/proc/{pid}/wchan").read_text()
    return "poll" in wchan or wchan.startswith("unix_stream")


def test_a_stopped_server_is_given_up_on_and_runs_nothing_later(served, rootfs, tmp_path):
    """A server that does not answer (stopped here) never hangs the command: it runs the container itself. The
    server, resumed, finds that command gone and runs nothing of its request."""
    server, out, argv = _a_server_and_a_logging_run(served, rootfs, tmp_path)
    os.kill(server, signal.SIGSTOP)
    try:
        proc = subprocess.run(argv, env={**served, "AIOCONTAIN_RUN_SERVER_TIMEOUT": "1"}, capture_output=True)
        assert proc.returncode == 0, proc.stderr
    finally:
        os.kill(server, signal.SIGCONT)
    again = subprocess.run(argv, env=served, capture_output=True, timeout=60)  # served: after the stale request
    assert again.returncode == 0, again.stderr
    assert settle(_children(server), 10) == set()
    assert (out / "log").read_text() == "ran\nran\n"  # the command's own run and the served one; never a third


def test_a_stop_signal_ends_a_command_waiting_for_its_server(served, rootfs, tmp_path):
    """SIGINT while the server has not answered ends the command at once (130), running nothing: the wait for a
    server is never a moment when the command cannot be stopped. The answer's timeout is set far beyond the
    test's own, so that only the signal can end it."""
    server, out, argv = _a_server_and_a_logging_run(served, rootfs, tmp_path)
    os.kill(server, signal.SIGSTOP)
    try:
        with subprocess.Popen(argv, env={**served, "AIOCONTAIN_RUN_SERVER_TIMEOUT": "3600"}) as proc:
            deadline = time.monotonic() + 30
            while not _waits_for_the_server(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.01)  # no event says so; before the command's own code, SIGINT is the interpreter's
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 128 + signal.SIGINT
    finally:
        os.kill(server, signal.SIGCONT)
    again = subprocess.run(argv, env=served, capture_output=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert settle(_children(server), 10) == set()
    assert (out / "log").read_text() == "ran\n"  # only the second command's run


def test_a_run_under_interpreter_flags_gets_a_server_of_its_own(served, rootfs):
    """`python -X dev .../aiocontain run`: the server holds its runs to its own interpreter flags, so such a run
    gets a server started with the same flags (the first one starts it), rather than a server that would decline
    every one of its runs after a round trip."""
    python = Path(COMMAND).read_text().splitlines()[0].removeprefix("#!").strip()  # the console script's own
    flagged = [python, "-X", "dev", COMMAND]
    _start(served, rootfs, [*flagged, "run", "--rootfs", str(rootfs), "--net", "none", "true"])
    sleeper = [*flagged, "run", "--rootfs", str(rootfs), "--net", "none", "--", "/bin/sh", "-c", "echo ready; sleep 60"]
    with started(sleeper, env=served) as proc:
        assert _children(proc.pid) == []  # served: no fork server of its own
        proc.kill()
    # Control: the same command without the flags is another environment, and its first run is its own.
    with started([COMMAND, *sleeper[4:]], env=served) as proc:
        assert _children(proc.pid) != []
        proc.kill()
