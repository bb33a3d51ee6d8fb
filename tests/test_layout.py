"""The shape of the source tree: the rules docs/DESIGN.md's "Where things live" promises.

- no import cycle among the project's modules (every ``import`` counts, lazy ones inside functions too,
  except those under ``if TYPE_CHECKING:``);
- no folder holds more than 16 Python modules side by side;
- a module over 450 lines says why in its docstring ("Over N lines ..." or "Long on purpose ...");
- nothing in the project cites files outside the repository.
"""
from __future__ import annotations

import ast
import re
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# top-level folder -> import name (pyproject.toml's package-dir)
PACKAGES = {"mrcnn_edge": "mrcnn_edge", "export": "mrcnn_edge.export", "runtime": "mrcnn_edge.runtime",
            "plugins": "mrcnn_edge.plugins"}
MAX_MODULES_PER_FOLDER = 16
MAX_LINES = 450
REASON = re.compile(r"(Over \d+ lines|Long on purpose)", re.I)


def _tracked(pattern: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", pattern], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in out.split()]


def _project_modules() -> dict[str, Path]:
    """Dotted name -> file, for every Python module of the distribution."""
    modules = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """Project modules imported anywhere in ``tree`` (a ``from pkg import sub`` names the submodule)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module if is_package else module.rsplit(".", 1)[0]
                for _ in range(node.level - 1):
                    anchor = anchor.rsplit(".", 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:
                    found.add(sub)
                elif base in known:
                    found.add(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(module)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    """The check below must be able to fail: a two-module cycle and a three-module one are found."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert _cycles(graph) == [["a", "b"], ["c", "d", "e"]]
    tree = ast.parse("from mrcnn_edge.export import quantize\nfrom .checks import x\n")
    known = {"mrcnn_edge.export.quantize", "mrcnn_edge.export.checks", "mrcnn_edge.export.onnx_export"}
    assert _imports(tree, "mrcnn_edge.export.onnx_export", False, known) == {
        "mrcnn_edge.export.quantize", "mrcnn_edge.export.checks"}


def test_no_import_cycle_among_the_project_modules():
    modules = _project_modules()
    known = set(modules)
    graph = {name: _imports(ast.parse(path.read_text()), name, path.name == "__init__.py", known)
             for name, path in modules.items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_folder_holds_more_than_16_modules():
    per_folder: dict[Path, int] = defaultdict(int)
    for path in _tracked("*.py"):
        per_folder[path.parent] += 1
    crowded = {str(p.relative_to(ROOT)): n for p, n in per_folder.items() if n > MAX_MODULES_PER_FOLDER}
    assert not crowded, f"folders with more than {MAX_MODULES_PER_FOLDER} Python modules: {crowded}"


def test_long_modules_say_why():
    unexplained = []
    for path in _tracked("*.py"):
        text = path.read_text()
        if text.count("\n") + 1 <= MAX_LINES:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if not REASON.search(doc):
            unexplained.append(f"{path.relative_to(ROOT)} ({text.count(chr(10)) + 1} lines)")
    assert not unexplained, f"modules over {MAX_LINES} lines whose docstring does not say why: {unexplained}"


@pytest.mark.parametrize("needle", ["STYLE.md", "shared/DESIGN.md", "/work/"])
def test_nothing_cites_files_outside_the_repository(needle):
    """The project stands on its own: its docs and code cite its own files only. (TensorRT's header
    sets beside a checkout are a build input that scripts/test.sh looks for, not a citation.)"""
    hits = []
    for path in _tracked("*"):
        if not path.is_file() or path.suffix in {".png", ".pth", ".jpg"} or path == Path(__file__).resolve():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        hits += [f"{path.relative_to(ROOT)}:{i}" for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert not hits, f"{needle!r} cited in: {hits}"
