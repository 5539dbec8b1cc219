"""How the package is laid out: imports run one way, no module shadows the standard
library, and the settings can be read without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "trainkit"

# Top to bottom: a module may import modules of its own layer's lower neighbours and below,
# never above. (A layer's modules may import each other as long as there is no cycle.)
LAYERS = [
    ["cli", "__main__"],
    ["launch", "evaluation", "prediction", "export", "lr_find", "sweeps", "compare"],
    ["runner"],
    ["build"],
    ["config"],
    [
        "data",
        "models",
        "losses",
        "optim",
        "schedulers",
        "regularization",
        "augment",
        "tasks",
        "metrics",
        "checkpoint",
        "finetune",
        "distributed",
        "speed",
        "reporting",
        "plotting",
    ],
    ["settings", "registry", "rundir", "overrides", "paths", "errors", "__init__"],
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def imports(path: Path) -> set[str]:
    """The trainkit modules ``path`` imports anywhere (functions included), but not those
    under ``if TYPE_CHECKING:``, which never run."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for statement in block.body
        for node in ast.walk(statement)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "trainkit":  # modules, or names of the package (__version__)
                found |= {
                    alias.name if _is_module(alias.name) else "__init__" for alias in node.names
                }
            elif node.module.startswith("trainkit."):
                found.add(node.module.removeprefix("trainkit."))
        elif isinstance(node, ast.Import):
            found |= {
                a.name.removeprefix("trainkit.")
                for a in node.names
                if a.name.startswith("trainkit.")
            }
    return found


def _is_module(name: str) -> bool:
    return (PACKAGE / f"{name}.py").is_file() or (PACKAGE / name).is_dir()


def graph() -> dict[str, set[str]]:
    edges = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        edges[name] = {target for target in imports(path) if target != name}
    return edges


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index
    raise AssertionError(f"trainkit.{module} is in no layer of tests/test_layout.py: add it")


def test_every_module_has_a_layer():
    for module in graph():
        layer_of(module)


def test_imports_run_one_way():
    wrong = [
        f"{module} imports {target}"
        for module, targets in graph().items()
        for target in targets
        if target.split(".")[0] != module.split(".")[0] and layer_of(target) < layer_of(module)
    ]
    assert not wrong, "imports upwards: " + "; ".join(sorted(wrong))


def test_no_import_cycles():
    edges = graph()
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(edges.get(module, ())):
            if target in path:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in done:
                visit(target, [*path, target])
        done.add(module)

    done: set[str] = set()
    for module in sorted(edges):
        if module not in done:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle(monkeypatch):
    fake = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    monkeypatch.setattr(sys.modules[__name__], "graph", lambda: fake)
    try:
        test_no_import_cycles()
    except AssertionError as error:
        assert "a -> b -> c -> a" in str(error)
    else:
        raise AssertionError("a cycle went unnoticed")


def test_no_module_shadows_the_standard_library():
    shadowing = [
        name
        for path in PACKAGE.rglob("*.py")
        if (name := path.stem) in sys.stdlib_module_names and name != "__init__"
    ]
    assert not shadowing, shadowing


def test_settings_import_no_torch():
    code = (
        "import sys; import trainkit.settings, trainkit.rundir, trainkit.overrides; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
