"""``--env-file FILE``: environment variables from a file, in podman's format; and ``-e`` values.

One ``KEY=VALUE`` a line, taken literally (no quotes removed, no ``$`` expanded,
spaces kept); lines whose first non-blank character is ``#`` and blank lines are
skipped; a bare ``KEY`` passes the host's value on and sets nothing when the host
has none, as ``-e KEY`` does; a bare ``PREFIX*`` passes every host variable
whose name starts with PREFIX. ``-e`` wins over the file, a later file over an
earlier one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from aiocontain.errors import AiocontainError


def from_options(items: Sequence[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """-e KEY=VALUE values (run and exec); -e KEY passes the host's value (environ, else os.environ as it is
    now), nothing when it is unset."""
    environ = os.environ if environ is None else environ
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise AiocontainError(f"invalid --env {item!r}", fix="use -e KEY=VALUE")
        if not sep:
            if key not in environ:
                continue  # podman and docker: -e KEY of an unset variable sets nothing
            value = environ[key]  # -e KEY passes the host's value on
        env[key] = value
    return env


def read(path: Path, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The variables path sets; AiocontainError (one line naming the file and line) when it cannot be used."""
    try:
        text = path.read_bytes().decode()
    except OSError as exc:
        raise AiocontainError(f"cannot read --env-file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise AiocontainError(f"--env-file {path} is not UTF-8 text") from None
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.lstrip()  # podman trims leading blanks of the name only
        if not key or any(c.isspace() for c in key) or "\0" in line:  # podman would keep "A B": docker refuses
            raise AiocontainError(
                f"--env-file {path} line {number}: {line.strip()!r} is not KEY=VALUE", fix="one KEY=VALUE a line"
            )
        if not sep and key.endswith("*"):
            found.update((name, val) for name, val in environ.items() if name.startswith(key[:-1]))
            continue
        if not sep:
            if key in environ:
                found[key] = environ[key]  # a bare KEY passes the host's value
            continue
        found[key] = value
    return found
