"""``aiocontain-oci exec``, as podman and conmon run it: into a running container of the engine's.

The same isolation probes as tests/test_exec.py (PID namespace, fds, capabilities, session), and what runc's
exec has on top: --process, --detach with --pid-file, --tty with --console-socket.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.oci_support import RUNTIME, Engine, engine, make_bundle
from tests.test_exec import CAPS, FDS_PROBE, PID_PROBE, SESSION_PROBE, check_pid_view

pytestmark = pytest.mark.container
assert engine  # the fixture, imported for the tests below


@pytest.fixture
def running(engine: Engine, rootfs: Path, tmp_path: Path) -> Iterator[str]:
    """A started container that sleeps, id "box"; killed, reaped and deleted afterwards."""
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/sleep", "1000"], hostname="ocibox")
    assert engine.create("box", bundle, "--pid-file", str(tmp_path / "pid")).code == 0
    pid = int((tmp_path / "pid").read_text())
    assert engine.oci("start", "box").code == 0
    try:
        yield "box"
    finally:
        engine.oci("kill", "box", "KILL")
        engine.wait(pid)
        engine.oci("delete", "--force", "box")


def test_exit_code_env_cwd_user(engine: Engine, running: str) -> None:
    assert engine.oci("exec", running, "/bin/sh", "-c", "exit 3").code == 3
    script = 'echo "$(pwd) $A $(id -u):$(id -g) $(hostname) $PATH"'
    result = engine.oci("exec", "--cwd", "/etc", "-e", "A=b", "--user", "65534:65534", running, "/bin/sh", "-c", script)
    assert (result.code, result.stdout.split(), result.stderr) == (
        0,
        ["/etc", "b", "65534:65534", "ocibox", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "",
    )


def test_process_file(engine: Engine, running: str, tmp_path: Path) -> None:
    process = {"args": ["/bin/sh", "-c", "echo $X; pwd; exit 4"], "env": ["X=from-file"], "cwd": "/tmp"}
    (tmp_path / "process.json").write_text(json.dumps(process))
    result = engine.oci("exec", "--process", str(tmp_path / "process.json"), running)
    assert (result.code, result.stdout.split()) == (4, ["from-file", "/tmp"])


def test_isolation_probes(engine: Engine, running: str) -> None:
    check_pid_view(engine.oci("exec", running, "/bin/sh", "-c", PID_PROBE).stdout, "/bin/sleep 1000")
    assert engine.oci("exec", running, "/bin/sh", "-c", FDS_PROBE).stdout.split() == ["0", "1", "2"]
    mine = engine.oci("exec", running, "/bin/sh", "-c", CAPS).stdout
    assert mine == engine.oci("exec", running, "/bin/sh", "-c", CAPS.replace("self", "1")).stdout
    sid, pid = engine.oci("exec", running, "/bin/sh", "-c", SESSION_PROBE).stdout.split()
    assert sid == pid


def test_detach_and_pid_file(engine: Engine, running: str, tmp_path: Path) -> None:
    pid_file, output = tmp_path / "exec.pid", tmp_path / "output"
    # Output to a file, as conmon gives it: the detached process keeps it open after exec returns.
    argv = [RUNTIME, "--root", str(engine.root), "exec", "--detach", "--pid-file", str(pid_file), running]
    reply = engine.request({"argv": [*argv, "/bin/sh", "-c", "echo started; exec sleep 999"], "output": str(output)})
    assert reply["code"] == 0, output.read_text()
    pid = int(pid_file.read_text())
    # It outlived exec, reparented to the engine (a subreaper, as conmon is, which reaps it), in the container's
    # PID namespace.
    assert pid in engine.children()
    status = Path(f"/proc/{pid}/status").read_text()
    assert len(status.split("NSpid:")[1].splitlines()[0].split()) >= 2
    assert "sleep 999" in engine.oci("exec", running, "ps").stdout
    assert output.read_text() == "started\n"


def test_tty_sends_the_master_over_the_console_socket(engine: Engine, running: str, tmp_path: Path) -> None:
    path = str(tmp_path / "console.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        result = engine.oci("exec", "--tty", "--console-socket", path, running, "/bin/sh", "-c", "tty; exit 5")
        assert result.code == 5, result.stderr
        connection, _ = listener.accept()
        with connection:
            name, fds, _, _ = socket.recv_fds(connection, 1024, 1)
    assert len(fds) == 1 and name.startswith(b"/dev/pts/")
    try:
        output = os.read(fds[0], 1024)
    finally:
        os.close(fds[0])
    assert output.strip() == name, output  # the process's terminal is the one whose master we got


def test_errors_are_one_line_exit_1(engine: Engine, running: str) -> None:
    for args, text in [
        (["no-such-id", "true"], 'container "no-such-id" does not exist'),
        ([running, "no-such-command"], "exec failed"),
        (["--tty", running, "true"], "--console-socket"),
        (["--user", "x", running, "true"], "UID[:GID]"),
        (["--preserve-fds", "2", running, "true"], "--preserve-fds is not supported"),
        (["--bogus", running, "true"], "flag provided but not defined: --bogus"),
    ]:
        result = engine.oci("exec", *args)
        assert result.code == 1 and text in result.stderr, (args, result.stderr)
        assert len(result.stderr.splitlines()) == 1, result.stderr


def test_exec_into_a_stopped_container(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/true"])
    assert engine.create("done", bundle, "--pid-file", str(tmp_path / "pid")).code == 0
    assert engine.oci("start", "done").code == 0
    assert engine.wait(int((tmp_path / "pid").read_text())) == 0
    result = engine.oci("exec", "done", "true")
    assert (result.code, result.stderr.strip()) == (1, "aiocontain-oci: cannot exec in a stopped container")
    assert engine.oci("delete", "done").code == 0
