"""No import cycle in aiocontain: not at run time, not under TYPE_CHECKING, not through a lazy import.

Modules are read, not imported: every ``import`` and ``from ... import`` statement
anywhere in a module (its top, ``if TYPE_CHECKING:`` blocks, function bodies)
that names a module of the package is an edge. A cycle means two modules can
only be understood together; the failure lists one cycle, module by module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import aiocontain

PACKAGE = Path(aiocontain.__file__).resolve().parent


def module_names(package: Path) -> dict[str, Path]:
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports, wherever in it the import statement is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:
                    found.add(submodule)  # from package import module
                elif base in modules:
                    found.add(base)
    found.discard(name)
    return found


def find_cycle(package: Path) -> list[str] | None:
    """One import cycle among the package's modules, as [a, b, ..., a]; None when there is none."""
    modules = module_names(package)
    graph = {name: sorted(imports(name, path, modules)) for name, path in modules.items()}
    done: set[str] = set()
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        path.append(name)
        for target in graph[name]:
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(name)
        return None

    for name in graph:
        cycle = visit(name)
        if cycle:
            return cycle
    return None


def test_aiocontain_has_no_import_cycle() -> None:
    assert len(module_names(PACKAGE)) > 50  # the real package, not an empty walk
    cycle = find_cycle(PACKAGE)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_walk_finds_cycles_of_every_kind(tmp_path: Path) -> None:
    """Control: a top-level, a TYPE_CHECKING and a lazy import each close a cycle the walk reports."""
    cases = {
        "top": "from pkg import b\n",
        "type_checking": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import Thing\n",
        "lazy": "def f():\n    from . import b\n",
    }
    for kind, back in cases.items():
        package = tmp_path / kind / "pkg"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "a.py").write_text(back)
        (package / "b.py").write_text("import pkg.a\nThing = 1\n")
        (package / "c.py").write_text("import pkg.b\n")  # into the cycle, not part of it
        cycle = find_cycle(package)
        assert cycle is not None and set(cycle) == {"pkg.a", "pkg.b"}, (kind, cycle)
    clean = tmp_path / "clean" / "pkg"
    clean.mkdir(parents=True)
    (clean / "__init__.py").write_text("from pkg.a import x\n")
    (clean / "a.py").write_text("x = 1\n")
    assert find_cycle(clean) is None
