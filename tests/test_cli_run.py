"""`aiocontain run` end to end: real namespaces, real slirp4netns, run as an unprivileged user."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_argv, leftovers, started

pytestmark = pytest.mark.container

JSON_LOGS = ("--log-format", "json", "--log-level", "info")


def test_root_inside_pid1_hostname_and_own_proc(cli):
    result = cli(
        "--net",
        "none",
        "--hostname",
        "box1",
        "--",
        "/bin/sh",
        "-c",
        "id -u; id -g; hostname; cat /etc/hostname; echo $$; ls -d /proc/[0-9]* | wc -l",
    )
    assert result.code == 0, result.stderr
    uid, gid, hostname, etc_hostname, pid, nprocs = result.stdout.split()
    assert (uid, gid) == ("0", "0")
    assert hostname == etc_hostname == "box1"
    assert pid == "1"
    # only sh (PID 1), ls and wc: the host's processes are invisible
    assert int(nprocs) <= 3


def test_default_hostname_is_the_name(cli):
    result = cli("--net", "none", "--name", "web-1", "--", "hostname")
    assert (result.code, result.stdout.strip()) == (0, "web-1")


def test_exit_codes(cli):
    assert cli("--net", "none", "--", "/bin/sh", "-c", "exit 3").code == 3


# PID 1 itself dies of a fault: the kernel forces SIGSEGV even on a namespace's init (a signal sent to it
# would be dropped). No core file: the rootfs must stay clean.
SEGFAULT_PROBE = r"""
#include <sys/resource.h>
int main(void) {
    struct rlimit none = {0, 0};
    setrlimit(RLIMIT_CORE, &none);
    *(volatile int *)0 = 1;
    return 0;
}
"""


def test_a_command_killed_by_a_signal_exits_128_plus_n(cli, probes):
    # Not a shell's own `exit 139`: the container's PID 1 is killed, and aiocontain maps signal N to 128+N.
    probe = probes.build("segfault", SEGFAULT_PROBE)
    result = cli("--net", "none", *JSON_LOGS, "--", probe, rootfs_dir=probes.rootfs)
    assert result.code == 128 + signal.SIGSEGV, result.stderr
    (exited,) = [event for event in result.events() if event["event"] == "container.exited"]
    assert (exited["exit_code"], exited["signal"]) == (139, signal.SIGSEGV)


def test_command_not_found_is_127_in_one_line(cli):
    result = cli("--net", "none", "--", "no-such-command")
    assert result.code == 127
    assert result.stderr.strip().count("\n") == 0
    assert "no-such-command: command not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_not_executable_is_126(cli):
    result = cli("--net", "none", "--", "/etc/passwd")
    assert result.code == 126
    assert "cannot execute /etc/passwd" in result.stderr


def test_environment_and_workdir(cli):
    result = cli(
        "--net",
        "none",
        "-e",
        "GREETING=hello world",
        "-w",
        "/tmp/work",
        "--",
        "/bin/sh",
        "-c",
        'echo "$GREETING|$HOME|$PATH|$(pwd)"',
    )
    assert result.code == 0, result.stderr
    assert (
        result.stdout.strip()
        == "hello world|/root|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin|/tmp/work"
    )


def test_run_defaults_and_env_passthrough_in_a_real_container(rootfs):
    # No option but -e: the rootfs from $AIOCONTAIN_ROOTFS, slirp4netns at MTU 65520, the short id as name and
    # hostname, uid 0 in /, podman's environment; -e K passes the host's value, and nothing when it is unset.
    env = {**os.environ, "AIOCONTAIN_ROOTFS": str(rootfs), "AIOCONTAIN_PASSED": "from the host"}
    env.pop("AIOCONTAIN_UNSET", None)
    script = "tr '\\0' '\\n' </proc/1/environ | sort; id -u; pwd; hostname; cat /sys/class/net/tap0/mtu"
    argv = [sys.executable, "-m", "aiocontain", "run", "-e", "AIOCONTAIN_PASSED", "-e", "AIOCONTAIN_UNSET"]
    proc = subprocess.run(
        [*argv, "--", "/bin/sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    *environ, uid, cwd, hostname, mtu = proc.stdout.splitlines()
    assert len(hostname) == 12 and int(hostname, 16) >= 0  # the short id
    assert environ == [
        "AIOCONTAIN_PASSED=from the host",
        "HOME=/root",
        f"HOSTNAME={hostname}",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "TERM=xterm",
        "container=aiocontain",
    ]
    assert (uid, cwd, mtu) == ("0", "/", "65520")


@pytest.mark.parametrize(
    "network, own_line",
    [("slirp4netns", "10.0.2.100\tbox1"), ("none", "127.0.1.1\tbox1"), ("host", "127.0.1.1\tbox1")],
)
def test_etc_hosts_names_localhost_and_the_container(cli, network, own_line):
    result = cli("--net", network, "--hostname", "box1", "--", "cat", "/etc/hosts")
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        own_line,
    ]


def test_the_container_starts_with_the_hard_open_file_limit(rootfs):
    # The CLI starts with a soft limit below its hard one; it raises its own to the hard limit before the fork
    # server starts, so the container's processes start with the hard limit too, as under rootless podman.
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    assert hard > low, "the test needs a hard limit above 256"
    argv = cli_argv(rootfs, "--net", "none", "--", "/bin/sh", "-c", "grep 'open files' /proc/self/limits")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, preexec_fn=lower)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[3:5] == [str(hard), str(hard)]


def test_minimal_dev_tmp_and_readonly_sys(cli):
    script = (
        "ls /dev | sort | tr '\\n' ' '; echo; "
        "echo x > /dev/null && head -c 4 /dev/zero | wc -c; "
        "mount | grep -E ' /(sys|tmp|proc|dev/pts) ' | cut -d' ' -f3,5,6; "
        "touch /sys/x 2>/dev/null && echo sys-writable || echo sys-readonly"
    )
    result = cli("--net", "none", "--", "/bin/sh", "-c", script)
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    devices = set(lines[0].split())
    assert {"null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx", "shm"} <= devices
    assert not devices & {"sda", "vda", "mem", "kmsg"}, devices
    assert lines[1] == "4"
    mounts = "\n".join(lines[2:-1])
    assert "/tmp tmpfs" in mounts and "/proc proc" in mounts and "/dev/pts devpts" in mounts
    assert "/sys sysfs (ro" in mounts
    assert lines[-1] == "sys-readonly"


def test_tap0_event_and_configuration(cli):
    result = cli(
        *JSON_LOGS,
        "--",
        "/bin/sh",
        "-c",
        "cat /sys/class/net/tap0/mtu; ip -4 addr show tap0 | grep inet; cat /etc/resolv.conf",
    )
    assert result.code == 0, result.stderr
    ready = [e for e in result.events() if e["event"] == "network.ready"]
    assert len(ready) == 1
    assert ready[0]["address"] == "10.0.2.100/24" and ready[0]["gateway"] == "10.0.2.2"
    assert ready[0]["mtu"] == 65520
    out = result.stdout.splitlines()
    assert out[0] == "65520"
    assert "10.0.2.100/24" in out[1]
    assert "nameserver 10.0.2.3" in out[2]
    # the network was ready before the command started
    names = result.names()
    assert names.index("network.ready") < names.index("command.started")


def test_mtu_option(cli):
    result = cli("--mtu", "1500", "--", "cat", "/sys/class/net/tap0/mtu")
    assert (result.code, result.stdout.strip()) == (0, "1500")


def test_stage_events_in_order(cli):
    result = cli("--net", "none", *JSON_LOGS, "--", "true")
    assert result.code == 0
    stages = [(e["event"], e.get("stage")) for e in result.events() if str(e["event"]).startswith("stage.")]
    order = ["prepare", "spawn", "idmap", "cgroup", "network", "tap", "prestart", "release"]
    assert [s for event, s in stages if event == "stage.started"] == order
    assert [s for event, s in stages if event != "stage.started"] == order
    assert ("stage.skipped", "cgroup") in stages
    every = result.events()
    assert all(e.get("container_id") == every[0]["container_id"] for e in every)
    # installed plugins' own events (plugin.event from exited hooks) may come between the two
    assert [e["event"] for e in every if e["event"] != "plugin.event"][-2:] == ["container.exited", "teardown.finished"]


def test_host_loopback_only_when_allowed(cli, loopback_server):
    port, token = loopback_server
    fetch = ["--", "/bin/sh", "-c", f"nc -w 3 10.0.2.2 {port} </dev/null"]
    denied = cli(*fetch)
    assert denied.code != 0
    assert token.decode() not in denied.stdout
    allowed = cli("--allow-host-loopback", *fetch)
    assert allowed.code == 0, allowed.stderr
    assert allowed.stdout.strip() == token.decode()


def _start(rootfs, *args):
    """`aiocontain run --net none ARGS` once its command printed ready; killed, reaped, its pipes closed on the
    way out, whatever the test's outcome."""
    return started(cli_argv(rootfs, "--net", "none", *args))


def _started(proc, marker="ready"):
    line = proc.stdout.readline()
    assert line.strip() == marker, proc.stderr.read() if proc.poll() is not None else line


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 42), (signal.SIGINT, 43), (signal.SIGHUP, 44)])
def test_signals_are_forwarded(rootfs, signum, code, backend):
    script = "trap 'exit 42' TERM; trap 'exit 43' INT; trap 'exit 44' HUP; echo ready; sleep 60 & wait"
    with _start(rootfs, "--backend", backend, "--", "/bin/sh", "-c", script) as proc:
        proc.send_signal(signum)
        assert proc.wait(timeout=20) == code


def test_ignored_sigterm_is_followed_by_kill_after_stop_timeout(rootfs):
    # A plain command as PID 1 has no handler: the kernel drops SIGTERM, so the grace period ends in SIGKILL.
    # The command says "late" 8 s on, within the default 10 s: only a stop timeout that is applied (0.5 s)
    # kills it before that. Nothing is timed; the order of the two tells.
    script = "echo ready; sleep 8; echo late"
    with _start(rootfs, "--stop-timeout", "0.5", *JSON_LOGS, "--", "/bin/sh", "-c", script) as proc:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (137, ""), err
    assert '"container.killed"' in err


def test_init_passes_signals_to_the_command(rootfs):
    with _start(rootfs, "--init", "--", "/bin/sh", "-c", "echo ready; exec sleep 60") as proc:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM


def test_init_is_pid1_and_reaps(cli):
    result = cli(
        "--net",
        "none",
        "--init",
        "--",
        "/bin/sh",
        "-c",
        "echo $$; cat /proc/1/cmdline | tr '\\0' ' '; echo; (sleep 0.1 &) ; sleep 0.5; "
        "grep -l zombie /proc/[0-9]*/status 2>/dev/null | wc -l",
    )
    assert result.code == 0, result.stderr
    pid, init_cmdline, zombies = result.stdout.splitlines()
    assert pid == "2"
    assert init_cmdline.split()[:2] == ["/dev/init", "--"]  # the host's catatonit, not the runtime's Python
    assert zombies.strip() == "0"


def test_no_leftovers_after_20_runs(cli, rootfs, loopback_server):
    before = leftovers()
    codes = []
    for i in range(20):
        match i % 4:
            case 0:
                codes.append(cli("--", "true").code)
            case 1:
                codes.append(cli("--", "/bin/sh", "-c", "exit 7").code)
            case 2:
                codes.append(cli("--", "missing-command").code)
            case 3:
                codes.append(cli("--mtu", "99999", "--", "true").code)
    assert codes == [0, 7, 127, 125] * 5
    assert leftovers() == before


def test_chroot_escape_fails(cli, rootfs, tmp_path):
    import shutil

    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is needed to build the escape probe (scripts/host-setup.sh installs it)")
    source = tmp_path / "escape.c"
    marker = tmp_path / f"host-marker-{os.getpid()}"
    marker.write_text("host")
    source.write_text(r"""
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
int main(int argc, char **argv) {
    mkdir("/escape-dir", 0755);
    if (chroot("/escape-dir") != 0) { perror("chroot"); return 2; }
    for (int i = 0; i < 64; i++) chdir("..");
    if (chroot(".") != 0) { perror("chroot ."); return 2; }
    puts(access(argv[1], F_OK) == 0 ? "escaped" : "contained");
    return 0;
}
""")
    from aiocontain.rootfs import init_rootfs

    box = tmp_path / "root"
    init_rootfs(box)
    subprocess.run([gcc, "-static", "-O1", "-o", str(box / "escape"), str(source)], check=True)
    # Control: under a plain chroot the probe does escape, so the test can fail.
    control = subprocess.run(
        ["unshare", "-Ur", "chroot", str(box), "/escape", str(marker)], capture_output=True, text=True
    )
    assert control.stdout.strip() == "escaped", control.stderr
    result = cli("--net", "none", "--", "/escape", str(marker), rootfs_dir=box)
    assert result.code == 0, result.stderr
    assert result.stdout.strip() == "contained"


def test_invoking_uid_outside(rootfs):
    with _start(rootfs, "--", "/bin/sh", "-c", "echo ready; exec sleep 60") as proc:
        (server,) = _children(proc.pid)  # the CLI's fork server, which cloned PID 1
        (init,) = _children(server)
        status = Path(f"/proc/{init}/status").read_text()
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        assert fields["Uid"].split() == [str(os.getuid())] * 4  # root inside is the invoking user outside
        assert fields["NSpid"].split() == [str(init), "1"]  # and PID 1 of its own namespace


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("mapping", ["subordinate", "single"])
def test_a_second_user_exists_inside_only_with_subordinate_ids(cli, mapping):
    # Without newuidmap on its PATH, the CLI maps the single id, whatever /etc/subuid says: both cases run here.
    from aiocontain import subids

    if mapping == "subordinate" and not subids.ranges(os.getuid(), Path("/etc/subuid")):
        pytest.skip("the test user has no subordinate ids (scripts/host-setup.sh gives it some)")
    env = {**os.environ, "PATH": "/nonexistent"} if mapping == "single" else None
    script = "touch /tmp/f && chown 1000:1000 /tmp/f && stat -c %u:%g /tmp/f"
    result = cli("--net", "none", "--", "/bin/sh", "-c", script, env=env)
    if mapping == "subordinate":
        assert (result.code, result.stdout.strip()) == (0, "1000:1000"), result.stderr
    else:
        assert result.code != 0 and "Invalid argument" in result.stderr, result  # uid 1000 is not mapped


def test_net_none_has_loopback_up_only(cli):
    result = cli("--net", "none", "--", "/bin/sh", "-c", "ls /sys/class/net; cat /sys/class/net/lo/flags")
    assert result.code == 0, result.stderr
    *interfaces, flags = result.stdout.split()
    assert interfaces == ["lo"]
    assert int(flags, 16) & 0x1  # IFF_UP


def test_net_host_shares_the_hosts_interfaces(cli):
    result = cli("--net", "host", "--", "ls", "/sys/class/net")
    assert result.code == 0, result.stderr
    assert sorted(result.stdout.split()) == sorted(os.listdir("/sys/class/net"))


# /sys's mount options, and what a write into it meets: EROFS on a read-only mount (checked before any
# permission), EACCES on a writable one (its files are the host root's).
SYS_PROBE = "awk '$5 == \"/sys\" {print $6}' /proc/self/mountinfo; mkdir /sys/kernel/probe 2>&1; true"


def test_net_host_keeps_sys_read_only(cli, podman):
    # With the host's network namespace a new sysfs is not the user's to mount: the host's is bound instead,
    # and must be made read-only all the same.
    result = cli("--net", "host", "--", "/bin/sh", "-c", SYS_PROBE)
    assert result.code == 0, result.stderr
    options, error = result.stdout.splitlines()
    assert options.split(",")[0] == "ro", options
    assert "Read-only file system" in error, error
    under_podman = podman("--network", "host", "/bin/sh", "-c", SYS_PROBE)
    assert under_podman.code == 0, under_podman.stderr
    assert under_podman.stdout.splitlines()[0].split(",")[0] == "ro", under_podman.stdout
    assert "Read-only file system" in under_podman.stdout.splitlines()[1], under_podman.stdout


def test_killing_aiocontain_takes_the_container_and_slirp4netns_with_it(rootfs):
    before = leftovers()
    with started(cli_argv(rootfs, "--", "/bin/sh", "-c", "echo ready; exec sleep 60")) as proc:
        children = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in _children(proc.pid)}
        (slirp,) = [pid for pid, cmdline in children.items() if cmdline.split(b"\0")[0].endswith(b"slirp4netns")]
        (server,) = [pid for pid in children if pid != slirp]  # the CLI's fork server, forked from it at start-up
        (init,) = _children(server)
        pidfds = [os.pidfd_open(pid) for pid in (server, init, slirp)]
        # "ready" can come before the runtime has removed its directory (it does once it learns the command
        # runs): wait for that, so that the kill comes after and nothing of the run may be left.
        _wait_removed(before["runtime_dirs"])
        proc.kill()  # no teardown runs: the fork server and slirp4netns must notice on their own
        proc.wait()
    try:
        import select

        for pidfd in pidfds:  # a pidfd becomes readable when its process exits: no polling
            assert select.select([pidfd], [], [], 10)[0] == [pidfd]
    finally:
        for pidfd in pidfds:
            os.close(pidfd)
    assert leftovers() == before  # not even the runtime directory: it goes as soon as the command runs


def _wait_removed(kept: object, timeout: float = 10) -> None:
    """Until no runtime directory but those kept is in the temporary directory (inotify: no polling)."""
    import select
    import time

    from aiocontain import syscalls

    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    assert isinstance(kept, list)

    def ours() -> set[str]:
        found = set()
        for name in os.listdir(base):
            if name.startswith("aiocontain-") and name not in kept:
                try:
                    if os.lstat(os.path.join(base, name)).st_uid == os.getuid():
                        found.add(name)
                except FileNotFoundError:
                    continue  # removed meanwhile
        return found

    watch = syscalls.inotify_init1()
    try:
        syscalls.inotify_add_watch(watch, base, 0x200)  # IN_DELETE; set before looking: no removal is missed
        deadline = time.monotonic() + timeout
        while left_behind := ours():
            left = deadline - time.monotonic()
            assert left > 0 and select.select([watch], [], [], left)[0], f"{left_behind} still in {base}"
            os.read(watch, 65536)
    finally:
        os.close(watch)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_exit_code_under_each_backend(cli, backend):
    assert cli("--backend", backend, "--", "/bin/sh", "-c", "exit 12").code == 12


@pytest.mark.parametrize("init", [[], ["--init"]])
def test_the_command_starts_with_no_signal_ignored(cli, init):
    # The runtime's Python ignores SIGPIPE; a container must not inherit that (`yes | head` must end).
    result = cli("--net", "none", *init, "--", "/bin/sh", "-c", "grep SigIgn /proc/self/status; yes | head -c 4")
    assert result.code == 0, result.stderr
    assert result.stdout.split() == ["SigIgn:", "0000000000000000", "y", "y"]


def _imported(stderr: str) -> set[str]:
    """Top-level packages named by ``python -X importtime``'s lines (the fork server's included)."""
    return {
        line.split("|")[-1].strip().split(".")[0] for line in stderr.splitlines() if line.startswith("import time:")
    }


@pytest.mark.parametrize("level, shown", [("warning", False), ("info", True)])
def test_a_quiet_run_imports_neither_structlog_nor_pyroute2(rootfs, level, shown):
    argv = [sys.executable, "-X", "importtime", *cli_argv(rootfs, "--log-level", level, "--", "true")[1:]]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    imported = _imported(proc.stderr)
    assert "aiocontain" in imported and "anyio" in imported  # the listing is real
    assert ("structlog" in imported, "pyroute2" in imported) == (shown, shown)
    assert ("network.ready" in proc.stderr) == shown


def test_tap0_is_persistent_so_that_slirp4netns_exits_without_unregistering_it(cli):
    # IFF_PERSIST (0x800): the device goes with the network namespace, in the kernel's background cleanup,
    # not in slirp4netns's exit (which would wait ~20 ms for RCU). IFF_TAP 0x2, IFF_NO_PI 0x1000: slirp's own.
    result = cli("--", "/bin/sh", "-c", "cat /sys/class/net/tap0/tun_flags")
    assert result.code == 0, result.stderr
    assert int(result.stdout.strip(), 16) == 0x800 | 0x1000 | 0x2


def test_tap0_skips_duplicate_address_detection_and_the_solicitation_delay(cli):
    # Set by the child on tap0 before slirp4netns attaches (child/netdev._quick_ipv6), so that IPv6 is ready within
    # milliseconds; the control is the namespace's default for a new device, which a tap would otherwise get.
    settings = ("accept_dad", "router_solicitation_delay")
    paths = [f"/proc/sys/net/ipv6/conf/{device}/{name}" for device in ("tap0", "default") for name in settings]
    result = cli("--", "cat", *paths)
    assert result.code == 0, result.stderr
    tap0, default = result.stdout.split()[:2], result.stdout.split()[2:]
    assert tap0 == ["0", "0"]
    assert default != ["0", "0"]


@pytest.mark.parametrize("as_init", [False, True])
def test_pid_1_holds_no_directory_of_the_host(cli, as_init):
    # PID 1 must never hold a directory of the host's (the fork server's working directory is the host's root):
    # with --init it stays PID 1, and /proc/1/fd is open to the container's root. (With --init, PID 1 may still
    # hold its exec pipes for a moment while the command runs: pipes, never directories.)
    command = 'ls /proc/1/fd/0 >/dev/null && for f in /proc/1/fd/*; do [ -d "$f" ] && echo "$f"; done; true'
    result = cli(*(["--init"] if as_init else []), "--net", "none", "--", "/bin/sh", "-c", command)
    assert (result.code, result.stdout) == (0, ""), result.stderr
