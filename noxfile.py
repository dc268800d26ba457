"""The one entry point for tests, lint and types: `nox -s lint types tests`.

As root, `tests` stages an installed copy of the package, the tests and a root
filesystem under /opt/aiocontain-test and runs pytest there as the unprivileged
test user (containers are rootless: running them as root would test the wrong
thing). As an unprivileged user it runs pytest in its own venv directly.
"""

from __future__ import annotations

import os
import pwd
import shutil
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
