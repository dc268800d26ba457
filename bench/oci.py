"""aiocontain-oci's costs: under podman against runc, and its light subcommands against a bare interpreter.

- oci.podman / oci.podman_runc: ``podman --runtime R run --rm --network none --rootfs DIR /bin/true`` with R the
  staged aiocontain-oci and runc, alike in everything else (one containers.conf that names aiocontain-oci in
  ``runtime_supports_json``, so podman passes both its JSON log options);
- oci.state, oci.kill, oci.delete (each on a container that does not exist, so they exit 1 after reading the
  state root) and oci.list (an empty root): what podman pays on every call it makes to the runtime besides
  create and start, against python.pass, ``python -I -S -c pass``: the floor for any Python command, and
  python.console, ``python -c 'import re, sys'``: the floor for a console script as pip writes it (site, and its
  wrapper imports re before the package).
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench import podman
from bench.runner import Metric

TRUE = ["/bin/true"]
CONTAINERS_CONF = """\
[engine]
runtime_supports_json = ["crun", "runc", "kata", "runsc", "youki", "krun", "aiocontain-oci"]
"""
LIGHT = ("state", "kill", "delete", "list")
CASES = ("oci.podman", "oci.podman_runc", *(f"oci.{name}" for name in LIGHT), "python.pass", "python.console")


_SCRATCH = tempfile.mkdtemp(prefix="bench-oci-")  # the cases' config and state roots, removed at exit
atexit.register(shutil.rmtree, _SCRATCH, True)


def executable() -> str:
    """The console script next to this interpreter (the staged venv's)."""
    return str(Path(sys.executable).with_name("aiocontain-oci"))


@dataclass
class ExitCase:
    """One command per run with its own environment, timed until it exits with the status it must exit with."""

    name: str
    argv: list[str]
    description: str
    repetitions: int
    env: dict[str, str] | None = None
    status: int = 0
    metrics: tuple[Metric, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = (Metric(self.name, "ms", self.description),)

    def run(self) -> Mapping[str, float]:
        started = time.perf_counter()
        done = subprocess.run(
            self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        elapsed = time.perf_counter() - started
        if done.returncode != self.status:
            tail = done.stderr.decode(errors="replace").strip()[-400:]
            raise RuntimeError(f"{self.argv[0]} exited {done.returncode}, not {self.status}: {tail}")
        return {self.name: elapsed * 1000}


def _config_home() -> str:
    """An XDG_CONFIG_HOME whose containers.conf lets podman treat aiocontain-oci as it treats runc."""
    home = Path(tempfile.mkdtemp(prefix="conf-", dir=_SCRATCH))
    (home / "containers").mkdir()
    (home / "containers" / "containers.conf").write_text(CONTAINERS_CONF)
    return str(home)


def build(name: str, rootfs: Path, repetitions: int) -> ExitCase:
    """The case of that name (one of CASES)."""
    if name in ("oci.podman", "oci.podman_runc"):
        runtime = executable() if name == "oci.podman" else "runc"
        env = {**os.environ, "XDG_CONFIG_HOME": _config_home()}
        flags = ["--runtime", runtime, "--cgroup-manager", "cgroupfs"]
        argv = ["podman", *flags, "run", "--rm", "--network", "none", "--rootfs", str(rootfs), *TRUE]
        what = f"podman --runtime {Path(runtime).name} run --rm --network none /bin/true"
        return ExitCase(name, argv, what, repetitions, env)
    if name == "python.pass":
        return ExitCase(name, [sys.executable, "-I", "-S", "-c", "pass"], "python -I -S -c pass", repetitions)
    if name == "python.console":
        what = "python -c 'import re, sys' (a console script's floor)"
        return ExitCase(name, [sys.executable, "-c", "import re, sys"], what, repetitions)
    command = name.split(".")[1]
    root = tempfile.mkdtemp(prefix="root-", dir=_SCRATCH)
    args = {"state": ["state", "none"], "kill": ["kill", "none", "KILL"], "delete": ["delete", "none"]}
    argv = [executable(), "--root", root, *args.get(command, ["list"])]
    subject = "an empty root" if command == "list" else "a container that does not exist"
    return ExitCase(name, argv, f"aiocontain-oci {command} on {subject}", repetitions, status=int(command != "list"))


def tools(name: str) -> tuple[str, ...]:
    """What a case needs installed besides the package."""
    if name == "oci.podman_runc":
        return ("podman", "runc")
    return ("podman",) if name == "oci.podman" else ()


def unusable(name: str) -> str | None:
    return podman.unusable() if name.startswith("oci.podman") else None
