"""aiocontain-oci's lifecycle, driven as podman and conmon drive it: create, state, start, kill, delete, list.

Every container is real (the test rootfs, podman's namespaces), run by tests/oci_engine.py inside a user
namespace of the test user; the engine fixture checks that nothing is left afterwards.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.oci_support import CONFIG, Engine, engine, make_bundle

pytestmark = pytest.mark.container
assert engine  # the fixture, imported for the tests below


def test_create_start_state_delete(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """The states runc reports, in order; the process keeps its pid from create to exec; pid 0 once stopped."""
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/sh", "-c", "echo pid=$$ host=$(hostname); exit 7"])
    pid_file = tmp_path / "pid"
    created = engine.create("c1", bundle, "--pid-file", str(pid_file))
    assert created.code == 0, created.stderr
    pid = int(pid_file.read_text())
    state = engine.state("c1")
    assert state["status"] == "created" and state["pid"] == pid
    assert state["id"] == "c1" and state["bundle"] == str(bundle) and state["rootfs"] == str(rootfs)
    assert pid in engine.children()  # reparented to the engine, the subreaper, when create exited
    assert (bundle / "output").read_text() == ""  # nothing ran yet

    assert engine.oci("start", "c1").code == 0
    assert engine.wait(pid) == 7
    assert (bundle / "output").read_text() == "pid=1 host=ocitest\n"  # PID 1 of its own pid namespace
    state = engine.state("c1")
    assert state["status"] == "stopped" and state["pid"] == 0
    again = engine.oci("start", "c1")
    assert again.code == 1 and "stopped, not created" in again.stderr

    assert engine.oci("delete", "c1").code == 0
    gone = engine.oci("state", "c1")
    assert gone.code == 1 and 'container "c1" does not exist' in gone.stderr
    assert os.listdir(engine.root) == []


def test_running_kill_by_name_number_and_delete_force(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """kill takes TERM, SIGTERM and 15; delete refuses a running container unless --force, which kills it."""
    script = "trap 'echo got TERM; exit 3' TERM; echo up >/tmp/sync/fifo; sleep 100 & wait"
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/sh", "-c", script], mounts=with_sync(tmp_path / "sync"))
    for number, signal_name in enumerate(("TERM", "SIGTERM", "15")):
        container_id = f"k{number}"
        assert engine.create(container_id, bundle, "--pid-file", str(tmp_path / "pid")).code == 0
        pid = int((tmp_path / "pid").read_text())
        assert engine.oci("start", container_id).code == 0
        assert (tmp_path / "sync" / "fifo").read_text() == "up\n"  # its trap is set: TERM reaches PID 1
        assert engine.state(container_id)["status"] == "running"
        refused = engine.oci("delete", container_id)
        assert refused.code == 1 and "running" in refused.stderr
        assert engine.oci("kill", container_id, signal_name).code == 0
        assert engine.wait(pid) == 3
        assert (bundle / "output").read_text() == "got TERM\n"
        assert engine.oci("delete", container_id).code == 0

    assert engine.create("forced", bundle, "--pid-file", str(tmp_path / "pid")).code == 0
    pid = int((tmp_path / "pid").read_text())
    assert engine.oci("start", "forced").code == 0
    assert engine.oci("delete", "--force", "forced").code == 0
    assert engine.wait(pid) == 128 + 9
    assert os.listdir(engine.root) == []


def with_sync(directory: Path) -> list[dict[str, object]]:
    """The default mounts plus directory at /tmp/sync, holding a fifo the container writes to once it is ready
    (reading it blocks the test until then: no polling)."""
    directory.mkdir()
    os.mkfifo(directory / "fifo")
    sync = {"destination": "/tmp/sync", "type": "bind", "source": str(directory), "options": ["rbind"]}
    return [*CONFIG["mounts"], sync]


def test_kill_rejects_bad_signals_and_stopped_containers(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/true"])
    assert engine.create("c", bundle, "--pid-file", str(tmp_path / "pid")).code == 0
    for bad in ("SIGNOPE", "0", "99"):
        result = engine.oci("kill", "c", bad)
        assert result.code == 1 and "signal" in result.stderr
    assert engine.state("c")["status"] == "created"  # a bad signal hurt nothing
    assert engine.oci("kill", "c", "KILL").code == 0  # a created container may be killed
    assert engine.wait(int((tmp_path / "pid").read_text())) == 128 + 9
    stopped = engine.oci("kill", "c")
    assert stopped.code == 1 and "stopped" in stopped.stderr
    assert engine.oci("delete", "c").code == 0


def test_start_notices_a_dead_init(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """A created container whose process died (reaped or still a zombie) is stopped, and start says so."""
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/true"])
    assert engine.create("zombie", bundle, "--pid-file", str(tmp_path / "pid")).code == 0
    pid = int((tmp_path / "pid").read_text())
    os.kill(pid, 9)  # the test user owns it: a crash nobody has reaped yet
    assert engine.exited(pid)
    assert engine.state("zombie")["status"] == "stopped"
    refused = engine.oci("start", "zombie")
    assert refused.code == 1 and "stopped" in refused.stderr
    assert engine.wait(pid) == 128 + 9
    assert engine.state("zombie") == {**engine.state("zombie"), "status": "stopped", "pid": 0}
    assert engine.oci("delete", "zombie").code == 0


def test_start_notices_a_fifo_nobody_reads(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """The exec fifo's other end: when no init holds it (its pid alive but not reading, as after a crash
    between the two checks), start fails at once instead of leaving a byte nobody will read."""
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/true"])
    assert engine.create("c", bundle, "--pid-file", str(tmp_path / "pid")).code == 0
    init_pid = int((tmp_path / "pid").read_text())
    stand_in = _foreign_process(engine)
    record = json.loads((engine.root / "c" / "state.json").read_text())
    with open(f"/proc/{stand_in}/stat", "rb") as f:
        stat = f.read()
    start_time = int(stat[stat.rindex(b")") + 2 :].split()[19])
    (engine.root / "c" / "state.json").write_text(json.dumps({**record, "pid": stand_in, "start_time": start_time}))
    assert engine.state("c")["status"] == "created"
    os.kill(init_pid, 9)  # nobody reads the fifo any more
    assert engine.wait(init_pid) == 128 + 9
    refused = engine.oci("start", "c")
    assert refused.code == 1 and "init process has exited" in refused.stderr
    os.kill(stand_in, 9)
    assert engine.wait(stand_in) == 128 + 9
    assert engine.oci("delete", "c").code == 0


def _foreign_process(engine: Engine) -> int:
    """A sleeping child of the engine that is not a container (it is reaped through the engine)."""
    result = engine.run("/bin/sh", "-c", "sleep 100 >/dev/null 2>&1 & echo $!")
    return int(result.stdout)


def test_a_reused_pid_is_not_the_container(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """A record whose pid now names another process (its start time differs) is stopped: state shows pid 0,
    kill refuses and delete --force removes the record without touching that process."""
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/true"])
    assert engine.create("c", bundle, "--pid-file", str(tmp_path / "pid")).code == 0
    init_pid = int((tmp_path / "pid").read_text())
    assert engine.oci("kill", "c", "KILL").code == 0
    assert engine.wait(init_pid) == 128 + 9
    other = _foreign_process(engine)
    record = json.loads((engine.root / "c" / "state.json").read_text())
    (engine.root / "c" / "state.json").write_text(json.dumps({**record, "pid": other}))  # its start time is c's
    state = engine.state("c")
    assert state["status"] == "stopped" and state["pid"] == 0
    refused = engine.oci("kill", "c", "KILL")
    assert refused.code == 1 and "stopped" in refused.stderr
    assert engine.oci("delete", "--force", "c").code == 0
    assert other in engine.children()  # untouched
    os.kill(other, 9)
    assert engine.wait(other) == 128 + 9


def test_concurrent_creates_of_one_id(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """Four creates of one id at once: exactly one wins, the others say it exists, and no process of theirs
    is left (the winner's container is the engine's only child)."""
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/true"])
    runtime = f"{engine_runtime()} --root {engine.root}"
    script = " ".join(
        f"{runtime} create --bundle {bundle} --pid-file {tmp_path}/pid{n} same >{tmp_path}/out{n} 2>&1 &"
        for n in range(4)
    )
    engine.run("/bin/sh", "-c", script + " wait")
    outputs = [(tmp_path / f"out{n}").read_text() for n in range(4)]
    winners = [n for n in range(4) if (tmp_path / f"pid{n}").exists()]
    assert len(winners) == 1, outputs
    losers = [outputs[n] for n in range(4) if n not in winners]
    assert all('container "same" already exists' in text for text in losers), outputs
    pid = int((tmp_path / f"pid{winners[0]}").read_text())
    assert engine.children() == [pid]
    assert engine.state("same")["status"] == "created"
    assert engine.oci("delete", "--force", "same").code == 0
    assert engine.wait(pid) == 128 + 9


def engine_runtime() -> str:
    from tests.oci_support import RUNTIME

    return RUNTIME


def test_delete_unknown_and_list(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    unknown = engine.oci("delete", "nothere")
    assert unknown.code == 1 and 'container "nothere" does not exist' in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
    assert engine.oci("list", "-q").stdout == ""  # the root does not even exist yet
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/true"])
    for name in ("b-one", "a-two"):
        assert engine.create(name, bundle).code == 0
    assert engine.oci("list", "-q").stdout == "a-two\nb-one\n"
    listed = json.loads(engine.oci("list", "--format", "json").stdout)
    assert [(entry["id"], entry["status"]) for entry in listed] == [("a-two", "created"), ("b-one", "created")]
    assert all(entry["pid"] > 0 for entry in listed)
    table = engine.oci("list").stdout.splitlines()
    assert table[0].split() == ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"] and len(table) == 3
    for entry in listed:
        assert engine.oci("delete", "-f", entry["id"]).code == 0
        assert engine.wait(entry["pid"]) == 128 + 9


def test_features_and_version(engine: Engine) -> None:
    features = json.loads(engine.oci("features").stdout)
    assert "user" in features["linux"]["namespaces"] and "SCMP_ACT_ERRNO" in features["linux"]["seccomp"]["actions"]
    assert "CAP_SYS_ADMIN" in features["linux"]["capabilities"] and "poststop" in features["hooks"]
    assert engine.oci("--version").stdout.startswith("aiocontain-oci version ")


def test_run_in_the_foreground_and_detached(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """runc's run: in the foreground it waits for the process as its subreaper, deletes the container and
    exits with its status; --detach leaves it running for the engine."""
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/sh", "-c", "echo ran; exit 5"])
    argv = [engine_runtime(), "--root", str(engine.root), "run", "--bundle", str(bundle), "fg"]
    reply = engine.request({"argv": argv, "output": str(tmp_path / "out"), "timeout": 30})
    assert reply["code"] == 5 and (tmp_path / "out").read_text() == "ran\n"
    assert os.listdir(engine.root) == []  # deleted
    sleeper = make_bundle(tmp_path / "s", rootfs, ["/bin/sleep", "100"])
    argv = [engine_runtime(), "--root", str(engine.root), "run", "-d", "--bundle", str(sleeper), "--pid-file"]
    reply = engine.request(
        {"argv": [*argv, str(tmp_path / "pid"), "bg"], "output": str(tmp_path / "out"), "timeout": 30}
    )
    assert reply["code"] == 0 and engine.state("bg")["status"] == "running"
    assert engine.oci("delete", "--force", "bg").code == 0
    assert engine.wait(int((tmp_path / "pid").read_text())) == 128 + 9


def test_run_in_the_foreground_passes_signals_on(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """runc's run in the foreground: a SIGTERM to it reaches the container's process, and run exits with that
    process's status once it has deleted the container. Without it, run died of the signal (143) and left the
    container running with nobody to wait for it."""
    gate = tmp_path / "gate"
    gate.mkdir()
    os.mkfifo(gate / "ready")
    bind = {"destination": "/gate", "type": "bind", "source": str(gate), "options": ["rbind", "rw"]}
    inside = "trap 'echo got TERM; exit 3' TERM; echo ready > /gate/ready; sleep 100 & wait"
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/sh", "-c", inside], mounts=[*CONFIG["mounts"], bind])
    run = f"{engine_runtime()} --root {engine.root} run --bundle {bundle} fg >{tmp_path}/out 2>&1"
    caught = f"grep SigCgt /proc/$run/status > {tmp_path}/caught"
    script = f"{run} & run=$!; read line < {gate}/ready; {caught}; kill -TERM $run; wait $run; echo $?"
    result = engine.run("/bin/sh", "-c", script)
    assert result.stdout == "3\n", (result, (tmp_path / "out").read_text())
    # Its own faults it does not catch: a SIGSEGV caught would only be raised again, at the same instruction.
    mask = int((tmp_path / "caught").read_text().split()[1], 16)
    assert mask & 1 << (signal.SIGTERM - 1) and mask & 1 << (signal.SIGUSR1 - 1)
    assert not mask & (1 << (signal.SIGSEGV - 1) | 1 << (signal.SIGBUS - 1) | 1 << (signal.SIGPIPE - 1))
    assert (tmp_path / "out").read_text() == "got TERM\n"
    assert os.listdir(engine.root) == []  # deleted, its processes with it


def test_creating_while_create_runs(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """While create waits in a createRuntime hook, state says creating (create's own process is alive);
    once the hook returns, created."""
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    hooks = {"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", f"echo in-hook > {tmp_path}/in; cat {gate}"]}]}
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/true"], hooks=hooks)
    os.mkfifo(tmp_path / "in")
    command = (
        f"{engine_runtime()} --root {engine.root} create --bundle {bundle} --pid-file {tmp_path}/pid slow "
        f">{tmp_path}/out 2>&1 &"
    )
    engine.run("/bin/sh", "-c", command)
    assert (tmp_path / "in").read_text() == "in-hook\n"  # blocks until the hook runs
    assert engine.state("slow")["status"] == "creating"
    start = engine.oci("start", "slow")
    assert start.code == 1 and "creating" in start.stderr
    creator = _creator(engine)  # create itself, reparented to the engine when its shell exited
    gate.write_text("go\n")  # the hook reads it and returns: create goes on
    assert engine.wait(creator) == 0
    assert engine.state("slow")["status"] == "created"
    assert engine.oci("delete", "--force", "slow").code == 0
    assert engine.wait(int((tmp_path / "pid").read_text())) == 128 + 9


def _creator(engine: Engine) -> int:
    return int(json.loads((engine.root / "slow" / "state.json").read_text())["creator"])


def test_kill_all_reaches_every_process_of_the_container(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """PID 1 without a handler ignores SIGTERM sent to it alone (control); --all also reaches its children,
    whose end lets PID 1's wait return."""
    script = "sleep 100 & sleep 100 & echo up >/tmp/sync/fifo; wait; echo children gone"
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/sh", "-c", script], mounts=with_sync(tmp_path / "sync"))
    assert engine.create("all", bundle, "--pid-file", str(tmp_path / "pid")).code == 0
    pid = int((tmp_path / "pid").read_text())
    assert engine.oci("start", "all").code == 0
    assert (tmp_path / "sync" / "fifo").read_text() == "up\n"
    listed = json.loads(engine.oci("ps", "--format", "json", "all").stdout)
    assert len(listed) == 3 and pid in listed  # sh and its two sleeps
    assert engine.oci("ps", "all").stdout.split() == ["PID", *map(str, listed)]
    assert engine.oci("kill", "all", "TERM").code == 0
    assert engine.exited(pid, timeout=1) is False  # control: PID 1 alone ignores it
    assert engine.oci("kill", "--all", "all", "TERM").code == 0
    assert engine.wait(pid) == 0
    assert (bundle / "output").read_text() == "children gone\n"
    refused = engine.oci("ps", "all")
    assert refused.code == 1 and "stopped" in refused.stderr
    assert engine.oci("delete", "all").code == 0


def test_a_create_killed_half_way(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """create SIGKILLed while the container is being built: the container's process sees the set-up socket
    close and exits by itself, the record reads stopped and delete removes it."""
    os.mkfifo(tmp_path / "in")
    hook = {"path": "/bin/sh", "args": ["sh", "-c", f"echo in-hook > {tmp_path}/in; exec sleep 100"]}
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/true"], hooks={"createRuntime": [hook]})
    command = f"{engine_runtime()} --root {engine.root} create --bundle {bundle} killed >{tmp_path}/out 2>&1 &"
    engine.run("/bin/sh", "-c", command)
    assert (tmp_path / "in").read_text() == "in-hook\n"
    record = json.loads((engine.root / "killed" / "state.json").read_text())
    container_pid = record["pid"]
    assert record["creating"] and container_pid > 0 and engine.state("killed")["status"] == "creating"
    os.kill(record["creator"], 9)
    assert engine.wait(record["creator"]) == 128 + 9
    assert engine.wait(container_pid) == 1  # it noticed create's end and gave up
    assert engine.state("killed")["status"] == "stopped"
    assert engine.oci("delete", "killed").code == 0
    for pid in engine.children():  # the hook's sleep, orphaned with its create
        os.kill(pid, 9)
        engine.wait(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(b")") + 2 :].split()[0] != b"Z"


def test_kill_all_in_a_joined_pid_namespace(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """A container that joined another's pid namespace (a pod): --all reaches its own processes only, never
    the namespace's owner and the rest (what its ps lists is just as narrow)."""
    owner_bundle = make_bundle(
        tmp_path / "a",
        rootfs,
        ["/bin/sh", "-c", "sleep 100 & echo up >/tmp/sync/fifo; wait"],
        mounts=with_sync(tmp_path / "sync-a"),
    )
    assert engine.create("a", owner_bundle, "--pid-file", str(tmp_path / "pid-a")).code == 0
    owner = int((tmp_path / "pid-a").read_text())
    assert engine.oci("start", "a").code == 0
    assert (tmp_path / "sync-a" / "fifo").read_text() == "up\n"
    owners = json.loads(engine.oci("ps", "--format", "json", "a").stdout)  # a's sh and its sleep
    namespaces = [ns for ns in CONFIG["linux"]["namespaces"] if ns["type"] != "pid"]
    namespaces.append({"type": "pid", "path": f"/proc/{owner}/ns/pid"})
    member_bundle = make_bundle(
        tmp_path / "b",
        rootfs,
        ["/bin/sh", "-c", "sleep 100 & echo up >/tmp/sync/fifo; wait"],
        mounts=with_sync(tmp_path / "sync-b"),
        linux={"namespaces": namespaces},
    )
    assert engine.create("b", member_bundle, "--pid-file", str(tmp_path / "pid-b")).code == 0
    member = int((tmp_path / "pid-b").read_text())
    assert engine.oci("start", "b").code == 0
    assert (tmp_path / "sync-b" / "fifo").read_text() == "up\n"
    assert len(json.loads(engine.oci("ps", "--format", "json", "a").stdout)) == 4  # the whole namespace
    assert len(json.loads(engine.oci("ps", "--format", "json", "b").stdout)) == 2  # b and its sleep
    assert engine.oci("kill", "--all", "b", "KILL").code == 0
    assert engine.wait(member) == 128 + 9
    assert engine.state("a")["status"] == "running"
    assert len(owners) == 2 and all(_alive(pid) for pid in owners)  # a's processes untouched
    assert engine.oci("delete", "b").code == 0
    assert engine.oci("delete", "--force", "a").code == 0
    assert engine.wait(owner) == 128 + 9
