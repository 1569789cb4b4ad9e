"""`platform/` offers mechanisms and knows no domain: no module of it imports one."""

from __future__ import annotations

import ast
from pathlib import Path

import steward

PACKAGE = Path(steward.__file__).parent


def _domains() -> set[str]:
    return {
        path.name
        for path in PACKAGE.iterdir()
        if path.is_dir() and (path / "__init__.py").exists() and path.name != "platform"
    }


def _domain_imports(module: Path, domains: set[str]) -> list[tuple[int, str, str]]:
    """(line, imported module, its domain package) for each import of a domain in `module`,
    wherever it stands (inside functions too)."""
    found = []
    for node in ast.walk(ast.parse(module.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "steward" and len(parts) > 1 and parts[1] in domains:
                found.append((node.lineno, name, parts[1]))
    return found


def test_platform_imports_no_domain() -> None:
    domains = _domains()
    assert {"accounts", "assistant", "todos"} <= domains
    upward = [
        f"{module.name}:{line} imports {name}"
        for module in sorted((PACKAGE / "platform").glob("*.py"))
        for line, name, _ in _domain_imports(module, domains)
    ]
    assert not upward, upward


def _package_imports() -> dict[str, set[str]]:
    """Which domain packages each domain package imports (anywhere in its modules)."""
    domains = _domains()
    return {
        domain: {
            imported
            for module in (PACKAGE / domain).rglob("*.py")
            for _, _, imported in _domain_imports(module, domains)
            if imported != domain
        }
        for domain in domains
    }


def test_no_import_cycle_between_packages() -> None:
    graph = _package_imports()
    assert "jobs" in graph["notifications"]  # the walk sees real imports
    # Every domain may use accounts (who is calling); jobs serves the others and uses none.
    assert not graph["accounts"], graph["accounts"]
    assert graph["jobs"] <= {"accounts"}, graph["jobs"]
    visiting: list[str] = []
    done: set[str] = set()

    def visit(package: str) -> None:
        if package in done:
            return
        assert package not in visiting, " -> ".join([*visiting, package])
        visiting.append(package)
        for imported in sorted(graph[package]):
            visit(imported)
        visiting.pop()
        done.add(package)

    for package in sorted(graph):
        visit(package)
