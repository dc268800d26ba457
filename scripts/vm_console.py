"""The VM tier's console: relay the guest's output, and say where a guest that has gone quiet is.

Usage: vm_console.py --qmp SOCKET [--quiet SECONDS] -- COMMAND...

Runs COMMAND (the `timeout ... vng ...` that boots the guest, with QEMU's QMP socket at SOCKET) with its
stdout and stderr through one pipe, copied to ours as they come; exits with its exit code. QEMU opens
/proc/self/fd/1 and /proc/self/fd/2 again by path for the guest's output: on a regular file (a CI log) each
open truncates it and the writers overwrite each other. On a pipe neither happens.

A guest whose tests stall prints its own report (a Python dump 30 s past a test's timeout, or the kernel's
soft lockup and RCU stall messages). A guest stalled so that neither comes (its CPUs spinning with interrupts
off, or every process stopped) would only be killed by the boot's timeout, saying nothing. So when the guest
has printed nothing for SECONDS (default 180, past both of its own reports), this asks QEMU five times where
each virtual CPU is (idle, in a user process, or in the kernel: the address, fixed by booting without KASLR, and
whether it takes interrupts), then presses SysRq-l and SysRq-w on the guest's keyboard (every CPU's backtrace,
and the tasks blocked in the kernel; SysRq-9 before them and SysRq-4 after, for the console's level), which
the guest prints if its kernel still takes interrupts. At most three reports a boot.

The samples are where QEMU stopped each CPU to read it: under TCG, a CPU that runs a busy process is often
caught in the kernel at a device access (a clock read, say) with interrupts off, where QEMU serves the monitor.
A CPU stuck in one place shows there in every sample; the guest's own backtraces, when they come, say more.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

REPORTS = 3
SAMPLES = 5  # register dumps a report, 0.2 s apart
_REGISTER = re.compile(r"\b(RIP|RFL|CPL|HLT)=(\w+)")
_IF = 0x200  # RFLAGS' interrupt flag


def describe_cpus(registers: str) -> list[str]:
    """One line a CPU from QEMU's ``info registers -a``: where it runs, whether it takes interrupts."""
    lines = []
    for block in re.split(r"^CPU#", registers, flags=re.MULTILINE)[1:]:
        number = block.split(None, 1)[0]
        values = dict(_REGISTER.findall(block))
        if "RIP" not in values:
            continue
        rip, flags = int(values["RIP"], 16), int(values.get("RFL", "0"), 16)
        if values.get("HLT") == "1":
            lines.append(f"CPU {number}: idle (halted)")
        elif values.get("CPL") == "3":
            lines.append(f"CPU {number}: in a user process at {rip:#x}")
        else:
            interrupts = "on" if flags & _IF else "OFF"
            lines.append(f"CPU {number}: in the kernel at {rip:#x}, interrupts {interrupts}")
    return lines


def tally(samples: list[list[str]]) -> list[str]:
    """The samples' lines, each once in order of first sight, with how many samples saw it: one sample can
    catch a busy CPU on its way through the kernel; a CPU stuck in one place is there in every sample."""
    counts: dict[str, int] = {}
    for sample in samples:
        for line in sample:
            counts[line] = counts.get(line, 0) + 1
    return [f"{line} ({count} of {len(samples)} samples)" for line, count in counts.items()]


class Monitor:
    """A QMP connection to QEMU: human monitor commands and key presses."""

    def __init__(self, path: str, timeout: float = 10) -> None:
        self._sock = socket.socket(socket.AF_UNIX)
        self._sock.settimeout(timeout)
        self._sock.connect(path)
        self._buffer = b""
        self._read()  # the greeting
        self._call("qmp_capabilities")

    def close(self) -> None:
        self._sock.close()

    def human(self, command: str) -> str:
        return str(self._call("human-monitor-command", {"command-line": command}))

    def keys(self, *names: str) -> None:
        self._call("send-key", {"keys": [{"type": "qcode", "data": name} for name in names]})

    def _call(self, name: str, arguments: dict[str, object] | None = None) -> object:
        request: dict[str, object] = {"execute": name}
        if arguments is not None:
            request["arguments"] = arguments
        self._sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            reply = self._read()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise OSError(f"QMP {name}: {reply['error']}")
            # an asynchronous event: not the reply

    def _read(self) -> dict[str, object]:
        while b"\n" not in self._buffer:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise OSError("QMP: QEMU closed the connection")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return dict(json.loads(line))


def report(qmp: str, quiet: float) -> list[str]:
    """Where the quiet guest's CPUs are, and the SysRq keys pressed; never raises."""
    lines = [f"vm: the guest has printed nothing for {quiet:.0f} s; where its CPUs are:"]
    try:
        monitor = Monitor(qmp)
        try:
            samples = []
            for _ in range(SAMPLES):
                samples.append(describe_cpus(monitor.human("info registers -a")))
                time.sleep(0.2)
            lines += ["vm:   " + line for line in tally(samples)]
            # The console's level up to all messages (the handlers print below the tier's loglevel=4), every
            # CPU's backtrace, the tasks blocked in the kernel, and the level back down.
            for key in ("9", "l", "w", "4"):
                monitor.keys("alt", "sysrq", key)
                time.sleep(1)  # one key at a time: the guest's handler reads them in order
            lines.append("vm: pressed SysRq-l and SysRq-w; the guest prints what they show if it takes interrupts")
        finally:
            monitor.close()
    except OSError as exc:
        lines.append(f"vm: QEMU's monitor did not answer ({exc})")
    return lines


def relay(argv: Sequence[str], qmp: str, quiet: float) -> int:
    """Run argv with its output copied to ours; a report at each `quiet` seconds of silence, REPORTS at most."""
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        out = proc.stdout.fileno()
        made = 0
        with selectors.DefaultSelector() as selector:
            selector.register(out, selectors.EVENT_READ)
            while True:
                if not selector.select(quiet if made < REPORTS else None):
                    made += 1
                    text = "\n".join(report(qmp, quiet)) + "\n"
                    sys.stdout.buffer.write(text.encode())
                    sys.stdout.buffer.flush()
                    continue
                chunk = os.read(out, 65536)
                if not chunk:
                    break
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
    return proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--qmp", required=True, help="QEMU's QMP socket, as the command starts it")
    parser.add_argument("--quiet", type=float, default=180, help="seconds of silence before a report")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args()
    return relay(args.command, args.qmp, args.quiet)


if __name__ == "__main__":
    sys.exit(main())
