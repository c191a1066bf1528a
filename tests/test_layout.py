"""The package's layout as the README describes it (its Layout table is the one description):
every module named there exists and every module is named; imports run only down the floors
and never in a circle; each paper's code lives in its own package."""

from __future__ import annotations

import re
from pathlib import Path

from synthdet.codegraph import direct_imports, module_file, package_root

README = Path(__file__).resolve().parents[1] / "README.md"


def _layout() -> dict[str, int]:
    """module file (relative to the package) -> floor, from the README's layout table."""
    text = README.read_text()
    block = re.search(r"<!-- layout:[^>]*-->\n(.*?)<!-- /layout -->", text, re.S)
    assert block, "README.md: the Layout table (<!-- layout --> ... <!-- /layout -->) is missing"
    floors: dict[str, int] = {}
    for line in block.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[0].isdigit():
            continue
        package = cells[1].strip("`").rstrip("/")
        prefix = "" if package == "synthdet" else f"{package}/"
        for module in re.findall(r"`([^`]+\.py)`", cells[2]):
            assert f"{prefix}{module}" not in floors, f"README layout names {prefix}{module} twice"
            floors[f"{prefix}{module}"] = int(cells[0])
    return floors


def _module_name(rel: Path) -> str:
    parts = rel.with_suffix("").parts
    return ".".join(("synthdet", *(parts[:-1] if rel.name == "__init__.py" else parts)))


def _floor(rel: str, floors: dict[str, int]) -> int:
    """A module's floor; a package's ``__init__.py`` stands on its package's floor (the highest of
    its modules: it may hand on any of them), the top-level one on the ground."""
    if rel in floors:
        return floors[rel]
    folder = rel.rpartition("/")[0]
    inside = [f for m, f in floors.items() if folder and m.startswith(f"{folder}/")]
    return max(inside) if inside else 0


def test_every_module_is_named_in_the_readme_layout_and_every_named_one_exists():
    floors = _layout()
    root = package_root()
    modules = {p.relative_to(root).as_posix() for p in root.rglob("*.py") if p.name != "__init__.py"}
    assert not sorted(set(floors) - modules), "README layout names modules that do not exist"
    assert not sorted(modules - set(floors)), "modules missing from the README layout table"


def _edges(path: Path, rel: str) -> set[str]:
    """The package's files that the module at ``path`` (``rel`` inside the package) imports."""
    root = package_root()
    targets = {module_file(t) for t in direct_imports(path, _module_name(Path(rel)))} - {None}
    return {t.relative_to(root).as_posix() for t in targets} - {rel}


def _upward(graph: dict[str, set[str]], floors: dict[str, int]) -> list[str]:
    return [f"{rel} (floor {_floor(rel, floors)}) imports {target} (floor {_floor(target, floors)})"
            for rel, targets in sorted(graph.items()) for target in sorted(targets)
            if _floor(target, floors) > _floor(rel, floors)]


def _circles(graph: dict[str, set[str]]) -> list[str]:
    """Every import circle met by a depth-first search (a module met again while on the path)."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    found = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(" -> ".join([*trail[trail.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def _package_graph() -> dict[str, set[str]]:
    root = package_root()
    return {p.relative_to(root).as_posix(): _edges(p, p.relative_to(root).as_posix()) for p in root.rglob("*.py")}


def test_imports_run_only_down_the_floors_and_never_in_a_circle():
    graph = _package_graph()
    assert not _upward(graph, _layout())
    assert not _circles(graph)


def test_each_paper_has_its_package_and_training_modules_stay_small():
    root = package_root()
    top = sorted(p.name for p in root.glob("*.py"))
    assert not [n for n in top if "genimage" in n or "imaginet" in n], top
    assert (root / "genimage" / "tables.py").is_file() and (root / "imaginet" / "baseline.py").is_file()
    sizes = {p.name: len(p.read_text().splitlines()) for p in (root / "training").glob("*.py")}
    assert all(n <= 300 for n in sizes.values()), sizes
    # stage deps follow __init__ imports: the training package hands nothing on
    assert not _edges(root / "training" / "__init__.py", "training/__init__.py")


def test_the_checks_catch_an_upward_import_and_a_circle(tmp_path):
    """The checks above are not vacuous: a data module importing a stage, and two modules importing
    each other, are both reported."""
    floors = _layout()
    graph = _package_graph()
    fake = tmp_path / "dataset.py"
    fake.write_text("from synthdet.data.imageio import load_rgb\nfrom synthdet.stages import paths\n")
    graph["data/dataset.py"] = _edges(fake, "data/dataset.py")
    assert graph["data/dataset.py"] == {"data/imageio.py", "stages/__init__.py", "stages/paths.py"}
    assert "data/dataset.py (floor 2) imports stages/paths.py (floor 8)" in _upward(graph, floors)
    graph["data/imageio.py"] = graph["data/imageio.py"] | {"data/dataset.py"}
    assert [c for c in _circles(graph) if set(c.split(" -> ")) == {"data/dataset.py", "data/imageio.py"}]
