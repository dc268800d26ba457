"""Plugins: hooks at each lifecycle point, registered in code or found through entry points."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from aiocontain import Container, ContainerSpec, NetworkMode
from aiocontain.errors import AiocontainError
from aiocontain.plugins import (
    ExitedContext,
    Plugin,
    PrepareContext,
    PrestartContext,
    StartedContext,
)
from tests.conftest import cli_argv, leftovers, open_fds, started

pytestmark = pytest.mark.container


class Recorder(Plugin):
    """Records each hook it sees, with what the hook was given."""

    def __init__(self, name: str, calls: list[tuple[str, str]]) -> None:
        self.label = name
        self.calls = calls

    def display_name(self) -> str:
        return self.label

    async def prepare(self, context: PrepareContext) -> None:
        self.calls.append((self.label, "prepare"))

    async def prestart(self, context: PrestartContext) -> None:
        assert context.pid > 0 and Path(f"/proc/{context.pid}").exists()
        self.calls.append((self.label, "prestart"))

    async def started(self, context: StartedContext) -> None:
        self.calls.append((self.label, "started"))

    async def exited(self, context: ExitedContext) -> None:
        self.calls.append((self.label, f"exited {context.status.code}"))


def spec(rootfs: Path, command: str, **options: object) -> ContainerSpec:
    return ContainerSpec(["/bin/sh", "-c", command], rootfs=rootfs, network=NetworkMode.NONE, **options)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_hooks_run_in_order_and_exited_hooks_in_reverse(rootfs):
    calls: list[tuple[str, str]] = []
    plugins = [Recorder("first", calls), Recorder("second", calls)]
    async with Container(spec(rootfs, "exit 3"), plugins) as container:
        assert (await container.wait()).code == 3
    assert calls == [
        ("first", "prepare"),
        ("second", "prepare"),
        ("first", "prestart"),
        ("second", "prestart"),
        ("first", "started"),
        ("second", "started"),
        ("second", "exited 3"),
        ("first", "exited 3"),
    ]
    names = [e.name async for e in container.events() if e.name == "hook.finished"]
    assert len(names) == 8


class Changer(Plugin):
    name = "changer"

    def __init__(self, shared: Path) -> None:
        self.shared = shared

    async def prepare(self, context: PrepareContext) -> None:
        context.env["FROM_PLUGIN"] = "yes"
        context.add_mount(self.shared, "/mnt/shared")  # read-only by default
        context.add_file("/etc/plugin.conf", "written by a plugin\n")


@pytest.mark.anyio
async def test_prepare_hooks_change_the_container(rootfs, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "data").write_text("host data\n")
    command = "echo $FROM_PLUGIN; cat /mnt/shared/data /etc/plugin.conf; touch /mnt/shared/x 2>/dev/null || echo ro"
    s = spec(rootfs, command, stdout=subprocess.PIPE)
    async with Container(s, [Changer(shared)]) as container:
        output = b"".join([chunk async for chunk in container.stdout]).decode()
        assert (await container.wait()).ok
    assert output.splitlines() == ["yes", "host data", "written by a plugin", "ro"]
    assert not (shared / "x").exists()
    placeholder = Path(rootfs) / "etc" / "plugin.conf"  # the mount point, made empty as for /etc/hosts
    assert placeholder.read_text() == ""
    placeholder.unlink()


class Failing(Plugin):
    name = "failing"
    hook_timeout = 1.0

    def __init__(self, hook: str, how: str) -> None:
        self.hook, self.how = hook, how

    async def _act(self, context: PrepareContext | PrestartContext | StartedContext) -> None:
        if self.how == "veto":
            raise_veto = getattr(context, "veto", None)
            assert raise_veto is not None
            raise_veto("not today")
        if self.how == "hang":
            await anyio.sleep_forever()
        if self.how == "error":
            raise AiocontainError("port 80 is taken", fix="choose another")
        raise RuntimeError("boom")

    async def prepare(self, context: PrepareContext) -> None:
        if self.hook == "prepare":
            await self._act(context)

    async def prestart(self, context: PrestartContext) -> None:
        if self.hook == "prestart":
            await self._act(context)

    async def started(self, context: StartedContext) -> None:
        if self.hook == "started":
            await self._act(context)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "hook, how, message",
    [
        ("prepare", "veto", "plugin failing stopped the run: not today"),
        ("prestart", "veto", "plugin failing stopped the run: not today"),
        ("prestart", "raise", "plugin failing failed in its prestart hook: RuntimeError: boom"),
        ("started", "raise", "plugin failing failed in its started hook: RuntimeError: boom"),
        ("prestart", "hang", "plugin failing: its prestart hook did not return within 1s"),
        ("prestart", "error", "plugin failing: port 80 is taken (fix: choose another)"),
    ],
)
async def test_a_failing_hook_stops_the_run_cleanly_and_names_the_plugin(rootfs, hook, how, message):
    before, fds = leftovers(), open_fds()
    s = ContainerSpec(["sleep", "30"], rootfs=rootfs)  # with slirp4netns: it must go too
    with pytest.raises(AiocontainError) as caught:
        async with Container(s, [Failing(hook, how)]) as container:
            await container.wait()
    assert caught.value.line() == message if how == "error" else caught.value.message == message
    assert leftovers() == before
    assert open_fds() == fds


class Publisher(Plugin):
    name = "publisher"

    async def prepare(self, context: PrepareContext) -> None:
        context.publish("tcp", "127.0.0.1", 0, 80)


@pytest.mark.anyio
async def test_a_port_published_at_prepare_needs_a_driver_that_takes_it_there(rootfs):
    """Only a driver that takes ports when it starts (pasta) may be given them at prepare: the others refuse in
    one line, before anything starts."""
    before = leftovers()
    with pytest.raises(AiocontainError) as caught:
        async with Container(spec(rootfs, "true"), [Publisher()]) as container:
            await container.wait()
    assert caught.value.message == "--net none cannot publish ports when it starts"
    assert leftovers() == before


class Lister(Plugin):
    name = "lister"

    async def prestart(self, context: PrestartContext) -> None:
        self.reply = await context.slirp4netns_api({"execute": "list_hostfwd"})


@pytest.mark.anyio
async def test_prestart_hooks_reach_slirp4netns_api_as_soon_as_tap0_is_up(rootfs):
    # tap0 comes up before slirp4netns's API socket listens: the call must wait for it, not fail
    lister = Lister()
    async with Container(ContainerSpec(["true"], rootfs=rootfs), [lister]) as container:
        assert (await container.wait()).ok
    assert lister.reply == {"entries": []}


class BadExit(Plugin):
    name = "bad-exit"

    async def exited(self, context: ExitedContext) -> None:
        raise RuntimeError("cannot report")


@pytest.mark.anyio
async def test_a_failing_exited_hook_is_reported_and_the_status_stands(rootfs):
    async with Container(spec(rootfs, "exit 4"), [BadExit()]) as container:
        status = await container.wait()
    assert status.code == 4
    failed = [e async for e in container.events() if e.name == "hook.failed"]
    assert [(e.fields["plugin"], e.fields["hook"]) for e in failed] == [("bad-exit", "exited")]


def make_plugin_distribution(site: Path, name: str, source: str, entry: str, attr: str = "make") -> None:
    """An installed distribution as importlib.metadata sees one: a dist-info with entry_points.txt."""
    (site / f"{name}.py").write_text(textwrap.dedent(source))
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[aiocontain.plugins]\n{entry} = {name}:{attr}\n")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    make_plugin_distribution(
        site,
        "greeter",
        """
        from aiocontain.plugins import Plugin

        class Greeter(Plugin):
            description = "sets GREETING"
            def add_arguments(self, parser):
                parser.add_argument("--greeting", default="hello")
            def configure(self, args):
                self.greeting = args.greeting
            async def prepare(self, context):
                context.env["GREETING"] = self.greeting

        def make():
            return Greeter()
        """,
        "greeter",
    )
    make_plugin_distribution(site, "broken", "raise ImportError('no such thing')\n", "broken")
    make_plugin_distribution(
        site,
        "future",
        """
        from aiocontain.plugins import Plugin

        class Future(Plugin):
            api_version = 99

        def make():
            return Future()
        """,
        "future",
    )
    return site


def run_cli(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)


def test_installed_plugins_are_listed_with_why_some_cannot_run(site):
    proc = run_cli(site, sys.executable, "-m", "aiocontain", "plugins")
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()[1:]}
    assert "enabled" in lines["greeter"] and "sets GREETING" in lines["greeter"]
    assert "skipped" in lines["broken"] and "ImportError: no such thing" in lines["broken"]
    assert "interface version 99; this aiocontain speaks 1" in lines["future"]


def test_entry_point_plugins_run_and_broken_ones_are_one_warning_each(site, rootfs):
    argv = cli_argv(rootfs, "--net", "none", "--greeting", "bonjour", "--", "/bin/sh", "-c", "echo $GREETING")
    proc = run_cli(site, *argv)
    assert (proc.returncode, proc.stdout) == (0, "bonjour\n"), proc.stderr
    warnings = proc.stderr.strip().splitlines()
    assert len(warnings) == 2 and "Traceback" not in proc.stderr
    assert "plugin.skipped" in warnings[0] and "plugin=broken" in warnings[0]
    assert "plugin.skipped" in warnings[1] and "plugin=future" in warnings[1]
    quiet = run_cli(
        site,
        *cli_argv(
            rootfs,
            "--net",
            "none",
            "--disable-plugin",
            "broken",
            "--disable-plugin",
            "future",
            "--disable-plugin",
            "greeter",
            "--",
            "/bin/sh",
            "-c",
            "echo ${GREETING:-none}",
        ),
    )
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "none\n", "")


def test_an_option_of_a_plugin_that_does_not_run_is_refused(site, rootfs):
    # Silently ignored, --greeting (or portforward's -p) would promise what nothing does.
    proc = run_cli(site, *cli_argv(rootfs, "--disable-plugin", "greeter", "--greeting", "hi", "true"))
    assert proc.returncode == 125
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("aiocontain: plugin greeter does not run in this container, but its option --greeting was given")
    )
    assert run_cli(site, *cli_argv(rootfs, "--net", "none", "--disable-plugin", "greeter", "true")).returncode == 0


def test_enabling_a_plugin_that_cannot_load_fails(site, rootfs):
    proc = run_cli(site, *cli_argv(rootfs, "--enable-plugin", "broken", "true"))
    assert proc.returncode == 125
    assert proc.stderr.strip().splitlines()[-1] == (
        "aiocontain: --enable-plugin broken: cannot be loaded: ImportError: no such thing"
        " (fix: aiocontain plugins says why)"
    )


def test_unknown_plugin_name_is_one_line(site, rootfs):
    proc = run_cli(site, *cli_argv(rootfs, "--enable-plugin", "nope", "true"))
    assert proc.returncode == 125
    assert proc.stderr.strip().splitlines()[-1] == (
        "aiocontain: no plugin named 'nope' is installed (fix: aiocontain plugins lists them)"
    )


def test_a_failing_hook_on_the_cli_is_one_line_naming_the_plugin_and_leaves_nothing(tmp_path, rootfs):
    site = tmp_path / "site"
    site.mkdir()
    make_plugin_distribution(
        site,
        "grumpy",
        """
        from aiocontain.plugins import Plugin

        class Grumpy(Plugin):  # no name of its own: it goes by its entry point's
            async def prestart(self, context):
                raise RuntimeError("boom")

        def make():
            return Grumpy()
        """,
        "grumpy",
    )
    before = leftovers()
    proc = run_cli(site, *cli_argv(rootfs, "--", "true"))  # with slirp4netns, which must go too
    assert proc.returncode == 125
    assert proc.stderr.splitlines() == [
        "aiocontain: plugin grumpy failed in its prestart hook: RuntimeError: boom (fix: --disable-plugin grumpy)"
    ]
    assert leftovers() == before
    assert run_cli(site, *cli_argv(rootfs, "--disable-plugin", "grumpy", "--", "true")).returncode == 0


# A plugin that notes each of its hooks in the file named by $PLUGIN_LOG (the CLI's environment).
LOGGING_PLUGIN = """
import os
from aiocontain.plugins import Plugin

class Logging(Plugin):
    order = {order}
    enabled_by_default = {enabled}

    def _log(self, hook):
        with open(os.environ["PLUGIN_LOG"], "a") as log:
            log.write(f"{{self.name}} {{hook}}\\n")

    async def prepare(self, context):
        self._log("prepare")
        context.env["SEEN_BY"] = context.env.get("SEEN_BY", "") + self.name + ","

    async def exited(self, context):
        self._log("exited")

make = Logging
"""


def logging_plugins(site: Path, plugins: dict[str, tuple[int, bool]]) -> None:
    """One distribution per plugin: name -> (order, enabled_by_default)."""
    site.mkdir(exist_ok=True)
    for name, (order, enabled) in plugins.items():
        make_plugin_distribution(site, name, LOGGING_PLUGIN.format(order=order, enabled=enabled), name)


def run_logged(site: Path, rootfs: Path, log: Path, *args: str) -> tuple[str, list[str]]:
    """The command's $SEEN_BY and the hooks' log of one CLI run with the plugins in site."""
    env_args = ("--net", "none", *args, "--", "/bin/sh", "-c", "echo ${SEEN_BY:-none}")
    env = {**os.environ, "PLUGIN_LOG": str(log), "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    proc = subprocess.run(
        cli_argv(rootfs, *env_args), capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL
    )
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    hooks = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return proc.stdout.strip(), hooks


def test_installed_plugins_run_by_order_then_name_and_exited_hooks_in_reverse(tmp_path, rootfs):
    # Names sort the other way round from orders, and two share an order: only (order, name) gives this.
    site = tmp_path / "site"
    logging_plugins(site, {"alpha": (300, True), "zulu": (5, True), "mike": (100, True), "bravo": (100, True)})
    seen, hooks = run_logged(site, rootfs, tmp_path / "log")
    assert seen == "zulu,bravo,mike,alpha,"
    assert hooks == [
        *(f"{name} prepare" for name in ("zulu", "bravo", "mike", "alpha")),
        *(f"{name} exited" for name in ("alpha", "mike", "bravo", "zulu")),
    ]


def test_a_plugin_off_by_default_runs_only_when_enabled(tmp_path, rootfs):
    site = tmp_path / "site"
    logging_plugins(site, {"optin": (100, False), "always": (100, True)})
    assert run_logged(site, rootfs, tmp_path / "log")[0] == "always,"
    assert run_logged(site, rootfs, tmp_path / "log", "--enable-plugin", "optin")[0] == "always,optin,"
    assert run_logged(site, rootfs, tmp_path / "log", "--enable-plugin", "optin", "--disable-plugin", "always")[0] == (
        "optin,"
    )


def test_entry_points_may_name_an_instance_and_anything_else_is_skipped(tmp_path, rootfs):
    site = tmp_path / "site"
    site.mkdir()
    instance = """
        from aiocontain.plugins import Plugin

        class Shared(Plugin):
            async def prepare(self, context):
                context.env["FROM"] = "instance"

        shared = Shared()
        """
    make_plugin_distribution(site, "single", instance, "single", attr="shared")
    make_plugin_distribution(site, "number", "answer = 42\n", "number", attr="answer")
    make_plugin_distribution(site, "stranger", "class NotAPlugin:\n    pass\n", "stranger", attr="NotAPlugin")
    listing = run_cli(site, sys.executable, "-m", "aiocontain", "plugins")
    assert listing.returncode == 0, listing.stderr
    lines = {line.split()[0]: line for line in listing.stdout.splitlines()[1:]}
    assert "enabled" in lines["single"]
    for name in ("number", "stranger"):
        assert "skipped" in lines[name] and "is not an aiocontain.plugins.Plugin" in lines[name], lines[name]
    proc = run_cli(site, *cli_argv(rootfs, "--net", "none", "--", "/bin/sh", "-c", "echo $FROM"))
    assert (proc.returncode, proc.stdout) == (0, "instance\n"), proc.stderr
    warnings = proc.stderr.strip().splitlines()
    assert len(warnings) == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "plugin=number" in warnings[0] and "plugin=stranger" in warnings[1]


def test_configure_raising_any_error_is_one_line_naming_the_plugin_and_nothing_starts(tmp_path, rootfs):
    site = tmp_path / "site"
    site.mkdir()
    fussy = """
        from aiocontain.plugins import Plugin

        class Fussy(Plugin):
            def configure(self, args):
                raise ValueError("the moon is not in the right phase")

        make = Fussy
        """
    make_plugin_distribution(site, "fussy", fussy, "fussy")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    before = leftovers()
    env = {"XDG_RUNTIME_DIR": str(runtime), "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    proc = subprocess.run(
        cli_argv(rootfs, "--net", "none", "true"),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 125
    assert proc.stderr.splitlines() == ["aiocontain: plugin fussy: ValueError: the moon is not in the right phase"]
    assert list(runtime.iterdir()) == []  # nothing started: not even a runtime directory
    assert leftovers() == before


class Sleepy(Plugin):
    """No hook_timeout of its own: the default applies."""

    name = "sleepy"

    async def prepare(self, context: PrepareContext) -> None:
        await anyio.sleep_forever()


@pytest.mark.anyio
async def test_a_hook_has_ten_seconds_by_default(rootfs):
    assert "hook_timeout" not in vars(Sleepy)
    with pytest.raises(AiocontainError) as caught:
        async with Container(spec(rootfs, "true"), [Sleepy()]):
            pass
    assert caught.value.message == "plugin sleepy: its prepare hook did not return within 10s"


# A plugin whose prestart hook says "ready" on the CLI's stdout and then waits: set-up stops at a known point.
STALLING_PLUGIN = """
import sys
import anyio
from aiocontain.plugins import Plugin

class Stall(Plugin):
    hook_timeout = 30.0  # the signal ends it first; a signal queued instead (a bug) ends in this error

    async def prestart(self, context):
        print("ready", flush=True)
        await anyio.sleep_forever()

make = Stall
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_set_up_stops_it_with_128_plus_n_and_leaves_nothing(tmp_path, rootfs, signum):
    """Set-up stopped in a prestart hook (its network and PID 1 there already): SIGINT or SIGTERM ends the run
    at once with 128+N, the command never runs (not queued for after the set-up), and nothing is left."""
    site = tmp_path / "site"
    site.mkdir()
    make_plugin_distribution(site, "stall", STALLING_PLUGIN, "stall")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    before = leftovers()
    with started(cli_argv(rootfs, "--", "/bin/sh", "-c", "echo ran"), env=env) as proc:
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (128 + signum, "", ""), err
    assert leftovers() == before
