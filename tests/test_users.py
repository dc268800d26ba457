"""--user and --group-add: who the command runs as, next to podman's (runc's) answer on the same rootfs.

podman 4.3 writes an entry for an unknown uid into the rootfs's own etc/passwd and group, so every
comparison gives each runtime a fresh rootfs of its own, aiocontain's first: what podman wrote never
changes what aiocontain reads.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aiocontain.forkserver import userns
from aiocontain.rootfs import init_rootfs
from tests.conftest import leftovers

pytestmark = pytest.mark.container

PROBE = 'id; grep -E "^(Uid|Gid|Groups|Cap[A-Za-z]+|Seccomp|NoNewPrivs):" /proc/self/status; echo "HOME=$HOME"'
MAPPING = userns.planned()
needs_subids = pytest.mark.skipif(MAPPING.mode != "subordinate", reason="the user has no subordinate ids")


@pytest.fixture
def fresh(tmp_path: Path):
    """A factory of busybox rootfs copies; extra_group: a line appended to its etc/group."""
    count = 0

    def make(extra_group: str = "") -> Path:
        nonlocal count
        count += 1
        root = tmp_path / f"root{count}"
        init_rootfs(root)
        if extra_group:
            with open(root / "etc" / "group", "a") as group:
                group.write(extra_group)
        return root

    return make


def both(cli, podman, fresh, *options: str, script: str = PROBE, extra_group: str = "") -> tuple[str, str | None]:
    """The probe's output under aiocontain and, where installed, podman, each on a fresh rootfs."""
    ours = cli("--net", "none", *options, "/bin/sh", "-c", script, rootfs_dir=fresh(extra_group))
    assert ours.code == 0, ours.stderr
    if shutil.which("podman") is None:
        return ours.stdout, None
    theirs = podman("--network", "none", *options, "/bin/sh", "-c", script, rootfs_dir=fresh(extra_group))
    assert theirs.code == 0, theirs.stderr
    return ours.stdout, theirs.stdout


def fields(output: str) -> dict[str, str]:
    found = {}
    for line in output.splitlines():
        key, sep, value = line.partition(":\t") if ":\t" in line else line.partition("=")
        if sep:
            found[key] = value.strip()
    return found


@pytest.fixture
def podman_or_none(request: pytest.FixtureRequest):
    if shutil.which("podman") is None:
        return None
    return request.getfixturevalue("podman")


@needs_subids
def test_numeric_user_unknown_to_passwd(cli, podman_or_none, fresh):
    ours, theirs = both(cli, podman_or_none, fresh, "--user", "1000")
    lines = ours.splitlines()
    assert lines[0] == "uid=1000(1000) gid=0(root) groups=0(root)"  # named through the container's passwd copy
    got = fields(ours)
    assert (got["Uid"], got["Gid"], got["Groups"], got["HOME"]) == ("1000\t1000\t1000\t1000", "0\t0\t0\t0", "0", "/")
    if theirs is not None:
        assert ours == theirs


@needs_subids
def test_named_user_with_groups_from_etc_group(cli, podman_or_none, fresh):
    # nobody is in wheel by name: a supplementary group, as libc's initgroups would give it
    ours, theirs = both(cli, podman_or_none, fresh, "--user", "nobody", extra_group="wheel:x:10:daemon,nobody\n")
    got = fields(ours)
    assert ours.splitlines()[0] == "uid=65534(nobody) gid=65534(nogroup) groups=10(wheel),65534(nogroup)"
    assert (got["Groups"], got["HOME"]) == ("10 65534", "/nonexistent")
    if theirs is not None:
        assert ours == theirs


@needs_subids
def test_user_and_group_with_group_add(cli, podman_or_none, fresh):
    ours, theirs = both(cli, podman_or_none, fresh, "--user", "1000:1000", "--group-add", "100")
    got = fields(ours)
    assert (got["Uid"].split()[0], got["Gid"].split()[0], got["Groups"]) == ("1000", "1000", "100 1000")
    if theirs is not None:
        assert ours == theirs


@needs_subids
def test_explicit_group_gives_no_supplementary_groups(cli, podman_or_none, fresh):
    ours, theirs = both(cli, podman_or_none, fresh, "--user", "nobody:root", extra_group="wheel:x:10:nobody\n")
    got = fields(ours)
    assert (got["Gid"].split()[0], got["Groups"], got["HOME"]) == ("0", "0", "/nonexistent")
    if theirs is not None:
        assert ours == theirs


@needs_subids
def test_non_root_user_has_no_capabilities_but_the_bounding_set(cli, podman_or_none, fresh):
    ours, theirs = both(cli, podman_or_none, fresh, "--user", "1000")
    got = fields(ours)
    assert got["CapPrm"] == got["CapEff"] == got["CapInh"] == got["CapAmb"] == "0000000000000000"
    assert got["CapBnd"] == "00000000800405fb"
    assert got["Seccomp"] == "2"  # the filter is installed although the user could not have installed it
    if theirs is not None:
        theirs_got = fields(theirs)
        assert {k: v for k, v in got.items() if k.startswith("Cap")} == {
            k: v for k, v in theirs_got.items() if k.startswith("Cap")
        }
    # control: as root (the default) the same probe shows the permitted and effective sets podman gives root
    root = fields(cli("--net", "none", "/bin/sh", "-c", PROBE, rootfs_dir=fresh()).stdout)
    assert root["CapEff"] == root["CapPrm"] == "00000000800405fb"


@needs_subids
@pytest.mark.parametrize("option", ["no-new-privileges", "seccomp=unconfined"])
def test_non_root_user_with_other_security_options(cli, fresh, option):
    # no_new_privs: the user is switched before the filter; unconfined: no filter at all
    result = cli("--net", "none", "--user", "1000", "--security-opt", option, "/bin/sh", "-c", PROBE)
    assert result.code == 0, result.stderr
    got = fields(result.stdout)
    assert (got["Uid"].split()[0], got["CapEff"]) == ("1000", "0000000000000000")
    assert got["Seccomp"] == ("2" if option == "no-new-privileges" else "0")
    assert got["NoNewPrivs"] == ("1" if option == "no-new-privileges" else "0")


@needs_subids
def test_the_user_cannot_write_what_root_owns(cli, fresh):
    # the identity is real: root's home (0700) is closed to uid 1000, open to root
    script = "touch /root/x 2>/dev/null && echo wrote || echo denied"
    assert cli("--net", "none", "--user", "1000", "/bin/sh", "-c", script, rootfs_dir=fresh()).stdout == "denied\n"
    assert cli("--net", "none", "/bin/sh", "-c", script, rootfs_dir=fresh()).stdout == "wrote\n"


@needs_subids
def test_home_from_passwd_unless_given(cli):
    result = cli("--net", "none", "--user", "nobody", "-e", "HOME=/tmp", "/bin/sh", "-c", "echo $HOME")
    assert (result.code, result.stdout) == (0, "/tmp\n"), result.stderr
    result = cli("--net", "none", "--user", "root", "/bin/sh", "-c", "echo $HOME")
    assert (result.code, result.stdout) == (0, "/root\n"), result.stderr


@needs_subids
def test_highest_mapped_uid_runs_and_the_next_is_refused(cli):
    top = MAPPING.highest_uid
    result = cli("--net", "none", "--user", str(top), "/bin/sh", "-c", "id -u")
    assert (result.code, result.stdout) == (0, f"{top}\n"), result.stderr
    before = leftovers()
    result = cli("--net", "none", "--user", str(top + 1), "/bin/true")
    assert result.code == 125
    assert result.stderr.count("\n") == 1 and "not mapped in the container" in result.stderr
    assert leftovers() == before  # podman's runc fails only at start, "unable to setup user: invalid argument"


@needs_subids
def test_tty_belongs_to_the_user(rootfs):
    from tests.test_terminal import Terminal, run_argv

    script = "ls -ln $(tty) | awk '{print $3}'"
    with Terminal(run_argv(rootfs, "-t", "--user", "1000", "/bin/sh", "-c", script)) as term:
        assert term.wait() == 0, term.seen
        assert term.seen.decode().split("\r\n")[0] == "1000", term.seen
    with Terminal(run_argv(rootfs, "-t", "/bin/sh", "-c", script)) as term:  # control: root's own otherwise
        assert term.wait() == 0, term.seen
        assert term.seen.decode().split("\r\n")[0] == "0", term.seen


def test_without_subordinate_ids_only_root_exists(rootfs):
    """A single-id mapping (here: aiocontain run as root of a user namespace of one id, as `unshare -r` makes
    it) has no uid 1000: refused before anything starts, in one line that says why."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed")
    base = [unshare, "--user", "--map-root-user", sys.executable, "-m", "aiocontain", "run", "--rootfs", str(rootfs)]
    base += ["--net", "none"]
    before = leftovers()
    result = subprocess.run([*base, "--user", "1000", "/bin/true"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 125, result.stderr
    assert result.stderr.count("\n") == 1
    assert "uid 1000 not mapped" in result.stderr and "without subordinate ids" in result.stderr
    group = subprocess.run([*base, "--user", "0:1", "/bin/true"], capture_output=True, text=True, timeout=60)
    assert (group.returncode, group.stderr.count("\n")) == (125, 1), group.stderr
    assert "gid 1 not mapped" in group.stderr  # uid 0 is there, gid 1 is not: refused by the same rule
    # control: root, and root's own group added, still run there (setgroups is denied, gid 0 is all there is)
    ok = subprocess.run(
        [*base, "--user", "0:0", "--group-add", "root", "/bin/sh", "-c", "id -u; id -G"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (ok.returncode, ok.stdout) == (0, "0\n0\n"), ok.stderr
    assert leftovers() == before


BAD = [
    (("--user", "bogus"), "unable to find user bogus"),
    (("--user", "1000:bogus"), "unable to find group bogus"),
    (("--user", "nobody", "--group-add", "bogus"), "unable to find group bogus"),
    (("--user", "-1"), "must be in range"),
    (("--user", "2147483648"), "must be in range"),
    (("--user", ""), "invalid --user"),
    (("--group-add", "keep-groups"), "keep-groups is not supported"),
]


@pytest.mark.parametrize(("options", "message"), BAD)
def test_bad_user_is_one_line(cli, podman_or_none, fresh, options, message):
    before = leftovers()
    result = cli("--net", "none", *options, "/bin/true")
    assert result.code == 125, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert leftovers() == before
    if podman_or_none is not None and options[1] != "" and "keep-groups" not in options:
        # podman refuses them too, a lookup only when it starts the container: 126 there, 125 for a bad number
        # (keep-groups it accepts; an empty --user is its default user)
        assert podman_or_none("--network", "none", *options, "/bin/true", rootfs_dir=fresh()).code in (125, 126)


def test_passwd_symlink_is_resolved_inside_the_rootfs(cli, fresh, tmp_path):
    """/etc/passwd -> ../../../../../../..(host path): the runtime must read the rootfs's file, never the host's."""
    root = fresh()
    outside = tmp_path / "outside-passwd"
    outside.write_text("evil:x:4242:4242::/evil:/bin/sh\n")
    passwd = root / "etc" / "passwd"
    passwd.unlink()
    passwd.symlink_to("../" * 20 + str(outside).lstrip("/"))
    result = cli("--net", "none", "--user", "evil", "/bin/true", rootfs_dir=root)
    assert result.code == 125 and "unable to find user evil" in result.stderr, result.stderr
    # control: the same link target inside the rootfs is the container's own file, and is read
    inside = root / str(outside).lstrip("/")
    inside.parent.mkdir(parents=True)
    inside.write_text(outside.read_text())
    result = cli("--net", "none", "--user", "evil", "/bin/sh", "-c", "id -u; echo $HOME", rootfs_dir=root)
    if MAPPING.mode == "subordinate":
        assert (result.code, result.stdout) == (0, "4242\n/evil\n"), result.stderr


def test_a_directory_swapped_for_a_symlink_while_passwd_is_read_cannot_lead_out(fresh, tmp_path, monkeypatch):
    """A running container's root (/proc/PID/root, which `exec -u` reads) is the container's to change while the
    runtime looks: its /etc turned into an absolute symlink just after a path is checked must not make the
    runtime read a host file. The kernel resolves the path within the root in one step (openat2), so no check
    comes first; the swap is made where a check-then-open would have left its window (the userspace resolver's
    return). Control: with that window, the host's file is what gets read."""
    from aiocontain import elf, syscalls, users

    root = fresh()
    host = tmp_path / "host-etc"
    host.mkdir()
    (host / "passwd").write_text("host-secret:x:4242:4242::/secret:/bin/sh\n")
    resolve = elf.resolve_in_rootfs

    def resolve_then_swap(rootfs, path):
        found = resolve(rootfs, path)
        if not (rootfs / "etc").is_symlink():
            (rootfs / "etc").rename(rootfs / "etc.real")
            (rootfs / "etc").symlink_to(host)  # absolute: a lookup from the host follows it to the host
        return found

    monkeypatch.setattr(elf, "resolve_in_rootfs", resolve_then_swap)
    text = users.read_text(root, "/etc/passwd")
    assert text is not None and "root:x:0:0" in text and "host-secret" not in text
    resolve_then_swap(root, "/")  # the container swaps it now: read again, the kernel resolves it within the root
    assert users.read_text(root, "/etc/passwd") is None  # /host-etc is no path inside the root

    def without_openat2(_root, _path, _flags):
        raise OSError(errno.ENOSYS, "openat2")

    (root / "etc").unlink()
    (root / "etc.real").rename(root / "etc")
    monkeypatch.setattr(syscalls, "open_in_root", without_openat2)
    assert "host-secret" in (users.read_text(root, "/etc/passwd") or "")  # the window, without openat2


def _rename_for_ever(directory: str) -> None:
    first, second = os.path.join(directory, "a"), os.path.join(directory, "b")
    open(first, "w").close()
    while True:
        os.rename(first, second)
        os.rename(second, first)


def test_a_rename_elsewhere_during_the_walk_does_not_hide_the_file(fresh, tmp_path):
    """openat2 with RESOLVE_IN_ROOT fails with EAGAIN when any rename on the system races a walk through `..`
    (an /etc/passwd -> ../../etc/x link, say): a busy host must not turn a user who exists into "unable to find
    user". Control: one try at a time does lose such races here; aiocontain's open retries them."""
    import ctypes
    import multiprocessing

    from aiocontain import syscalls

    root = fresh()
    (root / "etc" / "deep").mkdir()
    path = "/etc/deep/../../etc/deep/../passwd"
    renamer = multiprocessing.get_context("fork").Process(target=_rename_for_ever, args=(str(tmp_path),), daemon=True)
    renamer.start()
    directory = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        how = syscalls._OpenHow(os.O_RDONLY | os.O_CLOEXEC, 0, syscalls.RESOLVE_IN_ROOT)
        size, name = ctypes.sizeof(how), path.encode()
        for _ in range(200_000):  # the control: the race, seen with a single try
            fd = syscalls._libc.syscall(syscalls._SYS_OPENAT2, directory, name, ctypes.byref(how), size)
            if fd < 0 and ctypes.get_errno() == errno.EAGAIN:
                break
            os.close(fd)
        else:
            pytest.skip("no rename raced a walk in 200000 tries on this machine: nothing to retry")
        for _ in range(20_000):
            os.close(syscalls.open_in_root(directory, path, os.O_RDONLY | os.O_CLOEXEC))
    finally:
        os.close(directory)
        renamer.kill()
        renamer.join()


def test_passwd_fifo_does_not_block(cli, fresh):
    root = fresh()
    (root / "etc" / "passwd").unlink()
    os.mkfifo(root / "etc" / "passwd")
    result = cli("--net", "none", "--user", "nobody", "/bin/true", rootfs_dir=root, timeout=30)
    assert result.code == 125 and "unable to find user nobody" in result.stderr, result.stderr


@needs_subids
def test_rootfs_files_are_not_changed(cli, fresh):
    root = fresh()
    before = {name: (root / "etc" / name).read_text() for name in ("passwd", "group")}
    result = cli("--net", "none", "--user", "1234:4321", "/bin/sh", "-c", "id", rootfs_dir=root)
    assert result.stdout == "uid=1234(1234) gid=4321(4321) groups=4321(4321)\n", result.stderr
    assert {name: (root / "etc" / name).read_text() for name in ("passwd", "group")} == before


@needs_subids
def test_group_add_alone_keeps_root_with_only_that_group(cli, podman_or_none, fresh):
    ours, theirs = both(cli, podman_or_none, fresh, "--group-add", "100")
    got = fields(ours)
    assert (got["Uid"].split()[0], got["Gid"].split()[0], got["Groups"]) == ("0", "0", "100")
    assert got["CapEff"] == "00000000800405fb"
    if theirs is not None:
        assert ours == theirs


@needs_subids
@pytest.mark.anyio
async def test_embedded_user(rootfs, anyio_backend):
    import subprocess as sp

    from aiocontain import Container, ContainerSpec, NetworkMode

    spec = ContainerSpec(
        command=["/bin/sh", "-c", "id -u; id -G; echo $HOME; ulimit -n"],
        rootfs=rootfs,
        network=NetworkMode.NONE,
        user="nobody",
        group_add=["root"],
        ulimits=["nofile=77"],
        stdout=sp.PIPE,
    )
    async with Container(spec) as container:
        assert container.stdout is not None
        output = b""
        async for chunk in container.stdout:
            output += chunk
        status = await container.wait()
    assert status.code == 0
    assert output.decode().split("\n")[:4] == ["65534", "65534 0", "/nonexistent", "77"]


@needs_subids
def test_symlinked_passwd_is_read_but_never_replaced(cli, fresh):
    # etc/passwd -> ../usr/passwd: read through the link, and the link stays (no copy is mounted over it)
    root = fresh()
    (root / "usr" / "passwd").write_text((root / "etc" / "passwd").read_text())
    (root / "etc" / "passwd").unlink()
    (root / "etc" / "passwd").symlink_to("../usr/passwd")
    result = cli("--net", "none", "--user", "nobody", "/bin/sh", "-c", "echo $HOME", rootfs_dir=root)
    assert (result.code, result.stdout) == (0, "/nonexistent\n"), result.stderr
    result = cli("--net", "none", "--user", "1000", "/bin/sh", "-c", "id -u", rootfs_dir=root)
    assert (result.code, result.stdout) == (0, "1000\n"), result.stderr
    assert os.readlink(root / "etc" / "passwd") == "../usr/passwd"
