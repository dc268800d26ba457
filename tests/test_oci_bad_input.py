"""aiocontain-oci on bad input: one line on stderr and in --log, exit 1 (runc's), nothing left behind.

"Nothing left" is checked three ways: the state root has no entry, the engine (the subreaper every
container's process would be reparented to) has no child, and the engine fixture's leftovers() check.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Result
from tests.oci_support import Engine, engine, make_bundle

pytestmark = pytest.mark.container
assert engine


def _refused(engine: Engine, result: Result, *words: str) -> str:
    """The one line of an error, checked: exit 1, the words in it, no record and no process left."""
    assert result.code == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aiocontain-oci: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert not engine.root.exists() or os.listdir(engine.root) == []
    assert engine.children() == []
    return lines[0]


def _create(engine: Engine, bundle: Path, *args: str) -> Result:
    return engine.create("bad", bundle, *args)


CASES: dict[str, tuple[dict[str, Any], str]] = {
    "namespace": ({"linux": {"namespaces": [{"type": "mount"}, {"type": "time"}]}}, "namespace type 'time'"),
    "no mount namespace": ({"linux": {"namespaces": [{"type": "pid"}]}}, "needs a mount namespace"),
    "seccomp action": (
        {"linux": {"seccomp": {"defaultAction": "SCMP_ACT_NOTIFY"}}},
        "seccomp action SCMP_ACT_NOTIFY is not supported",
    ),
    "seccomp unknown action": ({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_BOGUS"}}}, "SCMP_ACT_BOGUS"),
    "no args": ({"process": {"args": []}}, "process.args"),
    "relative cwd": ({"process": {"cwd": "tmp"}}, "process.cwd"),
    "rlimit": ({"process": {"rlimits": [{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]}}, "RLIMIT_BOGUS"),
    "capability": ({"process": {"capabilities": {"bounding": ["CAP_BOGUS"]}}}, "CAP_BOGUS"),
    "root": ({"root": {"path": "/nonexistent/rootfs"}}, "root.path"),
    "mount source": (
        {"mounts": [{"destination": "/x", "type": "bind", "source": "/nonexistent", "options": ["bind"]}]},
        "does not exist",
    ),
    "join path": (
        {"linux": {"namespaces": [{"type": "mount"}, {"type": "network", "path": "/nonexistent/ns"}]}},
        "/nonexistent/ns",
    ),
    "user without maps": ({"linux": {"namespaces": [{"type": "mount"}, {"type": "user"}]}}, "uidMappings"),
    "terminal without socket": ({"process": {"terminal": True}}, "--console-socket"),
    "memory limit": ({"linux": {"resources": {"memory": {"limit": 64 << 20}}}}, "linux.resources.memory"),
    "no such program": ({"process": {"args": ["nothere"]}}, 'exec: "nothere": executable file not found in $PATH'),
    "no such path": ({"process": {"args": ["/no/where"]}}, 'exec: "/no/where": stat /no/where: no such file'),
    "hook args": ({"hooks": {"prestart": [{"path": "/bin/true", "args": ["true", "a\0b"]}]}}, "args hold a NUL byte"),
    "hook env": ({"hooks": {"createRuntime": [{"path": "/bin/true", "env": ["A=\0"]}]}}, "env hold a NUL byte"),
}


@pytest.mark.parametrize("case", CASES)
def test_unsupported_or_malformed_config(engine: Engine, rootfs: Path, tmp_path: Path, case: str) -> None:
    changes, words = CASES[case]
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/true"], **changes)
    _refused(engine, _create(engine, bundle), words)


def test_the_default_config_is_accepted(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """Control for the cases above: the same bundle without the change creates (so each refusal is the
    change's)."""
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/true"])
    assert _create(engine, bundle).code == 0
    assert engine.oci("delete", "--force", "bad").code == 0


def test_missing_and_malformed_config_json(engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _refused(engine, _create(engine, tmp_path / "empty"), "no config.json")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    _refused(engine, _create(engine, tmp_path / "broken"), "not valid JSON")
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "config.json").write_text("[]")
    _refused(engine, _create(engine, tmp_path / "list"), "not a JSON object")


def test_an_existing_id(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/true"])
    assert engine.create("taken", bundle, "--pid-file", str(tmp_path / "pid")).code == 0
    pid = int((tmp_path / "pid").read_text())
    again = engine.create("taken", bundle)
    assert again.code == 1 and 'container "taken" already exists' in again.stderr
    assert engine.children() == [pid] and engine.state("taken")["status"] == "created"  # the first one intact
    assert engine.oci("delete", "--force", "taken").code == 0
    assert engine.wait(pid) == 128 + 9


@pytest.mark.parametrize("command", ["start", "state", "kill", "delete"])
def test_an_unknown_id(engine: Engine, command: str) -> None:
    _refused(engine, engine.oci(command, "ghost"), 'container "ghost" does not exist')


def test_bad_ids_and_flags(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/true"])
    _refused(engine, engine.oci("create", "--bundle", str(bundle), "../escape"), "invalid container id")
    _refused(engine, engine.oci("create", "--bogus", "x"), "flag provided but not defined: --bogus")
    _refused(engine, engine.oci("create", "--bundle"), "flag needs an argument")
    _refused(engine, engine.oci("frobnicate", "x"), "unknown command")


def test_a_state_root_that_is_not_writable(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """The root is read-only to the runtime (inside the engine's mount namespace): create says where."""
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/true"])
    engine.root.mkdir(mode=0o500)
    try:
        result = engine.run(
            "/bin/sh",
            "-c",
            f"mount --bind -o ro {engine.root} {engine.root} && mount -o remount,bind,ro {engine.root} "
            f"&& {_runtime()} --root {engine.root} create --bundle {bundle} bad; code=$?; umount {engine.root}; "
            "exit $code",
        )
        _refused(engine, result, "cannot make the state directory", str(engine.root / "bad"))
    finally:
        engine.root.chmod(0o700)


def _runtime() -> str:
    from tests.oci_support import RUNTIME

    return RUNTIME


def test_a_console_socket_that_does_not_answer(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/true"], process={"terminal": True})
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(tmp_path / "console.sock"))  # bound, never listening: connect is refused
    try:
        result = _create(engine, bundle, "--console-socket", str(tmp_path / "console.sock"))
    finally:
        dead.close()
    _refused(engine, result, "cannot connect to the console socket", "refused")
    _refused(engine, _create(engine, bundle, "--console-socket", str(tmp_path / "none.sock")), "No such file")


def test_a_failing_prestart_hook_leaves_nothing(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """The container's process exists when prestart runs: create kills it and removes the record."""
    hooks = {"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", "echo no way >&2; exit 4"]}]}
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/true"], hooks=hooks)
    _refused(engine, _create(engine, bundle), "prestart hook /bin/sh failed with exit status 4: no way")


def test_errors_go_to_the_log_as_json(engine: Engine, tmp_path: Path) -> None:
    """podman and containerd read the last error from --log with --log-format json."""
    log = tmp_path / "oci-log"
    result = engine.oci("state", "ghost", global_args=("--log", str(log), "--log-format", "json"))
    line = _refused(engine, result, "does not exist")
    record: dict[str, str] = json.loads(log.read_text().splitlines()[-1])
    assert record["level"] == "error" and record["msg"] == line.removeprefix("aiocontain-oci: ")
    assert record["time"].endswith("Z")
    engine.oci("state", "ghost", global_args=("--log", str(tmp_path / "text-log")))
    assert 'level=error msg="container \\"ghost\\" does not exist"' in (tmp_path / "text-log").read_text()


def test_records_in_a_root_others_may_write_are_not_trusted(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """A record names hooks to run and a pid to signal: in a state root that another user could write, none
    is acted on (delete, list, state refuse in one line); made private again, the same record is."""
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/true"])
    assert engine.create("trusted", bundle, "--pid-file", str(tmp_path / "pid")).code == 0
    pid = int((tmp_path / "pid").read_text())
    mode = engine.root.stat().st_mode & 0o777
    engine.root.chmod(0o777)
    try:
        for args in (("delete", "--force", "trusted"), ("state", "trusted"), ("list",)):
            result = engine.oci(*args)
            lines = result.stderr.strip().splitlines()
            assert result.code == 1 and len(lines) == 1, result
            assert lines[0].startswith("aiocontain-oci: ") and "is not a directory of this user's alone" in lines[0]
        assert engine.children() == [pid]  # not signalled
    finally:
        engine.root.chmod(mode)
    assert engine.oci("delete", "--force", "trusted").code == 0
    assert engine.wait(pid) == 128 + 9


def test_the_pid_file_is_never_written_through_a_planted_name(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """The pid file is written under a fresh name (O_EXCL, O_NOFOLLOW) and renamed: a symlink planted beside it
    (at the fixed temporary name a runtime might use) leads nowhere."""
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/true"])
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    pids = tmp_path / "pids"
    pids.mkdir()
    (pids / ".pid").symlink_to(victim)
    assert engine.create("pidfile", bundle, "--pid-file", str(pids / "pid")).code == 0
    pid = int((pids / "pid").read_text())
    assert victim.read_text() == "precious\n" and not (pids / "pid").is_symlink()
    assert sorted(p.name for p in pids.iterdir()) == [".pid", "pid"]  # no temporary file left either
    assert engine.oci("delete", "--force", "pidfile").code == 0
    assert engine.wait(pid) == 128 + 9


def test_a_created_container_holds_none_of_the_callers_other_fds(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """While it waits for start, the container's process keeps only its stdio and the exec fifo: an engine's
    other fd (a pipe it reads to the end, here a file on fd 9) is not held until start or delete."""
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/true"])
    held = tmp_path / "held"
    create = f"{_runtime()} --root {engine.root} create --bundle {bundle} --pid-file {tmp_path}/pid fds"
    script = f"exec 9>{held}; exec {create}"
    reply = engine.request({"argv": ["/bin/sh", "-c", script], "timeout": 60, "output": str(tmp_path / "output")})
    assert reply["code"] == 0, (tmp_path / "output").read_text()
    pid = int((tmp_path / "pid").read_text())
    targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    assert str(held) not in targets, targets
    assert len(targets) == 4 and sum("exec.fifo" in target for target in targets) == 1, targets  # 0-2, the fifo
    assert engine.oci("delete", "--force", "fds").code == 0
    assert engine.wait(pid) == 128 + 9


@pytest.mark.parametrize("closed", ["<&-", "<&- >&- 2>&-"], ids=["stdin", "all three"])
def test_an_engine_with_closed_stdio_gives_the_container_dev_null_not_a_socket_of_ours(
    engine: Engine, rootfs: Path, tmp_path: Path, closed: str
) -> None:
    """The container's stdio is the runtime's own 0-2 (as runc's): a closed one must not have been taken by an
    fd of the runtime's by then (a socket the container could talk to), but be /dev/null (aiocontain.stdfds)."""
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/true"])
    create = f"{_runtime()} --root {engine.root} create --bundle {bundle} --pid-file {tmp_path}/pid closed"
    output = tmp_path / "output"  # a file, as conmon's: a pipe read to its end would wait for the container
    reply = engine.request({"argv": ["/bin/sh", "-c", f"exec {create} {closed}"], "timeout": 60, "output": str(output)})
    assert reply["code"] == 0, output.read_text()
    pid = int((tmp_path / "pid").read_text())
    null = os.stat(os.devnull)
    for fd in range(3 if ">&-" in closed else 1):
        found = os.stat(f"/proc/{pid}/fd/{fd}")
        assert (found.st_dev, found.st_ino) == (null.st_dev, null.st_ino), (fd, os.readlink(f"/proc/{pid}/fd/{fd}"))
    assert engine.oci("delete", "--force", "closed").code == 0
    assert engine.wait(pid) == 128 + 9
