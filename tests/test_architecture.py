"""The shape of the code stays as drawn: dependencies point one way, and there are no import circles.

Every import is counted (module level, inside functions, under ``TYPE_CHECKING``): a lazy import
is still a dependency a reader has to hold in mind. The layers, lowest first::

    protocol → node kernel (app, config, metrics, keyfile, console, runtime) → net → attest → jobs
    → api → composition (peer, testnet, demo, adversary, simulations) → cli

A module may import its own layer and the ones below it; nothing imports the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("protocol", "node", "simulations")

LAYERS: tuple[tuple[str, ...], ...] = (
    ("protocol",),
    ("node", "node.app", "node.config", "node.metrics", "node.timeline", "node.logging_setup", "node.keyfile",
     "node.console", "node.runtime"),
    ("node.net",),
    ("node.attest",),
    ("node.jobs",),
    ("node.api",),
    ("node.peer", "node.testnet", "node.demo", "node.adversary", "simulations"),
    ("node.cli",),
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Project modules that ``name`` imports (``from a import b`` counts ``a.b`` when it is a module,
    not the package ``a``: every submodule import runs its package's ``__init__`` anyway)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # ``from pkg import submodule`` depends on the submodule; ``from m import name`` on m
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in MODULES else base)
    return {_owner(target) for target in targets if _owner(target)} - {name}


def _owner(target: str) -> str:
    """The project module a dotted import name lands in ('' if none)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target


def _layer(module: str) -> int:
    best, best_len = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(name for name in MODULES if _layer(name) < 0)
    assert not unplaced, f"add these modules to a layer in LAYERS: {unplaced}"


def test_dependencies_point_down() -> None:
    upward = [
        f"{name} (layer {_layer(name)}) imports {target} (layer {_layer(target)})"
        for name, targets in sorted(GRAPH.items())
        for target in sorted(targets)
        if _layer(target) > _layer(name)
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_nothing_imports_the_cli() -> None:
    offenders = sorted(
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        if not name.startswith("node.cli")
        for target in targets
        if target.startswith("node.cli")
    )
    assert not offenders, offenders


def test_there_are_no_import_circles() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(name: str) -> None:  # Tarjan's strongly connected components
        index[name] = low[name] = len(index)
        stack.append(name)
        on_stack.add(name)
        for target in sorted(GRAPH.get(name, ())):
            if target not in index:
                visit(target)
                low[name] = min(low[name], low[target])
            elif target in on_stack:
                low[name] = min(low[name], index[target])
        if low[name] == index[name]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == name:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for name in sorted(GRAPH):
        if name not in index:
            visit(name)
    assert not circles, f"import circles: {circles}"


ROOMS = ["node", "node/net", "node/attest", "node/jobs", "node/api", "node/cli", "protocol/jobs"]


@pytest.mark.parametrize("package", ROOMS)
def test_each_package_says_what_lives_there_and_what_it_may_import(package: str) -> None:
    init = REPO / package / "__init__.py"
    docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
    assert "import" in docstring, f"{init} must say in its docstring what it may import"


LONG_MODULE_LINES = 500


def test_a_long_module_says_why_it_is_long() -> None:
    """Size follows role: past ~500 lines a module states, in its docstring, why it stays one."""
    unexplained = []
    for name, path in MODULES.items():
        if not name.startswith(("node", "protocol")):
            continue
        text = path.read_text(encoding="utf-8")
        if text.count("\n") <= LONG_MODULE_LINES:
            continue
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if f"over {LONG_MODULE_LINES} lines" not in docstring:
            unexplained.append(f"{name} ({text.count(chr(10))} lines)")
    assert not unexplained, (
        f"modules over {LONG_MODULE_LINES} lines whose docstring does not say why"
        f" ('Why one module over {LONG_MODULE_LINES} lines: ...'): {unexplained}"
    )
