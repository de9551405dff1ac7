"""The package layering: stages import only the layers below them, no import cycles, and the runner
file bundles exactly the closure of what loading and scoring import."""

import pytest

from lmgolf import sources
from lmgolf.packing.runner import bundled_modules, runner_source
from lmgolf.packing.writer import code_bytes

LEAVES = {"lmgolf", "lmgolf.version", "lmgolf.errors", "lmgolf.allocator", "lmgolf.runfiles", "lmgolf.progress", "lmgolf.device",
          "lmgolf.runinfo", "lmgolf.codecs", "lmgolf.params", "lmgolf.quantize", "lmgolf.sources"}
# each layer and the layers it may import (leaves are below every layer)
ALLOWED = {
    "leaf": set(),
    "config": set(),
    "data": {"config"},
    "model": {"config"},
    "eval": {"config", "data", "model"},
    "packing": {"config", "data", "model", "eval"},
    "training": {"config", "data", "model", "eval", "packing"},
    "serve": {"config", "data", "model", "eval", "packing", "training"},
    "study": {"config", "data", "model", "eval", "packing", "training", "serve"},
    "api": {"config", "data", "model", "eval", "packing", "training", "serve", "study"},
    "cli": {"config", "data", "model", "eval", "packing", "training", "serve", "study", "api"},
}


def layer(name: str) -> str:
    if name in LEAVES:
        return "leaf"
    if name == "lmgolf.__main__":
        return "cli"
    return name.split(".")[1] if name.count(".") else name


def edges():
    return {(m, i) for m in sources.all_modules() for i in sources.imports_of(m)}


def test_every_module_belongs_to_a_declared_layer():
    unknown = {m for m in sources.all_modules() if layer(m) not in ALLOWED}
    assert not unknown, f"modules outside the declared layers: {sorted(unknown)}"


def test_no_import_crosses_the_layering():
    bad = sorted((m, i) for m, i in edges() if layer(m) != layer(i) and layer(i) != "leaf"
                 and layer(i) not in ALLOWED[layer(m)])
    assert not bad, "imports against the layering: " + ", ".join(f"{m} -> {i}" for m, i in bad)


def test_leaves_import_only_leaves():
    bad = sorted((m, i) for m, i in edges() if layer(m) == "leaf" and layer(i) != "leaf")
    assert not bad, "leaf modules importing a stage: " + ", ".join(f"{m} -> {i}" for m, i in bad)


def test_the_import_graph_has_no_cycle():
    graph = {}
    for m, i in edges():
        graph.setdefault(m, set()).add(i)
    state, path = {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_graph_sees_imports_inside_functions_and_relative_ones():
    source = "def f():\n    from lmgolf.packing import artifact\n    import lmgolf.eval.ttt\n    from . import shards\n"
    assert sources.imports_in(source, "lmgolf.data.folder") == {"lmgolf.packing.artifact", "lmgolf.eval.ttt",
                                                                "lmgolf.data.shards"}
    assert ("lmgolf.training.trainer", "lmgolf.eval.evaluate") in edges()  # a real cross-package edge


def test_runner_bundles_loading_and_scoring_and_nothing_for_writing_or_training():
    bundled = set(bundled_modules())
    assert {"lmgolf.packing.artifact", "lmgolf.eval.evaluate", "lmgolf.data.shards", "lmgolf.model.gpt",
            "lmgolf.config.schema", "lmgolf.packing", "lmgolf"} <= bundled
    for name in ("lmgolf.packing.writer", "lmgolf.packing.gptq", "lmgolf.training.trainer", "lmgolf.model.count",
                 "lmgolf.cli", "lmgolf.api", "lmgolf.eval.ttt", "lmgolf.data.prepare"):
        assert name not in bundled
    assert code_bytes() == len(runner_source("plain").encode()) and code_bytes("compressed") < code_bytes()


@pytest.mark.parametrize("name", bundled_modules())
def test_runner_bundle_is_closed_under_real_imports(name):
    missing = sources.imports_of(name) - set(bundled_modules())
    assert not missing, f"{name} imports modules the runner leaves out: {sorted(missing)}"


@pytest.mark.parametrize("name", ["lmgolf.model.gpt", "lmgolf.packing.artifact", "lmgolf.config.schema"])
def test_stripped_sources_are_the_same_program_without_docstrings(name):
    import ast
    original = sources.module_file(name).read_text()
    stripped = sources.stripped(original)
    assert len(stripped) < len(original) and "#" not in "".join(
        line.split('"')[0].split("'")[0] for line in stripped.splitlines())  # no comment outside a string

    def without_docstrings(tree):
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and body and isinstance(body[0], ast.Expr) \
                    and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
        return ast.dump(tree)

    assert ast.dump(ast.parse(stripped)) == without_docstrings(ast.parse(original))
