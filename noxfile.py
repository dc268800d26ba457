"""The one entry point for tests, lint and types: `nox -s lint types tests vm`.

As root, `tests` stages an installed copy of the package, the tests and a root
filesystem under /opt/aiocontain-test and runs pytest there as the unprivileged
test user (containers are rootless: running them as root would test the wrong
thing). As an unprivileged user it runs pytest in its own venv directly.

`vm` (root only) is the VM tier, for tests that need a real cgroup v2 hierarchy,
which a host with hybrid cgroups (v1 memory, pids, cpu) cannot give: it stages
the same way, boots Debian's standard kernel under QEMU (TCG) with virtme-ng,
which shares the host's root filesystem with the guest, and in that one boot
runs tests/vm/guest.sh: it delegates a cgroup subtree to the test user as
systemd does and runs pytest on tests/vm as that user. Session arguments go to
pytest; AIOCONTAIN_VM_TIMEOUT bounds the whole boot (default 900 s). Elsewhere,
tests/vm is skipped.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nox

nox.options.sessions = ["lint", "types", "tests"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
TEST_USER = os.environ.get("AIOCONTAIN_TEST_USER", "aiotest")
STAGE = Path(os.environ.get("AIOCONTAIN_TEST_STAGE", "/opt/aiocontain-test"))
TEST_DEPS = ["pytest>=8", "pytest-timeout>=2.3"]
# Pinned so that a new release cannot turn main red overnight; bump them in a commit of their own.
RUFF = "ruff==0.17.6"
MYPY = "mypy==2.4.1"
VIRTME_NG = "virtme-ng==1.42"

VM_TIMEOUT = int(os.environ.get("AIOCONTAIN_VM_TIMEOUT", "900"))  # boot, tests and power-off, in seconds
VM_MEMORY = "1G"
# udev's coldplug in the guest would load these for the emulated q35 machine and `-cpu max` (KVM, AHCI and
# CD-ROM, watchdogs, SMBus, input, accelerated crypto); none is used, and loading them under TCG took about
# half of a 55 s boot. Listing them only saves time: a module missing here costs seconds, not correctness.
VM_UNNEEDED_MODULES = [
    *("kvm", "kvm_amd", "kvm_intel", "irqbypass", "ccp"),
    *("ahci", "libahci", "libata", "sr_mod", "cdrom", "sg"),
    *("iTCO_wdt", "i6300esb", "i2c_i801", "lpc_ich", "intel_pmc_bxt", "qemu_fw_cfg"),
    *("psmouse", "evdev", "pcspkr", "serio_raw", "button"),
    *("aesni_intel", "ghash_clmulni_intel", "sha1_ssse3", "sha256_ssse3", "sha512_ssse3"),
    *("crc32_pclmul", "crc32c_intel", "crct10dif_pclmul"),
]


@nox.session
def lint(session: nox.Session) -> None:
    session.install(RUFF)
    session.run("ruff", "check", "aiocontain", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "aiocontain", "tests", "noxfile.py")


@nox.session
def types(session: nox.Session) -> None:
    session.install(MYPY, ".")
    session.run("mypy", "aiocontain")


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """Both anyio backends, real containers, run as an unprivileged user."""
    if os.geteuid() != 0:
        session.run("python3", "-m", "venv", str(ROOT / ".nox" / "tests-user"))
        python = str(ROOT / ".nox" / "tests-user" / "bin" / "python")
        session.run(python, "-m", "pip", "install", "--quiet", ".", *TEST_DEPS)
        session.run(python, "-m", "pytest", *session.posargs)
        return

    stage = _stage(session)
    session.chdir(stage.work)
    session.run(*stage.pytest(*session.posargs), external=True)


@nox.session
def vm(session: nox.Session) -> None:
    """tests/vm in a QEMU guest with a real cgroup v2 hierarchy, as the test user in a delegated subtree."""
    if os.geteuid() != 0:
        session.error("the VM tier stages the tests and sets up the guest's cgroups as root: run it as root")
    kernel = _guest_kernel()
    if kernel is None:
        session.error("no /boot/vmlinuz-*-amd64 (Debian's linux-image-amd64): run scripts/host-setup.sh")
    # The guest sees the host's filesystem (/opt through a writable overlay kept in guest memory) but gets a
    # fresh /tmp and /var/tmp, which would hide a stage there.
    if any(STAGE.resolve().is_relative_to(tmp) for tmp in ("/tmp", "/var/tmp")):
        session.error(f"the guest cannot see a stage in {STAGE}: set AIOCONTAIN_TEST_STAGE to a dir under /opt")
    session.install(VIRTME_NG)
    stage = _stage(session)

    # The command goes in a file: virtme-ng passes --exec on the kernel command line (2 KiB at most).
    pytest = stage.pytest("-o", "testpaths=tests/vm", *session.posargs, env=["AIOCONTAIN_VM=1", "TMPDIR=/tmp"])
    command_file = stage.work / "vm-command"
    command_file.write_text(shlex.join(pytest) + "\n")
    # virtme-ng's own choices, overridden: nested KVM fails or hangs here (TCG instead); probing for a
    # virtiofsd costs seconds before it falls back to 9p anyway.
    vng = ["vng", "--run", str(kernel), "--disable-kvm", "--force-9p", "--memory", VM_MEMORY]
    vng += ["--append", "modprobe.blacklist=" + ",".join(VM_UNNEEDED_MODULES), "--cwd", str(stage.work)]
    vng += ["--exec", shlex.join(["sh", "tests/vm/guest.sh", TEST_USER, str(command_file)])]
    env = {**os.environ, "PATH": f"{session.bin}{os.pathsep}{os.environ['PATH']}"}  # vng runs virtme-run by name
    code = _run_piped(session, ["timeout", "--kill-after=30", str(VM_TIMEOUT), *vng], env)
    if code in (124, 137):
        session.error(f"the guest did not finish within {VM_TIMEOUT} s (AIOCONTAIN_VM_TIMEOUT), and was killed")
    if code != 0:
        session.error(f"the guest's tests failed (exit code {code})")


def _guest_kernel() -> Path | None:
    """The newest installed Debian standard kernel (not -cloud-: that one lacks 9p, which shares the root)."""
    kernels = [path for path in Path("/boot").glob("vmlinuz-*-amd64") if "-cloud-" not in path.name]
    return max(kernels, key=lambda path: [int(part) for part in re.findall(r"\d+", path.name)], default=None)


def _run_piped(session: nox.Session, argv: list[str], env: dict[str, str]) -> int:
    """Run argv with its stdout and stderr through one pipe, copied to ours as they come; its exit code.

    QEMU opens /proc/self/fd/1 and /proc/self/fd/2 again by path for the guest's output: on a regular file (a CI
    log) each open truncates it and the writers overwrite each other. On a pipe neither happens.
    """
    session.log(shlex.join(argv))
    pipe = subprocess.PIPE
    with subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=pipe, stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        while chunk := os.read(proc.stdout.fileno(), 65536):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
    return proc.returncode


@dataclass(frozen=True)
class Stage:
    """An installed copy of the package, the tests and a root filesystem, owned by the test user."""

    venv: Path
    work: Path
    as_user: list[str]  # runuser as the test user, with the environment the tests run in

    def pytest(self, *args: str, env: Sequence[str] = ()) -> list[str]:
        """The command that runs pytest (from `work`) as the test user; `env` adds KEY=VALUE settings."""
        python = str(self.venv / "bin" / "python")
        rootfs = f"AIOCONTAIN_TEST_ROOTFS={self.work / 'rootfs'}"
        return [*self.as_user, rootfs, *env, python, "-m", "pytest", "-p", "no:cacheprovider", "-ra", *args]


def _stage(session: nox.Session) -> Stage:
    """Install the package into STAGE's venv and lay out a fresh work dir (tests, rootfs, a HOME) there."""
    user = pwd.getpwnam(TEST_USER)
    venv, work = STAGE / "venv", STAGE / "work"
    STAGE.mkdir(parents=True, exist_ok=True)
    STAGE.chmod(0o755)
    if not (venv / "bin" / "python").exists():
        session.run("/usr/bin/python3", "-m", "venv", str(venv), external=True)
    pip = str(venv / "bin" / "pip")
    session.run(pip, "install", "--quiet", "--disable-pip-version-check", ".", *TEST_DEPS, external=True)

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    shutil.copytree(ROOT / "tests", work / "tests")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, work / name)
    (work / "home").mkdir()
    for path in [work, *work.rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)

    as_user = [
        "runuser",
        "-u",
        TEST_USER,
        "--",
        "env",
        f"HOME={work / 'home'}",
        "XDG_RUNTIME_DIR=",
        f"PATH={venv / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin",
    ]
    session.run(*as_user, str(venv / "bin" / "aiocontain"), "rootfs", "init", str(work / "rootfs"), external=True)
    return Stage(venv, work, as_user)
