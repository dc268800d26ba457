"""A stand-in for podman and conmon in the OCI runtime's tests: runs ``aiocontain-oci`` commands on request.

Run as a script inside ``unshare --map-root-user --map-users=... --map-groups=... --mount``, as podman runs
its runtime (root of the user's namespace, with the subordinate ids mapped), it is a child subreaper like
conmon: a container's process, reparented to it once ``create`` exits, stays its child until it reaps it.
Requests and replies are JSON lines on stdin and stdout:

- ``{"argv": [...], "timeout": S}``: run a command and reply ``{"code", "stdout", "stderr"}``; with
  ``"output": PATH`` its stdout and stderr go to that file instead (create: the container inherits them);
- ``{"wait": PID, "timeout": S}``: reap that container process; reply ``{"status"}`` (its exit code, 128+N
  for a signal) or ``{"status": null}`` on timeout (pidfd: no polling);
- ``{"exited": PID, "timeout": S}``: whether it ended, leaving it a zombie; ``{"children": 1}``: our living children.

At end of input it kills and reaps every child it still has.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36


def run(request: dict[str, object]) -> dict[str, object]:
    argv = [str(arg) for arg in request["argv"]]  # type: ignore[attr-defined]
    if request.get("output"):
        return run_to_file(argv, str(request["output"]), float(request.get("timeout") or 60))  # type: ignore[arg-type]
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=float(request.get("timeout") or 60),  # type: ignore[arg-type]
            input=str(request.get("input") or ""),
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        return {"code": None, "stdout": str(exc.stdout or ""), "stderr": str(exc.stderr or "")}
    return {"code": result.returncode, "stdout": result.stdout, "stderr": result.stderr}


def run_to_file(argv: list[str], output: str, timeout: float) -> dict[str, object]:
    """As conmon runs create: stdout and stderr a file the container's process inherits (a pipe would stay
    open for as long as the container lives), and done when the command exits."""
    with open(output, "wb") as sink:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink)
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return {"code": None, "stdout": "", "stderr": ""}
    return {"code": code, "stdout": "", "stderr": ""}


def wait(pid: int, timeout: float) -> dict[str, object]:
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return {"status": None, "error": "no such process"}
    try:
        if not select.select([pidfd], [], [], timeout)[0]:
            return {"status": None}
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return {"status": None, "error": "not our child"}
    finally:
        os.close(pidfd)
    return {"status": os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)}


def exited(pid: int, timeout: float) -> dict[str, object]:
    """Whether the process has ended (its pidfd turns readable), without reaping it: a zombie stays."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return {"exited": True}
    try:
        return {"exited": bool(select.select([pidfd], [], [], timeout)[0])}
    finally:
        os.close(pidfd)


def children(zombies: bool = False) -> list[int]:
    """Our direct children that live (with zombies: also those ended and not reaped), from /proc."""
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rindex(b")") + 2 :].split()
            if int(fields[1]) == me and (zombies or fields[0] != b"Z"):
                found.append(int(name))
    return found


def main() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    sys.stdout.write(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        request = json.loads(line)
        if "wait" in request:
            reply = wait(int(request["wait"]), float(request.get("timeout") or 30))
        elif "exited" in request:
            reply = exited(int(request["exited"]), float(request.get("timeout") or 30))
        elif "children" in request:
            reply = {"children": children()}
        else:
            reply = run(request)
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    for pid in children(zombies=True):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    while True:
        try:
            os.wait()
        except ChildProcessError:
            break


if __name__ == "__main__":
    main()
