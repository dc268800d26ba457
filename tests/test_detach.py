"""Detached containers (``run -d``) and the commands around them: ps, stop, kill, rm, logs, inspect, attach.

Real containers as the test user. A container that must stay up until the test says so blocks on a FIFO bound
into it (``-v``); the test writes a line to let it go. Exits are waited for through pidfds (the monitor's pid
from ``inspect``), never polled.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import aiocontain
from aiocontain import registry
from aiocontain.errors import AiocontainError
from tests.conftest import Result, cli_argv, leftovers, slirp4netns_pids, started

pytestmark = pytest.mark.container

HOLD = "read line < /x/go; "  # blocks until the test writes to the FIFO


def ctl(*args: str, timeout: float = 60) -> Result:
    """`aiocontain ARGS` (ps, stop, kill, rm, logs, inspect) as a real process."""
    argv = [sys.executable, "-m", "aiocontain", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return Result(proc.returncode, proc.stdout, proc.stderr)


class Fifo:
    """A FIFO in a directory bound at /x: the container reads /x/go, ``release`` writes a line to it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        os.mkfifo(directory / "go")

    @property
    def volume(self) -> list[str]:
        return ["-v", f"{self.directory}:/x"]

    def release(self) -> None:
        with open(self.directory / "go", "w") as f:  # opens once the container has it open for reading
            f.write("go\n")


@pytest.fixture
def fifo(tmp_path: Path) -> Fifo:
    return Fifo(tmp_path)


@pytest.fixture
def cleanup() -> Iterator[list[str]]:
    """Names to remove (rm -f) on every way out, so that a failing test leaves no container to the next."""
    names: list[str] = []
    yield names
    for name in names:
        ctl("rm", "-f", name)


def inspect(name: str) -> dict[str, object]:
    result = ctl("inspect", name)
    assert result.code == 0, result.stderr
    found = json.loads(result.stdout)
    assert len(found) == 1
    return dict(found[0])


def wait_gone(pid: int, timeout: float = 30.0) -> None:
    """Until pid exits (its pidfd becomes readable)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        assert select.select([fd], [], [], timeout)[0], f"process {pid} still runs"
    finally:
        os.close(fd)


def monitor_pid(name: str) -> int:
    pid = inspect(name)["State"]["MonitorPid"]  # type: ignore[index]
    assert isinstance(pid, int) and pid > 0
    return pid


def ps(*options: str) -> list[dict[str, object]]:
    result = ctl("ps", "--format", "json", *options)
    assert result.code == 0, result.stderr
    return list(json.loads(result.stdout))


def without_records(counted: dict[str, object], kept: str | None = None) -> dict[str, object]:
    """leftovers() but its records, which are checked to be exactly the kept container's record and log (an
    exited detached container's stay until rm, as podman's)."""
    rest = dict(counted)
    records = rest.pop("records")
    assert records == ([f"{kept}.json", f"{kept}.log"] if kept else []), records
    return rest


def names_in(rows: list[dict[str, object]]) -> list[str]:
    return [row["Names"][0] for row in rows]  # type: ignore[index]


def test_run_d_then_ps_logs_inspect_stop_rm(cli, fifo, cleanup):
    before = leftovers()
    cleanup.append("lifecycle")
    command = HOLD + "echo out; echo err >&2; trap 'echo bye; exit 7' TERM; sleep 600 & wait"
    started_ = cli("-d", "--name", "lifecycle", "--net", "none", *fifo.volume, "/bin/sh", "-c", command)
    assert started_.code == 0, started_.stderr
    container_id = started_.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", container_id), started_.stdout
    assert started_.stderr == ""

    rows = ps()
    assert names_in(rows) == ["lifecycle"]
    assert (rows[0]["Id"], rows[0]["State"]) == (container_id, "running")
    assert ctl("ps", "-q").stdout.split() == [container_id[:12]]
    table = ctl("ps").stdout.splitlines()
    assert table[0].split() == ["CONTAINER", "ID", "NAME", "COMMAND", "CREATED", "STATUS"]
    assert table[1].startswith(container_id[:12]) and " Up " in table[1]

    details = inspect("lifecycle")
    assert details["Id"] == container_id
    assert details["State"]["Running"] is True  # type: ignore[index]
    pid = details["State"]["Pid"]  # type: ignore[index]
    assert Path(f"/proc/{pid}/ns/pid").exists()
    assert details["Config"]["command"] == ["/bin/sh", "-c", command]  # type: ignore[index]
    assert details["Config"]["network"] == "none"  # type: ignore[index]
    assert "Cgroup" in details and "NetworkSettings" in details
    # The monitor: a session of its own (no terminal's hangup reaches it), stdin /dev/null, output to the log.
    monitor = monitor_pid("lifecycle")
    session = int(Path(f"/proc/{monitor}/stat").read_text().rsplit(")", 1)[1].split()[3])
    assert session == monitor != os.getsid(0)
    fds = [os.readlink(f"/proc/{monitor}/fd/{fd}") for fd in (0, 1, 2)]
    assert fds == ["/dev/null", details["LogPath"], details["LogPath"]]

    # logs -f follows what the container writes, until it exits.
    fifo.release()
    with started([sys.executable, "-m", "aiocontain", "logs", "-f", "lifecycle"], marker="out") as follow:
        assert follow.stdout is not None
        assert follow.stdout.readline() == "err\n"
        stopped = ctl("stop", "lifecycle")  # returns once its monitor has torn it down
        assert (stopped.code, stopped.stdout) == (0, "lifecycle\n"), stopped.stderr
        assert follow.stdout.read() == "bye\n"
        assert follow.wait(timeout=30) == 0

    assert ps() == []
    (row,) = ps("-a")
    assert (row["State"], row["ExitCode"]) == ("exited", 7)
    assert str(row["Status"]).startswith("Exited (7)")
    assert ctl("logs", "lifecycle").stdout == "out\nerr\nbye\n"
    state = inspect("lifecycle")["State"]
    assert (state["Status"], state["Running"], state["Pid"], state["ExitCode"]) == ("exited", False, 0, 7)  # type: ignore[index]

    removed = ctl("rm", "lifecycle")
    assert (removed.code, removed.stdout) == (0, "lifecycle\n"), removed.stderr
    assert ps("-a") == []
    assert os.listdir(registry.directory()) == []  # its record and its log are gone
    assert leftovers() == before


def test_duplicate_name_is_refused_while_the_container_exists(cli, cleanup):
    cleanup.append("dup")
    first = cli("-d", "--name", "dup", "--net", "none", "/bin/sleep", "600")
    assert first.code == 0, first.stderr
    for args in (("-d",), ()):  # detached or not, as podman
        again = cli(*args, "--name", "dup", "--net", "none", "/bin/true")
        assert again.code == 125
        assert again.stderr.startswith("aiocontain: the name 'dup' is already in use")
        assert len(again.stderr.splitlines()) == 1
        assert again.stdout == ""
    assert ctl("stop", "-t", "0", "dup").code == 0
    exited = cli("-d", "--name", "dup", "--net", "none", "/bin/true")  # an exited container keeps its name
    assert exited.code == 125
    assert "already in use by container" in exited.stderr and "(exited)" in exited.stderr
    assert ctl("rm", "dup").code == 0
    control = cli("--name", "dup", "--net", "none", "/bin/true")  # once removed, the name is free
    assert control.code == 0, control.stderr
    assert names_in(ps("-a")) == []


def test_detached_exit_cleans_up_everything_with_no_cli_alive(cli, fifo, cleanup):
    """With slirp4netns (a helper process of the monitor's): the container's own exit, with only the monitor
    alive, undoes everything; the record stays with the exit code until rm."""
    before = leftovers()
    helpers = set(slirp4netns_pids())
    cleanup.append("selfexit")
    result = cli("-d", "--name", "selfexit", *fifo.volume, "/bin/sh", "-c", HOLD + "exit 4")
    assert result.code == 0, result.stderr
    monitor = monitor_pid("selfexit")
    assert set(slirp4netns_pids()) - helpers, "the container has slirp4netns while it runs"
    assert leftovers() != before  # the control: while it runs, its processes are counted
    fifo.release()
    wait_gone(monitor)
    assert without_records(leftovers(), result.stdout.strip()) == without_records(before)
    (row,) = ps("-a")
    assert (row["State"], row["ExitCode"]) == ("exited", 4)
    assert ctl("rm", "selfexit").code == 0
    assert leftovers() == before


def test_sigkill_of_the_monitor_leaves_nothing(cli, fifo, cleanup):
    before = leftovers()
    cleanup.append("orphan")
    # slirp4netns and a published port too: all of it is the monitor's
    result = cli("-d", "--name", "orphan", "-p", "127.0.0.1::80", *fifo.volume, "/bin/sh", "-c", HOLD + "exit 0")
    assert result.code == 0, result.stderr
    assert result.stderr.startswith("aiocontain: published 127.0.0.1:")  # said during set-up: relayed by run -d
    details = inspect("orphan")
    pid = details["State"]["Pid"]  # type: ignore[index]
    os.kill(monitor_pid("orphan"), signal.SIGKILL)
    assert ps() == []  # at once: a container whose monitor is gone is not running, whatever is left of it
    wait_gone(pid)  # the fork server kills PID 1 once the monitor is gone
    assert without_records(leftovers(), result.stdout.strip()) == without_records(before)
    (row,) = ps("-a")
    assert (row["State"], row["ExitCode"], row["Status"]) == ("exited", None, "Exited (unknown)")
    assert ctl("rm", "orphan").code == 0
    assert ps("-a") == []
    assert leftovers() == before
    control = cli("--name", "orphan", "--net", "none", "/bin/true")  # the name was let go with the monitor
    assert control.code == 0, control.stderr


def _record(**fields: object) -> registry.Record:
    values: dict[str, object] = {
        "id": os.urandom(32).hex(),
        "name": "stale",
        "pid": os.getpid(),
        "start_time": registry.proc.start_time(os.getpid()),
        "monitor_pid": os.getpid(),
        "monitor_start_time": registry.proc.start_time(os.getpid()),
        "created": registry.now(),
        "detached": True,
        "spec": {"command": ["/bin/sleep", "600"]},
        "boot_id": registry._boot_id(),
    }
    values.update(fields)
    return registry.Record(**values)  # type: ignore[arg-type]


def test_ps_judges_records_by_proc_not_by_what_was_written(cleanup):
    """Records written as running: one whose processes are gone (a process that exited, its pid free), one
    from another boot naming live processes, and a foreground one whose monitor died. Only the control (this
    live process, this boot) shows as running."""
    gone = subprocess.Popen(["/bin/true"])
    gone_start = registry.proc.start_time(gone.pid) or 1
    gone.wait()
    records = {
        "control": _record(name="control"),
        "stale": _record(pid=gone.pid, start_time=gone_start, monitor_pid=gone.pid, monitor_start_time=gone_start),
        "reboot": _record(name="reboot", boot_id="another-boot"),
        "foreground": _record(name="foreground", detached=False, monitor_pid=gone.pid, monitor_start_time=gone_start),
    }
    cleanup.extend(["stale", "reboot"])
    for record in records.values():
        registry.Registration(record)
    try:
        running = ps()
        assert names_in(running) == ["control"]
        assert running[0]["State"] == "running"
        everything = {row["Names"][0]: row["State"] for row in ps("-a")}  # type: ignore[index]
        # the foreground record is removed: its monitor, which would have removed it, is gone
        assert everything == {"control": "running", "stale": "exited", "reboot": "exited"}
        assert not os.path.exists(os.path.join(registry.directory(), f"{records['foreground'].id}.json"))
    finally:
        registry.remove(records["control"])  # not rm -f: that would kill this very process
    for name in ("stale", "reboot"):
        assert ctl("rm", name).code == 0  # not running: removed without -f


def test_rm_of_a_running_container_needs_force(cli, cleanup):
    before = leftovers()
    cleanup.append("busy")
    assert cli("-d", "--name", "busy", "--net", "none", "/bin/sleep", "600").code == 0
    refused = ctl("rm", "busy")
    assert refused.code == 125
    assert refused.stderr.startswith("aiocontain: container busy is running") and refused.stderr.count("\n") == 1
    assert names_in(ps()) == ["busy"]  # untouched
    forced = ctl("rm", "-f", "busy")
    assert (forced.code, forced.stdout) == (0, "busy\n"), forced.stderr
    assert ps("-a") == []
    assert leftovers() == before


def test_run_d_rm_removes_itself_on_exit(cli, fifo, cleanup):
    before = leftovers()
    cleanup.append("gone")
    result = cli("-d", "--rm", "--name", "gone", "--net", "none", *fifo.volume, "/bin/sh", "-c", HOLD + "exit 3")
    assert result.code == 0, result.stderr
    monitor = monitor_pid("gone")
    log = inspect("gone")["LogPath"]
    assert isinstance(log, str) and os.path.exists(log)
    fifo.release()
    wait_gone(monitor)
    assert ps("-a") == []
    assert not os.path.exists(log)
    assert leftovers() == before


def test_logs_tail_gives_the_last_lines(cli, fifo, cleanup):
    """logs --tail N (-n N), as podman's: the last N lines, all of them when there are fewer, none for 0; a count
    that is no number is one line and 125."""
    cleanup.append("tailed")
    result = cli("-d", "--name", "tailed", "--net", "none", *fifo.volume, "/bin/sh", "-c", HOLD + "seq 5; printf last")
    assert result.code == 0, result.stderr
    monitor = monitor_pid("tailed")
    fifo.release()
    wait_gone(monitor)  # it has exited, its output logged
    assert ctl("logs", "tailed").stdout == "1\n2\n3\n4\n5\nlast"  # control: the whole log
    assert ctl("logs", "--tail", "2", "tailed").stdout == "5\nlast"
    assert ctl("logs", "-n", "9", "tailed").stdout == "1\n2\n3\n4\n5\nlast"
    assert ctl("logs", "--tail=0", "tailed").stdout == ""
    refused = ctl("logs", "--tail", "x", "tailed")
    assert refused.code == 125 and refused.stderr.count("\n") == 1 and "'x' is not a number of lines" in refused.stderr
    assert ctl("rm", "tailed").code == 0


def test_kill_sends_the_signal_to_pid_1(cli, fifo, cleanup):
    cleanup.append("signalled")
    command = "trap 'echo usr1; exit 9' USR1; echo ready; sleep 600 & wait"
    assert cli("-d", "--name", "signalled", "--net", "none", "/bin/sh", "-c", command).code == 0
    monitor = monitor_pid("signalled")
    with started([sys.executable, "-m", "aiocontain", "logs", "-f", "signalled"]) as follow:  # trap is set
        killed = ctl("kill", "-s", "USR1", "signalled")
        assert (killed.code, killed.stdout) == (0, "signalled\n"), killed.stderr
        assert follow.stdout is not None
        assert follow.stdout.read() == "usr1\n"
    wait_gone(monitor)
    assert ps("-a")[0]["ExitCode"] == 9
    again = ctl("kill", "signalled")
    assert again.code == 125 and "is not running" in again.stderr


def test_set_up_errors_of_run_d_are_one_line_and_leave_nothing(cli):
    before = leftovers()
    missing = cli("-d", "--net", "none", "/no/such/command")
    assert (missing.code, missing.stdout) == (127, "")
    assert missing.stderr.startswith("aiocontain: ") and missing.stderr.count("\n") == 1
    bad = cli("-d", "--net", "none", "--memory", "lots", "/bin/true")
    assert bad.code == 125 and bad.stderr.count("\n") == 1
    tty = cli("-d", "-t", "--net", "none", "/bin/true")
    assert tty.code == 125 and "-t" in tty.stderr
    assert ps("-a") == []
    assert os.listdir(registry.directory()) == []  # no log left either
    assert leftovers() == before


@pytest.mark.parametrize("command", ["stop", "kill", "rm", "logs", "inspect"])
def test_unknown_names_are_one_line_and_125(command):
    result = ctl(command, "no-such-container")
    assert result.code == 125
    assert result.stderr == "aiocontain: no such container: no-such-container (fix: aiocontain ps -a lists them)\n"


def test_the_light_commands_import_no_event_loop():
    code = "import sys; from aiocontain import cli; cli.main(['ps', '-a']); print(sorted(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    loaded = result.stdout.splitlines()[-1]
    for heavy in ("'anyio'", "'pyroute2'", "'structlog'", "'trio'"):
        assert heavy not in loaded
    assert "'aiocontain.registry'" in loaded  # the control: the modules were listed


@pytest.mark.anyio
async def test_attach_waits_for_and_stops_another_process_s_container(cli, fifo, cleanup):
    cleanup.extend(["attached", "stopped"])
    assert cli("-d", "--name", "attached", "--net", "none", *fifo.volume, "/bin/sh", "-c", HOLD + "exit 5").code == 0
    with aiocontain.attach("attached") as handle:
        details = inspect("attached")
        assert (handle.name, handle.id, handle.pid) == ("attached", details["Id"], details["State"]["Pid"])  # type: ignore[index]
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, fifo.release)
            assert await handle.wait() == 5
    with pytest.raises(AiocontainError, match="is not running"):
        aiocontain.attach("attached")

    assert cli("-d", "--name", "stopped", "--net", "none", "/bin/sleep", "600").code == 0
    with aiocontain.attach("stopped") as handle:
        assert await handle.stop(timeout=0) == 137  # sleep as PID 1 has no handler for SIGTERM: SIGKILL

    with pytest.raises(AiocontainError, match="no such container"):
        aiocontain.attach("no-such-container")


@pytest.mark.anyio
async def test_attach_then_exec_runs_in_the_container(cli, cleanup):
    cleanup.append("execd")
    argv = ("-d", "--name", "execd", "--hostname", "inside", "--net", "none", "/bin/sleep", "600")
    assert cli(*argv).code == 0
    with aiocontain.attach("execd") as handle:
        async with await handle.exec(["/bin/sh", "-c", "hostname; echo $$; exit 3"], stdout=subprocess.PIPE) as process:
            assert process.stdout is not None
            out = b""
            async for chunk in process.stdout:
                out += chunk
            assert await process.wait() == 3
        hostname, pid = out.decode().split()
        assert hostname == "inside" and 1 < int(pid) < 100  # the container's UTS and PID namespaces, not ours
        assert await handle.stop(timeout=0) == 137
        with pytest.raises(AiocontainError, match="is not running"):
            await handle.exec(["/bin/true"])


@pytest.mark.anyio
async def test_attach_to_a_foreground_run_of_another_process(rootfs):
    argv = cli_argv(rootfs, "--name", "foreground", "--net", "none", "/bin/sh", "-c", "echo ready; cat > /dev/null")
    with started(argv, stdin=subprocess.PIPE) as proc:
        with aiocontain.attach("foreground") as handle:
            assert names_in(ps()) == ["foreground"]
            assert proc.stdin is not None
            proc.stdin.close()  # its command reads end of file and exits
            assert await handle.wait() is None  # its status is that process's: `aiocontain run` exits with it
        assert proc.wait(timeout=30) == 0
    assert ps("-a") == []  # its run removed the record on the way out


@pytest.mark.parametrize("interrupted", [True, False])
def test_ctrl_c_while_run_d_waits_stops_the_set_up(rootfs, tmp_path, interrupted, cleanup):
    """SIGINT to `run -d` during set-up reaches the monitor, which stops it as a foreground run does: 130, and
    nothing left. The monitor reads --env-file, a FIFO here, so the test knows set-up is under way; the control
    (no signal) shows the same run otherwise starts."""
    before = leftovers()
    cleanup.append("interrupted")
    env_file = tmp_path / "env"
    os.mkfifo(env_file)
    argv = cli_argv(rootfs, "-d", "--name", "interrupted", "--net", "none", "--env-file", str(env_file), "/bin/true")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        with open(env_file, "w") as f:  # opens once the monitor reads it: run -d waits for its report
            if interrupted:
                proc.send_signal(signal.SIGINT)
            f.write("A=1\n")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if not interrupted:
        assert (proc.returncode, len(out.strip())) == (0, 64), err
        assert ctl("rm", "-f", "interrupted").code == 0
    else:
        assert (proc.returncode, out) == (130, ""), err
    assert ps("-a") == []
    assert leftovers() == before


def test_stop_stops_several_at_once(cli, cleanup):
    cleanup.extend(["first", "second"])
    for name, code in (("first", 7), ("second", 8)):
        command = f"trap 'exit {code}' TERM; sleep 600 & wait"
        assert cli("-d", "--name", name, "--net", "none", "/bin/sh", "-c", command).code == 0
    stopped = ctl("stop", "first", "no-such", "second")
    assert stopped.code == 125  # the unknown name; the others are stopped all the same
    assert stopped.stdout == "first\nsecond\n"
    assert stopped.stderr == "aiocontain: no such container: no-such (fix: aiocontain ps -a lists them)\n"
    assert {row["Names"][0]: row["ExitCode"] for row in ps("-a")} == {"first": 7, "second": 8}  # type: ignore[index]


def test_a_malformed_monitor_variable_is_one_line(rootfs):
    env = {**os.environ, "AIOCONTAIN_MONITOR": "zz:1"}
    proc = subprocess.run(cli_argv(rootfs, "-d", "--net", "none", "/bin/true"), env=env, capture_output=True, text=True)
    assert proc.returncode == 125 and proc.stderr.count("\n") == 1, proc.stderr
    assert "is not a monitor's report pipe" in proc.stderr


def test_a_record_names_as_monitor_the_process_that_wrote_it_forked_or_not(tmp_path, monkeypatch):
    """The monitor's start time is read once per process: a record written by a forked child names the child
    (its own start time), not the parent whose reading it inherited. The child starts long after this test's
    process (the control: the two start times differ)."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(registry, "_own_start", {})

    def write(name: str) -> registry.Record:
        registration = registry.register(
            os.urandom(32).hex(), name, os.getpid(), spec={}, network={}, cgroup=None, stop_timeout=10
        )
        return registration.record

    ours = write("parent")
    assert (ours.monitor_pid, ours.monitor_start_time) == (os.getpid(), registry.proc.start_time(os.getpid()))
    assert write("again").monitor_start_time == ours.monitor_start_time
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            record = write("child")
            os.write(write_end, json.dumps([record.monitor_pid, record.monitor_start_time, os.getpid()]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        monitor_pid, monitor_start, pid = json.loads(pipe.read())
    child_start = registry.proc.start_time(child)
    os.waitpid(child, 0)
    assert (monitor_pid, monitor_start) == (pid, child_start) == (child, child_start)
    assert child_start != ours.monitor_start_time
