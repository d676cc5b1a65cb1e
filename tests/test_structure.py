"""The layout promises of the README's "How it is built": no library module imports a command-line module,
``pipeline.py`` stays a table and a loop, no library function is longer than a screen."""

from __future__ import annotations

import ast
import os

from tests.conftest import REPO

PACKAGE = os.path.join(REPO, "jaxtrans")
CLI = {"jaxtrans.main", "jaxtrans.chat", "jaxtrans.eval.harness"}  # plus every package's __main__


def _modules() -> dict[str, ast.Module]:
    out = {}
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".").removesuffix(".__init__")
                with open(path, encoding="utf-8") as fh:
                    out[name] = ast.parse(fh.read())
    return out


def _is_cli(name: str) -> bool:
    return name in CLI or name.endswith(".__main__")


def _imports(tree: ast.Module) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("jaxtrans")}


def test_library_never_imports_a_command_line_module():
    mods = _modules()
    upward = [(m, i) for m, tree in mods.items() if not _is_cli(m) for i in _imports(tree) if _is_cli(i)]
    assert not upward, upward


def test_pipeline_is_a_table_and_a_loop_and_library_functions_fit_a_screen():
    with open(os.path.join(PACKAGE, "pipeline.py")) as f:
        assert len(f.read().splitlines()) <= 250
    long = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _is_cli(name):
                if node.end_lineno - node.lineno + 1 > 60:
                    long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, long
