"""Component boundaries, enforced: no module reaches into another module's private names, and no class in
the fleet simulator overrides a private method of a HAL or agent class.

A private name (``_x``, not a dunder) is an implementation detail of the module or class that defines it; a
caller that needs it is asking for a public seam. Checked on the source with :mod:`ast`, so it needs no
import and sees every file.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("base", "hal", "shadow", "agent", "provisioning", "localcloud", "fleetsim", "rollout", "fleet")
# private by convention but public by contract in the standard library
STDLIB_PUBLIC = frozenset({"_replace", "_asdict", "_fields", "_make", "_exit", "_field_defaults"})
SELF_NAMES = frozenset({"self", "cls"})
# argparse offers no public walk of a parser's actions; base/cli.py is the one module that reads them
STDLIB_INTERNALS_ALLOWED: dict[str, frozenset[str]] = {
    "base/cli.py": frozenset({"_actions", "_SubParsersAction"})
}


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def source_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_project(module: str) -> bool:
    return module.split(".")[0] in PACKAGES


class _Checker(ast.NodeVisitor):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.rel = str(path.relative_to(ROOT))
        self.module = _module_name(path)
        self.violations: list[Violation] = []
        self.own_private: set[str] = set()  # private names this module defines: its own to use

    def _add(self, node: ast.AST, what: str) -> None:
        self.violations.append(Violation(self.rel, getattr(node, "lineno", 0), what))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level:
            self._add(node, "relative import (use absolute imports across the project)")
        if _is_project(module):
            for alias in node.names:
                if _private(alias.name) and module != self.module:
                    self._add(node, f"imports private name {alias.name!r} from {module}")
        elif module and _private(module.split(".")[-1]) and _is_project(module):
            self._add(node, f"imports from private module {module}")
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if _is_project(alias.name) and any(_private(part) for part in alias.name.split(".")):
                self._add(node, f"imports private module {alias.name}")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if (
            _private(node.attr)
            and node.attr not in STDLIB_PUBLIC
            and node.attr not in STDLIB_INTERNALS_ALLOWED.get(self.rel, frozenset())
        ):
            owner = node.value
            is_self = isinstance(owner, ast.Name) and owner.id in SELF_NAMES
            is_super = (
                isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super"
            )
            if not (is_self or is_super or node.attr in self.own_private):
                self._add(node, f"reaches into private attribute {ast.unparse(node)!r}")
        self.generic_visit(node)


def _defined_private(tree: ast.Module) -> set[str]:
    """Private names a module defines: functions, classes, methods, and attributes it assigns."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and _private(node.name):
            out.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _private(node.attr):
            out.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and _private(node.id):
            out.add(node.id)
        elif (
            isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and _private(node.target.id)
        ):
            out.add(node.target.id)
    return out


def check_file(path: Path) -> list[Violation]:
    tree = ast.parse(path.read_text(), filename=str(path))
    checker = _Checker(path)
    checker.own_private = _defined_private(tree)
    checker.visit(tree)
    return checker.violations + check_inherited_privates(path, tree)


def _project_imports(tree: ast.Module, module: str) -> set[str]:
    """Local names imported from other project modules (candidates for a foreign base class)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and _is_project(node.module)
            and node.module != module
        ):
            out.update(alias.asname or alias.name for alias in node.names)
    return out


def check_inherited_privates(path: Path, tree: ast.Module) -> list[Violation]:
    """A subclass of another module's class uses ``self._x`` that it does not define itself: that is the
    base class's private state, reached through inheritance."""
    imported = _project_imports(tree, _module_name(path))
    rel = str(path.relative_to(ROOT))
    out: list[Violation] = []
    for cls in ast.walk(tree):
        if not isinstance(cls, ast.ClassDef):
            continue
        foreign = [ast.unparse(b) for b in cls.bases if ast.unparse(b).split(".")[0] in imported]
        if not foreign:
            continue
        own = _defined_private(ast.Module(body=cls.body, type_ignores=[]))
        seen: set[str] = set()
        for node in ast.walk(cls):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in SELF_NAMES
                and _private(node.attr)
                and node.attr not in own
                and node.attr not in seen
            ):
                seen.add(node.attr)
                out.append(
                    Violation(rel, node.lineno, f"{cls.name} uses {foreign[0]}'s private {node.attr!r}")
                )
    return out


def _imported_bases(tree: ast.Module) -> dict[str, str]:
    """Local name -> defining module, for names imported from hal or agent."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("hal", "agent"):
            for alias in node.names:
                out[alias.asname or alias.name] = node.module
    return out


def check_simulator_overrides(path: Path) -> list[Violation]:
    tree = ast.parse(path.read_text(), filename=str(path))
    imported = _imported_bases(tree)
    rel = str(path.relative_to(ROOT))
    out: list[Violation] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        bases = [b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in node.bases]
        foreign = [b for b in bases if b in imported or b.split(".")[0] in ("hal", "agent")]
        if not foreign:
            continue
        for item in node.body:
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and _private(item.name):
                out.append(
                    Violation(rel, item.lineno, f"{node.name} overrides private {item.name} of {foreign[0]}")
                )
    return out


def test_the_checker_catches_what_it_forbids(tmp_path: Path) -> None:
    """The rule itself, on a sample: each forbidden form is found, the allowed ones are not."""
    pkg = ROOT / "fleetsim"
    sample = pkg / "_boundary_sample_for_test.py"
    sample.write_text(
        "from hal.robot import Robot, _EMPTY\n"
        "from hal import robot\n"
        "class Stepped(Robot):\n"
        "    def _run(self):\n"
        "        self._ok = 1\n"
        "        self._parser.feed()\n"
        "        robot._thread\n"
        "        x = (1, 2)._replace\n"
    )
    try:
        found = [v.what for v in check_file(sample)] + [v.what for v in check_simulator_overrides(sample)]
    finally:
        sample.unlink()
    assert found == [
        "imports private name '_EMPTY' from hal.robot",
        "reaches into private attribute 'robot._thread'",
        "Stepped uses Robot's private '_parser'",
        "Stepped overrides private _run of Robot",
    ]


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_reaches_into_private_names(path: Path) -> None:
    violations = check_file(path)
    assert not violations, "\n".join(map(str, violations))


@pytest.mark.parametrize(
    "path", sorted((ROOT / "fleetsim").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_simulator_overrides_no_private_method_of_hal_or_agent(path: Path) -> None:
    violations = check_simulator_overrides(path)
    assert not violations, "\n".join(map(str, violations))


# Who may import whom (package level). Each product depends only on the ones below it; nothing depends on
# the CLI (fleet) and the robot's agent never depends on the cloud or the tools.
ALLOWED_DEPENDENCIES: dict[str, frozenset[str]] = {
    "base": frozenset(),
    "hal": frozenset({"base"}),
    "shadow": frozenset({"base"}),
    "provisioning": frozenset({"base", "shadow"}),
    "agent": frozenset({"base", "hal", "shadow", "provisioning"}),
    "localcloud": frozenset({"base", "shadow", "provisioning"}),
    "fleetsim": frozenset({"base", "hal", "shadow", "provisioning", "agent", "localcloud"}),
    "rollout": frozenset({"base", "shadow", "provisioning", "localcloud"}),
    "fleet": frozenset(
        {"base", "hal", "shadow", "provisioning", "agent", "localcloud", "fleetsim", "rollout"}
    ),
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(project package, line) for every import in ``path``, at any depth (lazy imports count too)."""
    out: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        out.update((name.split(".")[0], node.lineno) for name in names if _is_project(name))
    return out


def test_every_package_has_a_dependency_rule() -> None:
    assert set(ALLOWED_DEPENDENCIES) == set(PACKAGES)


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_packages_import_only_the_layers_below_them(path: Path) -> None:
    own = path.relative_to(ROOT).parts[0]
    allowed = ALLOWED_DEPENDENCIES[own] | {own}
    wrong = sorted(
        f"line {line}: imports {pkg}" for pkg, line in imported_packages(path) if pkg not in allowed
    )
    assert not wrong, f"{path.relative_to(ROOT)} ({own} may import {sorted(allowed)}): " + "; ".join(wrong)


def module_import_graph() -> dict[str, set[str]]:
    """Module -> project modules it imports at import time (module level, outside ``if TYPE_CHECKING``)."""
    modules = {_module_name(p): p for p in source_files()}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.parse(path.read_text(), filename=str(path)).body:
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for nxt in sorted(graph[node]):
            cycle = visit(nxt)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle:
            return cycle
    return None


def test_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_modules() -> None:
    cycle = find_cycle(module_import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
