"""The package's import graph, read from the source (lazy imports inside functions included):
which files a module runs. DVC stages depend on exactly these files, and a training run's
fingerprint hashes them. Imports nothing from synthdet."""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path

PACKAGE = "synthdet"
# the detector registry's package: its __init__ imports every detector so that each registers itself,
# while a run builds one; closures that follow a single detector name it ``opaque``
DETECTORS = "synthdet.detectors"


@functools.cache
def package_root() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent


def module_file(name: str) -> Path | None:
    """The file of a ``synthdet`` module or package, or None if ``name`` is not one (an attribute)."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = package_root().joinpath(*parts[1:])
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def direct_imports(path: Path, module: str) -> set[str]:
    """Names of the synthdet modules ``path`` imports, anywhere in the file."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != PACKAGE:
                continue
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names if module_file(f"{base}.{a.name}")}
    return found


@functools.cache
def import_closure(module: str, opaque: tuple[str, ...] = ()) -> tuple[Path, ...]:
    """Files of every synthdet module ``module`` imports, transitively, with the ``__init__.py``
    of each package on the way (Python runs them on import). ``opaque``: packages whose
    ``__init__.py`` counts as a file of its own but whose imports are not followed (the detector
    registry's package imports every detector to register it; a run executes only its own)."""
    seen: dict[str, Path] = {}
    pending = [module]
    while pending:
        name = pending.pop()
        parts = name.split(".")
        for k in range(1, len(parts) + 1):  # parent packages run their __init__ first
            parent = ".".join(parts[:k])
            path = module_file(parent)
            if path is None or parent in seen:
                continue
            seen[parent] = path
            if parent not in opaque:
                pending.extend(direct_imports(path, parent))
    return tuple(sorted(set(seen.values())))


def repo_relative(path: Path) -> str:
    root = package_root().parent.parent
    try:
        return path.relative_to(root).as_posix()
    except ValueError as exc:  # pragma: no cover - installed without -e
        raise RuntimeError(f"{path} is not inside a checkout: install with `pip install -e .`") from exc
