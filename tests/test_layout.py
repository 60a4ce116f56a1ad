"""The package layout: every module belongs to a stage, no import runs against the stages' order
(:data:`maskstudy.STAGES`), and no imports close a circle.

Imports are read from each module's syntax tree, function-local and type-checking ones included, since a circle
hidden inside a function still breaks the moment that function runs first. Importing ``a.b.c`` also runs the
``__init__`` of ``a.b``: that edge is counted too, which is how a package's re-exports close circles.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import maskstudy

PACKAGE_DIR = Path(maskstudy.__file__).parent
#: Modules above every stage: the package's docstring and the command line.
TOP_LEVEL = {"maskstudy", "maskstudy.__main__"}


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of the package in ``package_dir`` (packages by their ``__init__``)."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _targets(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, known: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        candidates = [alias.name for alias in node.names]
    else:
        if node.level:
            base = importer.split(".") if is_package else importer.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        # `from package import module` imports the module; `from module import name` the module itself
        candidates = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module for alias in node.names]
    found = []
    for name in candidates:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            found.append(name)
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, anywhere in its file, with the packages whose ``__init__``
    such an import runs."""
    modules = module_names(package_dir)
    known = set(modules)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _targets(node, name, is_package, known):
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    ancestor = ".".join(parts[:i])
                    if ancestor in known and ancestor not in own_packages and ancestor != name:
                        graph[name].add(ancestor)
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or through others (Tarjan's strongly connected
    components of more than one module), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def stage_of(module: str, stages: tuple[str, ...]) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in stages else None


def upward_imports(graph: dict[str, set[str]], stages: tuple[str, ...], top_level: set[str]) -> list[str]:
    """Every import of a later stage by an earlier one, as ``importer (stage) -> imported (stage)``."""
    rank = {stage: i for i, stage in enumerate(stages)}
    found = []
    for importer, targets in sorted(graph.items()):
        if importer in top_level:
            continue
        low = stage_of(importer, stages)
        for target in sorted(targets):
            high = stage_of(target, stages)
            if low is not None and high is not None and rank[high] > rank[low]:
                found.append(f"{importer} ({low}) -> {target} ({high})")
    return found


def outside_stages(graph: dict[str, set[str]], stages: tuple[str, ...], top_level: set[str]) -> list[str]:
    return sorted(m for m in graph if m not in top_level and stage_of(m, stages) is None)


def layout_problems(package_dir: Path, stages: tuple[str, ...], top_level: set[str]) -> list[str]:
    graph = import_graph(package_dir)
    problems = [f"module outside every stage: {m}" for m in outside_stages(graph, stages, top_level)]
    problems += [f"import circle: {' <-> '.join(c)}" for c in import_circles(graph)]
    problems += [f"import against the stage order: {edge}" for edge in upward_imports(graph, stages, top_level)]
    return problems


def test_maskstudy_follows_its_stage_order_without_circles():
    problems = layout_problems(PACKAGE_DIR, maskstudy.STAGES, TOP_LEVEL)
    assert not problems, (f"stage order {' < '.join(maskstudy.STAGES)} (maskstudy/__init__.py):\n"
                          + "\n".join(problems))


def test_every_stage_is_a_subpackage_with_a_docstring():
    for stage in maskstudy.STAGES:
        init = PACKAGE_DIR / stage / "__init__.py"
        assert init.is_file(), f"stage {stage!r} has no package {init}"
        assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), f"{init} says nothing of its stage"


def _write_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "pkg"
    for relative, text in files.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return package


STAGES = ("low", "high")
BASE = {"__init__.py": "", "low/__init__.py": "", "high/__init__.py": "", "high/b.py": "from ..low import a\n"}


@pytest.mark.parametrize("files, expected", [
    ({"low/a.py": "X = 1\n"}, []),
    ({"low/a.py": "def f():\n    from ..high import b\n"},
     ["import circle: pkg.high.b <-> pkg.low.a",
      "import against the stage order: pkg.low.a (low) -> pkg.high (high)",
      "import against the stage order: pkg.low.a (low) -> pkg.high.b (high)"]),
    ({"low/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.high.c import C\n",
      "high/c.py": "C = 1\n"},
     ["import against the stage order: pkg.low.a (low) -> pkg.high (high)",
      "import against the stage order: pkg.low.a (low) -> pkg.high.c (high)"]),
    ({"low/a.py": "X = 1\n", "stray.py": "Y = 2\n"}, ["module outside every stage: pkg.stray"]),
], ids=["clean", "function-local-circle", "type-checking-upward", "module-outside-stages"])
def test_layout_problems_are_found(tmp_path, files, expected):
    package = _write_package(tmp_path, {**BASE, **files})
    assert layout_problems(package, STAGES, {"pkg"}) == expected


def test_a_circle_through_a_package_init_is_found(tmp_path):
    """``low.a`` imports ``low.sub.c``, which runs ``low/sub/__init__``, which imports ``low.a``."""
    package = _write_package(tmp_path, {**BASE, "low/a.py": "from .sub.c import C\n",
                                        "low/sub/__init__.py": "from ..a import X\n", "low/sub/c.py": "C = 1\n"})
    assert import_circles(import_graph(package)) == [["pkg.low.a", "pkg.low.sub"]]


def test_project_root_is_the_checkout_from_any_working_directory(tmp_path, monkeypatch):
    """Outside the checkout the root is found from the package's own place, whatever folder the module sits in."""
    from maskstudy.datasets.build import project_root

    monkeypatch.chdir(tmp_path)
    root = project_root()
    assert (root / "maskstudy" / "__init__.py").is_file() and (root / "pyproject.toml").is_file()
