"""process.terminal: the pty is the container's own (its devpts), its master handed over --console-socket as
runc does (one SCM_RIGHTS message, no reply, before create exits), as conmon expects it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.oci_support import Engine, engine, make_bundle

pytestmark = pytest.mark.container
assert engine


def _read_all(fd: int) -> bytes:
    """Everything the container writes to its terminal, until its slave is closed (EIO on a pty master)."""
    data = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            return data
        if not chunk:
            return data
        data += chunk


def test_the_master_comes_over_the_console_socket(engine: Engine, rootfs: Path, tmp_path: Path) -> None:
    script = "tty; stty size; echo uid=$(stat -c %u $(tty)); ls -1 /dev/pts; read line; echo got $line"
    bundle = make_bundle(
        tmp_path / "b",
        rootfs,
        ["/bin/sh", "-c", script],
        process={"terminal": True, "consoleSize": {"height": 33, "width": 101}},
    )
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "console.sock"))
    listener.listen(1)
    with listener:
        created = engine.create(
            "tty", bundle, "--console-socket", str(tmp_path / "console.sock"), "--pid-file", str(tmp_path / "pid")
        )
        assert created.code == 0, created.stderr
        connection, _ = listener.accept()  # create connected and sent before it exited
        with connection:
            name, fds, _, _ = socket.recv_fds(connection, 1024, 4)
            assert connection.recv(1) == b""  # one message, then create closed its end
    assert name == b"/dev/pts/0" and len(fds) == 1
    master = fds[0]
    try:
        assert engine.oci("start", "tty").code == 0
        os.write(master, b"hello\n")
        output = _read_all(master).decode()
    finally:
        os.close(master)
    assert engine.wait(int((tmp_path / "pid").read_text())) == 0
    lines = [line for line in output.replace("\r", "").splitlines() if line and line != "hello"]
    # The container's own devpts: its pty is number 0 and the only one, whatever the host has open.
    assert lines == ["/dev/pts/0", "33 101", "uid=0", "0", "ptmx", "got hello"], output
    assert (bundle / "output").read_text() == ""  # stdio went to the terminal, not to create's files
    assert engine.oci("delete", "tty").code == 0
