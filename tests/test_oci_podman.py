"""podman drives aiocontain-oci: rootless, with the test user's subordinate ids, as it drives runc.

Every test runs twice: under `podman --runtime <staged aiocontain-oci>` and under `podman --runtime runc`, the
control that shows what podman itself gives on this machine, so a failure under aiocontain-oci is the
runtime's. podman passes its JSON log options (`--log-format=json`) only to runtimes it knows: the containers.conf
that XDG_CONFIG_HOME points at names aiocontain-oci in `runtime_supports_json`, as a packaged runtime would.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import _PODMAN_PAUSE_FILES, Result, leftovers

pytestmark = pytest.mark.container

AIOCONTAIN_OCI = str(Path(sys.executable).with_name("aiocontain-oci"))
RUNTIMES = {"aiocontain-oci": AIOCONTAIN_OCI, "runc": "runc"}
CONTAINERS_CONF = """\
[engine]
runtime_supports_json = ["crun", "runc", "kata", "runsc", "youki", "krun", "aiocontain-oci"]

[engine.runtimes]
aiocontain-oci = ["{path}"]
"""
# mkdir(2) refused with EPERM, everything else allowed: a profile whose effect busybox shows in one line.
SECCOMP_PROFILE = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
}


@dataclass
class Podman:
    """podman with one runtime, its state in a short directory of the module's (podman 4.3 waits 20 s on a
    long XDG_RUNTIME_DIR); `run(...)` is `podman run --rm --rootfs ROOTFS ...`, `cmd(...)` any subcommand."""

    runtime: str
    rootfs: Path
    env: dict[str, str]

    def argv(self, *args: str) -> list[str]:
        flags = ["--runtime", RUNTIMES[self.runtime], "--cgroup-manager=cgroupfs", "--events-backend=file"]
        return ["podman", *flags, *args]

    def cmd(self, *args: str, timeout: float = 120) -> Result:
        proc = subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=timeout, env=self.env, stdin=subprocess.DEVNULL
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def run(self, *args: str) -> Result:
        options, command = split(args)
        return self.cmd("run", "--rm", *options, "--rootfs", str(self.rootfs), *command)


def split(args: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """podman run's options are those before the first argument that is an absolute path (the command)."""
    for index, arg in enumerate(args):
        if arg.startswith("/") and not args[index - 1].startswith("--security-opt"):
            return list(args[:index]), list(args[index:])
    raise ValueError(f"no absolute command path in {args}")


@pytest.fixture(scope="module")
def podman_home() -> Iterator[Path]:
    """HOME, XDG_RUNTIME_DIR and XDG_CONFIG_HOME (with containers.conf) for the module's podman; reset after."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed: these tests drive aiocontain-oci through it")
    base = Path(tempfile.mkdtemp(prefix="po-", dir="/tmp"))
    (base / "home").mkdir()
    (base / "run").mkdir(mode=0o700)
    (base / "config" / "containers").mkdir(parents=True)
    (base / "config" / "containers" / "containers.conf").write_text(CONTAINERS_CONF.format(path=AIOCONTAIN_OCI))
    _PODMAN_PAUSE_FILES.append(base / "run" / "libpod" / "tmp" / "pause.pid")
    yield base
    env = {**os.environ, "HOME": str(base / "home"), "XDG_RUNTIME_DIR": str(base / "run")}
    subprocess.run(["podman", "system", "reset", "--force"], env=env, capture_output=True, timeout=120)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=list(RUNTIMES))
def podman(request: pytest.FixtureRequest, podman_home: Path, rootfs: Path) -> Iterator[Podman]:
    base = podman_home
    env = {
        **os.environ,
        "HOME": str(base / "home"),
        "XDG_RUNTIME_DIR": str(base / "run"),
        "XDG_CONFIG_HOME": str(base / "config"),
    }
    runner = Podman(request.param, rootfs, env)
    before = leftovers()
    yield runner
    # Nothing of this test's containers stays: every test removes what it made, so `ps -a` lists nothing, and
    # no process of the container's or the runtime's outlives it (podman's pause process is not counted).
    listed = runner.cmd("ps", "--all", "--quiet")
    leftover = listed.stdout.split()
    if leftover:
        runner.cmd("rm", "--force", *leftover)
    assert not leftover, f"{runner.runtime} left containers behind: {leftover}"
    assert leftovers() == before


def test_true_and_exit_codes(podman):
    """`run --rm /bin/true` ends 0 and leaves nothing; a command's non-zero exit code is podman's."""
    result = podman.run("--network", "none", "/bin/true")
    assert (result.code, result.stdout) == (0, ""), result.stderr
    result = podman.run("--network", "none", "/bin/sh", "-c", "echo out; echo err >&2; exit 7")
    assert (result.code, result.stdout) == (7, "out\n"), result.stderr
    assert "err" in result.stderr


def test_interactive_terminal(podman):
    """`run -it` under a real pty: the container's stdin and stdout are a terminal, of the size podman's own
    terminal has, and what is typed reaches the container."""
    # stty after the round trip: by then podman has surely passed its terminal's size on
    script = 'test -t 0 && test -t 1 && echo tty:yes; read line; echo "got:$line"; stty size; exit 5'
    argv = podman.argv("run", "--rm", "-it", "--network", "none", "--rootfs", str(podman.rootfs), "/bin/sh", "-c")
    pid, master = pty.fork()
    if pid == 0:  # the child: podman, with the pty as its controlling terminal, of a size podman must pass on
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 99, 0, 0))
            os.execvpe("podman", [*argv, script], podman.env)
        finally:
            os._exit(127)
    status = None
    try:
        output = read_until(master, b"tty:yes", 60)
        os.write(master, b"hello\r")
        output += read_until(master, None, 60)  # to the end: got:hello and the size, then podman exits
        _, status = os.waitpid(pid, 0)
    finally:
        if status is None:  # a failed read: podman still waits for input
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(master)
    assert b"tty:yes" in output and b"33 99" in output and b"got:hello" in output, output
    assert os.waitstatus_to_exitcode(status) == 5, output


def read_until(fd: int, marker: bytes | None, timeout: float) -> bytes:
    """What fd gives until marker appears in it (None: until EOF), within timeout."""
    data = b""
    deadline = time.monotonic() + timeout
    while marker is None or marker not in data:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} within {timeout} s: {data!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the other side of the pty is closed
            break
        if not chunk:
            break
        data += chunk
    return data


def detached(podman: Podman, name: str) -> Result:
    """`run -d` of a shell that says "started", then waits; its SIGTERM trap says "stopping" and exits 0."""
    command = "trap 'echo stopping; exit 0' TERM; echo started; sleep 1000 & wait"
    rootfs = str(podman.rootfs)
    return podman.cmd("run", "-d", "--name", name, "--network", "none", "--rootfs", rootfs, "/bin/sh", "-c", command)


def test_detached_logs_stop_rm(podman):
    """`run -d` returns once the container runs; `logs` has its output; `stop` ends it through its SIGTERM trap
    (exit code 0, well before the 10 s kill); `rm` removes it."""
    name = f"detached-{podman.runtime}"
    started = detached(podman, name)
    try:
        assert started.code == 0, started.stderr
        running = podman.cmd("inspect", "--format", "{{.State.Status}}", name)
        assert running.stdout.split() == ["running"], running
        stopped = podman.cmd("stop", "--time", "10", name)
        assert stopped.code == 0, stopped.stderr
        inspected = podman.cmd("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name)
        assert inspected.stdout.split() == ["exited", "0"], inspected
        logs = podman.cmd("logs", name)
        assert logs.stdout.split() == ["started", "stopping"], logs
    finally:
        removed = podman.cmd("rm", "--force", name)
    assert removed.code == 0, removed.stderr


def test_exec(podman):
    """`exec` runs in the detached container's namespaces (it sees the container's PID 1) and its exit code is
    podman's."""
    name = f"exec-{podman.runtime}"
    started = detached(podman, name)
    try:
        assert started.code == 0, started.stderr
        executed = podman.cmd("exec", name, "/bin/sh", "-c", "echo in:$(cat /proc/1/comm); exit 3")
        assert (executed.code, executed.stdout) == (3, "in:sh\n"), executed.stderr
    finally:
        removed = podman.cmd("rm", "--force", name)
    assert removed.code == 0, removed.stderr


def test_network_none_and_slirp4netns(podman):
    """--network none: loopback alone; the default (slirp4netns, rootless podman's): tap0 with a route out."""
    interfaces = "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ' '"
    alone = podman.run("--network", "none", "/bin/sh", "-c", interfaces)
    assert (alone.code, alone.stdout.split()) == (0, ["lo"]), alone.stderr
    slirp = podman.run("/bin/sh", "-c", f"{interfaces}; grep -c '^tap0	00000000' /proc/net/route")
    assert slirp.code == 0, slirp.stderr
    assert slirp.stdout.split() == ["lo", "tap0", "1"], slirp


def test_read_only_root(podman):
    """--read-only: the root refuses a write; without it the same write succeeds (the control)."""
    write = "touch /written && echo wrote"
    refused = podman.run("--network", "none", "--read-only", "/bin/sh", "-c", write)
    assert refused.code != 0 and "Read-only file system" in refused.stderr, refused
    allowed = podman.run("--network", "none", "/bin/sh", "-c", write + "; rm /written")
    assert (allowed.code, allowed.stdout) == (0, "wrote\n"), allowed.stderr


def test_cap_drop_all(podman):
    """--cap-drop all: no capability in any set; by default podman's 11 are effective (the control)."""
    probe = "grep -E '^Cap(Prm|Eff|Bnd)' /proc/self/status | cut -f2"
    dropped = podman.run("--network", "none", "--cap-drop", "all", "/bin/sh", "-c", probe)
    assert (dropped.code, set(dropped.stdout.split())) == (0, {"0000000000000000"}), dropped.stderr
    default = podman.run("--network", "none", "/bin/sh", "-c", probe)
    assert (default.code, set(default.stdout.split())) == (0, {"00000000800405fb"}), default.stderr


def test_seccomp_profile(podman, tmp_path):
    """--security-opt seccomp=PROFILE: the profile's rule refuses mkdir(2) with EPERM; unconfined, the same
    mkdir succeeds (the control)."""
    profile = tmp_path / "seccomp.json"
    profile.write_text(json.dumps(SECCOMP_PROFILE))
    probe = "mkdir /dev/shm/made && echo made"  # /dev/shm: the container's own tmpfs, gone with it
    refused = podman.run("--network", "none", "--security-opt", f"seccomp={profile}", "/bin/sh", "-c", probe)
    assert refused.code != 0 and "Operation not permitted" in refused.stderr, refused
    allowed = podman.run("--network", "none", "--security-opt", "seccomp=unconfined", "/bin/sh", "-c", probe)
    assert (allowed.code, allowed.stdout) == (0, "made\n"), allowed.stderr
