"""What config.json asks for holds inside: the process object, seccomp, paths, namespaces, id maps, fds.

Each probe runs inside a real container and, where practical, also without the setting (the control), so
the test shows the setting made the difference.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.oci_support import CAPABILITIES, CONFIG, RUNTIME, Engine, engine, make_bundle

pytestmark = pytest.mark.container
assert engine


def _run(engine: Engine, tmp_path: Path, rootfs: Path, script: str, name: str = "c", **changes: Any) -> tuple[int, str]:
    """Create, start and reap one container running `sh -c script`; its exit status and output."""
    bundle = make_bundle(tmp_path / name, rootfs, ["/bin/sh", "-c", script], **changes)
    created = engine.create(name, bundle, "--pid-file", str(tmp_path / f"{name}.pid"))
    assert created.code == 0, created.stderr
    assert engine.oci("start", name).code == 0
    status = engine.wait(int((tmp_path / f"{name}.pid").read_text()))
    assert status is not None
    assert engine.oci("delete", name).code == 0
    return status, (bundle / "output").read_text()


def test_user_groups_umask_cwd_env(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    process = {
        "user": {"uid": 1000, "gid": 1001, "additionalGids": [5, 1002], "umask": 0o077},
        "cwd": "/tmp/work",
        "env": ["PATH=/bin:/usr/bin", "GREETING=hi there"],
    }
    script = "echo $(id -u) $(id -g) $(id -G); umask; pwd; echo $GREETING"
    status, output = _run(engine, tmp_path, rootfs, script, process=process)
    assert status == 0, output
    assert output.splitlines() == ["1000 1001 1001 5 1002", "0077", "/tmp/work", "hi there"]


def test_capabilities_and_no_new_privileges(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    script = "grep -E '^(CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status"
    caps = {"bounding": ["CAP_KILL", "CAP_NET_RAW"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]}
    caps["ambient"] = caps["inheritable"] = ["CAP_KILL"]
    process = {"user": {"uid": 1000, "gid": 1000}, "capabilities": caps, "noNewPrivileges": True}
    status, output = _run(engine, tmp_path, rootfs, script, process=process)
    assert status == 0, output
    fields = dict(line.split(":\t") for line in output.splitlines())
    kill, net_raw = 1 << 5, 1 << 13
    assert int(fields["CapBnd"], 16) == kill | net_raw
    assert int(fields["CapEff"], 16) == kill and int(fields["CapAmb"], 16) == kill  # kept by uid 1000 (ambient)
    assert fields["NoNewPrivs"] == "1"
    control_status, control = _run(engine, tmp_path, rootfs, script, name="control")  # podman's default set
    control_fields = dict(line.split(":\t") for line in control.splitlines())
    assert control_status == 0 and int(control_fields["CapBnd"], 16) == 0x800405FB
    assert control_fields["NoNewPrivs"] == "0"


def test_rlimits(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    process = {
        "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 77, "hard": 88}, {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}]
    }
    status, output = _run(engine, tmp_path, rootfs, "ulimit -n; ulimit -Hn; ulimit -c", process=process)
    assert status == 0 and output.split() == ["77", "88", "0"], output


def test_seccomp_in_the_oci_format(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """A profile that denies mkdir with EPERM (and chmod with EACCES, by argument): mkdir fails inside;
    the same container without the profile makes the directory."""
    seccomp = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_AARCH64"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {
                "names": ["fchmodat", "chmod"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 13,
                "args": [{"index": 2 if os.uname().machine != "x86_64" else 1, "value": 0o700, "op": "SCMP_CMP_EQ"}],
            },
        ],
    }
    script = (
        "mkdir /tmp/d && echo made; touch /tmp/f; chmod 700 /tmp/f && echo chmod700; chmod 755 /tmp/f && echo chmod755"
    )
    status, output = _run(engine, tmp_path, rootfs, script, linux={"seccomp": seccomp})
    assert status == 0, output  # chmod 755, the last command, was allowed
    assert "Operation not permitted" in output and "made" not in output, output
    assert "chmod700" not in output and "chmod755" in output, output
    _, control = _run(engine, tmp_path, rootfs, script, name="control")
    assert "made" in control and "chmod700" in control, control


def test_masked_readonly_and_read_only_root(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    script = (
        "cat /proc/interrupts | wc -c; ls /sys/firmware | wc -l; "
        "(echo 1 > /proc/sys/net/ipv4/ip_forward) 2>/dev/null && echo sys-writable; "
        "(touch /rootfile) 2>/dev/null && echo root-writable; touch /tmp/ok && echo tmp-writable; "
        "hostname; cat /proc/sys/kernel/domainname"
    )
    (rootfs / "rootfile").unlink(missing_ok=True)
    paths = {"maskedPaths": ["/proc/interrupts", "/sys/firmware"], "readonlyPaths": ["/proc/sys"]}
    root = {"path": str(rootfs), "readonly": True}
    # CAP_NET_ADMIN: the container's root may change its network namespace's sysctls, but for the mount
    caps = {name: [*CAPABILITIES, "CAP_NET_ADMIN"] for name in ("bounding", "effective", "permitted")}
    process = {"capabilities": caps}
    _, output = _run(
        engine, tmp_path, rootfs, script, root=root, domainname="example.test", linux=paths, process=process
    )
    assert output.split() == ["0", "0", "tmp-writable", "ocitest", "example.test"], output
    assert not (rootfs / "rootfile").exists()
    no_paths = {"maskedPaths": [], "readonlyPaths": []}
    _, control = _run(engine, tmp_path, rootfs, script, name="control", linux=no_paths, process=process)
    assert (
        int(control.split()[0]) > 0
        and int(control.split()[1]) > 0
        and "sys-writable" in control
        and "root-writable" in control
    ), control
    (rootfs / "rootfile").unlink()


def test_sysctl(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    sysctl = {"net.ipv4.ip_forward": "1", "kernel.msgmax": "4096"}
    _, output = _run(
        engine, tmp_path, rootfs, "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/msgmax", linux={"sysctl": sysctl}
    )
    assert output.split() == ["1", "4096"]


def test_a_user_namespace_with_mappings(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """A user namespace of the container's own, mapped from the engine's ids (its subordinate range)."""
    namespaces = [*CONFIG["linux"]["namespaces"], {"type": "user"}]
    maps = [{"containerID": 0, "hostID": 0, "size": 1}, {"containerID": 1, "hostID": 1000, "size": 2000}]
    linux = {"namespaces": namespaces, "uidMappings": maps, "gidMappings": maps}
    # the rootfs belongs to the engine's root (the test user): mapped to 0 inside, so still root's
    _, output = _run(
        engine, tmp_path, rootfs, "cat /proc/self/uid_map /proc/self/gid_map; id -u; stat -c %u /bin", linux=linux
    )
    lines = [line.split() for line in output.splitlines()]
    assert lines == [["0", "0", "1"], ["1", "1000", "2000"], ["0", "0", "1"], ["1", "1000", "2000"], ["0"], ["0"]]


def test_a_user_namespace_that_does_not_map_the_engine(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """The container's root is not the owner of the state directory (0700): the exec fifo, opened by create
    before the namespace exists, still reaches it."""
    namespaces = [*CONFIG["linux"]["namespaces"], {"type": "user"}]
    maps = [{"containerID": 0, "hostID": 1000, "size": 2000}]
    linux = {"namespaces": namespaces, "uidMappings": maps, "gidMappings": maps}
    status, output = _run(engine, tmp_path, rootfs, "cat /proc/self/uid_map; id -u", linux=linux)
    assert status == 0 and [line.split() for line in output.splitlines()] == [["0", "1000", "2000"], ["0"]]
    assert oct(engine.root.stat().st_mode & 0o777) == "0o700"


@pytest.mark.parametrize("propagation", ["rshared", "rprivate", "runbindable"])
def test_rootfs_propagation(engine: Engine, rootfs: Path, tmp_path: Path, propagation: str) -> None:
    """linux.rootfsPropagation on the new root, applied after pivot_root (which refuses a shared root)."""
    script = "awk '$5 == \"/\" {print $7}' /proc/self/mountinfo"
    status, output = _run(engine, tmp_path, rootfs, script, linux={"rootfsPropagation": propagation})
    tag = output.strip()
    # (rslave cannot be told from rprivate here: the engine's mount namespace has nothing to be a slave of)
    expected = {"rshared": "shared:", "rprivate": "-", "runbindable": "unbindable"}
    assert status == 0 and tag.startswith(expected[propagation]), output


def test_joining_a_network_namespace_by_path(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """podman hands the runtime a network namespace it made: the container joins it, not a new one."""
    os.mkfifo(tmp_path / "holder")
    engine.run(
        "/bin/sh",
        "-c",
        f"unshare --net sh -c 'echo $$ $(readlink /proc/self/ns/net) >{tmp_path}/holder; exec sleep 100' "
        ">/dev/null 2>&1 &",
    )
    holder_text, wanted = (tmp_path / "holder").read_text().split()  # blocks until it is in its namespace
    holder = int(holder_text)
    try:
        namespaces = [ns for ns in CONFIG["linux"]["namespaces"] if ns["type"] != "network"]
        namespaces.append({"type": "network", "path": f"/proc/{holder}/ns/net"})
        _, output = _run(engine, tmp_path, rootfs, "readlink /proc/self/ns/net", linux={"namespaces": namespaces})
        assert output.strip() == wanted
        _, control = _run(engine, tmp_path, rootfs, "readlink /proc/self/ns/net", name="control")
        assert control.strip() != wanted
    finally:
        os.kill(holder, 9)
        engine.wait(holder)


def test_preserved_fds(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """--preserve-fds 1: fd 3 of create reaches the process; fd 4 (not preserved) does not."""
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/sh", "-c", "echo through3 >&3; echo through4 >&4"])
    out3, out4 = tmp_path / "three", tmp_path / "four"
    command = (
        f"exec 3>{out3} 4>{out4}; {RUNTIME} --root {engine.root} create --bundle {bundle} --preserve-fds 1 "
        f"--pid-file {tmp_path}/pid fds >/dev/null 2>{tmp_path}/err"
    )
    assert engine.run("/bin/sh", "-c", command).code == 0
    assert engine.oci("start", "fds").code == 0
    assert engine.wait(int((tmp_path / "pid").read_text())) != 0  # fd 4 is closed: its echo fails
    assert out3.read_text() == "through3\n" and out4.read_text() == ""
    assert engine.oci("delete", "fds").code == 0


def test_devices_and_tmpcopyup(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """linux.devices are bound in from the host (no mknod in a user namespace); a tmpcopyup tmpfs starts
    with what the image had at its place."""
    mounts = [*CONFIG["mounts"], {"destination": "/etc", "type": "tmpfs", "source": "tmpfs", "options": ["tmpcopyup"]}]
    devices = [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}] if os.path.exists("/dev/fuse") else []
    script = "test -s /etc/passwd && echo copied; grep -c ' /etc tmpfs' /proc/mounts; ls /dev"
    _, output = _run(engine, tmp_path, rootfs, script, mounts=mounts, linux={"devices": devices})
    lines = output.split()
    assert lines[:2] == ["copied", "1"], output
    assert {"null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm"} <= set(lines)
    if devices:
        assert "fuse" in lines


def test_an_image_whose_dev_is_a_symlink_gets_its_dev_inside_the_root(
    engine: Engine, rootfs: Path, tmp_path: Path
) -> None:
    """An image's /dev that is a symlink to a host directory: /dev's tmpfs, devices and links are made where
    the link leads inside the root, as the container sees it, never in the host directory (runc 1.1's
    setup of /dev's links made them there, and podman here runs it). The control: the
    container's /dev is the link, and its devices and links work through it."""
    image = tmp_path / "image"
    shutil.copytree(rootfs, image, symlinks=True)
    host = tmp_path / "host"
    host.mkdir()
    shutil.rmtree(image / "dev")
    (image / "dev").symlink_to(host)
    # No /tmp tmpfs: it would cover the link's target inside the root, and /dev with it.
    mounts = [entry for entry in CONFIG["mounts"] if entry["destination"] != "/tmp"]
    script = "readlink /dev; echo x > /dev/null && echo null-ok; test -L /dev/fd && ls /dev/fd/ > /dev/null && echo fd"
    status, output = _run(engine, tmp_path, image, script, mounts=mounts)
    assert status == 0 and output.split() == [str(host), "null-ok", "fd"], output
    assert os.listdir(host) == []
    assert (image / host.relative_to("/")).is_dir()  # the /dev tmpfs's mount point, made inside the root


def test_a_session_keyring_of_its_own(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """The inherited session keyring is the engine's, whose keys the container would possess: each container
    joins one of its own, named after it, unless --no-new-keyring."""
    # Each its own id: a container's keyring outlives it until the kernel's key garbage collection runs.
    for flags, cid, expected in (((), "krnew", "1"), (("--no-new-keyring",), "krkept", "0")):
        script = f"grep -c '_ses.{cid}' /proc/keys"
        bundle = make_bundle(tmp_path / cid, rootfs, ["/bin/sh", "-c", script], linux={"maskedPaths": []})
        assert engine.create(cid, bundle, *flags, "--pid-file", str(tmp_path / "pid")).code == 0
        assert engine.oci("start", cid).code == 0
        engine.wait(int((tmp_path / "pid").read_text()))
        assert (bundle / "output").read_text().strip() == expected, flags
        assert engine.oci("delete", cid).code == 0


def test_bind_options_on_a_host_mount(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """strictatime cannot change a host mount's locked atime flags from a user namespace: it keeps its own
    and the rest (ro, nosuid) still applies, as podman's engine expects of a bind with default options."""
    shared = tmp_path / "shared"
    shared.mkdir()
    options = ["rbind", "nosuid", "strictatime", "ro", "mode=755"]
    mounts = [
        *CONFIG["mounts"],
        {"destination": "/tmp/shared", "type": "bind", "source": str(shared), "options": options},
    ]
    script = "(touch /tmp/shared/x) 2>/dev/null || echo read-only; grep ' /tmp/shared ' /proc/mounts | cut -d' ' -f4"
    status, output = _run(engine, tmp_path, rootfs, script, mounts=mounts)
    lines = output.split()
    assert status == 0 and lines[0] == "read-only" and {"ro", "nosuid"} <= set(lines[1].split(",")), output
    assert not (shared / "x").exists()


def test_no_pivot(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """--no-pivot (roots on a ramfs, where pivot_root cannot work): the root is moved over / and chrooted;
    the container sees its own root all the same."""
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/sh", "-c", "ls /; hostname"])
    assert engine.create("np", bundle, "--no-pivot", "--pid-file", str(tmp_path / "pid")).code == 0
    assert engine.oci("start", "np").code == 0
    assert engine.wait(int((tmp_path / "pid").read_text())) == 0
    output = (bundle / "output").read_text().split()
    assert sorted(output[:-1]) == sorted(path.name for path in rootfs.iterdir()) and output[-1] == "ocitest"
    assert engine.oci("delete", "np").code == 0


def test_a_process_setting_that_fails_says_so(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    """An rlimit above what the engine's own hard limit allows cannot be applied inside: the container's
    process says which setting failed (not the program's name) and never runs the program."""
    hard = int(engine.run("/bin/sh", "-c", "ulimit -Hn").stdout)
    process = {"rlimits": [{"type": "RLIMIT_NOFILE", "soft": hard + 1, "hard": hard + 1}]}
    status, output = _run(engine, tmp_path, rootfs, "echo ran", process=process)
    assert status == 1 and f"cannot set RLIMIT_NOFILE to {hard + 1}:{hard + 1}" in output, output
    assert "ran" not in output
