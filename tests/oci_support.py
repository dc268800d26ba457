"""What the OCI runtime's tests share: a bundle of the test rootfs as podman writes it, and the engine.

``Engine`` is tests/oci_engine.py started as podman runs its runtime (in a user namespace of the test user
with its subordinate ids mapped, a mount namespace of its own), a subreaper like conmon; each test gets a
state root of its own (``--root``).
"""

from __future__ import annotations

import copy
import json
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Result, leftovers

# The installed console script; AIOCONTAIN_OCI_RUNTIME may name another build of it.
RUNTIME = os.environ.get("AIOCONTAIN_OCI_RUNTIME") or str(Path(sys.executable).with_name("aiocontain-oci"))
ENGINE = str(Path(__file__).with_name("oci_engine.py"))

# podman 4.3's rootless defaults, trimmed to what matters here.
CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
]
CONFIG: dict[str, Any] = {
    "ociVersion": "1.0.2-dev",
    "process": {
        "terminal": False,
        "user": {"uid": 0, "gid": 0},
        "args": ["/bin/true"],
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
        "cwd": "/",
        "capabilities": {name: list(CAPABILITIES) for name in ("bounding", "effective", "permitted")},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": False,
    },
    "root": {"path": "rootfs"},
    "hostname": "ocitest",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["rprivate", "nosuid", "noexec", "nodev", "relatime", "ro"],
        },
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]},
    ],
    "linux": {
        "namespaces": [{"type": kind} for kind in ("pid", "network", "ipc", "uts", "mount", "cgroup")],
        "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    },
}


def make_bundle(directory: Path, rootfs: Path, args: list[str], **changes: Any) -> Path:
    """A bundle dir with config.json: CONFIG with root.path the test rootfs, process.args, and top-level
    keys replaced by changes (``process`` and ``linux`` are merged one level deep)."""
    config = copy.deepcopy(CONFIG)
    config["root"] = {"path": str(rootfs)}
    config["process"]["args"] = args
    for key, value in changes.items():
        if key in ("process", "linux") and isinstance(value, dict):
            config[key].update(value)
        else:
            config[key] = value
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def subordinate_start() -> int:
    name = pwd.getpwuid(os.getuid()).pw_name
    for line in Path("/etc/subuid").read_text().splitlines():
        user, start, _ = line.split(":")
        if user == name:
            return int(start)
    raise AssertionError(f"no subordinate ids for {name}")


class Engine:
    """The engine process and this test's state root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        start = subordinate_start()
        self.process = subprocess.Popen(
            [
                "unshare",
                "--map-root-user",
                f"--map-users={start},1,65536",
                f"--map-groups={start},1,65536",
                "--mount",
                sys.executable,
                ENGINE,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert json.loads(self._line()) == {"ready": True}

    def _line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, "the engine died"
        return line

    def request(self, request: dict[str, object]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply: dict[str, Any] = json.loads(self._line())
        return reply

    def oci(self, *args: str, timeout: float = 60, global_args: tuple[str, ...] = ()) -> Result:
        """aiocontain-oci --root ROOT [global_args] ARGS... inside the engine's namespaces."""
        reply = self.request({"argv": [RUNTIME, "--root", str(self.root), *global_args, *args], "timeout": timeout})
        assert reply["code"] is not None, f"aiocontain-oci {args} did not finish in {timeout} s"
        return Result(reply["code"], reply["stdout"], reply["stderr"])

    def create(self, container_id: str, bundle: Path, *args: str, timeout: float = 60) -> Result:
        """create as conmon runs it: the runtime's and then the container's stdout and stderr go to
        BUNDLE/output (returned as the result's stdout and stderr, as they are when create exits)."""
        output = bundle / "output"
        argv = [RUNTIME, "--root", str(self.root), "create", "--bundle", str(bundle), *args, container_id]
        reply = self.request({"argv": argv, "timeout": timeout, "output": str(output)})
        assert reply["code"] is not None, f"create {container_id} did not finish in {timeout} s"
        text = output.read_text() if output.exists() else ""
        return Result(reply["code"], text, text)

    def run(self, *argv: str, timeout: float = 60) -> Result:
        """Any command inside the engine's namespaces."""
        reply = self.request({"argv": list(argv), "timeout": timeout})
        return Result(reply["code"], reply["stdout"], reply["stderr"])

    def state(self, container_id: str) -> dict[str, Any]:
        result = self.oci("state", container_id)
        assert result.code == 0, result.stderr
        state: dict[str, Any] = json.loads(result.stdout)
        return state

    def wait(self, pid: int, timeout: float = 30) -> int | None:
        """Reap the container's process (as conmon does); its exit status, None if it did not exit in time."""
        status: int | None = self.request({"wait": pid, "timeout": timeout}).get("status")
        return status

    def exited(self, pid: int, timeout: float = 30) -> bool:
        """Whether the process ended, leaving it unreaped (a zombie) as a crashed container before conmon
        noticed."""
        return bool(self.request({"exited": pid, "timeout": timeout})["exited"])

    def children(self) -> list[int]:
        found: list[int] = self.request({"children": True})["children"]
        return found

    def close(self) -> None:
        """End of its requests: it exits. One that does not within 30 s is killed, and its pipes closed here,
        so that a failure stays in its own test (a pipe left to the collector closes in a later test's)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.process.stdout.close()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """An engine with an empty state root; afterwards every container is gone and nothing is left."""
    before = leftovers()
    found = Engine(tmp_path / "state")
    try:
        yield found
    finally:
        found.close()
    assert leftovers() == before
