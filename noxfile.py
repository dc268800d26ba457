"""The one entry point for tests, lint and types: `nox -s lint types tests`; and `nox -s bench`.

As root, `tests` stages an installed copy of the package, the tests and a root
filesystem under /opt/aiocontain-test and runs pytest there as the unprivileged
test user (containers are rootless: running them as root would test the wrong
thing). As an unprivileged user it runs pytest in its own venv directly.
`bench` does the same with the benchmark harness (bench/), in a stage of its
own, after installing the runtimes it compares against.
"""

from __future__ import annotations

import os
import pwd
import shutil
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
SOURCES = ["aiocontain", "bench", "tests", "noxfile.py"]
TEST_DEPS = ["pytest>=8", "pytest-timeout>=2.3"]
# Pinned so that a new release cannot turn main red overnight; bump them in a commit of their own.
RUFF = "ruff==0.17.6"
MYPY = "mypy==2.4.1"


@nox.session
def lint(session: nox.Session) -> None:
    session.install(RUFF)
    session.run("ruff", "check", *SOURCES)
    session.run("ruff", "format", "--check", *SOURCES)


@nox.session
def types(session: nox.Session) -> None:
    session.install(MYPY, ".")
    session.run("mypy", "aiocontain", "bench")


def _own_venv(session: nox.Session, name: str, deps: Sequence[str]) -> Path:
    """As an unprivileged user: .nox/NAME, a venv with the package (and deps) installed."""
    venv = ROOT / ".nox" / name
    session.run("python3", "-m", "venv", str(venv))
    session.run(str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", ".", *deps)
    return venv


@dataclass
class Stage:
    """An installed copy of the package and a work dir owned by the unprivileged user, and how to run as it."""

    venv: Path
    work: Path
    as_user: list[str]

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")


def _stage(
    session: nox.Session, where: Path, user_name: str, copy: Sequence[str], deps: Sequence[str], runtime_dir: bool
) -> Stage:
    """As root: install the package into where/venv, copy files into where/work, build where/work/rootfs.

    runtime_dir: give the user a private XDG_RUNTIME_DIR (where/run) instead of none (aiocontain then uses /tmp).
    """
    user = pwd.getpwnam(user_name)
    venv, work = where / "venv", where / "work"
    where.mkdir(parents=True, exist_ok=True)
    where.chmod(0o755)
    if not (venv / "bin" / "python").exists():
        session.run("/usr/bin/python3", "-m", "venv", str(venv))
    session.run(str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", ".", *deps)

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    for name in copy:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, work / name)
    (work / "home").mkdir()
    owned = [work, *work.rglob("*")]
    runtime = ""
    if runtime_dir:
        run = where / "run"
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir(mode=0o700)
        owned.append(run)
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
    """Both anyio backends, real containers, run as an unprivileged user."""
    if os.geteuid() != 0:
        python = _own_venv(session, "tests-user", TEST_DEPS) / "bin" / "python"
        session.run(str(python), "-m", "pytest", *session.posargs)
        return

    stage = _stage(session, STAGE, TEST_USER, ["tests", "pyproject.toml", "README.md"], TEST_DEPS, runtime_dir=False)
    session.chdir(stage.work)
    session.run(
        *stage.as_user,
        f"AIOCONTAIN_TEST_ROOTFS={stage.work / 'rootfs'}",
        stage.python,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-ra",
        *session.posargs,
        external=True,
    )


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
    stage = _stage(session, BENCH_STAGE, BENCH_USER, ["bench"], [], runtime_dir=True)
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
        if results.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(results, target)
            session.log(f"results in {target}")
