"""The one entry point for tests, lint, types, the VM tier and the benchmark.

`nox -s lint types tests oci slow vm` is what CI runs (scripts/test.sh); `nox -s bench` the benchmark.

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
pytest; AIOCONTAIN_VM_TIMEOUT bounds the whole boot (default 900 s), and a guest silent for
AIOCONTAIN_VM_QUIET seconds (180) is asked where its CPUs are (scripts/vm_console.py). Elsewhere,
tests/vm is skipped.

`slow` (tests/slow) stages as `tests` does, builds a Debian rootfs with mmdebstrap once per machine (cached
beside the stage) and runs CPython's own regression tests for os, pty, signal, subprocess and socket in it under
aiocontain and under rootless podman, comparing each test case's outcome. Elsewhere, tests/slow is skipped.

`mutants` (root only, by hand, never in CI) is the mutation check, scripts/mutants.py: it stages as `tests` does
and runs a sample of Cosmic Ray's mutants of the CLI, the spec, the stages and the child side against the
staged copy, each with its module's tests; session arguments go to the script (--per-module N, --budget MIN).

`oci` (root) builds the OCI runtime conformance suite (opencontainers/runtime-tools, from the tarball that
AIOCONTAIN_OCI_SUITE names; skipped when it is unset) once per machine beside the stage, and runs it as the test
user against the staged aiocontain-oci and against runc (scripts/oci_suite.py): it fails when aiocontain-oci
misses a program of the script's REQUIRED list. Session arguments go to the script (program names, --markdown).

`bench` does the same with the benchmark harness (bench/), in a stage of its
own, after installing the runtimes it compares against.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nox

nox.options.sessions = ["lint", "types", "tests"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
TEST_USER = os.environ.get("AIOCONTAIN_TEST_USER", "aiotest")
STAGE = Path(os.environ.get("AIOCONTAIN_TEST_STAGE", "/opt/aiocontain-test"))
BENCH_USER = os.environ.get("AIOCONTAIN_BENCH_USER", TEST_USER)
# Its own venv and work dir: a benchmark must not reinstall the package under a running test suite.
BENCH_STAGE = Path(os.environ.get("AIOCONTAIN_BENCH_STAGE", STAGE / "bench"))
BENCH_JSON = ROOT / ".bench" / "results.json"
# The shipped plugins (plugins/NAME, each its own distribution): installed after the package wherever the
# tests run, since their tests (plugins/NAME/tests) run with the runtime's; linted and type-checked with it.
PLUGINS = sorted(path.parent.name for path in (ROOT / "plugins").glob("*/pyproject.toml"))
PLUGIN_MODULES = [
    str(init.parent.relative_to(ROOT)) for init in sorted(ROOT.glob("plugins/*/aiocontain_*/__init__.py"))
]
SOURCES = ["aiocontain", "bench", "tests", "plugins", "scripts", "noxfile.py"]
TEST_DEPS = ["pytest>=8", "pytest-timeout>=2.3"]
# Pinned so that a new release cannot turn main red overnight; bump them in a commit of their own.
RUFF = "ruff==0.17.6"
MYPY = "mypy==2.4.1"
VIRTME_NG = "virtme-ng==1.42"
COSMIC_RAY = "cosmic-ray==8.7.0"

VM_TIMEOUT = int(os.environ.get("AIOCONTAIN_VM_TIMEOUT", "900"))  # boot, tests and power-off, in seconds
# Seconds of silence from the guest before scripts/vm_console.py asks QEMU where its CPUs are: past a stuck
# test's own Python dump (150 s), so that a guest that can still report does so first.
VM_QUIET = int(os.environ.get("AIOCONTAIN_VM_QUIET", "180"))
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
    session.run("ruff", "check", *SOURCES)
    session.run("ruff", "format", "--check", *SOURCES)


@nox.session
def types(session: nox.Session) -> None:
    """mypy --strict on the code, then on every README example as a user sees them: installed, with py.typed."""
    session.install(MYPY, ".")
    session.run("mypy", "aiocontain", "bench", *PLUGIN_MODULES)
    session.install("--no-deps", *(str(ROOT / "plugins" / name) for name in PLUGINS))
    with tempfile.TemporaryDirectory() as where:
        files = _write_readme_examples(Path(where))
        session.chdir(where)  # away from the checkout: the imports are the installed packages
        session.run("mypy", "--strict", *(file.name for file in files))
        session.chdir(ROOT)


def _write_readme_examples(where: Path) -> list[Path]:
    """The ```python blocks of README.md and the plugins' READMEs, one file each (tests/test_readme.py runs them)."""
    files = []
    for readme in [ROOT / "README.md", *sorted(ROOT.glob("plugins/*/README.md"))]:
        owner = "aiocontain" if readme.parent == ROOT else readme.parent.name
        for index, code in enumerate(re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.S)):
            path = where / f"readme_{owner}_{index}.py"
            path.write_text(code)
            files.append(path)
    return files


def _own_venv(session: nox.Session, name: str, deps: Sequence[str], plugins: bool = False) -> Path:
    """As an unprivileged user: .nox/NAME, a venv with the package (and deps, and the plugins) installed."""
    venv = ROOT / ".nox" / name
    session.run("python3", "-m", "venv", str(venv))
    session.run(str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", ".", *deps)
    if plugins:
        _install_plugins(session, str(venv / "bin" / "pip"))
    return venv


def _install_plugins(session: nox.Session, pip: str) -> None:
    """After the package, and without dependencies: their `aiocontain` must be this checkout's, never an index's."""
    paths = [str(ROOT / "plugins" / name) for name in PLUGINS]
    session.run(pip, "install", "--quiet", "--disable-pip-version-check", "--no-deps", *paths, external=True)


@dataclass
class Stage:
    """An installed copy of the package and a work dir owned by the unprivileged user, and how to run as it."""

    venv: Path
    work: Path
    as_user: list[str]

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def pytest(self, *args: str, env: Sequence[str] = ()) -> list[str]:
        """The command that runs pytest (from `work`) as the user; `env` adds KEY=VALUE settings."""
        rootfs = f"AIOCONTAIN_TEST_ROOTFS={self.work / 'rootfs'}"
        return [*self.as_user, rootfs, *env, self.python, "-m", "pytest", "-p", "no:cacheprovider", "-ra", *args]


def _unmount_runtime(session: nox.Session, where: Path) -> None:
    """Unmount the tmpfs that _stage mounted as where/run, if it is mounted."""
    if os.path.ismount(where / "run"):
        session.run("umount", str(where / "run"), external=True)


def _stage(
    session: nox.Session,
    where: Path,
    user_name: str,
    copy: Sequence[str],
    deps: Sequence[str],
    runtime_dir: bool,
    plugins: bool = False,
) -> Stage:
    """As root: install the package into where/venv, copy files into where/work, build where/work/rootfs.

    runtime_dir: give the user a private XDG_RUNTIME_DIR (where/run) instead of none (aiocontain then uses /tmp):
        a tmpfs of the user's, mode 0700, as systemd-logind mounts /run/user/UID (unmounted by _unmount_runtime).
    plugins: install the shipped plugins too.
    """
    user = pwd.getpwnam(user_name)
    venv, work = where / "venv", where / "work"
    where.mkdir(parents=True, exist_ok=True)
    where.chmod(0o755)
    if not (venv / "bin" / "python").exists():
        session.run("/usr/bin/python3", "-m", "venv", str(venv), external=True)
    pip = str(venv / "bin" / "pip")
    session.run(pip, "install", "--quiet", "--disable-pip-version-check", ".", *deps, external=True)
    if plugins:
        _install_plugins(session, pip)

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    for name in copy:
        if (ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
            shutil.copytree(ROOT / name, work / name, ignore=ignore)
        else:
            shutil.copy(ROOT / name, work / name)
    (work / "home").mkdir()
    owned = [work, *work.rglob("*")]
    runtime = ""
    if runtime_dir:
        run = where / "run"
        _unmount_runtime(session, where)
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir(mode=0o700)
        options = f"mode=0700,uid={user.pw_uid},gid={user.pw_gid},size=64m,nosuid,nodev"
        session.run("mount", "-t", "tmpfs", "-o", options, "aiocontain-bench-run", str(run), external=True)
        runtime = str(run)
    for path in owned:
        os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)

    as_user = [
        "runuser",
        "-u",
        user_name,
        "--",
        "env",
        f"HOME={work / 'home'}",
        f"XDG_RUNTIME_DIR={runtime}",
        f"PATH={venv / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin",
    ]
    session.run(*as_user, str(venv / "bin" / "aiocontain"), "rootfs", "init", str(work / "rootfs"), external=True)
    return Stage(venv, work, as_user)


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """Both anyio backends, real containers, run as an unprivileged user; the plugins' tests with the runtime's."""
    if os.geteuid() != 0:
        python = _own_venv(session, "tests-user", TEST_DEPS, plugins=True) / "bin" / "python"
        session.run(str(python), "-m", "pytest", *session.posargs)
        return

    stage = _test_stage(session)
    session.chdir(stage.work)
    session.run(*stage.pytest(*session.posargs), external=True)


def _test_stage(session: nox.Session) -> Stage:
    """The stage of `tests` and `vm`: the package and the shipped plugins, whose tests run with the runtime's."""
    # docs: tests check docs/events.md against the code; scripts: tests check oci_suite.py's reading of TAP;
    # bench: tests check the report's range of resampled runs
    copy = ["tests", "plugins", "docs", "scripts", "bench", "pyproject.toml", "README.md"]
    return _stage(session, STAGE, TEST_USER, copy, TEST_DEPS, runtime_dir=False, plugins=True)


@nox.session
def mutants(session: nox.Session) -> None:
    """The mutation check (scripts/mutants.py), on the staged package; run by hand, it takes up to an hour."""
    if os.geteuid() != 0:
        session.error("the mutation check mutates a staged copy and runs its tests as the test user: run it as root")
    session.install(COSMIC_RAY)
    stage = _test_stage(session)
    [package] = stage.venv.glob("lib/python*/site-packages/aiocontain")
    session.chdir(stage.work)  # the tests' paths are relative to it
    script = ["python", str(ROOT / "scripts" / "mutants.py"), "--package", str(package), "--user", TEST_USER]
    db = ROOT / ".mutants" / "session.sqlite"
    session.run(*script, "--db", str(db), "--pytest", shlex.join(stage.pytest()), *session.posargs)


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
    stage = _test_stage(session)

    # The command goes in a file: virtme-ng passes --exec on the kernel command line (2 KiB at most).
    # A test still running 30 s past pytest-timeout's 120 s (whose SIGALRM a thread blocked in the kernel, or
    # another thread taking the signal, can miss) dumps every thread's stack and ends the guest's tests, rather
    # than the guest going quiet until the whole boot's timeout.
    options = ["-o", "testpaths=tests/vm", "-o", "faulthandler_timeout=150", "-o", "faulthandler_exit_on_timeout=true"]
    pytest = stage.pytest(*options, *session.posargs, env=["AIOCONTAIN_VM=1", "TMPDIR=/tmp"])
    command_file = stage.work / "vm-command"
    command_file.write_text(shlex.join(pytest) + "\n")
    # virtme-ng's own choices, overridden: nested KVM fails or hangs here (TCG instead); probing for a
    # virtiofsd costs seconds before it falls back to 9p anyway.
    vng = ["vng", "--run", str(kernel), "--disable-kvm", "--force-9p", "--memory", VM_MEMORY]
    # The guest kernel's console in the output, errors and worse only (loglevel=4): a guest whose kernel locks
    # up says where (soft lockups and RCU stalls print every CPU's backtrace), where a Python dump cannot.
    # A guest that says nothing at all is asked through QEMU's monitor (scripts/vm_console.py): its kernel
    # without KASLR, so that a CPU's address can be looked up in the kernel's symbols (Debian's -dbg package),
    # and SysRq always on for the keys it presses.
    vng += ["--verbose", "--append", "loglevel=4 softlockup_all_cpu_backtrace=1 nokaslr sysrq_always_enabled=1"]
    vng += ["--append", "modprobe.blacklist=" + ",".join(VM_UNNEEDED_MODULES), "--cwd", str(stage.work)]
    vng += ["--exec", shlex.join(["sh", "tests/vm/guest.sh", TEST_USER, str(command_file)])]
    env = {**os.environ, "PATH": f"{session.bin}{os.pathsep}{os.environ['PATH']}"}  # vng runs virtme-run by name
    with tempfile.TemporaryDirectory(prefix="aiocontain-vm-") as private:  # 0700: the monitor is root's alone
        qmp = os.path.join(private, "qmp.sock")
        vng += [f"--qemu-opts=-qmp unix:{qmp},server=on,wait=off"]
        console = [sys.executable, str(ROOT / "scripts" / "vm_console.py"), "--qmp", qmp, "--quiet", str(VM_QUIET)]
        console += ["--"]
        argv = [*console, "timeout", "--kill-after=30", str(VM_TIMEOUT), *vng]
        session.log(shlex.join(argv))
        code = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, check=False).returncode
    if code in (124, 137):
        session.error(f"the guest did not finish within {VM_TIMEOUT} s (AIOCONTAIN_VM_TIMEOUT), and was killed")
    if code != 0:
        session.error(f"the guest's tests failed (exit code {code})")


@nox.session(venv_backend="none")
def slow(session: nox.Session) -> None:
    """tests/slow: CPython's regression tests in a real Debian rootfs, under aiocontain and podman alike."""
    if os.geteuid() != 0:
        missing = [tool for tool in ("mmdebstrap", "podman", "newuidmap") if shutil.which(tool) is None]
        if missing:
            session.skip(f"the slow tier needs {', '.join(missing)}: sudo scripts/host-setup.sh --slow")
        python = str(_own_venv(session, "tests-user", TEST_DEPS, plugins=True) / "bin" / "python")
        tar = ROOT / ".nox" / "debian" / "debian.tar"
        session.run(python, "-m", "tests.slow.debian", str(tar.parent))
        session.run(python, "-m", "pytest", "-o", "testpaths=tests/slow", *session.posargs, env=_debian_env(tar))
        return

    session.run("bash", str(ROOT / "scripts" / "host-setup.sh"), "--slow", external=True)
    if shutil.which("podman") is None:  # host-setup.sh installs it: never let the tier skip itself in CI
        session.error("podman is missing after scripts/host-setup.sh: the slow tier compares with it")
    stage = _test_stage(session)
    # Beside the stage, which _stage never removes: built once per machine, rebuilt when its recipe changes.
    cache = STAGE / "debian"
    cache.mkdir(exist_ok=True)
    user = pwd.getpwnam(TEST_USER)
    os.chown(cache, user.pw_uid, user.pw_gid)
    session.chdir(stage.work)
    session.run(*stage.as_user, stage.python, "-m", "tests.slow.debian", str(cache), external=True)
    env = [f"{key}={value}" for key, value in _debian_env(cache / "debian.tar").items()]
    session.run(*stage.pytest("-o", "testpaths=tests/slow", *session.posargs, env=env), external=True)


@nox.session(venv_backend="none")
def oci(session: nox.Session) -> None:
    """The OCI conformance suite against the staged aiocontain-oci, runc beside it; a table per program."""
    tarball = os.environ.get("AIOCONTAIN_OCI_SUITE")
    if not tarball:
        session.skip("AIOCONTAIN_OCI_SUITE is unset: set it to runtime-tools-260e151.tar.gz to run the OCI suite")
    if not Path(tarball).is_file():
        session.error(f"AIOCONTAIN_OCI_SUITE names {tarball}, which is not a file")
    script = ["scripts/oci_suite.py", "--tarball", str(Path(tarball).resolve())]
    if os.geteuid() != 0:
        venv = _own_venv(session, "oci-user", [])
        runtime = f"aiocontain-oci={venv / 'bin' / 'aiocontain-oci'}"
        cache = ROOT / ".nox" / "oci-suite"
        session.run(
            str(venv / "bin" / "python"),
            *script,
            "--cache",
            str(cache),
            "--runtime",
            runtime,
            "--runtime",
            "runc=runc",
            *session.posargs,
        )
        return

    session.run("bash", str(ROOT / "scripts" / "host-setup.sh"), "--oci", external=True)
    stage = _stage(session, STAGE, TEST_USER, ["scripts"], [], runtime_dir=False)
    # Beside the stage, which _stage never removes: the suite is built once per tarball (keyed by its digest).
    cache = STAGE / "oci-suite"
    cache.mkdir(exist_ok=True)
    user = pwd.getpwnam(TEST_USER)
    os.chown(cache, user.pw_uid, user.pw_gid)
    runtime = f"aiocontain-oci={stage.venv / 'bin' / 'aiocontain-oci'}"
    session.chdir(stage.work)
    args = ["--cache", str(cache), "--runtime", runtime, "--runtime", "runc=runc", *session.posargs]
    session.run(*stage.as_user, stage.python, *script, *args, external=True)


def _debian_env(tar: Path) -> dict[str, str]:
    return {"AIOCONTAIN_DEBIAN_TAR": str(tar)}


def _guest_kernel() -> Path | None:
    """The newest installed Debian standard kernel (not -cloud-: that one lacks 9p, which shares the root)."""
    kernels = [path for path in Path("/boot").glob("vmlinuz-*-amd64") if "-cloud-" not in path.name]
    return max(kernels, key=lambda path: [int(part) for part in re.findall(r"\d+", path.name)], default=None)


def _json_target(posargs: list[str]) -> tuple[list[str], Path]:
    """Take --json PATH (or --json=PATH) out of the arguments: the session copies the results there."""
    args, target = [], BENCH_JSON
    items = iter(posargs)
    for item in items:
        if item == "--json":
            target = Path(next(items))
        elif item.startswith("--json="):
            target = Path(item.partition("=")[2])
        else:
            args.append(item)
    return args, target.absolute()


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """The benchmark (bench/): start-up, networking, 50 at once, throughput, memory; against bwrap and podman.

    Arguments after -- go to `python -m bench` (e.g. `-- --reps 5 --cases start,net`); the
    results are printed and written as JSON to .bench/results.json (or --json PATH).
    """
    args, target = _json_target(session.posargs)
    if os.geteuid() != 0:
        venv = _own_venv(session, "bench-user", [])
        rootfs, home = venv / "rootfs", venv / "home"
        # Short, as podman needs it (see bench/podman.py): in the user's own runtime dir, else in /tmp.
        base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
        run = Path(base) / f"bench-aiocontain-{os.getuid()}"
        if not (rootfs / "bin" / "busybox").exists():
            session.run(str(venv / "bin" / "aiocontain"), "rootfs", "init", str(rootfs))
        run.mkdir(mode=0o700, exist_ok=True)
        run.chmod(0o700)
        home.mkdir(exist_ok=True)
        env = {"XDG_RUNTIME_DIR": str(run), "HOME": str(home)}  # podman's state too stays in here
        python = str(venv / "bin" / "python")
        session.run(python, "-m", "bench", "--rootfs", str(rootfs), "--json", str(target), *args, env=env)
        return

    setup = str(ROOT / "scripts" / "host-setup.sh")
    session.run("bash", setup, "--bench", env={"AIOCONTAIN_TEST_USER": BENCH_USER}, external=True)
    stage = _stage(session, BENCH_STAGE, BENCH_USER, ["bench", "plugins"], [], runtime_dir=True)
    results = stage.work / "results.json"
    session.chdir(stage.work)
    try:
        session.run(
            *stage.as_user,
            stage.python,
            "-m",
            "bench",
            "--rootfs",
            str(stage.work / "rootfs"),
            "--json",
            str(results),
            *args,
            external=True,
        )
    finally:
        _unmount_runtime(session, BENCH_STAGE)
        if results.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(results, target)
            session.log(f"results in {target}")
