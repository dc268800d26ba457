"""scripts/vm_console.py: the VM tier's relay of the guest's output, and its report on a guest gone quiet.

The report is made for a stall that CI meets rarely, so what it reads is pinned down here: QEMU's register dump
(as QEMU 7.2 prints it, trimmed), and the relay's silence and exit code on a real child process. QEMU's
monitor is a small QMP server of the test's own, at the protocol's boundary.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "vm_console.py"

# CPU 0 spins in the kernel with interrupts off, CPU 1 is idle, CPU 2 runs a user process.
REGISTERS = """\
CPU#0
RAX=0000000000000001 RBX=ff32bc910125adb4 RCX=ff32bc913e620b00 RDX=0000000000000001
RIP=ffffffff8107a1a4 RFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0
CS =0010 0000000000000000 ffffffff 00af9b00 DPL=0 CS64 [-RA]
CPU#1
RIP=ffffffff81c00012 RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1
CPU#2
RIP=00007fb425568008 RFL=00000206 [-----P-] CPL=3 II=0 A20=1 SMM=0 HLT=0
"""


@pytest.fixture(scope="module")
def console() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vm_console", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["vm_console"] = module
    spec.loader.exec_module(module)
    return module


def test_each_cpu_is_told_by_where_it_runs_and_whether_it_takes_interrupts(console: ModuleType) -> None:
    assert console.describe_cpus(REGISTERS) == [
        "CPU 0: in the kernel at 0xffffffff8107a1a4, interrupts OFF",
        "CPU 1: idle (halted)",
        "CPU 2: in a user process at 0x7fb425568008",
    ]


def test_a_kernel_cpu_with_interrupts_on(console: ModuleType) -> None:
    registers = "CPU#0\nRIP=ffffffff8107a401 RFL=00000202 CPL=0 HLT=0\nCPU#1\nno registers\n"
    assert console.describe_cpus(registers) == ["CPU 0: in the kernel at 0xffffffff8107a401, interrupts on"]


def test_samples_tell_a_cpu_stuck_in_one_place_from_a_busy_one(console: ModuleType) -> None:
    stuck, idle = "CPU 0: in the kernel at 0x1, interrupts OFF", "CPU 1: idle (halted)"
    samples = [[stuck, idle], [stuck, "CPU 1: in a user process at 0x2"], [stuck, idle]]
    assert console.tally(samples) == [
        f"{stuck} (3 of 3 samples)",
        "CPU 1: idle (halted) (2 of 3 samples)",
        "CPU 1: in a user process at 0x2 (1 of 3 samples)",
    ]


def _qmp_server(path: str, seen: list[dict[str, object]]) -> socket.socket:
    """A QMP server that answers one connection as QEMU does: a greeting, then a reply for each command."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)

    def serve() -> None:
        connection, _ = server.accept()
        with connection, connection.makefile("rwb") as stream:
            stream.write(b'{"QMP": {"version": {}, "capabilities": []}}\n')
            stream.flush()
            for line in stream:
                request = json.loads(line)
                seen.append(request)
                if request["execute"] == "human-monitor-command":
                    # an event may come before a reply: it is not the reply
                    stream.write(b'{"event": "RTC_CHANGE", "data": {}}\n')
                    stream.write(json.dumps({"return": REGISTERS}).encode() + b"\n")
                else:
                    stream.write(b'{"return": {}}\n')
                stream.flush()

    threading.Thread(target=serve, daemon=True).start()
    return server


def test_the_report_asks_qemu_and_presses_sysrq_l_then_w_at_the_full_level(console: ModuleType, tmp_path: Path) -> None:
    seen: list[dict[str, object]] = []
    path = str(tmp_path / "qmp.sock")
    with _qmp_server(path, seen):
        lines = console.report(path, 180)
    assert lines[0] == "vm: the guest has printed nothing for 180 s; where its CPUs are:"
    assert lines[1] == "vm:   CPU 0: in the kernel at 0xffffffff8107a1a4, interrupts OFF (5 of 5 samples)"
    samples = ["human-monitor-command"] * console.SAMPLES
    assert [request["execute"] for request in seen] == ["qmp_capabilities", *samples, *["send-key"] * 4]
    keys = [[key["data"] for key in request["arguments"]["keys"]] for request in seen[-4:]]  # type: ignore[index]
    # the console's level to all messages first, and back to the tier's after
    assert keys == [["alt", "sysrq", key] for key in ("9", "l", "w", "4")]


def test_a_monitor_that_does_not_answer_is_one_line_not_an_error(console: ModuleType, tmp_path: Path) -> None:
    lines = console.report(str(tmp_path / "absent.sock"), 180)
    assert len(lines) == 2 and lines[1].startswith("vm: QEMU's monitor did not answer (")


def test_the_relay_reports_each_silence_and_passes_the_exit_code_on(console: ModuleType, tmp_path: Path) -> None:
    program = "import sys, time; print('a', flush=True); time.sleep(1.5); print('b'); sys.exit(7)"
    command = [sys.executable, "-c", program]
    script = [sys.executable, str(SCRIPT), "--qmp", str(tmp_path / "absent.sock"), "--quiet", "0.5"]
    script += ["--", *command]
    done = subprocess.run(script, capture_output=True, text=True, timeout=60)
    lines = done.stdout.splitlines()
    assert done.returncode == 7
    assert lines[0] == "a" and lines[-1] == "b"
    reports = [line for line in lines if line.startswith("vm: the guest has printed nothing for 0 s")]
    assert 1 <= len(reports) <= console.REPORTS
