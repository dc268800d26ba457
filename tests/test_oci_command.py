"""aiocontain-oci's command line (runc's forms) and the light subcommands' imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aiocontain.oci.command import _COMMAND_FLAGS, _GLOBAL_FLAGS, parse_flags
from aiocontain.oci.errors import OciError
from aiocontain.oci.lifecycle import parse_signal

CREATE = _COMMAND_FLAGS["create"]


def test_flags_in_every_form_runc_takes() -> None:
    for args in (
        ["--bundle", "/b", "--pid-file", "/p", "id"],
        ["--bundle=/b", "--pid-file=/p", "id"],
        ["-bundle", "/b", "-pid-file=/p", "id"],
        ["-b", "/b", "id", "--pid-file", "/p"],  # flags after the id, as urfave/cli allows
    ):
        flags, operands = parse_flags(args, CREATE, {"b": "bundle"}, stop_at_operand=False)
        assert flags == {"bundle": "/b", "pid-file": "/p"} and operands == ["id"], args
    flags, operands = parse_flags(["--no-pivot", "--no-new-keyring=false", "id"], CREATE, {}, stop_at_operand=False)
    assert flags == {"no-pivot": True, "no-new-keyring": False} and operands == ["id"]


def test_global_options_end_at_the_command() -> None:
    args = ["--root", "/r", "--log-format=json", "--systemd-cgroup", "kill", "--all", "id", "9"]
    flags, rest = parse_flags(args, _GLOBAL_FLAGS, {}, stop_at_operand=True)
    assert flags == {"root": "/r", "log-format": "json", "systemd-cgroup": True}
    assert rest == ["kill", "--all", "id", "9"]


def test_bad_flags() -> None:
    with pytest.raises(OciError, match="flag provided but not defined: --nope"):
        parse_flags(["--nope", "id"], CREATE, {}, stop_at_operand=False)
    with pytest.raises(OciError, match="flag needs an argument: --bundle"):
        parse_flags(["--bundle"], CREATE, {}, stop_at_operand=False)
    with pytest.raises(OciError, match="invalid boolean"):
        parse_flags(["--no-pivot=maybe", "id"], CREATE, {}, stop_at_operand=False)


def test_signals_by_name_and_number() -> None:
    assert parse_signal("TERM") == parse_signal("SIGTERM") == parse_signal("sigterm") == parse_signal("15") == 15
    assert parse_signal("KILL") == 9 and parse_signal("SIGUSR1") == 10
    for bad in ("SIG_DFL", "NOPE", "0", "65", "-1"):
        with pytest.raises(OciError):
            parse_signal(bad)


FORBIDDEN = ("anyio", "trio", "structlog", "pyroute2", "asyncio", "sniffio")


@pytest.mark.parametrize(
    "argv",
    [
        ["state", "ghost"],
        ["list"],
        ["start", "ghost"],
        ["kill", "ghost", "KILL"],
        ["delete", "--force", "ghost"],
        ["ps", "ghost"],
    ],
)
def test_light_subcommands_import_nothing_heavy(tmp_path: Path, argv: list[str]) -> None:
    """start, state, kill, delete and list run once per container operation: none of the async stack."""
    code = (
        "import sys; from aiocontain.oci.command import dispatch; from aiocontain.oci.errors import OciError\n"
        f"try: dispatch(['--root', {str(tmp_path)!r}, *{argv!r}])\n"
        "except OciError: pass\n"
        "import json; print(json.dumps(sorted(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules = json.loads(result.stdout.splitlines()[-1])
    assert "aiocontain.oci.lifecycle" in modules  # the subcommand really ran
    heavy = [name for name in modules if name.split(".")[0] in FORBIDDEN]
    assert heavy == [], heavy


def test_the_check_sees_a_heavy_import() -> None:
    """Control: the same probe reports anyio once something imports it."""
    code = "import sys, json; import aiocontain.container; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules = json.loads(result.stdout.splitlines()[-1])
    assert [name for name in modules if name.split(".")[0] in FORBIDDEN]


def test_create_from_the_seccomp_cache_imports_no_pathlib_nor_openssl(tmp_path: Path) -> None:
    """create's filter from the cache costs neither pathlib nor hashlib's OpenSSL (~5 ms of each create); the
    cold run, which compiles, is the control that the probe sees the modules the path imports."""
    code = (
        "import sys, json\n"
        "import aiocontain.oci.create\n"
        "from aiocontain.seccomp import DEFAULT_PROFILE, program\n"
        "found = program(open(DEFAULT_PROFILE, 'rb').read(), 'default', frozenset({'CAP_KILL'}))\n"
        "print(json.dumps([found.hex(), sorted(sys.modules)]))"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    runs = []
    for _ in range(2):  # the first compiles and stores, the second loads it
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        runs.append(json.loads(result.stdout.splitlines()[-1]))
    (cold_program, cold_modules), (warm_program, warm_modules) = runs
    assert warm_program == cold_program and len(os.listdir(tmp_path / "aiocontain" / "seccomp")) == 1
    assert "aiocontain.seccomp.compile" in cold_modules
    assert "aiocontain.seccomp.compile" not in warm_modules
    assert [name for name in warm_modules if name in ("pathlib", "hashlib", "_hashlib")] == []
