"""The package's import graph: no cycle, and every import points down the stages.

Stages, lowest first: the shared base modules, ``data``, ``model``, then ``train`` and ``decode`` side by
side (neither may import the other), ``evaluate``, ``export``, and the front ends. A module may import
its own subpackage and anything below it, never above or sideways. Imports inside functions count too:
a lazy import is still a dependency. This test reads the source (``ast``), so it needs no import.
"""
import ast
import os

import pytest
from conftest import REPO_ROOT

PACKAGE = "whisper_finetune"
# What each top-level module or subpackage is; a lower number may never import a higher one, and two
# different units of one number may not import each other.
STAGES = {
    "errors": 0, "options": 0, "files": 0, "audio": 0, "text": 0, "hub": 0, "scoring": 0, "testing": 0,
    "extras": 0, "signals": 0, "runlock": 0,
    "data": 1,
    "model": 2,
    "train": 3, "decode": 3, "embeddings_config": 3,
    "evaluate": 4, "embeddings": 4,
    "export": 5, "demo": 5,
    "cli": 6,
}


def _modules():
    """``{dotted name: path}`` of every module of the package."""
    found = {}
    top = os.path.join(REPO_ROOT, PACKAGE)
    for folder, _, files in os.walk(top):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), REPO_ROOT)[:-3].replace(os.sep, ".")
                found[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(folder, name)
    return found


def _imports(module, path, modules):
    """The package modules ``module`` imports (at the top or inside a function)."""
    is_package = path.endswith("__init__.py")
    here = module if is_package else module.rpartition(".")[0]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[:len(here.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # "from . import x" names a module; "from .x import y" names things in x
            names = [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in modules] \
                or [source]
        else:
            continue
        targets.update(name for name in names if name.startswith(PACKAGE + ".") and name in modules)
    targets.discard(module)
    return targets


def _unit(module):
    """The stage unit of a module: its subpackage, or the top-level module itself."""
    return module.split(".")[1]


GRAPH = None


def _graph():
    global GRAPH
    if GRAPH is None:
        modules = _modules()
        GRAPH = {name: _imports(name, path, modules) for name, path in modules.items() if name != PACKAGE}
    return GRAPH


def test_every_unit_has_a_stage():
    assert {_unit(m) for m in _graph()} <= set(STAGES)


def test_imports_point_down_the_stages():
    wrong = []
    for module, targets in sorted(_graph().items()):
        for target in sorted(targets):
            a, b = _unit(module), _unit(target)
            if a == b:
                continue
            if STAGES[b] >= STAGES[a] and not (STAGES[a] == STAGES[b] == 0):
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_no_import_cycle():
    graph = _graph()
    cycles = []
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


@pytest.mark.parametrize("source, expected", [
    ("from .train import checkpoints\n", {"whisper_finetune.train.checkpoints"}),
    ("from ..data.features import X\n", {"whisper_finetune.data.features"}),
    ("def f():\n    from .decode import jax_backend\n", {"whisper_finetune.decode.jax_backend"}),
])
def test_the_walk_sees_relative_and_lazy_imports(tmp_path, source, expected):
    # The graph reader itself: a relative import, one two levels up, and one inside a function.
    path = tmp_path / "mod.py"
    path.write_text(source, encoding="utf-8")
    modules = set(_modules())
    module = "whisper_finetune.evaluate.mod" if source.startswith("from ..") else "whisper_finetune.mod"
    assert _imports(module, str(path), modules) == expected


def test_a_missing_extra_is_one_line_naming_the_extra(monkeypatch):
    import sys

    from whisper_finetune.extras import MissingExtra, require

    monkeypatch.setitem(sys.modules, "gradio", None)  # as if not installed: its import fails with that name
    with pytest.raises(MissingExtra, match=r"^demo\.py needs the package gradio, which is not installed: "
                                           r"pip install 'whisper-finetune\[demo\]' \(or pip install -r "
                                           r"requirements\.txt\)$"):
        require("gradio", "demo.py")
    assert require("json", "anything").dumps([1]) == "[1]"
