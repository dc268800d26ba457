"""The runtime spec's hooks: each kind runs at its moment, in its namespace, with the state on its stdin."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import settle
from tests.oci_support import CONFIG, RUNTIME, Engine, engine, make_bundle

pytestmark = pytest.mark.container
assert engine


def _hook(kind: str, log: str) -> dict[str, object]:
    """A hook that records its kind, the state it got and the mount namespace it ran in."""
    script = f'{{ echo "{kind} $(readlink /proc/self/ns/mnt) $(hostname)"; cat; echo; }} >> {log}'
    return {"path": "/bin/sh", "args": ["sh", "-c", script], "env": ["PATH=/usr/bin:/bin"], "timeout": 10}


def test_every_hook_kind_at_its_moment(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    host_log = str(logs / "hooks.log")
    hooks = {
        kind: [_hook(kind, host_log)]
        for kind in ("prestart", "createRuntime", "createContainer", "poststart", "poststop")
    }
    hooks["startContainer"] = [_hook("startContainer", "/tmp/logs/hooks.log")]  # resolved in the container
    mounts = [
        *CONFIG["mounts"],
        {"destination": "/tmp/logs", "type": "bind", "source": str(logs), "options": ["rbind"]},
    ]
    args = ["/bin/sh", "-c", "echo process >> /tmp/logs/hooks.log"]
    bundle = make_bundle(tmp_path / "b", rootfs, args, hooks=hooks, mounts=mounts)
    assert engine.create("h", bundle, "--pid-file", str(tmp_path / "pid")).code == 0
    pid = int((tmp_path / "pid").read_text())
    after_create = _entries(logs / "hooks.log")
    assert [entry[0] for entry in after_create] == ["prestart", "createRuntime", "createContainer"]
    assert engine.oci("start", "h").code == 0
    assert engine.wait(pid) == 0
    assert engine.oci("delete", "h").code == 0
    entries = _entries(logs / "hooks.log")
    kinds = [entry[0] for entry in entries]
    # poststart after the exec: the process may run before it or meanwhile, but startContainer is over
    assert kinds[:4] == ["prestart", "createRuntime", "createContainer", "startContainer"]
    assert sorted(kinds[4:6]) == ["poststart", "process"] and kinds[6:] == ["poststop"]
    by_kind = {entry[0]: entry for entry in entries if entry[0] != "process"}
    host_mnt = by_kind["prestart"][1]
    for kind in ("createRuntime", "poststart", "poststop"):
        assert by_kind[kind][1] == host_mnt, kind  # the runtime's namespace
    for kind in ("createContainer", "startContainer"):
        assert by_kind[kind][1] != host_mnt and by_kind[kind][2] == "ocitest", kind  # the container's
    for kind, (_, _, _, state) in by_kind.items():
        assert state["id"] == "h" and state["bundle"] == str(bundle), kind
        assert state["pid"] == pid, kind
    assert by_kind["prestart"][3]["status"] == "creating"
    assert by_kind["startContainer"][3]["status"] == "created"
    assert by_kind["poststart"][3]["status"] == "running"
    assert by_kind["poststop"][3]["status"] == "stopped"


def _entries(log: Path) -> list[tuple[str, str, str, dict[str, object]]]:
    entries = []
    lines = log.read_text().splitlines()
    index = 0
    while index < len(lines):
        words = lines[index].split()
        if words == ["process"]:
            entries.append(("process", "", "", {}))
            index += 1
            continue
        kind, mnt, hostname = words
        entries.append((kind, mnt, hostname, json.loads(lines[index + 1])))
        index += 2
    return entries


def test_a_failing_start_container_hook_stops_the_process(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """startContainer fails: the process is never executed (its marker file stays absent)."""
    hooks = {"startContainer": [{"path": "/bin/false"}]}
    args = ["/bin/sh", "-c", "echo ran"]
    bundle = make_bundle(tmp_path / "b", rootfs, args, hooks=hooks)
    assert engine.create("f", bundle, "--pid-file", str(tmp_path / "pid")).code == 0
    assert engine.oci("start", "f").code == 0
    assert engine.wait(int((tmp_path / "pid").read_text())) == 1
    output = (bundle / "output").read_text()
    assert "startContainer hook /bin/false failed with exit status 1" in output and "ran" not in output
    assert engine.oci("delete", "f").code == 0


def test_a_hook_that_hangs_is_stopped_by_its_timeout(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    hooks = {"createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "100"], "timeout": 1}]}
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/true"], hooks=hooks)
    result = engine.create("t", bundle)
    assert result.code == 1 and "createRuntime hook /bin/sleep did not finish in 1 s" in result.stderr
    assert engine.children() == [] and list(engine.root.iterdir()) == []


def test_a_timed_out_hook_is_stopped_with_what_it_started(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """The timeout ends the hook's whole process group: a child it left holding its stderr would otherwise keep
    create waiting for that pipe's end for ever."""
    script = f"sleep 100 & echo $! > {tmp_path}/child; sleep 100"
    hooks = {"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", script], "timeout": 1}]}
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/true"], hooks=hooks)
    result = engine.create("t", bundle, timeout=30)
    assert result.code == 1 and "createRuntime hook /bin/sh did not finish in 1 s" in result.stderr
    assert settle([int((tmp_path / "child").read_text())], 10) == set()
    assert engine.children() == [] and list(engine.root.iterdir()) == []


def test_deleting_a_container_stuck_in_a_hook_ends_the_hook(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """delete --force while create waits in a createRuntime hook: create, the container's process (recorded
    already) and the hook with what it started all end; and a create killed there leaves nothing that a plain
    delete does not end."""
    for force in (True, False):
        (tmp_path / "in").unlink(missing_ok=True)
        os.mkfifo(tmp_path / "in")
        # The state on stdin first: create writes it once it has recorded the hook (which a kill of create
        # must find), and the test must not kill create before that.
        script = f"cat >/dev/null; sleep 100 & echo $$ $! > {tmp_path}/hook; echo in-hook > {tmp_path}/in; wait"
        hooks = {"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", script]}]}
        bundle = make_bundle(tmp_path / f"b{force}", rootfs, ["/bin/true"], hooks=hooks)
        command = f"{RUNTIME} --root {engine.root} create --bundle {bundle} stuck >{tmp_path}/out 2>&1 &"
        engine.run("/bin/sh", "-c", command)
        assert (tmp_path / "in").read_text() == "in-hook\n"  # blocks until the hook runs
        record = json.loads((engine.root / "stuck" / "state.json").read_text())
        started = [*map(int, (tmp_path / "hook").read_text().split()), record["pid"], record["creator"]]
        if force:
            assert engine.oci("delete", "--force", "stuck").code == 0
        else:
            os.kill(record["creator"], signal.SIGKILL)  # create dies (the engine is gone, say)
            assert settle([record["creator"]], 10) == set()
            assert engine.oci("delete", "stuck").code == 0
        assert settle(started, 10) == set()
        assert list(engine.root.iterdir()) == []


# create's side of a hook, killed while it records the hook's pid: the moment a plain delete cannot cover.
_KILLED_WHILE_RECORDING = """
import os, signal, sys
from aiocontain.oci import hooks

def running(pid):
    if pid:
        with open(sys.argv[2], "w") as said:
            said.write(str(pid))
        os.kill(os.getpid(), signal.SIGKILL)

hook = {"path": "/bin/sh", "args": ["sh", "-c", "echo ran > " + sys.argv[1]]}
hooks.run({"createRuntime": [hook]}, "createRuntime", b"{}", running)
"""


def test_a_create_killed_before_it_recorded_a_hook_leaves_no_hook_run(tmp_path: Path) -> None:
    """The hook is executed only once create has recorded it: killed before, it leaves no hook behind that
    delete could not find (the hook's first program sees its gate end, and exits without running it)."""
    ran, recorded = tmp_path / "ran", tmp_path / "pid"
    result = subprocess.run([sys.executable, "-c", _KILLED_WHILE_RECORDING, str(ran), str(recorded)], check=False)
    assert result.returncode == -signal.SIGKILL
    assert settle([int(recorded.read_text())], 10) == set()
    assert not ran.exists()


def test_a_recorded_hook_that_cannot_be_executed_says_so(tmp_path: Path) -> None:
    """Through the gate, a hook that is not there is still "cannot run", as without it."""
    from aiocontain.oci import hooks
    from aiocontain.oci.errors import OciError

    pids: list[int] = []
    missing = {"createRuntime": [{"path": str(tmp_path / "none")}]}
    with pytest.raises(OciError, match=r"^createRuntime hook .*/none cannot run: No such file or directory$"):
        hooks.run(missing, "createRuntime", b"{}", pids.append)  # type: ignore[arg-type]
    assert pids[-1] == 0 and len(pids) == 2


def test_a_recorded_hooks_environment_is_never_on_a_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gate gets the hook's environment through its pipe: its argv, which every user reads in
    /proc/PID/cmdline, never holds it, and the hook still gets it whole. (The argv is taken as Popen is given
    it: read from /proc while create records the pid, it can be empty still, the exec not yet done.)"""
    import subprocess as real

    from aiocontain.oci import hooks

    argvs: list[list[str]] = []
    popen = real.Popen

    def recording(args: list[str], **kwargs: object) -> real.Popen[bytes]:
        argvs.append(list(args))
        return popen(args, **kwargs)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(real, "Popen", recording)
    said = tmp_path / "said"
    script = f'echo "$TOKEN|$EMPTY|$#" > {said}'
    hook = {"path": "/bin/sh", "args": ["sh", "-c", script], "env": ["TOKEN=s3cret=1", "EMPTY="]}
    hooks.run({"createRuntime": [hook]}, "createRuntime", b"{}", lambda pid: None)
    assert said.read_text() == "s3cret=1||0\n"
    assert len(argvs) == 1 and argvs[0][-3:] == ["sh", "-c", script]
    assert not any("s3cret" in arg for arg in argvs[0])


def test_the_gate_runs_the_hook_only_with_its_whole_environment(tmp_path: Path) -> None:
    """A create killed while it writes a long environment to the gate leaves only the start of its message in
    the pipe: the gate then exits without running the hook, never runs it with part of its environment."""
    from aiocontain.oci import hooks

    said = tmp_path / "said"
    env = ["FIRST=1", "LONG=" + "x" * 100_000, "LAST=2"]  # more than a pipe holds, less than one exec string
    message = hooks._gate_message(env)

    def gate(sent: bytes) -> int:
        gate_r, gate_w = os.pipe()
        script = f'echo "$FIRST|${{#LONG}}|$LAST" > {said}'
        argv = [sys.executable, "-I", "-S", "-c", hooks._GATE, str(gate_r), "/bin/sh", "sh", "-c", script]
        process = subprocess.Popen(argv, env={}, pass_fds=(gate_r,))
        os.close(gate_r)
        view = memoryview(sent)
        while view:  # more than a pipe holds: the gate reads meanwhile
            view = view[os.write(gate_w, view) :]
        os.close(gate_w)  # as the kernel closes it for a create killed here
        return process.wait(timeout=30)

    for cut in (1, len(message) // 2, len(message) - 1):
        assert gate(message[:cut]) == 125
        assert not said.exists()
    assert gate(message) == 0
    assert said.read_text() == "1|100000|2\n"


def test_poststart_and_poststop_failures_are_warnings(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """Every poststart and poststop hook runs even after one fails (a warning), from what config.json said
    at create: rewriting it afterwards changes nothing."""
    marks = tmp_path / "marks"
    marks.mkdir()

    def mark(name: str) -> dict[str, object]:
        return {"path": "/bin/sh", "args": ["sh", "-c", f"touch {marks}/{name}"]}

    hooks = {
        "poststart": [{"path": "/bin/false"}, mark("poststart")],
        "poststop": [{"path": "/bin/false"}, mark("poststop")],
    }
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/true"], hooks=hooks)
    assert engine.create("w", bundle, "--pid-file", str(tmp_path / "pid")).code == 0
    config = json.loads((bundle / "config.json").read_text())
    (bundle / "config.json").write_text(json.dumps({**config, "hooks": {}}))  # no effect on the container
    started = engine.oci("start", "w")
    assert started.code == 0 and "warning: poststart hook /bin/false failed" in started.stderr
    assert engine.wait(int((tmp_path / "pid").read_text())) == 0
    deleted = engine.oci("delete", "w")
    assert deleted.code == 0 and "warning: poststop hook /bin/false failed" in deleted.stderr
    assert sorted(path.name for path in marks.iterdir()) == ["poststart", "poststop"]
