"""The package's layers, as the file tree shows them, hold in the imports too.

The domain (the modules of `tokensvc` itself) knows nothing of HTTP, pages or the command line,
and reaches storage only through `tokensvc.storage`'s Protocols and the store's plain helpers
(key names, record formats); `store/` knows nothing above it. Only the wiring (`app.py`,
`services.py`, `__main__.py`) puts the layers together. No module grows past 400 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tokensvc

ROOT = Path(tokensvc.__file__).parent
WIRING = {"tokensvc.app", "tokensvc.services", "tokensvc.__main__"}
# What a layer may not import (a prefix matches the module and everything under it).
FORBIDDEN = {
    "domain": ("tokensvc.http", "tokensvc.web", "tokensvc.cli", "tokensvc.app",
               "tokensvc.store.redis", "tokensvc.store.connection", "tokensvc.store.tokens",
               "tokensvc.store.clients", "tokensvc.store.users", "tokensvc.store.sessions",
               "tokensvc.store.signing"),
    "store": ("tokensvc.http", "tokensvc.web", "tokensvc.cli", "tokensvc.app", "tokensvc.services",
              "tokensvc.grants", "tokensvc.issuance", "tokensvc.clients", "tokensvc.registry"),
    "http": ("tokensvc.web", "tokensvc.cli", "tokensvc.app"),
    "web": ("tokensvc.cli", "tokensvc.app"),
    # The command line is outermost, like the wiring: it serves the app (with http's protocol
    # class) and administers through the registry; it has no business with pages.
    "cli": ("tokensvc.web",),
}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def layer(name: str) -> str | None:
    if name in WIRING:
        return None
    parts = name.split(".")
    if len(parts) > 1 and parts[1] in ("http", "web", "cli", "store"):
        return parts[1]
    return "domain"


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tokensvc"):
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("tokensvc"))
    return names


def test_the_tree_is_what_the_layers_are() -> None:
    found = modules()
    # Each layer has modules, so a rename that empties one cannot pass unnoticed.
    assert {layer(m) for m in found} >= {"domain", "http", "web", "cli", "store"}
    assert "tokensvc.grants.client_credentials" in found and "tokensvc.store.records" in found


def test_no_layer_imports_one_above_it() -> None:
    wrong = []
    for name, path in modules().items():
        kind = layer(name)
        if kind is None:
            continue
        for target in imported(path):
            if any(target == f or target.startswith(f + ".") for f in FORBIDDEN[kind]):
                wrong.append(f"{name} ({kind}) imports {target}")
    assert wrong == []


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from tokensvc.http.params import read_document\nimport tokensvc.web.pages\n")
    assert imported(bad) >= {"tokensvc.http.params", "tokensvc.web.pages"}


def test_no_module_is_over_400_lines() -> None:
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text().splitlines())) > 400}
    assert long == {}


def test_the_resource_kit_stands_alone() -> None:
    """tokensvc.resource runs inside other apps' APIs: it imports itself and three small pure
    modules (the LRU, the scope syntax, the DPoP proof check), nothing of the service's layers
    or wiring."""
    allowed = ("tokensvc.resource", "tokensvc.lru", "tokensvc.scopes", "tokensvc.dpop")
    kit = {name: path for name, path in modules().items() if name.startswith("tokensvc.resource.")}
    assert {"tokensvc.resource.server", "tokensvc.resource.jwks",
            "tokensvc.resource.introspection"} <= set(kit)
    wrong = [f"{name} imports {target}" for name, path in kit.items() for target in imported(path)
             if not any(target == a or target.startswith(a + ".") for a in allowed)]
    assert wrong == []
