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


def test_platform_imports_no_domain() -> None:
    domains = _domains()
    assert {"accounts", "assistant", "todos"} <= domains
    upward = []
    for module in sorted((PACKAGE / "platform").glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "steward" and len(parts) > 1 and parts[1] in domains:
                    upward.append(f"{module.name}:{node.lineno} imports {name}")
    assert not upward, upward
