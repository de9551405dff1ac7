"""The lmgolf source files and the lmgolf modules each one imports, read from its syntax tree.

Every import statement counts, at the top of a module or inside a function. The runner file bundles
the closure of what its main imports; tests/test_layers.py checks the layering with the same graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "lmgolf"
PACKAGE_DIR = Path(__file__).parent


def module_file(name: str) -> Path | None:
    """The file of an lmgolf module or package, or None when there is none."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def is_package(name: str) -> bool:
    path = module_file(name)
    return path is not None and path.name == "__init__.py"


def all_modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR).with_suffix("").parts
        names.append(".".join((PACKAGE, *parts[:-1])) if parts[-1] == "__init__" else ".".join((PACKAGE, *parts)))
    return names


def imports_in(source: str, importer: str = PACKAGE) -> set[str]:
    """The lmgolf modules that a piece of source imports (`from lmgolf.x import y` names lmgolf.x.y
    when that is a module, else lmgolf.x)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, importer)
            if base is None or base.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if module_file(sub) is not None else base)
    return found


def imports_of(name: str) -> set[str]:
    path = module_file(name)
    return imports_in(path.read_text(encoding="utf-8"), name) - {name}


def closure(source: str) -> list[str]:
    """Every lmgolf module that running `source` can import, the packages above each one included."""
    todo, seen = list(imports_in(source)), set()
    while todo:
        name = todo.pop()
        if name in seen or module_file(name) is None:
            continue
        seen.add(name)
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        todo += [*parents, *imports_of(name)]
    return sorted(seen)


def stripped(source: str) -> str:
    """The same program without docstrings and comments (regenerated from its syntax tree): what the
    runner file bundles, since every byte of it counts against the budget."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body \
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree) + "\n"


def _absolute(node: ast.ImportFrom, importer: str) -> str | None:
    if not node.level:
        return node.module
    package = importer if is_package(importer) else importer.rpartition(".")[0]
    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
    return f"{base}.{node.module}" if node.module else base
