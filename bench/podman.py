"""podman as the comparison: the flags it needs on this machine, and proof of what it sets up.

On this build machine (cgroup v1 hybrid, no systemd user session) rootless
podman runs with two global flags:

- ``--runtime runc``: crun refuses hybrid cgroups outright.
- ``--cgroup-manager cgroupfs``: what podman falls back to without a systemd
  user session anyway; named so that a host with one measures the same thing.

``--cgroups disabled`` would be the obvious way to make podman set up no
limits, but runc refuses it ("not compatible with NoCgroups"). It is not
needed: rootless podman on cgroup v1 writes no cgroup path and no resources
into the OCI spec. ``probe`` reads the spec of a created container and records
that, so the JSON shows the comparison was fair rather than claiming it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

GLOBAL_FLAGS = ("--runtime", "runc", "--cgroup-manager", "cgroupfs")
# Measured here: with an XDG_RUNTIME_DIR of 40 characters or more, every `podman run` (4.3.1) waits out
# conmon's 20 s timeout ("Exceeded conmon timeout waiting for container to exit") before it returns.
RUNTIME_DIR_MAX = 39


def unusable() -> str | None:
    """Why podman's times would be meaningless in this environment, or None."""
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR", "")
    if len(runtime_dir) > RUNTIME_DIR_MAX:
        return f"XDG_RUNTIME_DIR {runtime_dir} is longer than {RUNTIME_DIR_MAX} characters: podman 4.3 then waits 20 s"
    return None


def run_argv(rootfs: Path, network: str, command: list[str]) -> list[str]:
    """``podman run --rm --rootfs`` of a command with the given network (none or slirp4netns)."""
    return ["podman", *GLOBAL_FLAGS, "run", "--rm", "--network", network, "--rootfs", str(rootfs), *command]


def _podman(*args: str) -> str:
    done = subprocess.run(
        ["podman", *GLOBAL_FLAGS, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        raise RuntimeError(f"podman {args[0]} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout.strip()


def probe(rootfs: Path) -> dict[str, Any]:
    """What podman is and does here: version, cgroup manager, storage, and the limits in its OCI spec."""
    info = json.loads(_podman("info", "--format", "json"))
    host = info["host"]
    found: dict[str, Any] = {
        "version": info["version"]["Version"],
        "global_flags": list(GLOBAL_FLAGS),
        "run_flags": ["--rm", "--network", "none|slirp4netns", "--rootfs", "DIR"],
        "oci_runtime": host["ociRuntime"]["version"].splitlines()[0],
        "cgroup_manager": host["cgroupManager"],
        "cgroup_version": host["cgroupVersion"],
        "graph_driver": info["store"]["graphDriverName"],
        "event_logger": host["eventLogger"],
    }
    container = _podman("create", "--network", "slirp4netns", "--rootfs", str(rootfs), "/bin/true")
    try:
        _podman("init", container)
        spec = json.loads(Path(_podman("inspect", "--format", "{{.OCIConfigPath}}", container)).read_text())
    finally:
        _podman("rm", "--force", container)
    linux = spec.get("linux", {})
    found["oci_spec"] = {
        "cgroups_path": linux.get("cgroupsPath"),
        "resources": linux.get("resources") or {},
        "rlimits": spec.get("process", {}).get("rlimits", []),
        "seccomp": bool(linux.get("seccomp")),
        "namespaces": sorted(ns["type"] for ns in linux.get("namespaces", [])),
    }
    return found


class PauseProcess:
    """Rootless podman leaves a pause process holding its user namespace; stop it if this run made it.

    Its existence also favours podman: every run after the first joins that
    namespace instead of making one, which aiocontain does on every run.
    """

    def __init__(self) -> None:
        runtime_dir = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
        self.pid_file = Path(runtime_dir) / "libpod" / "tmp" / "pause.pid"
        self.before = self._pid()

    def _pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
            stat = os.stat(f"/proc/{pid}")
        except (OSError, ValueError):
            return None
        return pid if stat.st_uid == os.getuid() else None

    def stop(self) -> None:
        pid = self._pid()
        if pid is not None and pid != self.before:
            os.kill(pid, signal.SIGTERM)
