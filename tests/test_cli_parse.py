"""The CLI's argument handling, in-process: errors are one line and exit 125; nothing is started."""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

from aiocontain import cli
from aiocontain.spec import ContainerSpec, NetworkMode

BUSYBOX = Path("/bin/busybox")


def assert_usage_error(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 125
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("aiocontain:")
    assert "Traceback" not in err
    assert "usage:" not in err
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["run", "--mtu", "abc", "true"], ["--mtu", "invalid int value: 'abc'", "aiocontain run --help"]),
        (["run", "--net", "bridge", "true"], ["invalid choice: 'bridge'", "aiocontain run --help"]),
        (["run", "--network", "slirp", "true"], ["invalid choice: 'slirp'"]),
        (["run", "--stop-timeout", "soon", "true"], ["--stop-timeout", "invalid float value"]),
        (["run", "--backend", "curio", "true"], ["invalid choice: 'curio'"]),
        (["run", "--log-level", "loud", "true"], ["invalid choice: 'loud'"]),
        (["run", "--mtu"], ["--mtu", "expected one argument"]),
        (["frobnicate"], ["invalid choice: 'frobnicate'"]),
        ([], ["required", "subcommand"]),
        (["rootfs"], ["required", "rootfs_command", "aiocontain rootfs --help"]),
        (["rootfs", "frob"], ["invalid choice: 'frob'"]),
        (["rootfs", "init", "--busybox"], ["--busybox", "expected one argument"]),
        (["doctor", "--bogus"], ["unrecognized arguments: --bogus"]),
    ],
)
def test_argument_errors_exit_125_in_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], needles: list[str]
) -> None:
    assert_usage_error(capsys, argv, *needles)


def test_top_level_error_hint_names_a_real_command(capsys: pytest.CaptureFixture[str]) -> None:
    line = assert_usage_error(capsys, ["frobnicate"])
    assert "aiocontain aiocontain" not in line
    assert "(see 'aiocontain --help')" in line


def test_nested_error_hint_names_the_full_command(capsys: pytest.CaptureFixture[str]) -> None:
    line = assert_usage_error(capsys, ["rootfs", "init", "--busybox"])
    assert "aiocontain rootfs init --help" in line


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["run", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--mtu" in out and "--net" in out


def _subparser(parser: argparse.ArgumentParser, *names: str) -> argparse.ArgumentParser:
    for name in names:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = actions[0].choices[name]
    return parser


def test_run_help_gives_every_option_its_meaning_and_default() -> None:
    run = _subparser(cli._parser(), "run")
    shown = [a for a in run._actions if a.help != argparse.SUPPRESS and a.dest != "help"]
    assert len(shown) > 25
    for action in shown:
        assert action.help, f"{action.option_strings or action.dest} has no help"
        if action.option_strings:
            assert "(default: " in action.help, f"{action.option_strings} does not say its default"
    text = run.format_help()
    assert "CMD [ARGS...]" in text and "the command to run in the container" in text
    for code in ("125", "126", "127", "128+N"):
        assert f"\n  {code} " in text
    assert "example:\n  aiocontain run " in text
    from aiocontain.rootfs import default_rootfs

    assert f"(default:{default_rootfs()})" in "".join(text.split())  # where this installation looks (wrapped)


def test_top_level_help_points_at_run_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    assert "aiocontain run --help" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, unknown",
    [
        (["run", "--pid", "host", "true"], "--pid"),  # once read as --pids-limit
        (["run", "--mem", "2m", "true"], "--mem"),
        (["run", "--net=none", "--cpu", "1", "true"], "--cpu"),
        (["run", "--stop", "3", "true"], "--stop"),
        (["doctor", "--root", "/x"], "--root"),
        (["rootfs", "init", "--busy", "/x"], "--busy"),
    ],
)
def test_no_option_is_guessed_from_an_abbreviation(
    capsys: pytest.CaptureFixture[str], argv: list[str], unknown: str
) -> None:
    assert_usage_error(capsys, argv, f"unrecognized arguments: {unknown}")


def test_the_full_names_still_parse(fake_run: FakeRun) -> None:
    assert cli.main(["run", "--pids-limit", "3", "--memory", "2m", "--cpus", "1", "--stop-timeout", "3", "true"]) == 0
    assert fake_run.spec.limits.pids == 3 and fake_run.spec.stop_timeout == 3


def test_every_parser_refuses_abbreviations() -> None:
    parser = cli._parser()
    parsers = [parser, *(_subparser(parser, name) for name in ("run", "plugins", "doctor", "rootfs"))]
    parsers.append(_subparser(parser, "rootfs", "init"))
    assert all(not p.allow_abbrev for p in parsers)


# run: the spec handed to the container, with anyio.run intercepted


class FakeRun:
    """Stands in for anyio.run: records the spec instead of starting a container."""

    def __init__(self, code: int = 0) -> None:
        self.code = code
        self.calls: list[dict[str, Any]] = []

    def __call__(self, func: Any, spec: ContainerSpec, result: dict[str, Any], *args: Any, backend: str) -> None:
        self.calls.append({"func": func, "spec": spec, "backend": backend, "args": args})
        result["code"] = self.code

    @property
    def spec(self) -> ContainerSpec:
        assert len(self.calls) == 1
        spec = self.calls[0]["spec"]
        assert isinstance(spec, ContainerSpec)
        return spec


@pytest.fixture
def fake_run(monkeypatch: pytest.MonkeyPatch) -> FakeRun:
    fake = FakeRun()
    monkeypatch.setattr(anyio, "run", fake)
    # Keep the test's logging setup alone: events.configure would reconfigure structlog globally.
    from aiocontain import events

    monkeypatch.setattr(events, "configure", lambda *args, **kwargs: None)
    return fake


def test_run_builds_the_spec(fake_run: FakeRun, tmp_path: Path) -> None:
    code = cli.main(
        [
            "run",
            "--rootfs",
            str(tmp_path),
            "--name",
            "web",
            "--hostname",
            "box",
            "--net",
            "slirp4netns",
            "--mtu",
            "1500",
            "--allow-host-loopback",
            "-w",
            "/srv",
            "--init",
            "--stop-timeout",
            "2.5",
            "--backend",
            "trio",
            "sh",
            "-c",
            "echo --mtu",
        ]
    )
    assert code == 0
    spec = fake_run.spec
    assert list(spec.command) == ["sh", "-c", "echo --mtu"]
    assert spec.rootfs == tmp_path
    assert spec.name == "web"
    assert spec.hostname == "box"
    assert spec.network is NetworkMode.SLIRP4NETNS
    assert spec.mtu == 1500
    assert spec.allow_host_loopback is True
    assert spec.workdir == "/srv"
    assert spec.init is True
    assert spec.stop_timeout == 2.5
    assert fake_run.calls[0]["backend"] == "trio"
    assert fake_run.calls[0]["func"] is cli._run_container


def test_run_defaults(fake_run: FakeRun) -> None:
    assert cli.main(["run", "true"]) == 0
    spec = fake_run.spec
    assert list(spec.command) == ["true"]
    assert spec.rootfs is None
    assert spec.network is NetworkMode.SLIRP4NETNS
    assert spec.mtu == 65520
    assert spec.env == {}
    assert fake_run.calls[0]["backend"] == "asyncio"


@pytest.mark.parametrize(("level", "describe"), [("warning", False), ("error", False), ("info", True), ("debug", True)])
def test_network_facts_are_decoded_only_when_logged(fake_run: FakeRun, level: str, describe: bool) -> None:
    # network.ready's address, gateway and MTU cost pyroute2's import: only when the event is shown
    assert cli.main(["run", "--log-level", level, "true"]) == 0
    assert fake_run.calls[0]["args"][2] is describe


def test_network_facts_are_decoded_for_a_plugin_that_may_use_them(
    fake_run: FakeRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiocontain import entrypoints
    from aiocontain.plugins import Installed, Plugin, loading

    class Quiet(Plugin):
        uses_network_facts = False

    class Curious(Plugin):  # the default: it may read context.network
        pass

    for plugins, describe in (([Quiet()], False), ([Quiet(), Curious()], True)):
        fake_run.calls.clear()
        installed = [Installed(type(plugin).__name__.lower(), "test 1.0", plugin) for plugin in plugins]
        entries = [(name, "unused:make", "test 1.0") for name in ("quiet", "curious")]
        monkeypatch.setattr(entrypoints, "entry_points", lambda group=entrypoints.PLUGINS, found=entries: found)
        monkeypatch.setattr(loading, "discover", lambda entries=None, installed=installed: installed)
        assert cli.main(["run", "true"]) == 0
        assert fake_run.calls[0]["args"][2] is describe


def test_network_facts_are_decoded_for_an_events_file(fake_run: FakeRun, tmp_path: Path) -> None:
    assert cli.main(["run", "--events", str(tmp_path / "events.jsonl"), "true"]) == 0
    assert fake_run.calls[0]["args"][2] is True


def test_run_returns_the_container_exit_code(monkeypatch: pytest.MonkeyPatch, fake_run: FakeRun) -> None:
    fake_run.code = 42
    assert cli.main(["run", "false"]) == 42


def test_double_dash_before_the_command_is_dropped(fake_run: FakeRun) -> None:
    assert cli.main(["run", "--", "ls", "-l"]) == 0
    assert list(fake_run.spec.command) == ["ls", "-l"]


def test_env_values(monkeypatch: pytest.MonkeyPatch, fake_run: FakeRun) -> None:
    monkeypatch.setenv("AIOCONTAIN_TEST_HOST_VALUE", "from the host")
    monkeypatch.setenv("AIOCONTAIN_TEST_EMPTY", "")
    monkeypatch.delenv("AIOCONTAIN_TEST_SET", raising=False)
    argv = [
        "run",
        "-e",
        "AIOCONTAIN_TEST_HOST_VALUE",
        "--env",
        "AIOCONTAIN_TEST_SET=a=b",
        "-e",
        "AIOCONTAIN_TEST_EMPTY",
        "-e",
        "BLANK=",
        "true",
    ]
    assert cli.main(argv) == 0
    assert fake_run.spec.env == {
        "AIOCONTAIN_TEST_HOST_VALUE": "from the host",
        "AIOCONTAIN_TEST_SET": "a=b",
        "AIOCONTAIN_TEST_EMPTY": "",
        "BLANK": "",
    }


def test_env_key_without_value_reads_os_environ(monkeypatch: pytest.MonkeyPatch, fake_run: FakeRun) -> None:
    monkeypatch.setattr(os, "environ", {**os.environ, "ONLY_IN_PATCHED_ENVIRON": "patched"})
    assert cli.main(["run", "-e", "ONLY_IN_PATCHED_ENVIRON", "true"]) == 0
    assert fake_run.spec.env == {"ONLY_IN_PATCHED_ENVIRON": "patched"}


def test_later_env_wins(fake_run: FakeRun) -> None:
    assert cli.main(["run", "-e", "K=1", "-e", "K=2", "true"]) == 0
    assert fake_run.spec.env == {"K": "2"}


def test_env_key_missing_on_the_host_sets_nothing(monkeypatch: pytest.MonkeyPatch, fake_run: FakeRun) -> None:
    monkeypatch.delenv("AIOCONTAIN_TEST_NOT_SET", raising=False)
    assert cli.main(["run", "-e", "AIOCONTAIN_TEST_NOT_SET", "-e", "K=v", "true"]) == 0  # as podman and docker do
    assert fake_run.spec.env == {"K": "v"}


def test_env_without_a_name_is_an_error(capsys: pytest.CaptureFixture[str], fake_run: FakeRun) -> None:
    assert cli.main(["run", "-e", "=value", "true"]) == 125
    err = capsys.readouterr().err
    assert err.splitlines() == [err.strip()]
    assert err.startswith("aiocontain: invalid --env '=value'")
    assert fake_run.calls == []


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["run"], "no command given"),
        (["run", "--"], "no command given"),
        (["run", "--mtu", "70000", "true"], "invalid MTU 70000"),
        (["run", "--mtu", "67", "true"], "invalid MTU 67"),
        (["run", "--name", "bad name", "true"], "invalid container name"),
        (["run", "--hostname=-x", "true"], "invalid hostname"),
        (["run", "-w", "relative", "true"], "invalid working directory"),
        (["run", "-e", "=v", "true"], "invalid --env"),
        (["run", "--stop-timeout", "-1", "true"], "invalid stop timeout"),
        (["run", "--stop-timeout", "nan", "true"], "invalid stop timeout"),
    ],
)
def test_invalid_spec_is_one_line_and_exit_125(
    capsys: pytest.CaptureFixture[str], fake_run: FakeRun, argv: list[str], needle: str
) -> None:
    assert cli.main(argv) == 125
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("aiocontain: ")
    assert needle in lines[0]
    assert fake_run.calls == []  # nothing was started


# rootfs init


@pytest.mark.skipif(not BUSYBOX.is_file(), reason="/bin/busybox is missing (sudo apt-get install busybox-static)")
def test_rootfs_init_builds_a_rootfs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "r"
    assert cli.main(["rootfs", "init", str(target)]) == 0
    assert (target / "bin" / "busybox").is_file()
    assert os.access(target / "bin" / "busybox", os.X_OK)
    assert os.readlink(target / "bin" / "sh") == "/bin/busybox"
    assert (target / "etc" / "passwd").read_text().startswith("root:")
    assert f"root filesystem ready in {target}" in capsys.readouterr().err
    # a rerun on the rootfs it built is fine
    assert cli.main(["rootfs", "init", str(target)]) == 0


def test_rootfs_init_with_missing_busybox_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-busybox"
    assert cli.main(["rootfs", "init", str(tmp_path / "r"), "--busybox", str(missing)]) == 125
    err = capsys.readouterr().err
    assert err.splitlines() == [err.strip()]
    assert err.startswith(f"aiocontain: no busybox at {missing}")
    assert not (tmp_path / "r").exists()


def test_rootfs_init_refuses_a_foreign_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not BUSYBOX.is_file():
        pytest.skip("/bin/busybox is missing")
    target = tmp_path / "mine"
    target.mkdir()
    (target / "precious.txt").write_text("keep")
    assert cli.main(["rootfs", "init", str(target)]) == 125
    assert "refusing to write into it" in capsys.readouterr().err
    assert sorted(os.listdir(target)) == ["precious.txt"]


@pytest.mark.parametrize(
    ("args", "ttys", "tty", "interactive"),
    [
        ([], (True, True), True, True),  # from a terminal: -i -t
        ([], (False, False), False, True),  # stdin a pipe or file: -i (echo cmd | aiocontain run /bin/sh)
        ([], (False, True), False, True),
        ([], (True, False), False, False),  # a terminal stdin alone: neither
        (["-t=false"], (True, True), False, True),
        (["--tty=false", "--interactive=false"], (True, True), False, False),
        (["-it"], (False, False), True, True),
        (["-ti"], (True, False), True, True),
        (["-t"], (True, False), True, False),
        (["--tty=true", "-i=false"], (False, False), True, False),
        (["-i=false"], (False, False), False, False),
        (["--interactive"], (True, False), False, True),
    ],
)
def test_tty_and_interactive_spellings_and_defaults(
    monkeypatch: pytest.MonkeyPatch,
    fake_run: FakeRun,
    args: list[str],
    ttys: tuple[bool, bool],
    tty: bool,
    interactive: bool,
) -> None:
    monkeypatch.setattr(os, "isatty", lambda fd: ttys[fd] if fd in (0, 1) else False)
    assert cli.main(["run", *args, "sh", "-t"]) == 0
    spec = fake_run.spec
    assert list(spec.command) == ["sh", "-t"]  # options after the command are the command's
    assert spec.tty is tty
    assert fake_run.calls[0]["args"][3] is interactive
    if tty:  # the command's stdio is its own terminal; the CLI relays it
        assert (spec.stdin, spec.stdout, spec.stderr) == (subprocess.DEVNULL,) * 3
    else:  # a terminal of the caller's is never handed over: a pipe in its place, which the CLI relays
        kept_stdin = subprocess.PIPE if ttys[0] else None
        assert spec.stdin == (kept_stdin if interactive else subprocess.DEVNULL)
        assert spec.stdout == (subprocess.PIPE if ttys[1] else None)
        assert spec.stderr is None
        assert list(fake_run.calls[0]["args"][-1]) == [fd for fd in (0, 1) if ttys[fd] and (fd or interactive)]


def test_a_bug_outside_run_is_one_line_too(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A subcommand without --log-level (doctor) that meets a bug ends in the same one line, exit 125."""
    from aiocontain import doctor

    def broken(rootfs: object) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(doctor, "main", broken)
    assert cli.main(["doctor"]) == 125
    out, err = capsys.readouterr()
    fix = "this is a bug; --log-level debug shows where"
    assert (out, err) == ("", f"aiocontain: unexpected error: RuntimeError: boom ({fix})\n")
