"""The layers import downwards only, and the sans-IO layers import no I/O (docs/INTERNALS.md).

Order: faults, sip < transaction, auth < transport, locate, location, db < proxy < routing < cli, config, server, mgmt.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "trioproxy"

LAYERS: dict[str, int] = {
    "faults": 0,  # exception boundaries' logging and counting: every layer may use it; it imports nothing
    "sip": 0,
    "transaction": 1,
    "auth": 1,
    "flood": 1,  # flood protection and rate limits: sans-IO, time as an input
    "transport": 2,
    "db": 2,
    "locate": 2,
    "rtpengine": 2,  # the rtpengine ng client (bencode, flags, SDP, UDP client): used by routing
    "location": 2,
    "proxy": 3,
    "uac": 3,  # trunk registrations: a sans-IO state machine and its task on the proxy's transactions
    "dialog": 3,  # dialog tracking: a sans-IO state machine and tracker, and the service sending BYEs
    "acc": 3,  # accounting records: JSON lines file, --db rows
    "dispatcher": 3,  # load-balancing sets (sans-IO model), their reload and OPTIONS probes on the proxy
    "routing": 4,
    "cli": 5,
    "config": 5,
    "server": 5,
    "mgmt": 5,
}
SHELL = 5  # anything not named above (trioproxy/__init__.py, __main__.py, new top-level modules)
SANS_IO = ("sip", "transaction", "auth", "flood")
# Modules that do I/O or run an event loop: never in the sans-IO layers.
IO_MODULES = {
    "trio", "trio_typing", "anyio", "asyncio", "socket", "ssl", "selectors", "select", "subprocess", "threading",
    "multiprocessing", "concurrent", "http", "urllib.request", "dns", "redis", "sqlite3", "lupa",
}  # fmt: skip


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _dotted(path: Path, root: Path = PACKAGE) -> list[str]:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imports(path: Path, root: Path = PACKAGE) -> list[str]:
    """Absolute names of everything a module imports (relative imports resolved; ``from a import b``
    gives both ``a`` and ``a.b``, since b may be a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = _dotted(path, root)
    package = here if path.name == "__init__.py" else here[:-1]
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            out.append(prefix)
            out.extend(f"{prefix}.{alias.name}" for alias in node.names)
    return out


def _layer_of(dotted: list[str]) -> tuple[str, int]:
    name = dotted[1] if len(dotted) > 1 else ""
    return name, LAYERS.get(name, SHELL)


def test_the_package_has_modules() -> None:
    names = {_dotted(p)[1] for p in _modules() if len(_dotted(p)) > 1}
    assert "sip" in names


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_imports_point_downwards(path: Path) -> None:
    me, my_layer = _layer_of(_dotted(path))
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] != "trioproxy" or len(parts) < 2:
            continue
        other, layer = _layer_of(parts)
        assert layer <= my_layer, f"{path.name} ({me}) imports {name} ({other}, a higher layer)"


@pytest.mark.parametrize(
    "path",
    [p for p in _modules() if _layer_of(_dotted(p))[0] in SANS_IO],
    ids=lambda p: str(p.relative_to(PACKAGE.parent)),
)
def test_sans_io_layers_import_no_io(path: Path) -> None:
    for name in _imports(path):
        for banned in IO_MODULES:
            assert name != banned and not name.startswith(banned + "."), f"{path} imports {name}"


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    # The walker itself, on a fake package: relative and absolute imports resolve to absolute names.
    root = tmp_path / "trioproxy"
    (root / "sip").mkdir(parents=True)
    fake = root / "sip" / "fake.py"
    fake.write_text(
        "from ..proxy import core\nimport trio\nfrom . import uri\nfrom trioproxy import routing\n"
    )
    names = _imports(fake, root)
    assert names == [
        "trioproxy.proxy",
        "trioproxy.proxy.core",
        "trio",
        "trioproxy.sip",
        "trioproxy.sip.uri",
        "trioproxy",
        "trioproxy.routing",
    ]
    assert _layer_of(["trioproxy", "proxy"])[1] > _layer_of(["trioproxy", "sip"])[1]
