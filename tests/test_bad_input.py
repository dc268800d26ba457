"""Bad input: one clear line, exit 125 (126/127 for the command), no traceback, nothing left behind."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Result, leftovers

pytestmark = pytest.mark.container


def run(*args: str, env: dict[str, str] | None = None, prefix: list[str] | None = None) -> Result:
    argv = [*(prefix or []), sys.executable, "-m", "aiocontain", "run", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(result: Result, *needles: str, code: int = 125) -> None:
    assert result.code == code, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("aiocontain: ")
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.fixture(autouse=True)
def nothing_left_behind():
    before = leftovers()
    yield
    assert leftovers() == before


def test_missing_rootfs(tmp_path):
    missing = tmp_path / "nope"
    assert_one_line_error(run("--rootfs", str(missing), "true"), str(missing), f"aiocontain rootfs init {missing}")


def test_a_symlink_loop_as_rootfs_is_named(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert_one_line_error(run("--rootfs", str(loop), "true"), f"rootfs {loop} is a symlink loop")


@pytest.mark.parametrize("kind", ["unwritable", "missing"])
def test_an_unusable_xdg_runtime_dir_is_refused(rootfs, tmp_path, kind):
    base = tmp_path / "run"
    if kind == "unwritable":
        base.mkdir(mode=0o500)
    result = run("--rootfs", str(rootfs), "--net", "none", "true", env={**os.environ, "XDG_RUNTIME_DIR": str(base)})
    assert_one_line_error(result, f"XDG_RUNTIME_DIR {base} is not a directory this user can write")


def test_a_records_directory_that_refuses_the_record_is_one_line(rootfs, tmp_path):
    # Everything is set up when the record is written, just before the command is released: the error undoes it.
    base = tmp_path / "run"
    base.mkdir(mode=0o700)
    (base / "aiocontain.containers").mkdir(mode=0o500)
    result = run("--rootfs", str(rootfs), "--net", "none", "true", env={**os.environ, "XDG_RUNTIME_DIR": str(base)})
    assert_one_line_error(result, f"cannot record the container in {base / 'aiocontain.containers'}: Permission")
    assert sorted(p.name for p in base.iterdir()) == ["aiocontain.containers"]


@pytest.mark.parametrize("workdir", ["/etc/passwd", "/etc/passwd/below"])
def test_a_workdir_that_is_a_file_is_not_a_directory_126(rootfs, workdir):
    result = run("--rootfs", str(rootfs), "--net", "none", "-w", workdir, "true")
    assert_one_line_error(result, f"the working directory {workdir} is not a directory", code=126)


def test_empty_rootfs(tmp_path):
    assert_one_line_error(run("--rootfs", str(tmp_path), "true"), f"aiocontain rootfs init {tmp_path}")


def test_empty_default_rootfs_names_the_command_that_fills_it(tmp_path):
    (tmp_path / "README.md").write_text("placeholder")
    result = run("true", env={**os.environ, "AIOCONTAIN_ROOTFS": str(tmp_path)})
    assert_one_line_error(result, "aiocontain rootfs init")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--mtu", "70000"], "invalid MTU 70000"),
        (["--mtu", "abc"], "invalid int value"),
        (["--net", "bridge"], "invalid choice"),
        (["--hostname", "bad_host!"], "invalid hostname"),
        (["--name", "bad/name"], "invalid container name"),
        (["-w", "relative/dir"], "invalid working directory"),
        (["-e", "=x"], "invalid --env"),
        (["--stop-timeout", "-1"], "invalid stop timeout"),
        (["--network-timeout", "-3"], "invalid network timeout"),
        (["--network-timeout", "0"], "invalid network timeout 0.0"),
        (["--net", "none", "--mtu", "1500"], "--mtu sets tap0's MTU, which --net none has none of"),
        (["--net", "host", "--mtu", "65520"], "--mtu sets tap0's MTU, which --net host has none of"),
        (["--memory", "2x"], "invalid --memory '2x'"),
        (["-m", "0"], "must be more than 0 bytes"),
        (["--memory=-5m"], "invalid --memory '-5m'"),
        (["--memory", ""], "invalid --memory ''"),
        (["--memory-swap", "4m"], "--memory-swap needs --memory"),
        (["-m", "4m", "--memory-swap", "2m"], "less than --memory"),
        (["-m", "4m", "--memory-swap", "lots"], "invalid --memory-swap 'lots'"),
        (["--pids-limit", "-2"], "invalid --pids-limit -2"),
        (["--pids-limit", "ten"], "invalid int value"),
        (["--cpus", "0"], "invalid --cpus"),
        (["--cpus", "1000"], "invalid --cpus"),
        (["--cgroups", "split"], "invalid choice"),
        (["--cgroups", "disabled", "-m", "2m"], "--cgroups=disabled"),
        (["--cgroup-parent", "relative/dir"], "not an absolute path"),
    ],
)
def test_invalid_options(rootfs, args, needle):
    assert_one_line_error(run("--rootfs", str(rootfs), *args, "true"), needle)


def test_no_command(rootfs):
    assert_one_line_error(run("--rootfs", str(rootfs)), "no command given")


# 64-bit machines to choose a foreign one from: (name as `uname -m` spells it, e_machine, big-endian)
FOREIGN_CANDIDATES = [("aarch64", 183, False), ("s390x", 22, True), ("riscv64", 243, False), ("ppc64le", 21, False)]


def test_foreign_architecture_is_named(tmp_path):
    # A machine this host cannot run: not its own and served by no binfmt_misc handler (with one, e.g.
    # qemu-user-static's, aiocontain rightly lets the binary through).
    from aiocontain import elf
    from aiocontain.rootfs import init_rootfs

    foreign = [(name, em, big) for name, em, big in FOREIGN_CANDIDATES if not elf.runs_on_host(name)]
    if not foreign:
        pytest.skip("every candidate machine runs here (natively or through a binfmt_misc handler)")
    name, e_machine, big = foreign[0]
    root = tmp_path / "root"
    init_rootfs(root)
    binary = root / "bin" / "foreign"
    ident = b"\x7fELF" + bytes([2, 2 if big else 1, 1]) + bytes(9)  # ELFCLASS64, the byte order, EV_CURRENT
    binary.write_bytes(ident + struct.pack(">HH" if big else "<HH", 2, e_machine) + bytes(44))  # ET_EXEC
    binary.chmod(0o755)
    result = run("--rootfs", str(root), "--net", "none", "/bin/foreign")
    assert_one_line_error(result, name, elf.host_machine())


def test_slirp4netns_missing(rootfs, tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}
    assert_one_line_error(run("--rootfs", str(rootfs), "true", env=env), "slirp4netns is not installed", "--net none")


@pytest.mark.parametrize("level", ["warning", "info"])
def test_slirp4netns_failing_early_is_one_line_with_its_stderr(rootfs, tmp_path, level):
    # warning: readiness by slirp4netns's ready fd, which sees end of file; info: by rtnetlink events
    fake = tmp_path / "slirp4netns"
    fake.write_text("#!/bin/sh\necho 'fake failure: cannot join namespace' >&2\nexit 3\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    result = run("--rootfs", str(rootfs), "--log-level", level, "--log-format", "json", "true", env=env)
    assert result.code == 125, result
    assert all(line.startswith("{") for line in result.stderr.splitlines()), result.stderr  # JSON lines only
    errors = [event for event in result.events() if event["event"] == "aiocontain.error"]
    assert len(errors) == 1, result.stderr
    assert "slirp4netns exited early with status 3: fake failure" in str(errors[0]["message"])


# A slirp4netns that gets ready only after DELAY seconds: it waits on its exit fd (the runtime going away ends
# it at once), then becomes the real one with the same arguments.
SLOW_SLIRP = """#!{python}
import os, select, sys
REAL, DELAY = {real!r}, {delay}
if "--help" not in sys.argv and "--version" not in sys.argv:
    exit_fd = int(next(arg for arg in sys.argv if arg.startswith("--exit-fd=")).split("=", 1)[1])
    if select.select([exit_fd], [], [], DELAY)[0]:
        sys.exit(0)
os.execv(REAL, [REAL, *sys.argv[1:]])
"""


@pytest.mark.parametrize("level", ["warning", "info"])
@pytest.mark.parametrize("timeout, ready", [("1", False), ("30", True)])
def test_network_timeout_is_applied(rootfs, tmp_path, level, timeout, ready):
    # warning: readiness by slirp4netns's ready fd; info: by rtnetlink events. tap0 comes up 4 s late: within
    # --network-timeout 30 the run goes on (the control), within 1 it fails with the clear error. The default,
    # 10 s, would let it through: so a timeout that is not applied fails the test, and nothing is timed.
    import shutil

    real = shutil.which("slirp4netns")
    assert real is not None
    fake = tmp_path / "slirp4netns"
    fake.write_text(SLOW_SLIRP.format(python=sys.executable, real=real, delay=4))
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    args = ("--rootfs", str(rootfs), "--log-level", level, "--network-timeout", timeout, "true")
    result = run(*args, env=env)
    if ready:
        assert result.code == 0, result
    else:
        errors = [line for line in result.stderr.splitlines() if "aiocontain:" in line]
        assert result.code == 125 and len(errors) == 1, result.stderr
        assert errors[0] == (
            "aiocontain: tap0 did not come up with its IPv6 address and route within 1s"
            " (fix: check slirp4netns (aiocontain doctor), or run with --ipv6=false)"  # IPv6 is on by default
        )


def test_user_namespaces_disabled(rootfs):
    # user.max_user_namespaces is per user namespace: set it to 0 in one of our own, then run inside it.
    script = 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"'
    prefix = ["unshare", "-Ur", "sh", "-c", script, "sh"]
    result = run("--rootfs", str(rootfs), "--net", "none", "true", prefix=prefix)
    assert_one_line_error(result, "cannot create the container's namespaces", "user.max_user_namespaces")


def test_failing_command_in_a_missing_workdir_parent_is_created(rootfs):
    # podman creates a missing working directory rather than failing; like the rest of the tree, every user
    # inside may enter it and its parents
    result = run("--rootfs", str(rootfs), "--net", "none", "-w", "/new/dir", "/bin/sh", "-c", "pwd; stat -c %a /new .")
    assert (result.code, result.stdout.split()) == (0, ["/new/dir", "755", "755"]), result


def test_unknown_subcommand_is_125():
    proc = subprocess.run([sys.executable, "-m", "aiocontain", "frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 125
    assert "Traceback" not in proc.stderr


def test_rootfs_path_is_a_file(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    assert_one_line_error(run("--rootfs", str(file), "true"), str(file))


def test_error_leaves_no_runtime_dir(rootfs):
    # a failure after the runtime dir exists (the command is missing) still removes it
    before = _own_runtime_dirs()
    result = run("--rootfs", str(rootfs), "--net", "none", "missing-cmd")
    assert_one_line_error(result, "missing-cmd: command not found", code=127)
    assert _own_runtime_dirs() == before


def _own_runtime_dirs() -> set[str]:
    """This user's: another user's containers (a concurrent run) come and go in /tmp as they please."""
    found = set()
    for path in Path("/tmp").glob("aiocontain-*"):
        try:
            if path.lstat().st_uid == os.getuid():
                found.add(path.name)
        except FileNotFoundError:
            continue
    return found


def test_oversized_environment_is_refused_in_one_line(rootfs):
    big = ["-e" + f"BIG{i}=" + "x" * 100_000 for i in range(3)]  # each argument under exec's 128 KiB limit
    assert_one_line_error(run("--rootfs", str(rootfs), *big, "true"), "too large")


def cgroup2_tree() -> list[str]:
    """Every group of every cgroup2 mount: a refused run must not have made one."""
    from aiocontain.cgroups import hierarchy

    return sorted(root for mount in hierarchy.mounts() for root, _dirs, _files in os.walk(mount.point))


def test_limits_on_a_host_without_usable_cgroup_v2_name_cause_and_fix(rootfs):
    from aiocontain.cgroups import hierarchy

    found = hierarchy.mounts()
    if not hierarchy.is_hybrid(found):
        pytest.skip("this host is not hybrid: the VM tier covers limits on cgroup v2")
    before = cgroup2_tree()
    result = run("--rootfs", str(rootfs), "--net", "none", "--memory", "2m", "true")
    assert_one_line_error(result, "hybrid", "cgroup v1", "systemd.unified_cgroup_hierarchy=1", "--cgroups=disabled")
    assert cgroup2_tree() == before


@pytest.mark.parametrize("unlimited", [[], ["--pids-limit", "-1"], ["--pids-limit", "0"]], ids=["none", "-1", "0"])
def test_hybrid_host_runs_without_limits_and_without_a_cgroup(rootfs, unlimited):
    # No limit asked for (podman's default pids limit is only where the controller is; -1 and 0 are no limit):
    # nothing to refuse, and no group is made on the hugetlb-only cgroup2 either.
    before = cgroup2_tree()
    options = ("--net", "none", "--log-level", "debug", "--log-format", "json", *unlimited)
    result = run("--rootfs", str(rootfs), *options, "true")
    assert result.code == 0, result
    skipped = [e for e in result.events() if e["event"] == "stage.skipped"]
    from aiocontain.cgroups import hierarchy

    if hierarchy.is_hybrid(hierarchy.mounts()):
        assert [e["stage"] for e in skipped if e["stage"] == "cgroup"] == ["cgroup"]
    assert cgroup2_tree() == before


@pytest.mark.parametrize(
    "parent, needle",
    [
        ("/tmp", "not a cgroup v2 directory"),
        ("/nonexistent/group", "no such directory"),
        ("/proc/self/cgroup", "no such directory"),
    ],
)
def test_cgroup_parent_that_is_not_a_cgroup2_directory(rootfs, parent, needle):
    assert_one_line_error(run("--rootfs", str(rootfs), "--cgroup-parent", parent, "-m", "2m", "true"), parent, needle)


def test_cgroup_parent_not_writable(rootfs):
    from aiocontain.cgroups import hierarchy

    found = hierarchy.mounts()
    if not found or os.geteuid() == 0:
        pytest.skip("needs a cgroup2 mount that this user does not own")
    before = cgroup2_tree()
    point = str(found[0].point)
    result = run("--rootfs", str(rootfs), "--cgroup-parent", point, "-m", "2m", "true")
    assert_one_line_error(result, f"--cgroup-parent {point}: not writable by", "sudo chown")
    assert cgroup2_tree() == before


@pytest.mark.parametrize("tool", ["newuidmap", "newgidmap"])
def test_a_failing_id_map_helper_is_one_line_with_its_stderr(rootfs, tmp_path, tool):
    # It maps the fork server's user namespace once, before the first container: its failure is that one's.
    from aiocontain import subids

    if not subids.ranges(os.getuid(), Path("/etc/subuid")):
        pytest.skip("without subordinate ids the helpers are not used")
    fake = tmp_path / tool
    fake.write_text(f"#!/bin/sh\necho '{tool}: uid range not allowed' >&2\nexit 1\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    result = run("--rootfs", str(rootfs), "--net", "none", "true", env=env)
    assert_one_line_error(result, f"{tool} failed: {tool}: uid range not allowed", "/etc/subuid")


def test_a_root_that_cannot_be_built_is_one_line_and_leaves_nothing(tmp_path):
    # PID 1 builds its root before the release: its failure comes back as the release's error.
    from tests.conftest import rootfs_with_symlinked_tmp

    root = rootfs_with_symlinked_tmp(tmp_path)
    result = run("--rootfs", str(root), "--net", "none", "true")
    assert_one_line_error(result, "tmp in the root filesystem is a symlink")


def test_too_few_file_descriptors_is_one_line(rootfs):
    # A hard limit too low for even one container: said in one line, never as "unexpected error" or a traceback.
    result = run("--rootfs", str(rootfs), "--net", "none", "true", prefix=["prlimit", "--nofile=12:12"])
    assert_one_line_error(result, "too many open files (this process's limit is 12")
