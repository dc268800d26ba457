"""Runtime directories: a runtime SIGKILLed during set-up leaves one, and the next start sweeps it."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from aiocontain.runtimedir import PREFIX, RuntimeDir, sweep
from tests.conftest import cli_argv


def test_a_directory_whose_owner_lives_is_kept_and_a_dead_owners_is_swept(tmp_path):
    live = RuntimeDir.create(str(tmp_path), "live")
    # A dead owner: made and locked in a child process that has exited (the kernel dropped its lock).
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "from aiocontain.runtimedir import RuntimeDir; import sys;"
            f"print(RuntimeDir.create({str(tmp_path)!r}, 'dead').path)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = Path(child.stdout.strip())
    (dead / "hosts").write_text("left behind")
    assert dead.is_dir()
    assert sweep(str(tmp_path)) == [dead.name]
    assert not dead.exists() and live.path.is_dir()
    live.remove()
    assert not live.path.exists()
    live.remove()  # idempotent


_OUT_OF_FDS = r"""
import os, sys
from aiocontain.runtimedir import RuntimeDir
first, second = (RuntimeDir.create(sys.argv[1], name) for name in ("first", "second"))
(first.path / "etc").mkdir()
(first.path / "etc" / "hosts").write_text("x")
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
first.remove()  # out of fds: rmtree cannot open the directory
print("kept while out of fds:", first.path.exists())
for fd in held:
    os.close(fd)
second.remove()  # the next removal in this process tries again
print("gone after:", not first.path.exists() and not second.path.exists())
"""


def test_a_directory_that_could_not_be_removed_out_of_fds_is_removed_by_the_next_removal(tmp_path):
    done = subprocess.run([sys.executable, "-c", _OUT_OF_FDS, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # the first line is the control: the process really was out of fds when it first tried
    assert done.stdout.splitlines() == ["kept while out of fds: True", "gone after: True"]
    assert list(tmp_path.iterdir()) == []


def test_another_users_or_unrelated_directories_are_not_swept(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / f"{PREFIX}file").write_text("not a directory")
    (tmp_path / f"{PREFIX}link").symlink_to(tmp_path / "other")
    assert sweep(str(tmp_path)) == []
    assert sorted(os.listdir(tmp_path)) == sorted(["other", f"{PREFIX}file", f"{PREFIX}link"])


@pytest.mark.container
def test_a_runtime_killed_during_set_up_leaves_a_directory_the_next_run_sweeps(rootfs, tmp_path):
    # slirp4netns that says it started, then never gets ready: set-up waits with the runtime directory in place.
    started = tmp_path / "started"
    os.mkfifo(started)
    fake = tmp_path / "bin" / "slirp4netns"
    fake.parent.mkdir()
    script = f'[ "$1" = --help ] && exit 0\necho up > {started}\nexec cat <&3 >/dev/null\n'  # ends with its exit fd
    fake.write_text("#!/bin/sh\n" + script)
    fake.chmod(0o755)
    base = tmp_path / "run"
    base.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(base), "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    reader = os.open(started, os.O_RDONLY | os.O_NONBLOCK)
    proc = subprocess.Popen(
        cli_argv(rootfs, "--network-timeout", "60", "true"),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert select.select([reader], [], [], 30)[0], "the fake slirp4netns never started"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        os.close(reader)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = [name for name in os.listdir(base) if name.startswith(PREFIX)]
    assert len(left) == 1, left  # what the killed runtime could not remove
    done = subprocess.run(
        cli_argv(rootfs, "--net", "none", "true"), env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert [name for name in os.listdir(base) if name.startswith(PREFIX)] == []  # swept; the records directory stays
