"""The package's layers only point down, and no two modules import each other.

Every module of ``sfu/`` (``.py`` by AST; ``.pyx``/``.pxd`` by a regex over their import lines)
gets a rank from :data:`LAYERS`; a module may import modules of its own rank or lower. Imports
inside functions and ``TYPE_CHECKING`` blocks count for the layer check. The cycle check uses
module-level imports (``TYPE_CHECKING`` ones included: mypy follows them), so a lazy import can
break a cycle at run time but is no way around the layers. docs/architecture.md has the table.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "sfu"

#: Rank of each layer, lowest first. A module may import its own rank or lower.
LAYERS: dict[str, int] = {
    "leaf": 0,  # no sfu imports except other leaves: importable from anywhere
    "packet": 1,
    "codecs": 2,
    "_fastpath": 3,
    "transport": 4,
    "negotiation": 5,
    "core": 6,
    # room/ and the echo service: sessions built from core, transport and negotiation
    "services": 7,
    # metrics/ (reads core/room/transport counters at scrape time), io/ (asyncio adapters)
    "adapters": 8,
    "signaling": 9,
    "app": 10,  # composition root and entry points
}

#: Top-level modules (``sfu/<name>.py``) and their layer.
TOP_LEVEL: dict[str, str] = {
    "__init__": "leaf",
    "config": "leaf",
    "clock": "leaf",
    "logging_setup": "leaf",
    "histogram": "leaf",
    "timer_queue": "leaf",
    "echo": "services",
    "app": "app",
    "cli": "app",
    "__main__": "app",
}

#: Subpackages (``sfu/<name>/``) and their layer.
SUBPACKAGES: dict[str, str] = {
    "packet": "packet",
    "codecs": "codecs",
    "_fastpath": "_fastpath",
    "transport": "transport",
    "negotiation": "negotiation",
    "core": "core",
    "room": "services",
    "metrics": "adapters",
    "io": "adapters",
    # the cluster's directory and bus (local or Redis), node leases, the cluster CA
    "cluster": "adapters",
    "signaling": "signaling",
    "web": "leaf",  # static files only
    "workers": "app",  # the supervisor of forwarding worker processes
}

_PYX_IMPORT = re.compile(
    r"^(?P<indent>[ \t]*)(?:from\s+(?P<from>sfu(?:\.\w+)*)\s+c?import\s+(?P<names>[^#\n]+)"
    r"|c?import\s+(?P<mod>sfu(?:\.\w+)*))",
    re.MULTILINE,
)


@dataclass(frozen=True)
class Import:
    """One import of an sfu module: where, what, and whether it runs at import time."""

    source: str
    target: str
    line: int
    module_level: bool


def module_name(path: Path) -> str:
    """``sfu/core/peer.py`` -> ``sfu.core.peer`` (a package's ``__init__`` is the package)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _exists(module: str) -> bool:
    """Whether ``module`` names a module or package under sfu/ (any of the source suffixes)."""
    base = ROOT.joinpath(*module.split("."))
    return base.is_dir() or any(base.with_suffix(s).exists() for s in (".py", ".pyx", ".pxd"))


def _resolve(module: str, names: list[str]) -> list[str]:
    """``from module import names``: each name that is itself a submodule, else ``module``."""
    out = [f"{module}.{name}" for name in names if _exists(f"{module}.{name}")]
    if len(out) < len(names):
        out.append(module)
    return out


def layer_of(module: str) -> str:
    """The layer of an sfu module name."""
    parts = module.split(".")
    if len(parts) == 1:
        return "leaf"
    if len(parts) == 2 and parts[1] in TOP_LEVEL:
        return TOP_LEVEL[parts[1]]
    return SUBPACKAGES[parts[1]]


def _python_imports(path: Path, source: str) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[Import] = []

    def visit(node: ast.AST, module_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                if child.module == "sfu" or child.module.startswith("sfu."):
                    for target in _resolve(child.module, [a.name for a in child.names]):
                        found.append(Import(source, target, child.lineno, module_level))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name == "sfu" or alias.name.startswith("sfu."):
                        found.append(Import(source, alias.name, child.lineno, module_level))
            inner = module_level and not isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
            )
            visit(child, inner)

    visit(tree, True)
    return found


def _cython_imports(path: Path, source: str) -> list[Import]:
    text = path.read_text()
    found: list[Import] = []
    for match in _PYX_IMPORT.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        module_level = match.group("indent") == ""
        if match.group("mod"):
            found.append(Import(source, match.group("mod"), line, module_level))
            continue
        names = match.group("names").strip().strip("(").split(",")
        cleaned = [n.split(" as ")[0].strip() for n in names if n.strip() and n.strip() != ")"]
        if not cleaned:  # a parenthesised list starting on the next line: the module is enough
            cleaned = ["*"]
        for target in _resolve(match.group("from"), cleaned):
            found.append(Import(source, target, line, module_level))
    return found


def all_imports() -> list[Import]:
    """Every import of an sfu module by an sfu module."""
    found: list[Import] = []
    for path in sorted(PACKAGE.rglob("*")):
        if path.suffix == ".py":
            found += _python_imports(path, module_name(path))
        elif path.suffix in (".pyx", ".pxd"):
            found += _cython_imports(path, module_name(path))
    return found


def _file_of(module: str) -> str:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py"), base.with_suffix(".pyx")):
        if candidate.exists():
            return str(candidate.relative_to(ROOT))
    return module


def test_every_module_has_a_layer() -> None:
    for path in PACKAGE.rglob("*.py"):
        assert layer_of(module_name(path)) in LAYERS, path


def test_the_check_sees_lazy_and_cython_imports() -> None:
    imports = all_imports()
    # cli.py's `from sfu.app import serve` sits inside a function
    assert any(i.source == "sfu.cli" and not i.module_level for i in imports)
    # _forward.pyx cimports on one line (_cache) and over several (_layers)
    forward = {i.target for i in imports if i.source == "sfu._fastpath._forward"}
    assert {"sfu._fastpath._cache", "sfu._fastpath._layers"} <= forward


def test_layers_only_point_down() -> None:
    violations = []
    for imp in all_imports():
        own, other = layer_of(imp.source), layer_of(imp.target)
        if LAYERS[other] > LAYERS[own]:
            violations.append(
                f"{_file_of(imp.source)}:{imp.line} imports {imp.target}: "
                f"layer {own} ({LAYERS[own]}) may not import layer {other} ({LAYERS[other]})"
            )
    assert not violations, "\n".join(violations)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
    return components


def test_no_import_cycles() -> None:
    edges: dict[str, set[str]] = {}
    for imp in all_imports():
        if imp.module_level and imp.target != imp.source:
            edges.setdefault(imp.source, set()).add(imp.target)
    cycles = _cycles(edges)
    assert not cycles, "\n".join("import cycle: " + " <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
