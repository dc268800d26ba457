"""What ``aiocontain-oci`` keeps about a container between commands: ROOT/ID/state.json, judged against /proc.

One directory per container under the root (``--root``, by default ``default_root()``): ``state.json`` (this
module), ``exec.fifo`` while the container is created but not started (docs/oci.md, the lifecycle), and the
directory itself is the per-container lock (``locked``). What is written is never trusted alone: the status
comes from /proc (``aiocontain.proc``), so a container whose process died, or whose pid now names another
process (its start time differs), is ``stopped``.
"""

from __future__ import annotations

import json
import os
import stat

from aiocontain import proc
from aiocontain.oci.errors import OciError

STATE_FILE = "state.json"
EXEC_FIFO = "exec.fifo"
OCI_VERSION = "1.0.2"


def default_root() -> str:
    """``$XDG_RUNTIME_DIR/aiocontain-oci``, or ``/run/aiocontain-oci`` for uid 0 without one."""
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        return os.path.join(runtime_dir, "aiocontain-oci")
    if os.geteuid() == 0:
        return "/run/aiocontain-oci"
    raise OciError("no state directory: XDG_RUNTIME_DIR is not set; give one with --root DIR")


def private_root(root: str, create: bool = True) -> None:
    """Make root (0700) when asked, and refuse it unless it is a directory of this user's that no one else may
    write: its records name hooks to run, pids to signal and cgroups to remove."""
    if create:
        try:
            os.makedirs(root, 0o700, exist_ok=True)
        except FileExistsError:
            pass  # not a directory: said below
        except OSError as exc:
            raise OciError(f"cannot make the state directory {root}: {exc.strerror}") from None
    try:
        info = os.lstat(root)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OciError(f"cannot use the state directory {root}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise OciError(
            f"the state directory {root} is not a directory of this user's alone "
            f"(owner {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o}): its records are not trusted"
        )


class ContainerState:
    """One container's record. ``pid`` is the host pid of its process (0 before there is one); ``start_time``
    that process's start time (``aiocontain.proc.start_time``); ``creator``/``creator_start_time`` the
    ``create`` command's own process while it runs (``creating``), so that a create killed half-way shows as
    stopped and can be deleted; ``hook``/``hook_start_time`` the leader of the process group of the hook that
    create runs, while it runs, so that deleting a container whose create is stuck in a hook ends the hook and
    whatever it started too."""

    def __init__(
        self,
        root: str,
        id: str,
        pid: int = 0,
        start_time: int = 0,
        bundle: str = "",
        rootfs: str = "",
        created: str = "",
        owner: str = "",
        annotations: dict[str, str] | None = None,
        config_path: str = "",
        creating: bool = True,
        creator: int = 0,
        creator_start_time: int = 0,
        cgroup: str = "",
        hooks: dict[str, list[dict[str, object]]] | None = None,
        hook: int = 0,
        hook_start_time: int = 0,
    ) -> None:
        self.root = root
        self.id = id
        self.pid = pid
        self.start_time = start_time
        self.bundle = bundle
        self.rootfs = rootfs
        self.created = created
        self.owner = owner
        self.annotations = annotations or {}
        self.config_path = config_path
        self.creating = creating
        self.creator = creator
        self.creator_start_time = creator_start_time
        self.cgroup = cgroup  # the cgroup v2 directory create made, "" for none
        self.hooks = hooks or {}  # poststart and poststop as config.json had them at create
        self.hook = hook
        self.hook_start_time = hook_start_time

    @property
    def directory(self) -> str:
        return os.path.join(self.root, self.id)

    @property
    def exec_fifo(self) -> str:
        return os.path.join(self.directory, EXEC_FIFO)

    def status(self) -> str:
        """creating, created, running or stopped, from /proc and the exec fifo, not from the record alone."""
        if self.creating:
            alive = self.creator > 0 and proc.is_alive(self.creator, self.creator_start_time)
            return "creating" if alive else "stopped"
        if self.pid <= 0 or not proc.is_alive(self.pid, self.start_time):
            return "stopped"
        return "created" if os.path.lexists(self.exec_fifo) else "running"

    def to_oci(self) -> dict[str, object]:
        """runc's ``state`` output; the pid is 0 once stopped, so nobody signals a reused pid."""
        status = self.status()
        return {
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "pid": self.pid if status in ("created", "running") else 0,
            "status": status,
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": self.owner,
            "annotations": self.annotations,
        }

    def hook_state(self, status: str) -> bytes:
        """The state the runtime spec hands a hook on its stdin (ociVersion, id, status, pid, bundle,
        annotations), with the status the hook's moment has."""
        state = {
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "status": status,
            "pid": self.pid,
            "bundle": self.bundle,
            "annotations": self.annotations,
        }
        return json.dumps(state).encode()

    def save(self) -> None:
        """Write the record atomically (a reader sees the old or the new one, never half)."""
        record = {
            "id": self.id,
            "pid": self.pid,
            "start_time": self.start_time,
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": self.owner,
            "annotations": self.annotations,
            "config_path": self.config_path,
            "creating": self.creating,
            "creator": self.creator,
            "creator_start_time": self.creator_start_time,
            "cgroup": self.cgroup,
            "hooks": self.hooks,
            "hook": self.hook,
            "hook_start_time": self.hook_start_time,
        }
        path = os.path.join(self.directory, STATE_FILE)
        temporary = path + ".new"
        with open(temporary, "w") as f:
            json.dump(record, f)
        os.replace(temporary, path)


def check_id(container_id: str) -> None:
    """An id is one path component of printable characters (runc's rule), never '.', '..' or with '/'."""
    if (
        not container_id
        or container_id in (".", "..")
        or "/" in container_id
        or not container_id.isprintable()
        or len(container_id) > 1024
    ):
        raise OciError(f"invalid container id {container_id!r}")


def load(root: str, container_id: str) -> ContainerState:
    """The record of container_id under root; OciError 'container "ID" does not exist' when there is none."""
    check_id(container_id)
    private_root(root, create=False)
    path = os.path.join(root, container_id, STATE_FILE)
    try:
        with open(path, "rb") as f:
            record = json.loads(f.read())
    except FileNotFoundError:
        raise OciError(f'container "{container_id}" does not exist') from None
    except NotADirectoryError:
        raise OciError(f'container "{container_id}" does not exist') from None
    except (OSError, ValueError) as exc:
        raise OciError(f'container "{container_id}": cannot read its state {path}: {exc}') from None
    try:
        return ContainerState(
            root,
            container_id,
            pid=int(record["pid"]),
            start_time=int(record["start_time"]),
            bundle=str(record["bundle"]),
            rootfs=str(record["rootfs"]),
            created=str(record["created"]),
            owner=str(record["owner"]),
            annotations=dict(record.get("annotations") or {}),
            config_path=str(record.get("config_path", "")),
            creating=bool(record.get("creating", False)),
            creator=int(record.get("creator", 0)),
            creator_start_time=int(record.get("creator_start_time", 0)),
            cgroup=str(record.get("cgroup", "")),
            hooks=dict(record.get("hooks") or {}),
            hook=int(record.get("hook", 0)),
            hook_start_time=int(record.get("hook_start_time", 0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise OciError(f'container "{container_id}": its state {path} is damaged: {exc!r}') from None


def all_ids(root: str) -> list[str]:
    """The ids that have a record under root, sorted (``list``); none when root does not exist yet."""
    private_root(root, create=False)
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise OciError(f"cannot list the state directory {root}: {exc.strerror}") from None
    return sorted(name for name in names if os.path.exists(os.path.join(root, name, STATE_FILE)))
