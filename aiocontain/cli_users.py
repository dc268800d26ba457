"""``run``'s options for users and environment, as podman spells them: --user, --group-add, --env-file,
--ulimit, --dns, --dns-search, --dns-option, --add-host, --label, --annotation.

Kept apart from cli.py: ``add_arguments`` adds them to the run parser, ``spec_fields`` turns them into
ContainerSpec fields (the environment: --env-file's variables, with -e winning).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from aiocontain.errors import AiocontainError


def add_arguments(run: argparse.ArgumentParser) -> None:
    many: dict[str, Any] = {"action": "append", "default": []}
    run.add_argument(
        "-u", "--user", help="USER[:GROUP] to run as: names from the rootfs's /etc/passwd or numbers (default: root)"
    )
    run.add_argument(
        "--group-add",
        **many,
        metavar="GROUP",
        help="an additional group, name or gid (default: those /etc/group gives the user)",
    )
    run.add_argument(
        "--env-file", **many, type=Path, metavar="FILE", help="read KEY=VALUE lines; -e wins (default: none)"
    )
    run.add_argument(
        "--ulimit",
        **many,
        metavar="NAME=SOFT[:HARD]",
        help="a resource limit, e.g. nofile=1024:2048 (default: inherited)",
    )
    run.add_argument("--dns", **many, metavar="IP", help="a nameserver for /etc/resolv.conf (default: the network's)")
    run.add_argument(
        "--dns-search", **many, metavar="DOMAIN", help="a search domain for /etc/resolv.conf (default: none)"
    )
    run.add_argument(
        "--dns-option", "--dns-opt", **many, metavar="OPT", help="a resolv.conf option, e.g. ndots:2 (default: none)"
    )
    run.add_argument("--add-host", **many, metavar="NAME:IP", help="a NAME:IP line for /etc/hosts (default: none)")
    run.add_argument(
        "-l", "--label", **many, metavar="KEY=VALUE", help="a label, shown in container.created (default: none)"
    )
    run.add_argument(
        "--annotation", **many, metavar="KEY=VALUE", help="an annotation, shown in container.created (default: none)"
    )


def spec_fields(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """The ContainerSpec fields of these options; env is what -e gave, which wins over --env-file."""
    from aiocontain import envfile

    merged: dict[str, str] = {}
    for path in args.env_file:
        merged.update(envfile.read(path))
    merged.update(env)
    return {
        "env": merged,
        "user": args.user,
        "group_add": args.group_add,
        "ulimits": args.ulimit,
        "dns": args.dns,
        "dns_search": args.dns_search,
        "dns_options": args.dns_option,
        "add_hosts": args.add_host,
        "labels": _pairs("--label", args.label),
        "annotations": _pairs("--annotation", args.annotation),
    }


def _pairs(option: str, items: list[str]) -> dict[str, str]:
    """KEY=VALUE items (a bare KEY has an empty value, as in podman)."""
    found = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key:
            raise AiocontainError(f"invalid {option} {item!r}", fix=f"use {option} KEY=VALUE")
        found[key] = value
    return found
