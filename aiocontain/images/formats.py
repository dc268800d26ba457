"""What an image source is, read from its content (never its name), and the layers of the image it holds.

Three kinds of source, as ``podman save`` and ``docker save`` make them and as a root filesystem is archived:

- an OCI image layout: a directory, or a tar of one (``oci-layout``, ``index.json``, ``blobs/ALG/HEX``);
- a docker-archive tarball (``manifest.json`` listing each image's config and layer tars);
- any other tar (plain or compressed) of a root filesystem, taken as a single layer.

Only JSON is read here, as the invoking user; the layers are unpacked later, inside the user namespace.
Every blob named by digest is checked against it while it is read, so a corrupt archive is an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from aiocontain.errors import AiocontainError
from aiocontain.images import platforms
from aiocontain.images.platforms import Platform

INDEX_TYPES = {"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"}
MANIFEST_TYPES = {"application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"}
# Layer media types and the compression each declares; "+encrypted" and other kinds are refused by name.
_LAYER_TYPE = re.compile(
    r"^application/vnd\.(?:oci\.image\.layer(?:\.nondistributable)?\.v1\.tar"
    r"|docker\.image\.rootfs(?:\.foreign)?\.diff\.tar)(?:\.?\+?(gzip|zstd))?$"
)
_DIGEST = re.compile(r"^([a-z0-9]+):([a-f0-9]{32,128})$")
_MAX_JSON = 16 << 20  # an index, manifest or config is kilobytes; refuse to read gigabytes as one
_MAX_INDEX_DEPTH = 4
ZSTD_READABLE = sys.version_info >= (3, 14)  # tarfile reads zstd from 3.14 on


@dataclass(frozen=True)
class Layer:
    """One layer tar (possibly compressed): a file, or a member of an outer archive."""

    label: str  # "layer 2 of 3 (sha256:0123456789ab)"
    path: Path  # the file, or the outer archive
    member: str | None = None  # the member of the outer archive, if any
    digest: str | None = None  # ALG:HEX of the bytes as stored
    diff_id: str | None = None  # ALG:HEX of the uncompressed tar (docker-archive), checked when stored uncompressed

    @contextlib.contextmanager
    def open(self) -> Iterator[IO[bytes]]:
        if self.member is None:
            with open(self.path, "rb") as file:
                yield file
            return
        with tarfile.open(self.path, "r:*") as outer:
            extracted = outer.extractfile(self.member)
            if extracted is None:
                raise AiocontainError(f"{self.label} of {self.path} is not a file in the archive")
            with extracted:
                yield extracted


@dataclass(frozen=True)
class Plan:
    """The image chosen from a source, and how to reach its layers, bottom first."""

    kind: str  # "OCI layout", "OCI archive", "docker-archive", "tar"
    description: str  # what the user is told was imported
    layers: list[Layer] = field(default_factory=list)


def read(source: Path, want: Platform | None) -> Plan:
    """The plan for source, or one line saying why it cannot be imported."""
    try:
        if source.is_dir():
            if not (source / "oci-layout").is_file():
                raise AiocontainError(
                    f"{source} is a directory but not an OCI image layout (it has no oci-layout file)",
                    fix="pass an OCI layout, an OCI or docker archive, or a tar of a root filesystem",
                )
            return _oci(_Store(source, None), source, "OCI layout", want)
        if not source.exists():
            raise AiocontainError(f"{source} does not exist", fix="name an image archive, layout or tar")
        return _archive(source, want)
    except PermissionError as err:
        raise AiocontainError(f"cannot read {source}: {err.strerror}", fix="make it readable") from err


def _archive(source: Path, want: Platform | None) -> Plan:
    try:
        outer = tarfile.open(source, "r:*")  # noqa: SIM115 - closed by the `with outer` below
    except tarfile.ReadError:
        with open(source, "rb") as file:
            head = file.read(4)
        if head == b"\x28\xb5\x2f\xfd":
            raise zstd_error(f"{source} is zstd-compressed") from None
        raise AiocontainError(
            f"{source} is not an image: neither an OCI layout or archive, a docker-archive, nor a tar",
            fix="pass what `podman save` makes (oci-archive, oci-dir, docker-archive) or a tar of a root filesystem",
        ) from None
    except (OSError, EOFError) as err:  # a compressed file cut short, a read error
        raise corrupt(source, err) from err
    with outer:
        try:
            members = {_normal(member.name): member for member in outer.getmembers()}
        except (tarfile.TarError, OSError, EOFError) as err:
            raise corrupt(source, err) from err
        store = _Store(source, outer, members)
        if "oci-layout" in members and "index.json" in members:
            return _oci(store, source, "OCI archive", want)
        if "manifest.json" in members:
            manifest = store.json("manifest.json")
            if isinstance(manifest, list) and all(isinstance(entry, dict) for entry in manifest):
                return _docker(store, source, manifest, want)
    return Plan("tar", f"the root filesystem in {source}", [Layer("the tar", source)])


def _normal(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


class _Store:
    """The files of a layout directory or of an outer archive, read by relative name."""

    def __init__(self, root: Path, outer: tarfile.TarFile | None, members: dict[str, tarfile.TarInfo] | None = None):
        self.root = root
        self.outer = outer
        self.members = members or {}

    def has(self, name: str) -> bool:
        if self.outer is not None:
            return name in self.members
        return (self.root / name).exists() and not (self.root / name).is_dir()  # a file, or a pipe to stream

    def read(self, name: str, limit: int = _MAX_JSON) -> bytes:
        try:
            if self.outer is None:
                with open(self.root / name, "rb") as file:
                    data = file.read(limit + 1)
            else:
                member = self.members.get(name)
                extracted = self.outer.extractfile(member) if member is not None else None
                if extracted is None:
                    raise FileNotFoundError(name)
                data = extracted.read(limit + 1)
        except FileNotFoundError:
            raise AiocontainError(f"{self.root} is incomplete: it has no {name}") from None
        except (tarfile.TarError, OSError, EOFError) as err:
            raise corrupt(self.root, err) from err
        if len(data) > limit:
            raise AiocontainError(f"{self.root}: {name} is too large for an image's metadata")
        return data

    def json(self, name: str, digest: str | None = None) -> Any:
        data = self.read(name)
        if digest is not None:
            algorithm, expected = _parse_digest(self.root, digest)
            if hashlib.new(algorithm, data).hexdigest() != expected:
                raise AiocontainError(f"{self.root} is corrupt: {name} does not match its digest {digest}")
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as err:
            raise AiocontainError(f"{self.root} is corrupt: {name} is not JSON ({err})") from None

    def layer(self, name: str, label: str, digest: str | None = None, diff_id: str | None = None) -> Layer:
        if not self.has(name):
            raise AiocontainError(f"{self.root} is incomplete: it has no {name} ({label})")
        if self.outer is None:
            return Layer(label, self.root / name, None, digest, diff_id)
        return Layer(label, self.root, self.members[name].name, digest, diff_id)


def _parse_digest(source: Path, digest: object) -> tuple[str, str]:
    match = _DIGEST.match(digest) if isinstance(digest, str) else None
    if match is None or match.group(1) not in hashlib.algorithms_available:
        raise AiocontainError(f"{source} is corrupt: {digest!r} is not a digest this import can check")
    return match.group(1), match.group(2)


def _blob(source: Path, digest: object) -> str:
    algorithm, hexdigest = _parse_digest(source, digest)
    return f"blobs/{algorithm}/{hexdigest}"


@dataclass
class _Candidate:
    name: str  # a reference name, or a digest
    platform: Platform | None
    load: Callable[[], Plan]


def _oci(store: _Store, source: Path, kind: str, want: Platform | None) -> Plan:
    layout = store.json("oci-layout")
    if not isinstance(layout, dict) or "imageLayoutVersion" not in layout:
        raise AiocontainError(f"{source} is corrupt: its oci-layout file has no imageLayoutVersion")
    candidates: list[_Candidate] = []
    _collect(store, source, kind, store.json("index.json"), candidates, depth=0)
    return _choose(source, candidates, want)


def _collect(store: _Store, source: Path, kind: str, index: Any, out: list[_Candidate], depth: int) -> None:
    """Every image manifest an index names, nested indexes (manifest lists) included."""
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list):
        raise AiocontainError(f"{source} is corrupt: an image index has no manifests list")
    for descriptor in manifests:
        if not isinstance(descriptor, dict):
            raise AiocontainError(f"{source} is corrupt: a manifest descriptor is not an object")
        digest = descriptor.get("digest")
        blob = _blob(source, digest)
        media_type = descriptor.get("mediaType")
        if media_type in INDEX_TYPES:
            if depth >= _MAX_INDEX_DEPTH:
                raise AiocontainError(f"{source}: image indexes nest too deep")
            _collect(store, source, kind, store.json(blob, str(digest)), out, depth + 1)
            continue
        if media_type not in MANIFEST_TYPES and media_type is not None:
            continue  # an artifact (a signature, an attestation): not an image
        annotations = descriptor.get("annotations")
        ref = annotations.get("org.opencontainers.image.ref.name") if isinstance(annotations, dict) else None
        manifest = store.json(blob, str(digest))
        config = _oci_config(store, source, manifest)
        platform = platforms.from_config(descriptor.get("platform")) or platforms.from_config(config)
        name = str(ref) if ref else str(digest)

        def load(manifest: Any = manifest, name: str = name) -> Plan:
            return Plan(kind, f"{name} from the {kind} {source}", _oci_layers(store, source, manifest))

        out.append(_Candidate(name, platform, load))


def _oci_config(store: _Store, source: Path, manifest: Any) -> Any:
    config = manifest.get("config") if isinstance(manifest, dict) else None
    if not isinstance(config, dict):
        raise AiocontainError(f"{source} is corrupt: an image manifest has no config")
    return store.json(_blob(source, config.get("digest")), str(config.get("digest")))


def _oci_layers(store: _Store, source: Path, manifest: dict[str, Any]) -> list[Layer]:
    descriptors = manifest.get("layers")
    if not isinstance(descriptors, list):
        raise AiocontainError(f"{source} is corrupt: an image manifest has no layers list")
    layers = []
    for number, descriptor in enumerate(descriptors, 1):
        if not isinstance(descriptor, dict):
            raise AiocontainError(f"{source} is corrupt: a layer descriptor is not an object")
        digest = str(descriptor.get("digest"))
        label = f"layer {number} of {len(descriptors)} ({digest[:19]})"
        media_type = str(descriptor.get("mediaType", ""))
        match = _LAYER_TYPE.match(media_type)
        if match is None:
            raise AiocontainError(f"{source}: {label} has media type {media_type!r}, which is not a layer tar")
        if match.group(1) == "zstd" and not ZSTD_READABLE:
            raise zstd_error(f"{source}: {label} is zstd-compressed")
        layers.append(store.layer(_blob(source, digest), label, digest))
    return layers


def _docker(store: _Store, source: Path, manifest: list[dict[str, Any]], want: Platform | None) -> Plan:
    candidates = []
    for entry in manifest:
        config_name, layer_names = entry.get("Config"), entry.get("Layers")
        if not isinstance(config_name, str) or not isinstance(layer_names, list):
            raise AiocontainError(f"{source} is corrupt: a manifest.json entry lacks Config or Layers")
        config = store.json(_normal(config_name))
        tags = entry.get("RepoTags")
        name = str(tags[0]) if isinstance(tags, list) and tags else config_name.removesuffix(".json")
        rootfs = config.get("rootfs") if isinstance(config, dict) else None
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list) or len(diff_ids) != len(layer_names):
            diff_ids = [None] * len(layer_names)

        def load(name: str = name, layer_names: list[Any] = layer_names, diff_ids: list[Any] = diff_ids) -> Plan:
            layers = []
            for number, (layer_name, diff_id) in enumerate(zip(layer_names, diff_ids, strict=True), 1):
                label = f"layer {number} of {len(layer_names)} ({_normal(str(layer_name))[:19]})"
                layers.append(store.layer(_normal(str(layer_name)), label, None, diff_id))
            return Plan("docker-archive", f"{name} from the docker-archive {source}", layers)

        candidates.append(_Candidate(name, platforms.from_config(config), load))
    return _choose(source, candidates, want)


def _choose(source: Path, candidates: list[_Candidate], want: Platform | None) -> Plan:
    """The single image, else the one for want (default: this host's platform)."""
    if not candidates:
        raise AiocontainError(f"{source} holds no image")
    if len(candidates) == 1 and want is None:
        return candidates[0].load()
    target = want or platforms.host()
    fitting = [c for c in candidates if c.platform is not None and target.matches(c.platform)]
    if len(fitting) == 1:
        return fitting[0].load()
    listing = ", ".join(f"{c.name} ({c.platform or 'platform unknown'})" for c in candidates)
    if not fitting:
        raise AiocontainError(
            f"{source} has no image for {target}; it holds {listing}", fix="choose one with --platform OS/ARCH"
        )
    raise AiocontainError(
        f"{source} holds {len(fitting)} images for {target} ({', '.join(c.name for c in fitting)}); "
        "this import takes one",
        fix="save just one image into it (podman save IMAGE)",
    )


def corrupt(source: Path, err: BaseException | str) -> AiocontainError:
    return AiocontainError(f"{source} is corrupt: {err}", fix="save or download it again")


def zstd_error(what: str) -> AiocontainError:
    return AiocontainError(
        f"{what}, which Python's tarfile reads only from Python 3.14 on",
        fix="save it with gzip or no compression (podman save --format oci-archive, or docker-archive)",
    )
