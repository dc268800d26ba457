"""The CLI's start-up: what a quiet run imports, and the entry-point cache that spares it the plugins.

Both run the real command in a venv of its own that links every distribution of
the test environment but the shipped plugins (as a user's venv without plugins),
so that pip can install a plugin into it as a user would.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import aiocontain
from aiocontain import entrypoints

pytestmark = pytest.mark.timeout(120)

HOUR = 3600
PIP = ("--quiet", "--disable-pip-version-check", "--no-cache-dir", "--no-index", "--no-deps")


def _is_plugin(entry: Path) -> bool:
    if entry.name.startswith("aiocontain_"):
        return True
    points = entry / "entry_points.txt"
    return entry.name.endswith(".dist-info") and points.exists() and "[aiocontain.plugins]" in points.read_text()


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    """A venv with the test environment's distributions linked in, the plugins left out; its site-packages
    dated an hour back (settled, so the entry-point cache is kept)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    site = next((venv / "lib").glob("python3*/site-packages"))
    source = Path(aiocontain.__file__).resolve().parent.parent
    for entry in sorted(source.iterdir()):
        if not _is_plugin(entry) and not entry.name.endswith(".pth") and entry.name != "__pycache__":
            (site / entry.name).symlink_to(entry)
    _settle(site)
    return venv


def _settle(path: Path) -> None:
    os.utime(path, (path.stat().st_atime - HOUR, path.stat().st_mtime - HOUR))


def _site(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def _command(venv: Path, tmp_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """python -m aiocontain ARGS with the venv's interpreter, its cache in tmp_path, from a settled directory."""
    cwd = tmp_path / "cwd"
    if not cwd.exists():
        cwd.mkdir()
        _settle(cwd)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("PYTHONPATH", None)
    argv = [str(venv / "bin" / "python"), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd=cwd, stdin=subprocess.DEVNULL)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _modules(stderr: str) -> set[str]:
    """Every module ``python -X importtime`` lists (the fork server's, forked from the command, included)."""
    return {line.split("|")[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def _wheel(where: Path) -> Path:
    """A plugin's wheel, as a build backend makes one: a module, its dist-info and a RECORD of both."""
    files = {
        "greeter.py": (
            "from aiocontain.plugins import Plugin\n\n"
            "class Greeter(Plugin):\n"
            "    description = 'says hello'\n\n"
            "    def add_arguments(self, parser):\n"
            "        parser.add_argument('--greeting', default='hello')\n"
        ),
        "greeter-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: greeter\nVersion: 1.0\n",
        "greeter-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
        "greeter-1.0.dist-info/entry_points.txt": "[aiocontain.plugins]\ngreeter = greeter:Greeter\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append("greeter-1.0.dist-info/RECORD,,")
    wheel = where / "greeter-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr("greeter-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


def test_a_quiet_run_imports_only_what_it_uses(venv, tmp_path, rootfs):
    argv = ["-X", "importtime", "-m", "aiocontain", "run", "--rootfs", str(rootfs), "--net", "none", "--", "true"]
    imported = _modules(_command(venv, tmp_path, *argv).stderr)
    assert {"aiocontain.cli", "aiocontain.container", "anyio"} <= imported  # the listing is real
    unused = {
        "aiocontain.plugins",  # no plugin installed
        "aiocontain.plugins.api",
        "aiocontain.init_binary",  # no --init
        "aiocontain.images",
        "structlog",  # no event shown (tests/test_cli_run.py: shown at info level)
        "pyroute2",
        "platform",
        "importlib.metadata",
    }
    assert imported & unused == set()
    # Control: --init and an installed plugin do import theirs.
    _command(venv, tmp_path, "-m", "pip", "install", *PIP, str(_wheel(tmp_path)))
    init = _modules(_command(venv, tmp_path, *argv[:-2], "--init", "--", "true").stderr)
    assert {"aiocontain.init_binary", "aiocontain.plugins.api"} <= init  # (importlib's own imports go unlisted)


def test_a_plugin_installed_after_a_cached_run_is_found(venv, tmp_path):
    assert _command(venv, tmp_path, "-m", "aiocontain", "plugins").stdout.startswith("no plugins installed")
    cache = tmp_path / "cache" / "aiocontain" / "entry-points"
    assert str(_site(venv)) in cache.read_text()  # kept, keyed by the site-packages directory

    # Control: the cache is what answers. A distribution slipped in without the directory's time changing
    # goes unseen (pip cannot do that: making its dist-info directory changes the time).
    site = _site(venv)
    stamp = site.stat()
    sneaked = site / "sneaked-1.0.dist-info"
    sneaked.mkdir()
    (sneaked / "entry_points.txt").write_text("[aiocontain.plugins]\nsneaked = sneaked:make\n")
    os.utime(site, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert _command(venv, tmp_path, "-m", "aiocontain", "plugins").stdout.startswith("no plugins installed")
    (sneaked / "entry_points.txt").unlink()
    sneaked.rmdir()
    os.utime(site, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))

    _command(venv, tmp_path, "-m", "pip", "install", *PIP, str(_wheel(tmp_path)))
    listed = _command(venv, tmp_path, "-m", "aiocontain", "plugins").stdout
    assert "greeter" in listed and "says hello" in listed and "greeter 1.0" in listed
    assert "greeter 1.0" in cache.read_text() or not _settled(site)

    _command(venv, tmp_path, "-m", "pip", "uninstall", "--quiet", "--yes", "--disable-pip-version-check", "greeter")
    assert _command(venv, tmp_path, "-m", "aiocontain", "plugins").stdout.startswith("no plugins installed")


def _settled(path: Path) -> bool:
    import time

    return path.stat().st_mtime < time.time() - entrypoints.SETTLE


def test_a_directory_still_changing_is_scanned_but_not_kept(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "fresh-1.0.dist-info").mkdir(parents=True)
    (site / "fresh-1.0.dist-info" / "entry_points.txt").write_text("[aiocontain.plugins]\nfresh = fresh:make\n")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "path", [str(site)])
    assert entrypoints.entry_points() == [("fresh", "fresh:make", "fresh 1.0")]
    assert not os.path.exists(entrypoints.cache_path())  # changed just now: perhaps mid-install
    _settle(site)
    assert entrypoints.entry_points() == [("fresh", "fresh:make", "fresh 1.0")]
    assert os.path.exists(entrypoints.cache_path())
