"""Files in and out, with real containers: -v, --mount, --tmpfs, --read-only and --rootfs DIR:O.

Each flag runs under aiocontain and, where podman is installed, under podman on the same
rootfs, and both must agree. A fresh rootfs each test: the checks on what reaches the
rootfs on disk must not see another test's mount points.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import cli_argv, leftovers

pytestmark = pytest.mark.container


@pytest.fixture
def root(tmp_path: Path) -> Path:
    from aiocontain.rootfs import init_rootfs

    path = tmp_path / "root"
    init_rootfs(path)
    return path


@pytest.fixture
def host_dir(tmp_path: Path) -> Path:
    path = tmp_path / "host"
    path.mkdir()
    (path / "f").write_text("from the host\n")
    return path


def tree(path: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry under path: its mode, size and link target, to tell whether anything was written."""
    found = {}
    for parent, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(parent, name)
            st = os.lstat(full)
            link = os.readlink(full) if os.path.islink(full) else ""
            found[os.path.relpath(full, path)] = (st.st_mode, 0 if stat.S_ISDIR(st.st_mode) else st.st_size, link)
    return found


def mount_line(output: str, target: str) -> list[str]:
    """The /proc/mounts fields (type and options, less the uid=/gid= a rootless tmpfs shows) at target."""
    for line in output.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] == target:
            options = [o for o in fields[3].split(",") if not o.startswith(("uid=", "gid="))]
            return [fields[2], *options]
    return []


WRITE = "echo written > {0}/new && cat {0}/f && echo ok || echo refused"


def test_a_volume_is_shared_with_the_host(cli, podman, root, host_dir):
    for run, name in ((cli, "aiocontain"), (podman, "podman")):
        result = run("-v", f"{host_dir}:/home", "/bin/sh", "-c", WRITE.format("/home"), rootfs_dir=root)
        assert (result.code, result.stdout) == (0, "from the host\nok\n"), (name, result)
        assert (host_dir / "new").read_text() == "written\n"
        (host_dir / "new").unlink()


def test_a_read_only_volume_refuses_writes_inside(cli, podman, root, host_dir):
    control = cli("-v", f"{host_dir}:/home", "/bin/sh", "-c", WRITE.format("/home"), rootfs_dir=root)
    assert control.stdout.endswith("ok\n")  # the same write, without ro, goes through
    (host_dir / "new").unlink()
    for run, name in ((cli, "aiocontain"), (podman, "podman")):
        result = run("-v", f"{host_dir}:/home:ro", "/bin/sh", "-c", WRITE.format("/home"), rootfs_dir=root)
        assert result.stdout == "refused\n" and "Read-only file system" in result.stderr, (name, result)
        assert not (host_dir / "new").exists()


def test_volume_and_mount_options_match_podman(cli, podman, root, host_dir):
    show = "grep -E ' /home | /mnt ' /proc/mounts"
    args = ("-v", f"{host_dir}:/home:ro,nosuid,nodev,noexec,Z", "--mount", f"type=bind,source={host_dir},target=/mnt")
    ours = cli(*args, "/bin/sh", "-c", show, rootfs_dir=root)
    assert ours.code == 0, ours
    assert {"ro", "nosuid", "nodev", "noexec"} <= set(mount_line(ours.stdout, "/home"))
    assert "rw" in mount_line(ours.stdout, "/mnt")
    theirs = podman(*args, "/bin/sh", "-c", show, rootfs_dir=root)
    assert theirs.code == 0, theirs
    for target in ("/home", "/mnt"):
        assert mount_line(ours.stdout, target) == mount_line(theirs.stdout, target), target


def test_propagation_options_are_applied(cli, root, host_dir):
    args = ("-v", f"{host_dir}:/home:rshared", "-v", f"{host_dir}:/mnt", "/bin/cat", "/proc/self/mountinfo")
    result = cli(*args, rootfs_dir=root)
    assert result.code == 0, result
    optional = {line.split()[4]: line.split(" - ")[0].split()[6:] for line in result.stdout.splitlines()}
    assert any(field.startswith("shared:") for field in optional["/home"])
    assert optional["/mnt"] == []  # private, the default (rprivate)


def test_tmpfs_matches_podman(cli, podman, root):
    show = "grep -E ' /home | /mnt ' /proc/mounts; ls -ld /mnt | cut -c1-10"
    args = ("--tmpfs", "/home", "--mount", "type=tmpfs,target=/mnt,tmpfs-size=1m,tmpfs-mode=700")
    ours = cli(*args, "/bin/sh", "-c", show, rootfs_dir=root)
    theirs = podman(*args, "/bin/sh", "-c", show, rootfs_dir=root)
    assert ours.code == 0 and "size=1024k" in ours.stdout and ours.stdout.endswith("drwx------\n"), ours
    assert mount_line(ours.stdout, "/home")[:3] == ["tmpfs", "rw", "nosuid"], ours
    for target in ("/home", "/mnt"):
        assert mount_line(ours.stdout, target) == mount_line(theirs.stdout, target), (ours, theirs)


def test_a_read_only_tmpfs_refuses_writes(cli, root):
    result = cli("--tmpfs", "/home:ro", "--tmpfs", "/mnt", "/bin/sh", "-c", "touch /home/x; touch /mnt/x && echo rw")
    assert result.stdout == "rw\n" and "/home/x: Read-only file system" in result.stderr, result


def test_read_only_root_with_tmpfs_as_podman(cli, podman, root):
    probe = "touch /root/x || echo root-ro; for d in /tmp /run /var/tmp; do touch $d/x && echo $d-rw; done"
    for run, name in ((cli, "aiocontain"), (podman, "podman")):
        result = run("--read-only", "/bin/sh", "-c", probe, rootfs_dir=root)
        assert result.stdout.split() == ["root-ro", "/tmp-rw", "/run-rw", "/var/tmp-rw"], (name, result)
    control = cli("/bin/sh", "-c", "touch /root/x && echo root-rw && rm /root/x", rootfs_dir=root)
    assert control.stdout == "root-rw\n"
    probe = "touch /run/x || echo run-ro"
    for run, name in ((cli, "aiocontain"), (podman, "podman")):
        result = run("--read-only", "--read-only-tmpfs=false", "/bin/sh", "-c", probe, rootfs_dir=root)
        assert result.stdout == "run-ro\n", (name, result)


def test_writes_under_an_overlay_do_not_reach_the_rootfs(cli, podman, root):
    before = tree(root)
    probe = "echo x > /root/new && rm /bin/ls && mkdir -p /made/here && ls /made && echo done"
    for run, name in ((cli, "aiocontain"), (podman, "podman")):
        result = run("/bin/sh", "-c", probe, rootfs_dir=Path(f"{root}:O"))
        assert (result.code, result.stdout) == (0, "here\ndone\n"), (name, result)
        assert tree(root) == before, name
    control = cli("/bin/sh", "-c", "echo x > /root/new", rootfs_dir=root)
    assert control.code == 0 and (root / "root" / "new").exists()  # the same write, without :O, stays


def test_read_only_makes_the_working_directory_first(cli, podman, root):
    """-w makes a missing directory (podman's --rootfs refuses one: 126), before the root turns read-only; every
    user inside may enter it, as without --read-only."""
    script = "pwd; stat -c %a /made .; touch x || echo ro"
    result = cli("--read-only", "-w", "/made/dir", "/bin/sh", "-c", script, rootfs_dir=root)
    assert result.stdout == "/made/dir\n755\n755\nro\n", result
    for run, name in ((cli, "aiocontain"), (podman, "podman")):  # an existing one, read-only, in both
        result = run("--read-only", "-w", "/root", "/bin/sh", "-c", "pwd; touch x || echo ro", rootfs_dir=root)
        assert result.stdout == "/root\nro\n", (name, result)


def test_the_default_rootfs_is_under_a_throwaway_overlay(root):
    """Without --rootfs, each container starts from the default rootfs and leaves it as it was."""
    before = tree(root)
    env = {**os.environ, "AIOCONTAIN_ROOTFS": str(root)}
    argv = cli_argv(root, "--net", "none", "/bin/sh", "-c", "rm /bin/ls && echo x > /root/new && echo done")
    del argv[argv.index("--rootfs") : argv.index("--rootfs") + 2]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert (result.returncode, result.stdout) == (0, "done\n"), result
    assert tree(root) == before


def test_mount_points_are_not_made_in_the_rootfs_on_disk(cli, root, host_dir):
    for name in ("proc", "sys", "dev", "tmp"):
        (root / name).rmdir()
    for name in ("hosts", "hostname", "resolv.conf"):
        (root / "etc" / name).unlink()
    before = tree(root)
    probe = "ls -d /proc/1 /sys/kernel /dev/null /tmp /data/f /scratch /etc/hosts /etc/hostname /etc/resolv.conf"
    args = ("-w", "/work/dir", "-v", f"{host_dir}:/data", "--tmpfs", "/scratch", "/bin/sh", "-c", probe)
    result = cli(*args, rootfs_dir=Path(f"{root}:O"))
    assert result.code == 0 and len(result.stdout.split()) == 9, result
    assert tree(root) == before
    result = cli(*args, rootfs_dir=root)  # the rootfs used directly: the missing mount points are made
    assert result.code == 0, result
    assert {"proc", "data", "scratch", "work/dir", "etc/hosts"} <= set(tree(root)) - set(before)


def test_existing_mount_points_are_bound_over_not_replaced(cli, root):
    """A rootfs used directly: its /etc files are mounted over, and a symlinked one is bound through where it
    leads inside the root; the link and the file stay as they were on disk."""
    (root / "etc" / "hosts").unlink()
    (root / "etc" / "hosts.real").write_text("on disk\n")
    (root / "etc" / "hosts").symlink_to("/etc/hosts.real")  # absolute: the container's /etc, not the host's
    before = tree(root)
    result = cli("--net", "none", "--hostname", "h", "/bin/sh", "-c", "cat /etc/hostname /etc/hosts", rootfs_dir=root)
    assert result.code == 0 and result.stdout.startswith("h\n127.0.0.1\tlocalhost\n"), result
    assert tree(root) == before
    assert (root / "etc" / "hosts").is_symlink() and (root / "etc" / "hosts.real").read_text() == "on disk\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("-v", "/nonexistent-aiocontain:/data"), "cannot bind /nonexistent-aiocontain at /data"),
        (("--mount", "type=bind,source=/nonexistent-aiocontain,target=/data"), "cannot bind /nonexistent-aiocontain"),
        (("-v", "/tmp:data"), "is not an absolute path"),
        (("-v", "/tmp:/data:colour"), "unknown option 'colour'"),
        (("--tmpfs", "/data:bogus=1"), "unknown option 'bogus=1'"),
        (("--mount", "type=volume,target=/data"), "unsupported mount type"),
        (("-v", "vol:/data"), "named volumes are not supported"),
    ],
)
def test_bad_mounts_are_one_line_and_leave_nothing(cli, root, args, message):
    before = tree(root)
    state = leftovers()
    result = cli(*args, "/bin/true", rootfs_dir=root)
    assert result.code == 125 and result.stdout == "", result
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("aiocontain: ") and message in result.stderr
    assert leftovers() == state and tree(root) == before


def test_an_overlay_on_a_missing_directory_is_one_line(cli, podman, tmp_path):
    state = leftovers()
    result = cli("/bin/true", rootfs_dir=Path(f"{tmp_path}/missing:O"))
    assert result.code == 125 and result.stderr.count("\n") == 1 and "does not exist" in result.stderr, result
    assert leftovers() == state and not (tmp_path / "missing").exists()
    assert podman("/bin/true", rootfs_dir=Path(f"{tmp_path}/missing:O")).code == 125


def test_a_sigkilled_runtime_leaves_no_upper_layer(root, fork_server):
    state = leftovers()
    marker = "aiocontain-upper-" + os.urandom(4).hex()
    argv = cli_argv(Path(f"{root}:O"), "--net", "none", "/bin/sh", "-c", f"touch /{marker}; echo up; exec sleep 60")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"up\n"
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    found = [  # the runtime directories, where the upper layer's mount point is: empty on the host
        os.path.join(parent, name)
        for runtime_dir in Path(base).glob("aiocontain-*")
        for parent, dirs, files in os.walk(runtime_dir)
        for name in dirs + files
        if name == marker
    ]
    assert found == []
    proc.send_signal(signal.SIGKILL)
    assert proc.stdout.read() == b""  # end of file: every process of the container that held it is gone
    proc.wait()
    proc.stdout.close()
    assert proc.stderr is not None
    proc.stderr.close()
    assert not (root / marker).exists()
    assert leftovers()["mounts"] == state["mounts"]


@pytest.mark.anyio
async def test_spec_mounts_when_embedded(root, host_dir):
    import subprocess as sp

    from aiocontain import Container, ContainerSpec
    from aiocontain.mounts import Mount
    from aiocontain.plugins import BindMount

    spec = ContainerSpec(
        ["/bin/sh", "-c", "cat /home/f; touch /home/x || echo ro; grep ' /mnt ' /proc/mounts | cut -d' ' -f3"],
        rootfs=root,
        network="none",
        mounts=[BindMount(str(host_dir), "/home"), Mount("tmpfs", "/mnt", type="tmpfs")],
        stdout=sp.PIPE,
        stderr=sp.DEVNULL,
    )
    async with Container(spec) as container:
        assert container.stdout is not None
        output = b"".join([chunk async for chunk in container.stdout])
        status = await container.wait()
    assert (status.code, output) == (0, b"from the host\nro\ntmpfs\n")
