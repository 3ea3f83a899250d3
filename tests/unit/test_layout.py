"""The package's layering, checked from the source text (``ast``; nothing is imported).

dhtshare is built in floors, each importing only the floors below it::

    shared (errors, config)  <  core  <  disk  <  net  <  transfer  <  top  <  cli

``core`` is sans-IO; only ``net.dht`` touches kademlia; only the CLI talks to the
terminal, ends the process or configures logging.  Every import counts: module
level, function level, under ``TYPE_CHECKING``, ``from x import y`` and
``importlib.import_module("x")`` with a literal name.
"""

from __future__ import annotations

import ast
import builtins
import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "dhtshare"
PACKAGE_DIR = Path(__file__).resolve().parents[2] / PACKAGE

# --- the rules ---------------------------------------------------------------------------

#: Which floor a dhtshare module is on, by its first two name components.  Any other
#: top-level module (``dhtshare.node``, ``dhtshare.ops``, ``dhtshare.upkeep``, ...) is on
#: the ``top`` floor; the package itself (``dhtshare``: its version) is ``shared``.
FLOOR_OF = {
    "dhtshare.errors": "shared",
    "dhtshare.config": "shared",
    "dhtshare.activity": "shared",
    "dhtshare.core": "core",
    "dhtshare.disk": "disk",
    "dhtshare.net": "net",
    "dhtshare.transfer": "transfer",
    "dhtshare.cli": "cli",
    "dhtshare.__main__": "cli",  # ``python -m dhtshare``: the CLI's entry point
}
DEFAULT_FLOOR = "top"

#: Each floor and the floors it may import from: only its own and those below.
#: errors/config are importable by all and import no other dhtshare module;
#: nothing below the CLI imports the CLI.
MAY_IMPORT = {
    "shared": {"shared"},
    "core": {"shared", "core"},
    "disk": {"shared", "core", "disk"},
    "net": {"shared", "core", "disk", "net"},
    "transfer": {"shared", "core", "disk", "net", "transfer"},
    "top": {"shared", "core", "disk", "net", "transfer", "top"},
    "cli": {"shared", "core", "disk", "net", "transfer", "top", "cli"},
}

#: Top-level packages a floor must not import at all, and why.
FORBIDDEN_FOR = {
    "dhtshare.core": (
        {"asyncio", "socket", "selectors", "threading", "concurrent", "subprocess",
         "kademlia", "rpcudp"},
        "core is sans-IO",
    ),
}

#: Modules or packages, and the only places allowed to import them (module name
#: prefixes; an empty tuple: nowhere in the library).  kademlia stays behind the
#: ``net.dht`` facade (``client.py``); test helpers stay in the tests.
ONLY_IMPORTED_IN = {
    "kademlia": ("dhtshare.net.dht",),
    "rpcudp": ("dhtshare.net.dht",),
    "dhtshare.net.dht.kad": ("dhtshare.net.dht",),
    "tests": (),
    "conftest": (),
    "pytest": (),
    "_pytest": (),
    "hypothesis": (),
}

#: Where the process may talk to the terminal, end itself and configure logging.
TERMINAL_OWNERS = ("dhtshare.cli", "dhtshare.__main__")

#: Names (after resolving import aliases) that only the terminal owners may use.
TERMINAL_NAMES = {
    "sys.exit": "ends the process",
    "os._exit": "ends the process",
    "typer.Exit": "ends the process",
    "sys.stdout": "uses the terminal",
    "sys.stderr": "uses the terminal",
    "sys.__stdout__": "uses the terminal",
    "sys.__stderr__": "uses the terminal",
    "logging.basicConfig": "configures logging",
    "logging.config": "configures logging",
}
#: Builtins that only the terminal owners may call.
TERMINAL_BUILTINS = {"print": "prints", "exit": "ends the process", "quit": "ends the process"}


# --- the checker -------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Violation:
    path: str
    line: int
    module: str
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.module} {self.what}"


@dataclass(frozen=True)
class Import:
    target: str  # the module imported (``from x import y``: x.y if that is a module)
    line: int
    text: str  # as written
    type_only: bool  # under ``if TYPE_CHECKING:``


def in_package(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def floor_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "shared"
    return FLOOR_OF.get(".".join(parts[:2]), DEFAULT_FLOOR)


def module_names(root: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Every module and package under ``root``, by dotted name."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _type_only_nodes(tree: ast.AST) -> set[int]:
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for stmt in node.body:
                ids.update(id(n) for n in ast.walk(stmt))
    return ids


def imports_of(
    tree: ast.AST, module: str, is_package: bool, known: Iterable[str]
) -> Iterator[Import]:
    known = set(known)
    aliases = _aliases(tree)
    type_only = _type_only_nodes(tree)
    here = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        t = id(node) in type_only
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno, f"import {alias.name}", t)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            if source == "__future__":
                continue
            dots = "." * node.level
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                target = sub if sub in known else source
                text = f"from {dots}{node.module or ''} import {alias.name}"
                yield Import(target, node.lineno, text, t)
        elif (
            isinstance(node, ast.Call)
            and _dotted(node.func, aliases) in {"importlib.import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            name = node.args[0].value
            yield Import(name, node.lineno, f"import_module({name!r})", t)


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> what it names, from every import in the module."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    out[a.asname] = a.name
                else:
                    top = a.name.split(".")[0]
                    out[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


BUILTINS = frozenset(dir(builtins))


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """What an expression like ``a.b.c`` names: imported or builtin names only."""
    if isinstance(node, ast.Name):
        if node.id in aliases:
            return aliases[node.id]
        return node.id if node.id in BUILTINS else None
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value, aliases)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _is_root_logger(node: ast.AST, aliases: dict[str, str], roots: set[str]) -> bool:
    if isinstance(node, ast.Name) and node.id in roots:
        return True
    if _dotted(node, aliases) == "logging.root":
        return True
    return (
        isinstance(node, ast.Call)
        and _dotted(node.func, aliases) == "logging.getLogger"
        and not node.keywords
        and (
            not node.args
            or (isinstance(node.args[0], ast.Constant) and node.args[0].value in (None, ""))
        )
    )


def terminal_uses(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, what) for every print, exit, terminal stream or logging set-up."""
    aliases = _aliases(tree)
    roots = {
        t.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and _is_root_logger(node.value, aliases, set())
        for t in node.targets
        if isinstance(t, ast.Name)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Name | ast.Attribute) and isinstance(node.ctx, ast.Load):
            name = _dotted(node, aliases)
            if name in TERMINAL_NAMES:
                yield node.lineno, f"{TERMINAL_NAMES[name]}: {name}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            for a in node.names:
                name = a.name if isinstance(node, ast.Import) else f"{node.module}.{a.name}"
                if name in TERMINAL_NAMES:
                    yield node.lineno, f"{TERMINAL_NAMES[name]}: imports {name}"
        if isinstance(node, ast.Call):
            func = node.func
            if (
                isinstance(func, ast.Name)
                and func.id in TERMINAL_BUILTINS
                and func.id not in aliases
            ):
                yield node.lineno, f"{TERMINAL_BUILTINS[func.id]}: {func.id}()"
            if isinstance(func, ast.Attribute) and func.attr == "addHandler":
                null = (
                    len(node.args) == 1
                    and isinstance(node.args[0], ast.Call)
                    and _dotted(node.args[0].func, aliases) == "logging.NullHandler"
                )
                if not null:
                    yield node.lineno, "configures logging: addHandler()"
            if (
                isinstance(func, ast.Attribute)
                and func.attr == "setLevel"
                and _is_root_logger(func.value, aliases, roots)
            ):
                yield node.lineno, "configures logging: setLevel() on the root logger"
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if _dotted(exc, aliases) in {"SystemExit", "builtins.SystemExit"}:
                yield node.lineno, "ends the process: raise SystemExit"


def check_source(
    module: str,
    source: str,
    *,
    is_package: bool = False,
    path: str | None = None,
    known: Iterable[str] | None = None,
) -> list[Violation]:
    """Every rule broken by ``source``, the text of dhtshare module ``module``."""
    path = path or module.replace(".", "/") + ".py"
    tree = ast.parse(source, filename=path)
    known = set(module_names()) if known is None else set(known)
    found: set[Violation] = set()

    def bad(line: int, what: str) -> None:
        found.add(Violation(path, line, module, what))

    floor = floor_of(module)
    for imp in imports_of(tree, module, is_package, known):
        top = imp.target.split(".")[0]
        shown = f"`{imp.text}`" + (" (under TYPE_CHECKING)" if imp.type_only else "")
        for prefix, (names, why) in FORBIDDEN_FOR.items():
            if in_package(module, prefix) and top in names:
                bad(imp.line, f"imports {shown}: {why} (no {', '.join(sorted(names))})")
        for guarded, allowed in ONLY_IMPORTED_IN.items():
            if in_package(imp.target, guarded) and not any(
                in_package(module, p) for p in allowed
            ):
                where = ", ".join(allowed) if allowed else "nowhere in the library"
                bad(imp.line, f"imports {shown}: {guarded} may be imported only in {where}")
        if top == PACKAGE:
            target_floor = floor_of(imp.target)
            if target_floor not in MAY_IMPORT[floor]:
                bad(
                    imp.line,
                    f"imports {shown}: floor {floor!r} may not import floor "
                    f"{target_floor!r} ({imp.target}); {floor!r} may import only "
                    f"{', '.join(sorted(MAY_IMPORT[floor]))}",
                )
    if not any(in_package(module, p) for p in TERMINAL_OWNERS):
        for line, what in terminal_uses(tree):
            bad(line, f"{what} (only {', '.join(TERMINAL_OWNERS)} may)")
    return sorted(found)


@functools.cache
def violations(root: Path = PACKAGE_DIR) -> list[Violation]:
    modules = module_names(root)
    out: list[Violation] = []
    for module, path in modules.items():
        out += check_source(
            module,
            path.read_text(encoding="utf-8"),
            is_package=path.name == "__init__.py",
            path=str(path.relative_to(root.parent)),
            known=modules,
        )
    return out


# --- the tests ---------------------------------------------------------------------------


def _report(found: list[Violation], rule: str) -> str:
    return f"{len(found)} violation(s) of the rule that {rule}:\n" + "\n".join(
        f"  {v}" for v in found
    )


def test_every_module_is_on_a_floor() -> None:
    modules = module_names()
    assert {"dhtshare.core.ids", "dhtshare.net.dht.kad", "dhtshare.node"} <= set(modules)
    assert set(FLOOR_OF.values()) | {DEFAULT_FLOOR} == set(MAY_IMPORT)
    for floor, allowed in MAY_IMPORT.items():
        assert floor in allowed
        assert allowed <= set(MAY_IMPORT), floor


@pytest.mark.parametrize(
    ("rule", "selects"),
    [
        ("core is sans-IO", "core is sans-IO"),
        ("only net.dht imports kademlia/rpcudp", "may be imported only in dhtshare.net.dht"),
        ("the library imports no test helpers", "nowhere in the library"),
        ("floors import only downward", "may not import floor"),
        ("only the CLI prints, exits or configures logging", "(only dhtshare.cli"),
    ],
    ids=["sans-io-core", "kademlia-in-dht", "no-test-helpers", "floors", "cli-only"],
)
def test_layout(rule: str, selects: str) -> None:
    found = [v for v in violations() if selects in v.what]
    assert not found, _report(found, rule)


# --- the checker itself ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("dhtshare.core.bad", "def f():\n    import asyncio\n", "core is sans-IO"),
        ("dhtshare.core.bad", "from concurrent.futures import Future\n", "core is sans-IO"),
        ("dhtshare.core.bad", "from dhtshare.disk import store\n", "may not import floor 'disk'"),
        ("dhtshare.core.bad", "from ..net import transport\n", "may not import floor 'net'"),
        ("dhtshare.disk.bad", "import dhtshare.node\n", "may not import floor 'top'"),
        ("dhtshare.node", "from dhtshare import cli\n", "may not import floor 'cli'"),
        ("dhtshare.errors", "from dhtshare.core.ids import short\n", "may not import floor"),
        (
            "dhtshare.transfer.bad",
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from dhtshare.node import Node\n",
            "(under TYPE_CHECKING)",
        ),
        ("dhtshare.net.peers", "import kademlia.node\n", "only in dhtshare.net.dht"),
        ("dhtshare.node", "from dhtshare.net.dht import kad\n", "only in dhtshare.net.dht"),
        ("dhtshare.node", "import importlib\nimportlib.import_module('rpcudp')\n", "rpcudp"),
        ("dhtshare.node", "from tests.conftest import free_port\n", "nowhere in the library"),
        ("dhtshare.node", "print('hello')\n", "prints: print()"),
        ("dhtshare.node", "import sys\nsys.exit(1)\n", "ends the process: sys.exit"),
        ("dhtshare.node", "from sys import exit as bye\nbye(1)\n", "sys.exit"),
        ("dhtshare.node", "import os\nos._exit(1)\n", "os._exit"),
        ("dhtshare.node", "exit(3)\n", "exit()"),
        ("dhtshare.node", "raise SystemExit(2)\n", "raise SystemExit"),
        ("dhtshare.node", "import typer\nraise typer.Exit(1)\n", "typer.Exit"),
        ("dhtshare.node", "import sys as s\ns.stderr.write('x')\n", "sys.stderr"),
        ("dhtshare.node", "import logging\nlogging.basicConfig()\n", "logging.basicConfig"),
        ("dhtshare.node", "import logging.config\n", "logging.config"),
        (
            "dhtshare.node",
            "import logging\nlogging.getLogger('x').addHandler(logging.StreamHandler())\n",
            "addHandler()",
        ),
        ("dhtshare.node", "import logging\nlogging.getLogger().setLevel(10)\n", "root logger"),
        (
            "dhtshare.node",
            "import logging\nroot = logging.getLogger()\nroot.setLevel(10)\n",
            "root logger",
        ),
    ],
)
def test_the_checker_catches(module: str, source: str, expected: str) -> None:
    found = check_source(module, source)
    assert found, f"no violation found in {module}:\n{source}"
    assert any(expected in v.what for v in found), [str(v) for v in found]
    assert all(v.module == module and v.line >= 1 for v in found)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("dhtshare.core.ok", "import hashlib\nfrom dhtshare.errors import ConfigError\n"),
        ("dhtshare.core.ok", "from dhtshare import __version__\nfrom . import ids\n"),
        ("dhtshare.net.dht.kad", "from kademlia.node import Node\n"),
        ("dhtshare.node", "from dhtshare.transfer import fetch\nfrom dhtshare.net import peers\n"),
        ("dhtshare.cli.app", "import sys\nprint('hi')\nsys.exit(0)\nfrom dhtshare import node\n"),
        ("dhtshare.__main__", "from dhtshare.cli.entry import main\nraise SystemExit(main())\n"),
        (
            "dhtshare.node",
            "import logging\nlog = logging.getLogger(__name__)\nlog.setLevel(10)\n"
            "log.addHandler(logging.NullHandler())\n",
        ),
        ("dhtshare.node", "def f(sys):\n    return sys.exit\n"),  # not the sys module
    ],
)
def test_the_checker_accepts(module: str, source: str) -> None:
    assert check_source(module, source) == []


def test_the_checker_walks_a_package_tree(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "ids.py").write_text("def f():\n    from ..node import Node\n")
    (pkg / "node.py").write_text("from .core import ids\n")
    found = violations(pkg)
    assert [(v.path, v.line, v.module) for v in found] == [
        ("dhtshare/core/ids.py", 2, "dhtshare.core.ids")
    ], [str(v) for v in found]
    assert "from ..node import Node" in found[0].what
    assert "'top' (dhtshare.node)" in found[0].what
