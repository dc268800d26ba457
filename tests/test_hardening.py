"""PID 1's hardening: capabilities, no_new_privs, masked and read-only kernel paths, the session keyring, ping.

Each probe runs under aiocontain and, where podman is installed, under rootless podman on the same rootfs:
both must contain it alike.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from aiocontain import Container, ContainerSpec, NetworkMode
from aiocontain.security import capabilities
from tests.conftest import cli_argv

pytestmark = pytest.mark.container

CAPS = "grep ^Cap /proc/self/status"
DEFAULT_SET = 0x800405FB  # podman's 11: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP ...
NET_RAW = 1 << 13
NET_ADMIN = 1 << 12
CHOWN = 1 << 0
KILL = 1 << 5


def cap_sets(output: str) -> dict[str, int]:
    return {key: int(value, 16) for key, value in (line.split(":") for line in output.split("\n") if line)}


def every_capability() -> int:
    return (1 << (int(Path("/proc/sys/kernel/cap_last_cap").read_text()) + 1)) - 1


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ((), DEFAULT_SET),
        (("--cap-drop", "ALL"), 0),
        (("--cap-add", "NET_RAW"), DEFAULT_SET | NET_RAW),
        (("--cap-add", "cap_net_admin"), DEFAULT_SET | NET_ADMIN),
        (("--cap-drop", "CHOWN"), DEFAULT_SET & ~CHOWN),
        (("--cap-drop", "SYS_ADMIN,NET_ADMIN"), DEFAULT_SET),  # not in the default set: dropped, never added
        (("--cap-drop", "all", "--cap-add", "Cap_Chown,kill"), CHOWN | KILL),
        (("--privileged",), None),
    ],
)
def test_capability_sets_are_podmans(cli, podman, options, expected):
    """Bounding, permitted and effective hold exactly the kept set; inheritable and ambient are empty."""
    want = every_capability() if expected is None else expected
    result = cli("--net", "none", *options, "/bin/sh", "-c", CAPS)
    assert result.code == 0, result.stderr
    sets = cap_sets(result.stdout)
    assert sets == {"CapInh": 0, "CapPrm": want, "CapEff": want, "CapBnd": want, "CapAmb": 0}
    theirs = podman("--network", "none", *options, "/bin/sh", "-c", CAPS)
    assert theirs.code == 0, theirs.stderr
    assert cap_sets(theirs.stdout) == sets


def test_init_path_keeps_the_same_set(cli):
    """With --init the command is PID 2, forked by the init after the hardening: the same bounding set."""
    result = cli("--net", "none", "--init", "/bin/sh", "-c", "grep ^CapBnd /proc/1/status /proc/self/status")
    assert result.code == 0, result.stderr
    assert [int(line.split()[-1], 16) for line in result.stdout.splitlines()] == [DEFAULT_SET, DEFAULT_SET]


def test_dropped_capability_is_gone(cli, podman):
    """A control first: root may chown a file it does not own only with CAP_CHOWN."""
    probe = "touch /tmp/f && chown 1:1 /tmp/f && chown 2:2 /tmp/f && echo changed"
    assert cli("--net", "none", "/bin/sh", "-c", probe).stdout.strip() == "changed"
    for run in (cli, podman):
        result = run("--net" if run is cli else "--network", "none", "--cap-drop", "CHOWN", "/bin/sh", "-c", probe)
        assert result.code != 0
        assert "Operation not permitted" in result.stderr
        assert "changed" not in result.stdout


@pytest.mark.parametrize("name", ["NET_FOO", "CAP_", "chown;kill"])
def test_unknown_capability_is_one_line_125(cli, name):
    result = cli("--net", "none", "--cap-add", name, "true")
    assert result.code == 125
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"aiocontain: unknown capability {name!r}")


def test_capability_rules_follow_podman():
    default = sorted(capabilities.NUMBERS[name] for name in capabilities.DEFAULT)
    assert capabilities.kept() == default
    assert capabilities.kept(cap_add=["ALL"]) is None
    assert capabilities.kept(cap_add=["ALL"], cap_drop=["kill"]) == sorted(
        set(capabilities.NUMBERS.values()) - {capabilities.NUMBERS["KILL"]}
    )
    assert capabilities.kept(cap_drop=["ALL"], cap_add=["setuid", "CAP_SETGID"]) == [6, 7]
    assert capabilities.kept(privileged=True) is None
    assert capabilities.kept(cap_drop=["SYS_ADMIN"]) == default  # one the default lacks stays out
    assert capabilities.kept(cap_add=["NET_RAW"], cap_drop=["SYS_ADMIN", "KILL"]) == sorted(
        set(default) - {capabilities.NUMBERS["KILL"]} | {capabilities.NUMBERS["NET_RAW"]}
    )
    for add, drop in ((["ALL"], ["ALL"]), (["NET_RAW"], ["cap_net_raw"])):
        with pytest.raises(capabilities.AiocontainError):
            capabilities.kept(cap_add=add, cap_drop=drop)


@pytest.mark.parametrize("options", [(), ("--security-opt", "no-new-privileges")])
def test_no_new_privs_only_when_asked(cli, podman, options):
    probe = "grep ^NoNewPrivs /proc/self/status"
    result = cli("--net", "none", *options, "/bin/sh", "-c", probe)
    assert result.stdout.split() == ["NoNewPrivs:", "1" if options else "0"]
    theirs = podman("--network", "none", *options, "/bin/sh", "-c", probe)
    assert theirs.stdout == result.stdout


MASKED_PROBE = (
    "echo keys $(wc -c < /proc/keys); echo firmware $(ls -A /sys/firmware | wc -l);"
    " for f in /proc/kcore /proc/keys /proc/timer_list; do [ -e $f ] && echo $f $(stat -c %t:%T $f); done;"
    " echo 1 > /proc/sys/net/ipv4/ip_forward && echo sys-written; echo 1 > /proc/sysrq-trigger && echo sysrq-written;"
    " touch /sys/firmware/probe && echo firmware-written;"
    " echo firmware-mount $(grep ' /sys/firmware ' /proc/self/mounts | cut -d' ' -f3,4 | tr , ' ');"
    " true"
)


def test_kernel_paths_are_masked_and_read_only(cli, podman):
    """/proc/keys reads empty, /sys/firmware lists nothing and takes no file (a read-only tmpfs), masked files
    are /dev/null (1:3), and /proc/sys refuses a write even to a sysctl of the container's own network
    namespace."""
    for run, net in ((cli, "--net"), (podman, "--network")):
        result = run(net, "none", "/bin/sh", "-c", MASKED_PROBE)
        lines = result.stdout.splitlines()
        assert lines[:2] == ["keys 0", "firmware 0"], (run, result)
        devices = [line for line in lines[2:] if line.startswith("/proc/")]
        assert devices and all(line.endswith(" 1:3") for line in devices), (run, result)
        assert "sys-written" not in lines and "sysrq-written" not in lines, (run, result)
        assert "firmware-written" not in lines, (run, result)
        assert "Read-only file system" in result.stderr, (run, result)
        [mount] = [line.split()[1:] for line in lines if line.startswith("firmware-mount ")]
        assert mount[:2] == ["tmpfs", "ro"], (run, result)
        if run is cli:  # stricter than runc's masks (read-only alone): nothing set-uid, no device, no program
            assert {"nosuid", "nodev", "noexec"} <= set(mount), result


DEV_MOUNTS_PROBE = "grep -E ' /dev/(shm|pts|mqueue) ' /proc/self/mounts"


def dev_mount_flags(mounts: str) -> dict[str, list[str]]:
    """Mount point -> which of nosuid, nodev, noexec its options have."""
    found = {}
    for line in mounts.splitlines():
        _, point, _, options = line.split()[:4]
        found[point] = sorted(set(options.split(",")) & {"nosuid", "nodev", "noexec"})
    return found


def test_dev_shm_pts_and_mqueue_run_no_setuid_device_or_program(cli, podman):
    """/dev/shm (writable by every user inside) and /dev/mqueue are nosuid, nodev and noexec; /dev/pts nosuid
    and noexec: as podman mounts them, so none can bring in a setuid program, a device node or an executable."""
    all_three = ["nodev", "noexec", "nosuid"]
    expected = {"/dev/shm": all_three, "/dev/mqueue": all_three, "/dev/pts": ["noexec", "nosuid"]}
    for run, net in ((cli, "--net"), (podman, "--network")):
        result = run(net, "none", "/bin/sh", "-c", DEV_MOUNTS_PROBE)
        assert dev_mount_flags(result.stdout) == expected, (run, result)


def test_privileged_sees_and_writes_them(cli):
    """The control: the same probe without masks (--privileged) sees the firmware and writes ip_forward."""
    result = cli("--net", "none", "--privileged", "/bin/sh", "-c", MASKED_PROBE)
    lines = result.stdout.splitlines()
    assert lines[1] != "firmware 0"
    assert "sys-written" in lines
    assert not any(line.endswith(" 1:3") for line in lines[2:])


KEY_PROBE = r"""
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#define KEYCTL_READ 11
#define KEYCTL_SEARCH 10
#define KEY_SPEC_SESSION_KEYRING -3
/* argv[1]: the host key's serial, argv[2]: its description. Prints what it can get of it. */
int main(int argc, char **argv) {
    char data[256];
    long n = syscall(SYS_keyctl, KEYCTL_READ, atol(argv[1]), data, sizeof data - 1);
    if (n >= 0) { data[n] = 0; printf("read %s\n", data); } else printf("read failed: %s\n", strerror(errno));
    long found = syscall(SYS_keyctl, KEYCTL_SEARCH, KEY_SPEC_SESSION_KEYRING, "user", argv[2], 0);
    if (found >= 0) printf("found %ld\n", found); else printf("search failed: %s\n", strerror(errno));
    return 0;
}
"""


def in_session_with_key(secret: str) -> list[str]:
    """A command prefix: run the rest in a fresh session keyring holding a user key (description
    aiocontain-probe, data secret), with KEY in the arguments replaced by the key's serial."""
    script = (
        'key=$(keyctl add user aiocontain-probe "$0" @s) || exit 99; '
        'for a; do shift; set -- "$@" "${a/KEY/$key}"; done; exec "$@"'
    )
    return ["keyctl", "session", "-", "bash", "-c", script, secret]


def run_with_key(argv: list[str], secret: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*in_session_with_key(secret), *argv], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )


DENIED = "read failed: Permission denied"  # the key is the user's own, but only its possessor may read it
NOT_FOUND = "search failed: Required key not available"


def test_host_session_key_is_unreadable(probes, podman):
    """A key of the invoking session is out of reach, even with no seccomp filter: the container has a
    session keyring of its own. The control: the same static probe on the host reads the key."""
    probe = probes.build("keyread", KEY_PROBE)
    secret = "s3cret-" + os.urandom(4).hex()
    host = run_with_key([str(probes.rootfs) + probe, "KEY", "aiocontain-probe"], secret)
    assert host.stdout.splitlines()[0] == f"read {secret}", host
    assert host.stdout.splitlines()[1].startswith("found "), host
    for options in (("--security-opt", "seccomp=unconfined"), ("--privileged",)):
        inside = run_with_key(
            cli_argv(probes.rootfs, "--net", "none", *options, probe, "KEY", "aiocontain-probe"), secret
        )
        assert inside.returncode == 0, inside.stderr
        assert inside.stdout.splitlines() == [DENIED, NOT_FOUND], (options, inside)
    theirs = podman(
        "--network",
        "none",
        "--security-opt",
        "seccomp=unconfined",
        probe,
        "KEY",
        "aiocontain-probe",
        rootfs_dir=probes.rootfs,
        prefix=in_session_with_key(secret),
    )
    assert secret not in theirs.stdout and "search failed" in theirs.stdout, theirs


def test_key_quota_used_up_is_one_clear_line(monkeypatch):
    """Every container's keyring counts against the user's key quota (kernel.keys.maxkeys, 200 by default):
    when it is used up the set-up fails saying so, never falling back to the host's session keyring."""
    from aiocontain import syscalls
    from aiocontain.child import harden
    from aiocontain.messages import Config

    def used_up(name: str) -> int:
        raise OSError(errno.EDQUOT, "keyctl(KEYCTL_JOIN_SESSION_KEYRING): Disk quota exceeded")

    monkeypatch.setattr(syscalls, "join_session_keyring", used_up)
    config = Config(rootfs="/", argv=["true"], env={}, workdir="/", hostname="h", unshare_net=True, want_netlink=False)
    with pytest.raises(OSError, match=r"key quota is used up.*kernel\.keys\.maxkeys") as raised:
        harden.apply(config)
    assert raised.value.errno == errno.EDQUOT


ICMP_PROBE = r"""
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/ip_icmp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
/* An ICMP echo to argv[1], as ping does without CAP_NET_RAW (an ICMP datagram socket), and a raw socket. */
int main(int argc, char **argv) {
    int raw = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
    printf("raw %s\n", raw < 0 ? strerror(errno) : "opened");
    int s = socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP);
    if (s < 0) { printf("echo socket: %s\n", strerror(errno)); return 1; }
    struct sockaddr_in to = {.sin_family = AF_INET};
    inet_pton(AF_INET, argv[1], &to.sin_addr);
    struct icmphdr echo = {.type = ICMP_ECHO, .un.echo.sequence = htons(1)};
    if (sendto(s, &echo, sizeof echo, 0, (struct sockaddr *)&to, sizeof to) < 0) {
        printf("send: %s\n", strerror(errno)); return 1;
    }
    struct pollfd p = {.fd = s, .events = POLLIN};
    struct icmphdr reply;
    if (poll(&p, 1, 10000) == 1 && recv(s, &reply, sizeof reply, 0) >= (long)sizeof reply
        && reply.type == ICMP_ECHOREPLY) { printf("echo reply\n"); return 0; }
    printf("no reply\n");
    return 1;
}
"""


def test_ping_without_cap_net_raw(cli, podman, probes):
    """The container's own network namespace lets its groups use ICMP echo sockets (ping_group_range), so
    ping works with the default capabilities; raw sockets stay refused. The control: with the host's network
    namespace (whose range the container does not set) the echo socket is refused."""
    probe = probes.build("icmpecho", ICMP_PROBE)
    result = cli(probe, "10.0.2.2", rootfs_dir=probes.rootfs)
    assert (result.code, result.stdout.splitlines()) == (0, ["raw Operation not permitted", "echo reply"]), result
    theirs = podman(probe, "10.0.2.2", rootfs_dir=probes.rootfs)
    assert theirs.stdout == result.stdout
    # busybox 1.35's ping tries only a raw socket: it needs NET_RAW, added back here as with podman
    assert cli("--cap-add", "NET_RAW", "/bin/ping", "-c1", "10.0.2.2").code == 0
    files = "/proc/sys/net/ipv4/ping_group_range /proc/self/gid_map"
    group_range, gid_map = cli("--net", "none", "/bin/sh", "-c", f"cat {files}").stdout.split("\n", 1)
    # every mapped group may ping: 0 up to the last gid of the map (contiguous from 0: the user's, then subids)
    counts = [int(count) for count in gid_map.split()[2::3]]
    assert group_range.split() == ["0", str(sum(counts) - 1)], (group_range, gid_map)
    host_range = Path("/proc/sys/net/ipv4/ping_group_range").read_text().split()
    if int(host_range[0]) > int(host_range[1]):  # the host's own range is empty, as by default
        host = cli("--net", "host", probe, "127.0.0.1", rootfs_dir=probes.rootfs)
        assert "echo socket: Permission denied" in host.stdout, host


def test_ping_with_a_single_id_map(cli, probes):
    """A user without subordinate ids has one id mapped, 0: the range is that one group, and ping works.
    Without newuidmap on its PATH the CLI maps the single id (as for such a user), whatever /etc/subuid says."""
    probe = probes.build("icmpecho", ICMP_PROBE)
    files = "/proc/sys/net/ipv4/ping_group_range /proc/self/gid_map"
    env = {**os.environ, "PATH": "/nonexistent"}
    result = cli("--net", "none", "/bin/sh", "-c", f"cat {files}; {probe} 127.0.0.1", env=env, rootfs_dir=probes.rootfs)
    assert result.code == 0, result
    group_range, gid_map, raw, echo = result.stdout.splitlines()
    assert gid_map.split()[2:] == ["1"], gid_map  # the control: one gid mapped indeed (the user's, as 0)
    assert (group_range.split(), raw, echo) == (["0", "0"], "raw Operation not permitted", "echo reply"), result


@pytest.mark.anyio
async def test_embedded_container_gets_the_same_defaults(rootfs):
    """Container(ContainerSpec(...)) applies the defaults the CLI does: podman's capabilities, masked paths."""
    command = ["/bin/sh", "-c", f"{CAPS}; wc -c < /proc/keys"]
    spec = ContainerSpec(command, rootfs=rootfs, network=NetworkMode.NONE, stdout=subprocess.PIPE)
    async with Container(spec) as container:
        output = b"".join([chunk async for chunk in container.stdout]).decode()
        assert (await container.wait()).ok
    lines = output.splitlines()
    want = {"CapInh": 0, "CapPrm": DEFAULT_SET, "CapEff": DEFAULT_SET, "CapBnd": DEFAULT_SET, "CapAmb": 0}
    assert cap_sets("\n".join(lines[:5])) == want
    assert lines[5].strip() == "0"
