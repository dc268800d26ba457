"""The seccomp filter: podman's default profile by default, profile files of the user's, and none when asked.

Container tests try the calls from inside with a static C probe and compare
with podman on the same rootfs; an unconfined run of the same probe is the
control that shows each call does succeed without the filter. Unit tests cover
the profile resolution and the compiled program (installed in a forked process).
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from aiocontain.seccomp import filter_for, libseccomp
from aiocontain.seccomp.compile import compile_bpf
from aiocontain.seccomp.profile import ProfileError, Resolved, Rule, resolve
from aiocontain.security import capabilities
from aiocontain.spec import ContainerSpec
from tests.conftest import leftovers

PODMAN_PROFILE = Path("/usr/share/containers/seccomp.json")
ENOSYS, EPERM = errno.ENOSYS, errno.EPERM

# Each call prints NAME=ERRNO (0: it worked). Raw syscall numbers: the probe must not depend on libc wrappers.
PROBE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/if_ether.h>
#include <linux/perf_event.h>

static void report(const char *name, long result) { printf("%s=%d\n", name, result < 0 ? errno : 0); }

int main(void) {
    char params[120] = {0};
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.size = sizeof attr;
    attr.type = PERF_TYPE_SOFTWARE;
    attr.config = PERF_COUNT_SW_CPU_CLOCK;
    attr.exclude_kernel = 1;
    report("io_uring_setup", syscall(SYS_io_uring_setup, 1, params));
    report("keyctl", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 0));
    report("add_key", syscall(SYS_add_key, "user", "probe", "x", 1, -2 /* process keyring */));
    report("perf_event_open", syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0));
    report("fsopen", syscall(SYS_fsopen, "tmpfs", 0));
    report("open_tree", syscall(SYS_open_tree, AT_FDCWD, "/", 1 /* OPEN_TREE_CLONE */));
    report("socket_packet", syscall(SYS_socket, AF_PACKET, SOCK_RAW, 0));
    report("sethostname", syscall(SYS_sethostname, "probe", 5));
    report("mount", syscall(SYS_mount, "none", "/tmp", "tmpfs", 0, 0));
    report("unshare_user", syscall(SYS_unshare, CLONE_NEWUSER));
    return 0;
}
"""
# What podman's profile denies with its 11 default capabilities: unlisted (ENOSYS), or listed without
# CAP_SYS_ADMIN (EPERM).
DENIED_BY_PROFILE = {"io_uring_setup": ENOSYS, "add_key": ENOSYS, "sethostname": EPERM, "perf_event_open": EPERM}


def results(output: str) -> dict[str, int]:
    return {name: int(code) for name, code in (line.split("=") for line in output.split())}


@pytest.fixture(scope="module")
def probe(probes) -> str:
    return probes.build("syscalls", PROBE)


def write_profile(tmp_path: Path, profile: dict[str, object], name: str = "profile.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(profile))
    path.chmod(0o644)
    return path


# --- in containers, against podman ---


@pytest.mark.container
def test_default_profile_denies_what_podmans_does(cli, podman, probes, probe):
    ours = cli("--net", "none", probe, rootfs_dir=probes.rootfs)
    theirs = podman("--network", "none", probe, rootfs_dir=probes.rootfs)
    unconfined = cli("--net", "none", "--security-opt", "seccomp=unconfined", probe, rootfs_dir=probes.rootfs)
    assert ours.code == theirs.code == unconfined.code == 0, (ours, theirs, unconfined)
    ours_r, theirs_r, control = results(ours.stdout), results(theirs.stdout), results(unconfined.stdout)
    for name, code in DENIED_BY_PROFILE.items():
        assert ours_r[name] == theirs_r[name] == code, (name, ours_r, theirs_r)
    # The control: without the filter, these calls get past the syscall entry (no ENOSYS; io_uring works).
    assert control["io_uring_setup"] == 0, control
    assert all(control[name] != ENOSYS for name in DENIED_BY_PROFILE), control


@pytest.mark.container
def test_same_results_as_podman_with_every_capability(cli, podman, probes, probe):
    """With every capability on both sides, capabilities decide nothing: every call must end as under podman."""
    ours = cli("--net", "none", "--cap-add", "ALL", probe, rootfs_dir=probes.rootfs)
    theirs = podman("--network", "none", "--cap-add", "ALL", probe, rootfs_dir=probes.rootfs)
    assert ours.code == theirs.code == 0, (ours, theirs)
    assert results(ours.stdout) == results(theirs.stdout)
    assert results(ours.stdout)["io_uring_setup"] == ENOSYS  # some podman versions allowed io_uring: we never do


@pytest.mark.container
def test_podmans_own_profile_file_gives_podmans_results(cli, podman, probes, probe):
    option = f"seccomp={PODMAN_PROFILE}"
    ours = cli("--net", "none", "--cap-add", "ALL", "--security-opt", option, probe, rootfs_dir=probes.rootfs)
    theirs = podman("--network", "none", "--cap-add", "ALL", "--security-opt", option, probe, rootfs_dir=probes.rootfs)
    assert ours.code == theirs.code == 0, (ours, theirs)
    assert results(ours.stdout) == results(theirs.stdout)
    assert results(ours.stdout)["add_key"] == ENOSYS


@pytest.mark.container
@pytest.mark.parametrize(
    "options, mode",
    [((), "2"), (("--security-opt", "seccomp=unconfined"), "0"), (("--privileged",), "0")],
)
def test_status_shows_the_filter(cli, podman, options, mode):
    command = ("/bin/sh", "-c", "grep ^Seccomp: /proc/self/status")
    ours = cli("--net", "none", *options, *command)
    theirs = podman("--network", "none", *options, *command)
    assert ours.code == theirs.code == 0, (ours, theirs)
    assert ours.stdout.split() == theirs.stdout.split() == ["Seccomp:", mode]


@pytest.mark.container
@pytest.mark.parametrize("init", [False, True])
def test_init_pid1_is_filtered_too(cli, init):
    result = cli("--net", "none", *(["--init"] if init else []), "/bin/sh", "-c", "grep ^Seccomp: /proc/1/status")
    assert (result.code, result.stdout.split()) == (0, ["Seccomp:", "2"]), result


@pytest.mark.container
def test_custom_profile_denies_mkdir_with_its_errno(cli, podman, tmp_path):
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            # the unknown name is skipped, as podman does, and the rule still applies to the others
            {"names": ["mkdir", "mkdirat", "no_such_call"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EDQUOT}
        ],
    }
    option = f"seccomp={write_profile(tmp_path, profile)}"
    os.chmod(tmp_path, 0o755)
    command = ("/bin/sh", "-c", "mkdir /tmp/x; echo $?; touch /tmp/y && echo touched")
    ours = cli("--net", "none", "--security-opt", option, *command)
    theirs = podman("--network", "none", "--security-opt", option, *command)
    assert ours.code == theirs.code == 0, (ours, theirs)
    assert ours.stdout == theirs.stdout == "1\ntouched\n"
    assert os.strerror(errno.EDQUOT) in ours.stderr
    assert ours.stderr == theirs.stderr
    control = cli("--net", "none", *command)
    assert control.stdout == "0\ntouched\n", control


@pytest.mark.container
def test_tools_work_under_the_default_filter(cli, podman):
    command = ("/bin/sh", "-c", "uname -s; ls / | grep -c proc; echo a b c | tr ' ' '\\n' | sort -r | head -1")
    ours = cli("--net", "none", *command)
    assert (ours.code, ours.stdout) == (0, "Linux\n1\nc\n"), ours
    assert podman("--network", "none", *command).stdout == ours.stdout


@pytest.mark.container
def test_ping_works_under_the_default_filter(cli, podman):
    # busybox ping opens a raw socket: CAP_NET_RAW, not one of podman's defaults, on both sides
    command = ("--cap-add", "NET_RAW", "/bin/ping", "-c", "1", "-W", "5", "127.0.0.1")
    ours = cli("--net", "none", *command)
    assert ours.code == 0, ours
    assert "1 packets received" in ours.stdout
    theirs = podman("--network", "none", *command)
    assert theirs.code == 0, theirs


BAD_PROFILES: list[tuple[str, object, str]] = [
    ("not-json", "{defaultAction: ", "is not valid JSON"),
    ("not-an-object", [1, 2], "is not a JSON object"),
    ("unknown-action", {"defaultAction": "SCMP_ACT_MAYBE"}, "unknown seccomp action 'SCMP_ACT_MAYBE'"),
    (
        "unknown-op",
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 1, "op": "SCMP_LIKE"}]}
            ],
        },
        "unknown seccomp operator 'SCMP_LIKE'",
    ),
    ("bad-errno", {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": "EPERM"}, "invalid errnoRet 'EPERM'"),
    (
        "both-arch-lists",
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86"],
            "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": []}],
        },
        "has both 'architectures' and 'archMap'",
    ),
]


@pytest.mark.container
@pytest.mark.parametrize("name, content, needle", BAD_PROFILES, ids=[p[0] for p in BAD_PROFILES])
def test_bad_profile_is_one_line_and_nothing_starts(cli, tmp_path, name, content, needle):
    path = tmp_path / f"{name}.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    result = refused(cli, tmp_path, f"seccomp={path}")
    assert result.stderr.startswith("aiocontain: "), result.stderr
    assert needle in result.stderr and str(path) in result.stderr, result.stderr


@pytest.mark.container
def test_missing_profile_is_one_line_and_nothing_starts(cli, tmp_path):
    result = refused(cli, tmp_path, f"seccomp={tmp_path / 'nope.json'}")
    assert "cannot read the seccomp profile" in result.stderr, result.stderr


def refused(cli, tmp_path: Path, option: str):
    """Run with a profile that must be refused: exit 125, one line, and nothing left behind. The run gets a
    runtime directory of its own, since other test runs of the same user may come and go in the shared one."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    before = leftovers()
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    result = cli("--net", "none", "--security-opt", option, "/bin/true", env=env)
    assert result.code == 125, result
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert list(runtime.iterdir()) == []
    assert leftovers() == before
    return result


# --- the resolution of a profile, without a container ---

DEBIAN_CAPS = capabilities.names(capabilities.kept())


def rule_names(resolved: Resolved) -> dict[str, list[Rule]]:
    found: dict[str, list[Rule]] = {}
    for rule in resolved.rules:
        for name in rule.names:
            found.setdefault(name, []).append(rule)
    return found


def test_arch_map_takes_the_native_architecture_and_its_sub_architectures():
    data = PODMAN_PROFILE.read_bytes()
    assert resolve(data, "p", DEBIAN_CAPS, "x86_64", "6.1.0").arches == ("x86_64", "x86", "x32")
    assert resolve(data, "p", DEBIAN_CAPS, "aarch64", "6.1.0").arches == ("aarch64", "arm")
    listed = json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86"]}).encode()
    assert resolve(listed, "p", (), "x86_64", "6.1").arches == ("x86_64", "x86")


def test_includes_arches_use_gos_names():
    data = PODMAN_PROFILE.read_bytes()
    on_amd64 = rule_names(resolve(data, "p", DEBIAN_CAPS, "x86_64", "6.1.0"))
    on_arm64 = rule_names(resolve(data, "p", DEBIAN_CAPS, "aarch64", "6.1.0"))
    assert "arch_prctl" in on_amd64 and "arch_prctl" not in on_arm64
    assert "set_tls" in on_arm64 and "set_tls" not in on_amd64


def test_includes_and_excludes_caps():
    data = PODMAN_PROFILE.read_bytes()
    default = rule_names(resolve(data, "p", DEBIAN_CAPS, "x86_64", "6.1.0"))
    admin = rule_names(resolve(data, "p", DEBIAN_CAPS | {"CAP_SYS_ADMIN"}, "x86_64", "6.1.0"))
    assert [r.action for r in default["perf_event_open"]] == [libseccomp.ACT_ERRNO | EPERM]
    assert [r.action for r in admin["perf_event_open"]] == [libseccomp.ACT_ALLOW]
    # chroot is allowed with CAP_SYS_CHROOT, one of podman's defaults
    assert [r.action for r in default["chroot"]] == [libseccomp.ACT_ALLOW]
    assert "io_uring_setup" not in default and "io_uring_setup" not in admin  # unlisted: the default, ENOSYS


def test_min_kernel():
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["new_call"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "5.8"}},
            {"names": ["old_call"], "action": "SCMP_ACT_ALLOW", "excludes": {"minKernel": "5.8"}},
        ],
    }
    data = json.dumps(profile).encode()
    assert set(rule_names(resolve(data, "p", (), "x86_64", "5.10.0-28-amd64"))) == {"new_call"}
    assert set(rule_names(resolve(data, "p", (), "x86_64", "4.19.0"))) == {"old_call"}
    # "5.8" is 5.8.0: a kernel of exactly that version has the call
    assert set(rule_names(resolve(data, "p", (), "x86_64", "5.8.0-1-amd64"))) == {"new_call"}


def test_args_and_actions():
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 38,
        "syscalls": [
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}],
            },
            {
                "names": ["socket"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 22,
                "args": [
                    {"index": 0, "value": 16, "valueTwo": 0, "op": "SCMP_CMP_EQ"},
                    {"index": 2, "value": 9, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"},
                ],
            },
            # two comparisons on one argument: either matches, so one rule each (as runc)
            {
                "names": ["clone"],
                "action": "SCMP_ACT_KILL_PROCESS",
                "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_LT"}, {"index": 0, "value": 9, "op": "SCMP_CMP_GT"}],
            },
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"},  # EPERM when no errnoRet, as runc
            {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},  # the default itself: dropped
            {"names": ["uname"], "action": "SCMP_ACT_LOG"},
            {"names": ["kill"], "action": "SCMP_ACT_TRAP"},
        ],
    }
    rules = rule_names(resolve(json.dumps(profile).encode(), "p", (), "x86_64", "6.1"))
    assert rules["personality"] == [Rule(("personality",), libseccomp.ACT_ALLOW, ((0, libseccomp.CMP_EQ, 8, 0),))]
    assert rules["socket"] == [
        Rule(
            ("socket",), libseccomp.ACT_ERRNO | 22, ((0, libseccomp.CMP_EQ, 16, 0), (2, libseccomp.CMP_MASKED_EQ, 9, 0))
        )
    ]
    assert [r.comparisons for r in rules["clone"]] == [((0, libseccomp.CMP_LT, 1, 0),), ((0, libseccomp.CMP_GT, 9, 0),)]
    assert rules["mkdir"][0].action == libseccomp.ACT_ERRNO | EPERM
    assert "getpid" not in rules
    assert (rules["uname"][0].action, rules["kill"][0].action) == (libseccomp.ACT_LOG, libseccomp.ACT_TRAP)


def _with_arg(arg: dict[str, object]) -> dict[str, object]:
    return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_KILL", "args": [arg]}]}


@pytest.mark.parametrize(
    "profile, needle",
    [
        ({"defaultAction": "SCMP_ACT_NOTIFY"}, "unknown seccomp action"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "NOPE"}]}, "'NOPE'"),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["x"], "action": "SCMP_ACT_KILL", "args": [{"index": 6, "op": "SCMP_CMP_EQ"}]}],
            },
            "argument index 6",
        ),
        (_with_arg({"index": 0, "op": "SCMP_CMP_EQ", "value": 2**64}), f"argument value {2**64}"),
        (_with_arg({"index": 0, "op": "SCMP_CMP_EQ", "valueTwo": 2**64}), f"argument valueTwo {2**64}"),
        (_with_arg({"index": 0, "op": "SCMP_CMP_EQ", "value": -1}), "argument value -1"),
        ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 70000}, "invalid errnoRet 70000"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": "mkdir", "action": "SCMP_ACT_KILL"}]}, "names"),
    ],
)
def test_bad_profiles_are_refused(profile, needle):
    with pytest.raises(ProfileError) as raised:
        resolve(json.dumps(profile).encode(), "the.json", (), "x86_64", "6.1")
    assert needle in raised.value.line() and "the.json" in raised.value.line()


def test_argument_bounds_are_the_kernels():
    # seccomp compares 64-bit arguments: index 0-5, values 0 to 2**64 - 1, each end accepted as it is.
    top = 2**64 - 1
    profile = _with_arg({"index": 5, "op": "SCMP_CMP_MASKED_EQ", "value": top, "valueTwo": top})
    rules = rule_names(resolve(json.dumps(profile).encode(), "the.json", (), "x86_64", "6.1"))
    assert [r.comparisons for r in rules["x"]] == [((5, libseccomp.CMP_MASKED_EQ, top, top),)]


def test_the_profile_sees_the_containers_own_capability_set():
    # The same set as the bounding set the container keeps: one computation serves both.
    assert len(DEBIAN_CAPS) == 11 and "CAP_SYS_ADMIN" not in DEBIAN_CAPS
    dropped_and_added = capabilities.names(capabilities.kept(["sys_admin"], ["CAP_CHOWN"]))
    assert dropped_and_added == DEBIAN_CAPS - {"CAP_CHOWN"} | {"CAP_SYS_ADMIN"}
    assert capabilities.names(capabilities.kept(["NET_RAW"], ["ALL"])) == {"CAP_NET_RAW"}
    assert capabilities.names(capabilities.kept(privileged=True)) == capabilities.names(None)
    assert len(capabilities.names(None)) == 41


# --- the compiled program, installed in a forked process ---


def run_filtered(program: bytes, call: str) -> int:
    """Fork; the child sets no_new_privs (unprivileged, no user namespace), installs the filter, makes the call and
    exits with its errno (0: it worked; 255: it could not install)."""
    import ctypes

    from aiocontain import syscalls

    pid = os.fork()
    if pid == 0:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
                os._exit(255)
            syscalls.set_seccomp_filter(program)
        except BaseException:  # noqa: BLE001 - the parent sees 255
            os._exit(255)
        try:
            if call == "mkdir":
                os.mkdir("/proc/no-such-dir-to-make")
            elif call == "getppid":
                os.getppid()
            elif call == "socket-audit":
                import socket

                socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 9).close()
        except OSError as exc:
            os._exit(exc.errno or 254)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def compiled(profile: dict[str, object], caps: frozenset[str] = frozenset()) -> bytes:
    resolved = resolve(json.dumps(profile).encode(), "p", caps, os.uname().machine, os.uname().release)
    return compile_bpf(resolved, "p")


def test_compiled_program_applies_errno_and_default():
    program = compiled(
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EDQUOT}],
        }
    )
    assert len(program) % 8 == 0
    assert run_filtered(program, "mkdir") == errno.EDQUOT
    assert run_filtered(program, "getppid") == 0
    assert run_filtered(b"\x06\x00\x00\x00\x00\x00\xff\x7f", "mkdir") == errno.ENOENT  # control: RET ALLOW only


def test_compiled_args_match_on_values():
    profile = PODMAN_PROFILE.read_bytes()
    resolved = resolve(profile, "p", DEBIAN_CAPS, os.uname().machine, os.uname().release)
    program = compile_bpf(resolved, "p")
    # socket(AF_NETLINK, SOCK_RAW, NETLINK_AUDIT) is EINVAL without CAP_AUDIT_WRITE; getppid is allowed
    assert run_filtered(program, "socket-audit") == errno.EINVAL
    assert run_filtered(program, "getppid") == 0
    with_audit = compile_bpf(
        resolve(profile, "p", DEBIAN_CAPS | {"CAP_AUDIT_WRITE"}, os.uname().machine, os.uname().release), "p"
    )
    assert run_filtered(with_audit, "socket-audit") != errno.EINVAL


def test_filter_for_spec_and_its_cache(tmp_path, monkeypatch):
    import aiocontain.seccomp

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(aiocontain.seccomp, "_compiled", {})
    monkeypatch.setattr(aiocontain.seccomp, "_encoded", {})
    assert filter_for(ContainerSpec(["true"], seccomp="unconfined")) is None
    assert filter_for(ContainerSpec(["true"], privileged=True)) is None
    first = filter_for(ContainerSpec(["true"]))
    assert first is not None
    files = list((tmp_path / "aiocontain" / "seccomp").iterdir())
    assert len(files) == 1 and files[0].suffix == ".bpf"
    assert filter_for(ContainerSpec(["true"], cap_add=["SYS_ADMIN"])) != first  # caps change the program
    assert len(list((tmp_path / "aiocontain" / "seccomp").iterdir())) == 2

    # A damaged cache file is compiled again and replaced, never installed (a fresh process: empty memos)
    files[0].write_bytes(b"garbage")
    monkeypatch.setattr(aiocontain.seccomp, "_compiled", {})
    monkeypatch.setattr(aiocontain.seccomp, "_encoded", {})
    assert filter_for(ContainerSpec(["true"])) == first
    assert files[0].read_bytes() != b"garbage"


def test_a_changed_profile_file_is_compiled_again_in_the_same_process(tmp_path, monkeypatch):
    """The process's memo of the encoded program is keyed by the profile file's identity and times: a profile
    rewritten in place gives the new program at the next container, not the old one."""
    import aiocontain.seccomp

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    profile = json.loads(Path(aiocontain.seccomp.DEFAULT_PROFILE).read_text())
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    monkeypatch.setattr(aiocontain.seccomp, "_encoded", {})
    monkeypatch.setattr(aiocontain.seccomp, "_SETTLED_NS", -1)  # as if written long ago: kept at once
    first = filter_for(ContainerSpec(["true"], seccomp=str(path)))
    assert len(aiocontain.seccomp._encoded) == 1  # kept: the next container pays a stat
    assert filter_for(ContainerSpec(["true"], seccomp=str(path))) == first
    profile["defaultErrnoRet"] = errno.EPERM if profile.get("defaultErrnoRet") != errno.EPERM else errno.ENOSYS
    with path.open("w") as f:  # the same file (inode), truncated and written
        f.write(json.dumps(profile))
    assert filter_for(ContainerSpec(["true"], seccomp=str(path))) != first


def test_default_profile_compiles_to_a_tree_with_the_same_decisions(monkeypatch):
    # The binary tree (libseccomp's optimize level 2) is what the kernel checks faster at install time; its
    # decisions must be the list's. Control: without the attribute the program is the plain list.
    from aiocontain.seccomp import libseccomp

    profile = PODMAN_PROFILE.read_bytes()
    resolved = resolve(profile, "p", DEBIAN_CAPS, os.uname().machine, os.uname().release)
    tree = compile_bpf(resolved, "p")
    monkeypatch.setattr(libseccomp.Filter, "optimize_as_tree", lambda self: False)
    listed = compile_bpf(resolved, "p")
    assert tree != listed
    for program in (tree, listed):
        assert run_filtered(program, "socket-audit") == errno.EINVAL
        assert run_filtered(program, "getppid") == 0


def test_a_program_past_the_kernels_limit_is_refused_before_the_call():
    """The program is copied into a buffer made once, of the kernel's maximum (BPF_MAXINSNS instructions): a
    longer one is refused as the kernel would refuse it (EINVAL), never written past the buffer."""
    from aiocontain import syscalls

    with pytest.raises(OSError) as refused:
        syscalls.set_seccomp_filter(b"\0" * 8 * 4097)
    assert refused.value.errno == errno.EINVAL
