"""The transaction layer is sans-IO: it imports the standard library and trioproxy.sip, nothing else."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import trioproxy.transaction

PACKAGE = Path(trioproxy.transaction.__file__).parent


def imported_modules(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
    return out


def test_only_stdlib_and_sip_are_imported() -> None:
    files = sorted(PACKAGE.glob("*.py"))
    assert len(files) >= 6
    for path in files:
        for module in imported_modules(path):
            top = module.split(".")[0]
            if top == "trioproxy":
                assert module == "trioproxy.sip", (path.name, module)
            else:
                assert top in sys.stdlib_module_names or top == "__future__", (path.name, module)


def test_trio_is_never_imported() -> None:
    for path in PACKAGE.glob("*.py"):
        assert not any(m.split(".")[0] == "trio" for m in imported_modules(path)), path.name
