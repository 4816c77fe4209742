"""The package's import structure: modules import only downward, never to dodge a cycle."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nmt"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def nmt_imports(path: Path) -> tuple[set[str], set[str]]:
    """The nmt modules `path` imports at module level, and those it imports inside functions."""
    top, inner = set(), set()
    tree = ast.parse(path.read_text())
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) for n in ast.walk(f)}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nmt"):
            names = [node.module]
            if node.module == "nmt":  # `from nmt import faults`
                names = [f"nmt.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.startswith("nmt")]
        (inner if id(node) in nested else top).update(names)
    return top, inner


def graph() -> dict[str, set[str]]:
    """Module -> the nmt modules it imports, wherever the import stands."""
    return {module_name(path): set.union(*nmt_imports(path)) for path in PACKAGE.rglob("*.py")}


def test_the_import_graph_has_no_cycle():
    try:
        order = list(TopologicalSorter(graph()).static_order())
    except CycleError as error:
        raise AssertionError(f"import cycle: {error.args[1]}") from None
    assert order.index("nmt.vocab") < order.index("nmt.models.transformer")
    assert order.index("nmt.search") < order.index("nmt.sampling") < order.index("nmt.decoding")
    assert order.index("nmt.decoding") < order.index("nmt.evaluate") < order.index("nmt.train")
    assert order.index("nmt.translator") < order.index("nmt.translate") < order.index("nmt.cli")


def test_only_the_entry_point_imports_inside_functions():
    """cli.py defers its imports so that Ctrl-C during start-up ends with one line; anywhere
    else an import inside a function would be hiding a cycle."""
    lazy = {module_name(p): nmt_imports(p)[1] for p in PACKAGE.rglob("*.py")}
    assert {name for name, inner in lazy.items() if inner} <= {"nmt.cli"}


def test_models_search_and_training_keep_to_their_contracts():
    imports = graph()
    concrete = {"nmt.models.rnn", "nmt.models.transformer"}
    searchers = ("nmt.search", "nmt.sampling", "nmt.decoding")
    users = (*searchers, "nmt.train", "nmt.training_run", "nmt.evaluate", "nmt.translator",
             "nmt.tracking")  # fmt: skip
    for user in users:
        assert not imports[user] & concrete, f"{user} imports a concrete model"
    for model in ("nmt.models.base", *concrete):
        assert "nmt.tokenizer" not in imports[model], f"{model} imports SentencePiece"
