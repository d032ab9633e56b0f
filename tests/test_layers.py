"""The code's shape, as the README's Architecture section draws it: each package of proxy/
imports only the packages below it, nothing outside tests/ imports from tests/, and every
guard is in the one list."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Lowest first. A package may import itself and any package before it, nothing after it.
LAYERS = (
    "core", "http", "importer", "policy", "observe", "state", "authn", "tokenserver", "conf",
    "upstream", "pipeline", "guards", "serve", "cli",
)  # fmt: skip


def imports(path: Path, module: list[str]) -> Iterator[list[str]]:
    """The modules `path` (the module `module`) imports, as dotted parts, relative ones
    resolved; `from package import name` gives package.name."""
    package = module if path.name == "__init__.py" else module[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".") for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = base + (node.module.split(".") if node.module else [])
            yield from ([*target, alias.name] for alias in node.names)


def package_of(parts: list[str]) -> str | None:
    """The layer a proxy module belongs to (None: outside proxy, or proxy's own root)."""
    if len(parts) < 2 or parts[0] != "proxy" or parts[1] not in LAYERS:
        return None
    return parts[1]


def test_each_package_imports_only_the_ones_below_it() -> None:
    upward = []
    for path in sorted((ROOT / "proxy").rglob("*.py")):
        module = list(path.relative_to(ROOT).with_suffix("").parts)
        if module[-1] == "__init__":
            module = module[:-1]
        here = package_of(module)
        if here is None:
            continue
        for target in imports(path, module):
            there = package_of(target)
            if there is not None and LAYERS.index(there) > LAYERS.index(here):
                upward.append(f"{path.relative_to(ROOT)} imports {'.'.join(target)}")
    assert upward == []
    packages = {p.name for p in (ROOT / "proxy").iterdir() if (p / "__init__.py").exists()}
    assert packages == set(LAYERS)


def test_nothing_outside_the_tests_imports_from_them() -> None:
    found = [
        str(path.relative_to(ROOT))
        for folder in ("proxy", "bench", "scripts", "devtools", "compose")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for target in imports(path, list(path.relative_to(ROOT).with_suffix("").parts))
        if target[0] == "tests"
    ]
    assert found == []


def test_every_guard_is_in_the_one_list() -> None:
    """A module of proxy/guards/ defining a Guard is used by `ordered`, in the package."""
    from proxy import guards
    from proxy.pipeline.guard import Guard
    from proxy.upstream.catalog import Listings

    every = guards.ordered(store=_NoStore(), registry=None, upload_key=b"k", listings=Listings())  # type: ignore[arg-type]
    listed = {type(guard) for guard in every}
    defined = {
        value
        for path in (ROOT / "proxy" / "guards").glob("*.py")
        for value in vars(__import__(f"proxy.guards.{path.stem}", fromlist=["_"])).values()
        if isinstance(value, type) and issubclass(value, Guard) and value is not Guard
    }
    assert defined == listed


class _NoStore:
    """Enough of a Store for guards to be made (none is used here)."""

    def subscribe(self, subscriber: object) -> None:
        pass

    def shared_map(self, name: str) -> None:
        return None
