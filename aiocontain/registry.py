"""Records of this user's containers: what ``aiocontain ps``, ``stop``, ``logs``, ``inspect`` and ``attach`` find.

One JSON file a container, ``ID.json`` in ``aiocontain.containers`` of the user's runtime directory (else a
directory of the user's own in the temporary directory), written atomically (a temporary file renamed over it)
by the process that runs the container, its monitor (the CLI, a detached monitor, an embedding program), once
set-up is done, and removed when the container is torn down. A detached container's record stays, with its
exit code, until ``aiocontain rm`` (as podman keeps exited containers); its output is ``ID.log`` beside it.

What is written is never trusted for the state: a container runs only while its PID 1 (pid and start time,
from /proc, on the boot that wrote the record) and its monitor both live. A monitor killed with SIGKILL takes
its container down (its fork server kills PID 1 once the monitor is gone), so a record whose monitor is
gone is exited at once; one from before a reboot names another boot and is exited too. A record that is not
to be kept (a foreground run, ``--rm``) and whose monitor died without removing it is removed by the next
listing.

Stdlib-only and import-light: the light subcommands (ps, kill, logs) use it without anyio.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import signal
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiocontain import names, proc
from aiocontain.errors import AiocontainError

# Not "aiocontain-...": the runtime-directory sweep (aiocontain.runtimedir) owns that prefix.
DIRECTORY = "aiocontain.containers"

State = Literal["running", "exited"]


@dataclass
class Record:
    """One container, as its monitor recorded it. ``state()`` says whether it still runs."""

    id: str
    name: str
    pid: int  # the container's PID 1, as the host sees it
    start_time: int  # proc.start_time(pid) when recorded: a reused pid does not match
    monitor_pid: int  # the process that runs the container and tears it down
    monitor_start_time: int
    created: str  # RFC 3339, UTC
    detached: bool = False
    log_path: str | None = None  # where a detached container's stdout and stderr go
    spec: dict[str, Any] = field(default_factory=dict)
    network: dict[str, Any] = field(default_factory=dict)
    cgroup: str | None = None
    boot_id: str = ""
    auto_remove: bool = False  # --rm: no record stays once it has exited
    stop_timeout: float = 10.0
    exit_code: int | None = None  # once exited, when its monitor saw the exit
    finished: str | None = None  # RFC 3339, with exit_code

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def kept(self) -> bool:
        """Whether the record stays after the exit (until ``rm``): a detached container's without --rm."""
        return self.detached and not self.auto_remove

    def state(self) -> State:
        """running while PID 1 and the monitor are the processes recorded, on this boot; else exited."""
        if self.boot_id != _boot_id() or self.exit_code is not None:
            return "exited"
        if proc.is_alive(self.pid, self.start_time) and self.monitor_alive():
            return "running"
        return "exited"

    def monitor_alive(self) -> bool:
        return self.boot_id == _boot_id() and proc.is_alive(self.monitor_pid, self.monitor_start_time)

    def pidfd(self) -> int | None:
        """A pidfd of the running PID 1, or None once it has exited. Opened, then checked: the pid cannot be
        reused while the pidfd is open, so a match afterwards names the recorded process for good."""
        return _verified_pidfd(self.pid, self.start_time) if self.state() == "running" else None

    def monitor_pidfd(self) -> int | None:
        """A pidfd of the monitor while it lives (it exits once everything of the container is torn down)."""
        return _verified_pidfd(self.monitor_pid, self.monitor_start_time) if self.monitor_alive() else None

    def send_signal(self, signum: int) -> bool:
        """Signal PID 1 through a verified pidfd; False when the container is not running."""
        fd = self.pidfd()
        if fd is None:
            return False
        try:
            signal.pidfd_send_signal(fd, signum)
        except ProcessLookupError:
            return False
        finally:
            os.close(fd)
        return True

    def to_json(self) -> dict[str, Any]:
        # Shallow: every field is JSON data already (spec and network went through ``plain``), and asdict's
        # deep copy of them was most of a record's cost.
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _verified_pidfd(pid: int, start: int) -> int | None:
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return None
    if proc.is_alive(pid, start):
        return fd
    os.close(fd)
    return None


def directory(create: bool = True) -> str:
    """This user's records directory; made (mode 0700) when asked. Refused when someone else owns it."""
    path = names.private_directory(DIRECTORY)
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return path
    if info.st_uid != os.getuid() or not stat.S_ISDIR(info.st_mode):
        raise AiocontainError(
            f"{path} does not belong to this user, so container records cannot be kept there",
            fix="remove it, or set XDG_RUNTIME_DIR to a directory of your own",
        )
    return path


def log_path(container_id: str) -> str:
    return os.path.join(directory(), f"{container_id}.log")


def records() -> list[Record]:
    """Every recorded container of this user, oldest first; records nobody will remove are removed here."""
    path = directory(create=False)
    try:
        entries = sorted(os.listdir(path))
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        if not entry.endswith(".json"):
            continue
        record = _read(os.path.join(path, entry))
        if record is None:
            continue
        if not record.kept and record.exit_code is None and not record.monitor_alive():
            remove(record)  # its monitor died without removing it (SIGKILL, a reboot): nobody else will
            continue
        found.append(record)
    found.sort(key=lambda record: record.created)
    return found


def lookup(name_or_id: str) -> Record:
    """The container of this name, id or unique id prefix; AiocontainError when there is none."""
    every = records()
    for record in every:
        if name_or_id in (record.id, record.name):
            return record
    matches = [record for record in every if name_or_id and record.id.startswith(name_or_id)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise AiocontainError(f"{name_or_id!r} names more than one container", fix="give more of the id, or the name")
    raise AiocontainError(f"no such container: {name_or_id}", fix="aiocontain ps -a lists them")


def claim_name(name: str) -> names.NameClaim:
    """Claim name for a new container: refused while a running container has it (names.claim), or while an
    exited container that is kept (``run -d`` without ``--rm``) still has it, as podman refuses it."""
    claim = names.claim(name)
    # Checked after the claim: a record of this name is only ever written under the claim.
    for record in records():
        if record.name == name:
            claim.release()
            raise AiocontainError(
                f"the name {name!r} is already in use by container {record.short_id} ({record.state()})",
                fix=f"choose another --name, or remove that container first (aiocontain rm -f {name})",
            )
    return claim


class Registration:
    """A container's record while its monitor lives; ``finish`` keeps it with the exit code or removes it."""

    def __init__(self, record: Record) -> None:
        self.record = record
        self._path = os.path.join(directory(), f"{record.id}.json")
        _write(self._path, record)

    def finish(self, exit_code: int | None) -> None:
        """The container is torn down: a kept record gets its exit code (unless ``rm`` took it meanwhile);
        any other is removed, with its log."""
        record = self.record
        if not record.kept:
            remove(record)
            return
        if not os.path.exists(self._path):
            return  # removed by `rm -f` while it was being stopped
        record.exit_code = exit_code
        record.finished = now()
        _write(self._path, record, replace=True)


def register(
    container_id: str,
    name: str,
    pid: int,
    *,
    spec: dict[str, Any],
    network: dict[str, Any],
    cgroup: str | None,
    stop_timeout: float,
    detached: bool = False,
    auto_remove: bool = False,
    log: str | None = None,
) -> Registration:
    """Record a container whose set-up is done, run by this process."""
    record = Record(
        id=container_id,
        name=name,
        pid=pid,
        start_time=proc.start_time(pid) or 0,  # 0: gone already (it failed to set up), never running
        monitor_pid=os.getpid(),
        monitor_start_time=_own_start_time(),
        created=now(),
        detached=detached,
        log_path=log,
        spec=spec,
        network=network,
        cgroup=cgroup,
        boot_id=_boot_id(),
        auto_remove=auto_remove,
        stop_timeout=stop_timeout,
    )
    return Registration(record)


def remove(record: Record) -> None:
    """Forget a container: its record and its log."""
    for path in (os.path.join(directory(create=False), f"{record.id}.json"), record.log_path):
        if path:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def plain(value: Any, skip: Sequence[str] = ()) -> Any:
    """value as JSON data (a record's spec and network): dataclasses as objects, enums as their values."""
    if type(value) in _SCALARS:
        return value  # most of a spec's values: before the slower checks (Mapping's is an ABC's)
    names = _field_names(type(value))
    if names is not None:
        return {name: plain(getattr(value, name)) for name in names if name not in skip}
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


_SCALARS = frozenset({str, int, float, bool, type(None)})
_FIELD_NAMES: dict[type, tuple[str, ...] | None] = {}


def _field_names(kind: type) -> tuple[str, ...] | None:
    """A dataclass's field names, None for any other type; looked up once a type (a record's spec has some
    sixty values, and ``dataclasses.fields`` builds its tuple anew each call)."""
    try:
        return _FIELD_NAMES[kind]
    except KeyError:
        names = tuple(f.name for f in dataclasses.fields(kind)) if dataclasses.is_dataclass(kind) else None
        _FIELD_NAMES[kind] = names
        return names


def now() -> str:
    """The time as RFC 3339 in UTC, with microseconds."""
    stamp = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp)) + f".{int(stamp % 1 * 1e6):06d}Z"


def seconds_since(rfc3339: str) -> float:
    """How long ago an RFC 3339 time of ``now()`` was."""
    import calendar

    whole, _, fraction = rfc3339.rstrip("Z").partition(".")
    then = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{fraction or 0}")
    return max(0.0, time.time() - then)


def _read(path: str) -> Record | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return Record(**data)
    except (OSError, ValueError, TypeError):
        return None  # removed meanwhile, or not a record of this version: not ours to show


def _write(path: str, record: Record, replace: bool = False) -> None:
    """Make the file whole or not at all: written unnamed (O_TMPFILE), then linked in, so that a monitor killed
    half-way leaves nothing. A replacement goes through a temporary name (renamed over the record)."""
    data = json.dumps(record.to_json(), default=str).encode()
    directory = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=directory)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            # With a dir_fd, os.link is linkat(AT_SYMLINK_FOLLOW): it links the file, not the /proc link.
            name = os.path.basename(path)
            if not replace:
                os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=directory)
                return
            temporary = f".{name}.tmp"
            try:
                os.unlink(temporary, dir_fd=directory)
            except FileNotFoundError:
                pass
            os.link(f"/proc/self/fd/{fd}", temporary, dst_dir_fd=directory)
            os.rename(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
        finally:
            os.close(fd)
    finally:
        os.close(directory)


_boot: list[str] = []
_own_start: dict[int, int] = {}  # pid -> start time: this process's own, which never changes


def _own_start_time() -> int:
    """This process's start time, read from /proc once per pid (a forked child reads its own): every container's
    record names its monitor, and a read of /proc/PID/stat costs ~50 us of CPU with 50 containers starting."""
    pid = os.getpid()
    if pid not in _own_start:
        _own_start[pid] = proc.start_time(pid) or 0
    return _own_start[pid]


def _boot_id() -> str:
    """This boot's id: a record from another boot names processes that are all gone."""
    if not _boot:
        try:
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
                _boot.append(f.read().strip())
        except OSError:
            _boot.append("")
    return _boot[0]
