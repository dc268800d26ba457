"""``aiocontain doctor``: every host prerequisite is checked, and failures say how to fix them."""

from __future__ import annotations

import os
import pwd
import shutil
import struct
import sys
from pathlib import Path

import pytest

from aiocontain import doctor, elf, init_binary
from aiocontain.cgroups import hierarchy
from aiocontain.doctor import Check
from aiocontain.errors import AiocontainError

EXPECTED = {
    "user namespaces",
    "newuidmap",
    "newgidmap",
    "subuid",
    "subgid",
    "slirp4netns",
    "tun",
    "pasta",
    "init",
    "overlay",
    "cgroup v2",
    "libseccomp",
    "rootfs",
    "run server",
}


def user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def test_run_checks_covers_every_prerequisite(tmp_path: Path) -> None:
    checks = doctor.run_checks(tmp_path / "no-rootfs")
    assert [c.name for c in checks] == list(by_name(checks))  # one check per name
    assert set(by_name(checks)) == EXPECTED
    for check in checks:
        assert check.detail.strip(), check
        if not check.ok:
            assert check.fix, check
    optional = {
        "newuidmap",
        "newgidmap",
        "subuid",
        "subgid",
        "pasta",
        "init",
        "overlay",
        "cgroup v2",
        "run server",
    }  # containers run without them
    assert {c.name for c in checks if not c.required} == optional


def test_main_prints_one_line_per_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-rootfs"
    expected = doctor.run_checks(missing)
    code = doctor.main(missing)
    lines = capsys.readouterr().out.splitlines()
    verdicts = [line for line in lines if not line.startswith(" ")]
    assert len(verdicts) == len(expected)
    for line, check in zip(verdicts, expected, strict=True):
        verdict = "OK" if check.ok else "FAIL" if check.required else "MISSING"
        assert line.startswith(f"{verdict:<8}{check.name}: ")
    fixes = [line.strip() for line in lines if line.startswith(" ")]
    assert fixes == [f"fix: {c.fix}" for c in expected if not c.ok]
    assert code == 1  # the rootfs is missing, and that is required


def test_missing_rootfs_fails_with_the_init_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-rootfs"
    check = doctor.check_rootfs_arch(missing, is_default=False)
    assert not check.ok and check.required
    assert str(missing) in check.detail
    assert check.fix == f"aiocontain rootfs init {missing}"
    doctor.main(missing)
    out = capsys.readouterr().out
    assert f"FAIL    rootfs: rootfs {missing} does not exist" in out
    assert f"fix: aiocontain rootfs init {missing}" in out


def test_default_rootfs_fix_has_no_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOCONTAIN_ROOTFS", str(tmp_path / "default"))
    check = by_name(doctor.run_checks(tmp_path / "default"))["rootfs"]
    assert not check.ok and check.fix == "aiocontain rootfs init"


def test_rootfs_of_a_foreign_architecture_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    foreign, e_machine = ("s390x", 22) if elf.host_machine() in ("aarch64", "arm") else ("aarch64", 183)
    big = foreign == "s390x"
    ident = b"\x7fELF" + bytes([2, 2 if big else 1, 1]) + bytes(9)
    header = ident + struct.pack(">HH" if big else "<HH", 2, e_machine)  # e_type ET_EXEC, e_machine
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "busybox").write_bytes(header + bytes(44))
    (tmp_path / "bin" / "sh").symlink_to("/bin/busybox")
    monkeypatch.setattr(elf, "binfmt_handler", lambda machine, **_: None)
    check = doctor.check_rootfs_arch(tmp_path, is_default=False)
    assert not check.ok
    assert foreign in check.detail and elf.host_machine() in check.detail
    assert check.fix is not None and "qemu-user-static" in check.fix


def test_rootfs_of_the_host_architecture_passes(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "sh").write_bytes(Path(sys.executable).read_bytes()[:64])
    check = doctor.check_rootfs_arch(tmp_path, is_default=False)
    assert check.ok, check
    assert elf.host_machine() in check.detail


def test_tun_missing_or_unopenable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "TUN_PATH", tmp_path / "tun")
    check = doctor.check_tun()
    assert not check.ok
    assert check.fix is not None and f"chmod 0666 {tmp_path / 'tun'}" in check.fix
    (tmp_path / "tun").write_bytes(b"")
    assert doctor.check_tun().ok
    if os.getuid() != 0:  # root opens anything
        (tmp_path / "tun").chmod(0)
        check = doctor.check_tun()
        assert not check.ok and check.fix == f"sudo chmod 0666 {tmp_path / 'tun'}"


def test_tun_failure_shows_in_main(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(doctor, "TUN_PATH", tmp_path / "tun")
    assert doctor.main(tmp_path) == 1
    out = capsys.readouterr().out
    assert f"FAIL    tun: {tmp_path / 'tun'} does not exist" in out
    assert "chmod 0666" in out


def test_subids(tmp_path: Path) -> None:
    subuid = tmp_path / "subuid"
    check = doctor.check_subids("subuid", subuid)
    assert not check.ok and "does not exist" in check.detail
    usermod = f"sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user()}"
    assert check.fix == usermod
    subuid.write_text("someoneelse:100000:65536\n")
    check = doctor.check_subids("subuid", subuid)
    assert not check.ok and check.fix == usermod
    subuid.write_text(f"someoneelse:100000:65536\n{os.getuid()}:200000:65536\n")
    check = doctor.check_subids("subuid", subuid)
    assert check.ok and "65536 ids from 200000" in check.detail


def fake_slirp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    script = tmp_path / "slirp4netns"
    script.write_text(f"#!/bin/sh\necho 'slirp4netns version {version}'\necho 'commit: x'\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))


def test_slirp4netns_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_slirp(tmp_path, monkeypatch, "0.4.3")
    old = doctor.check_slirp4netns()
    assert not old.ok and "0.4.3" in old.detail and ">= 1.0" in old.detail
    assert old.fix is not None and "apt-get install slirp4netns" in old.fix
    fake_slirp(tmp_path, monkeypatch, "1.2.0")
    new = doctor.check_slirp4netns()
    assert new.ok and "1.2.0" in new.detail
    assert "no sandbox options in this build: it runs unsandboxed" in new.detail  # its --help names none
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    missing = doctor.check_slirp4netns()
    assert not missing.ok and missing.fix == "sudo apt-get install slirp4netns"


def test_id_map_tools_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    check = doctor.check_id_map_tool("newuidmap")
    assert not check.ok and check.fix == "sudo apt-get install uidmap"
    plain = tmp_path / "newuidmap"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o755)
    check = doctor.check_id_map_tool("newuidmap")
    assert not check.ok and check.fix == f"sudo chmod u+s {plain}"


def test_libseccomp_found_or_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiocontain.seccomp import libseccomp

    found = doctor.check_libseccomp()
    assert found.ok and found.detail.startswith("libseccomp.so.2 version 2."), found
    monkeypatch.setattr(libseccomp, "_lib", None)
    monkeypatch.setattr(libseccomp, "SONAME", "libseccomp-not-here.so.0")
    missing = doctor.check_libseccomp()
    assert not missing.ok and missing.fix == "sudo apt-get install libseccomp2"
    assert "libseccomp-not-here.so.0" in missing.detail


def test_userns_check_reports_the_real_attempt() -> None:
    check = doctor.check_userns()
    assert check.name == "user namespaces" and check.required
    if not check.ok:
        pytest.skip(f"this host refuses unprivileged user namespaces: {check.detail}")
    assert check.detail.startswith("unshare(CLONE_NEWUSER) works")


def test_userns_check_reports_a_refusal_with_its_fix() -> None:
    # user.max_user_namespaces is per user namespace: 0 in one of our own, and the check runs inside it.
    import subprocess

    code = "from aiocontain import doctor; c = doctor.check_userns(); print(c.ok); print(c.detail); print(c.fix)"
    script = 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"'
    argv = ["unshare", "-Ur", "sh", "-c", script, "sh", sys.executable, "-c", code]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    if proc.returncode != 0 and "unshare" in proc.stderr:
        pytest.skip(f"no user namespace of the test's own to refuse in: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    ok, detail, fix = proc.stdout.splitlines()
    assert ok == "False"
    assert detail.startswith("unshare(CLONE_NEWUSER) failed: ENOSPC"), detail
    assert "user.max_user_namespaces=0" in detail and "max_user_namespaces" in fix


def fake_cgroup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mountinfo: str, group: str) -> None:
    (tmp_path / "mountinfo").write_text(mountinfo)
    (tmp_path / "cgroup").write_text(f"0::{group}\n")
    monkeypatch.setattr(hierarchy, "MOUNTINFO_PATH", tmp_path / "mountinfo")
    monkeypatch.setattr(hierarchy, "PROC_CGROUP_PATH", tmp_path / "cgroup")


def test_cgroup_hybrid_host_is_an_optional_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cgroup(
        tmp_path,
        monkeypatch,
        "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
        "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
        "/",
    )
    check = doctor.check_cgroup()
    assert not check.ok and not check.required
    assert "cgroup v2 at /sys/fs/cgroup/unified (hybrid host" in check.detail
    assert "limits unavailable" in check.detail
    assert check.fix is not None and "systemd.unified_cgroup_hierarchy=1" in check.fix


def test_cgroup_v1_only_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cgroup(tmp_path, monkeypatch, "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n", "/")
    check = doctor.check_cgroup()
    assert not check.ok and not check.required and "v1" in check.detail


def make_group(path: Path, controllers: str = "", procs: str = "") -> Path:
    """A directory that looks like a cgroup2 group delegated to us (what discovery reads and checks)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "cgroup.controllers").write_text(controllers + "\n")
    (path / "cgroup.subtree_control").write_text("")
    (path / "cgroup.procs").write_text(procs)
    return path


def test_cgroup_delegated_unified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cgroupfs"
    group = make_group(root / "user.slice" / "app", "cpu memory pids")
    monkeypatch.setattr(hierarchy, "CGROUP_ROOT", root)
    fake_cgroup(tmp_path, monkeypatch, f"41 23 0:38 / {root} rw - cgroup2 cgroup2 rw\n", "/user.slice/app")
    check = doctor.check_cgroup()
    assert check.ok, check
    # user.slice has no cgroup.procs to write: the delegation starts at our own group
    assert check.detail == f"cgroup v2 at {root}: delegated subtree {group}, controllers cpu memory pids"
    make_group(root / "user.slice", "memory pids")
    check = doctor.check_cgroup()
    assert not check.ok and "cpu limits unavailable" in check.detail, check
    assert f"delegated subtree {root / 'user.slice'}," in check.detail
    assert check.fix is not None and "Delegate=cpu cpuset io memory pids" in check.fix


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anything: nothing is undelegated")
def test_cgroup_not_delegated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cgroupfs"
    group = make_group(root / "user.slice", "cpu memory pids")
    monkeypatch.setattr(hierarchy, "CGROUP_ROOT", root)
    fake_cgroup(tmp_path, monkeypatch, f"41 23 0:38 / {root} rw - cgroup2 cgroup2 rw\n", "/user.slice")
    (group / "cgroup.procs").chmod(0o444)
    check = doctor.check_cgroup()
    assert not check.ok and not check.required
    assert f"own cgroup {group} is not delegated" in check.detail
    assert check.fix is not None and "Delegate=yes" in check.fix


def test_exit_code_counts_only_required_failures(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    optional = Check("cgroup v2", False, "limits unavailable", "use Delegate=yes", required=False)
    passing = Check("tun", True, "opens", None)
    monkeypatch.setattr(doctor, "run_checks", lambda rootfs, **_: [passing, optional])
    assert doctor.main(tmp_path) == 0
    assert "MISSING cgroup v2: limits unavailable (optional: containers still run)" in capsys.readouterr().out
    required = Check("subuid", False, "no range", "sudo usermod ...")
    monkeypatch.setattr(doctor, "run_checks", lambda rootfs, **_: [passing, optional, required])
    assert doctor.main(tmp_path) == 1


def test_slirp4netns_sandbox_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("slirp4netns") is None:
        pytest.skip("slirp4netns is not installed")
    check = doctor.check_slirp4netns()
    assert check.ok and check.detail.endswith("--enable-sandbox and --enable-seccomp on"), check


def test_init_is_optional_and_names_its_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        init_binary.find()
    except AiocontainError:
        pytest.skip("no catatonit on this host")
    found = doctor.check_init()
    assert found.ok and found.detail.endswith("catatonit for --init") and not found.required
    monkeypatch.setattr(init_binary, "_PODMAN_PATH", str(tmp_path / "none"))
    monkeypatch.setenv("PATH", str(tmp_path))
    missing = doctor.check_init()
    assert not missing.ok and not missing.required
    assert missing.fix == "sudo apt-get install catatonit"


def test_pasta_is_optional_and_a_missing_one_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    found = doctor.check_pasta()
    assert found.ok and not found.required, found  # host-setup.sh installs passt
    monkeypatch.setenv("PATH", "/nonexistent")
    check = doctor.check_pasta()
    assert (check.ok, check.required, check.fix) == (False, False, "sudo apt-get install passt")


def test_overlay_needs_linux_5_11(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = os.uname_result(("Linux", "h", "5.10.0-28-amd64", "#1", "x86_64"))
    monkeypatch.setattr(doctor.os, "uname", lambda: fake)
    check = doctor.check_overlay()
    assert (check.ok, check.required) == (False, False) and "5.11" in check.detail and "--rootfs DIR:O" in check.detail
    monkeypatch.setattr(doctor.os, "uname", lambda: os.uname_result(("Linux", "h", "6.1.0-18-amd64", "#1", "x")))
    assert doctor.check_overlay().ok
