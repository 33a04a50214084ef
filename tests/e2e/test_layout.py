"""The package reads as layers: no import cycle, the core never imports the reference layer
(gradwatch.bench) nor the optional libraries, and importing gradwatch stays cheap."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import gradwatch

ROOT = pathlib.Path(gradwatch.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> gradwatch modules it imports at module level (not inside functions)."""
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.If):  # TYPE_CHECKING blocks import nothing at run time
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        graph[name] = {m for m in found if m.startswith("gradwatch")}
    modules = set(graph)
    return {k: {m for m in v if m in modules and m != k} for k, v in graph.items()}


def test_no_import_cycle():
    graph = _imports()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt == "gradwatch" or node == "gradwatch":
                continue  # the package __init__ re-exports; submodules never import it back
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [node, nxt]))
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_core_never_imports_the_reference_layer():
    for module, deps in _imports().items():
        if module.startswith("gradwatch.bench"):
            continue
        assert not {d for d in deps if d.startswith("gradwatch.bench")}, module


def test_import_is_cheap():
    code = ("import sys, gradwatch; bad = [m for m in ('matplotlib', 'torchvision', 'wandb', "
            "'lightning', 'transformers', 'tensorboard', 'gradwatch.bench') if m in sys.modules];"
            " print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


CORE = ("capture", "measure", "verdict", "record", "io")
"""The core's sub-packages, in the order the data flows; `GradWatch` (monitor.py) sits on top."""


def test_the_core_is_laid_out_as_the_flow_runs():
    top = sorted(p.stem for p in ROOT.glob("*.py"))
    assert top == ["__init__", "__main__", "monitor", "options"], top
    for part in CORE:
        assert (ROOT / part / "__init__.py").is_file(), part
    graph = _imports()
    rank = {part: k for k, part in enumerate(CORE)}
    # io reads records and never reaches back into the hooks; capture never imports io
    for module, deps in graph.items():
        part = module.split(".")[1] if module.count(".") >= 1 else ""
        if part == "capture":
            assert not {d for d in deps if d.startswith("gradwatch.io")}, module
        if part in rank and part != "io":
            assert not {d for d in deps if d.startswith("gradwatch.io")}, module
        if part == "io":
            assert not {d for d in deps if d.startswith("gradwatch.capture")}, module


def test_no_module_is_over_300_lines():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 300}
    assert not long, f"split these modules by idea: {long}"
