"""``shadow`` stays pure and shared: no product of ours, no I/O, no clock, so the agent and the local cloud
can both use it and every rule is table-testable."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SHADOW = Path(__file__).resolve().parents[2] / "shadow"
PRODUCTS = {"agent", "localcloud", "fleet", "fleetsim", "hal", "provisioning"}
EFFECTS = {
    "asyncio",
    "datetime",
    "io",
    "os",
    "pathlib",
    "random",
    "select",
    "shutil",
    "signal",
    "socket",
    "sqlite3",
    "ssl",
    "subprocess",
    "tempfile",
    "threading",
    "time",
}
ALLOWED_OURS = {"shadow", "base.logs"}  # logging is the one effect: a rejected request is worth a line


def _imports(path: Path) -> list[str]:
    out: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
    return out


MODULES = sorted(SHADOW.glob("*.py"))


def test_the_shadow_package_is_found() -> None:
    """Guard against the scan below passing because it found nothing."""
    assert {p.stem for p in MODULES} >= {"__init__", "document", "engine", "names", "topics"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_imports_nothing_but_the_standard_library_shadow_and_logging(path: Path) -> None:
    """No product (agent, local cloud, fleet, HAL, provisioning) and no I/O or clock module."""
    for name in _imports(path):
        top = name.split(".")[0]
        assert top not in PRODUCTS, f"{path.name} imports {name}"
        assert top not in EFFECTS, f"{path.name} imports {name}: the shadow rules take ``now`` and bytes"
        if top in sys.stdlib_module_names or top == "__future__":
            continue
        assert any(name == ours or name.startswith(f"{ours}.") for ours in ALLOWED_OURS), (
            f"{path.name} imports {name}"
        )


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_calls_no_builtin_that_does_io(path: Path) -> None:
    """``open``/``print``/``input`` would make a pure rule depend on the machine it runs on."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in {"open", "print", "input"}, f"{path.name}:{node.lineno}"
