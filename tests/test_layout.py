"""The package's own rules of layout that import-linter does not check: no module imports
another module's private names (``from tunesam.x import _name``, or ``X._name`` on an
imported tunesam module)."""
from __future__ import annotations

import ast
from pathlib import Path

import tunesam

ROOT = Path(tunesam.__file__).parent


def _private_uses(path: Path) -> list[str]:
    where = path.relative_to(ROOT.parent) if path.is_relative_to(ROOT.parent) else path.name
    tree = ast.parse(path.read_text(), str(path))
    aliases: dict[str, str] = {}  # local name -> tunesam module it names
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tunesam"):
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    found.append(f"{where}:{node.lineno}: from {node.module} import {a.name}")
                elif (ROOT / node.module.removeprefix("tunesam").lstrip(".").replace(".", "/") / f"{a.name}.py").exists():
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("tunesam") and a.asname:
                    aliases[a.asname] = a.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{where}:{node.lineno}: {node.value.id}.{node.attr} "
                         f"({aliases[node.value.id]})")
    return found


def test_no_module_imports_another_modules_private_names() -> None:
    found = [use for path in sorted(ROOT.rglob("*.py")) for use in _private_uses(path)]
    assert not found, "private names used across modules:\n" + "\n".join(found)


def test_the_check_sees_a_private_import(tmp_path: Path) -> None:
    bad = tmp_path / "probe.py"
    bad.write_text("from tunesam.engine.fit import _progress_bar\nimport tunesam.engine.fit as F\nF._tensorboard\n")
    uses = _private_uses(bad)
    assert len(uses) == 2 and "_progress_bar" in uses[0] and "F._tensorboard" in uses[1]


def test_the_scripts_and_benchmarks_import_names_that_exist() -> None:
    """The repository's scripts import tunesam's names directly: each must still exist."""
    import importlib

    repo = ROOT.parent.parent
    missing = []
    for path in sorted([*repo.glob("scripts/*.py"), *repo.glob("benchmarks/*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tunesam"):
                module = importlib.import_module(node.module)
                missing += [f"{path.name}:{node.lineno}: {node.module}.{a.name}" for a in node.names
                            if not hasattr(module, a.name) and not (ROOT.parent / node.module.replace(".", "/")
                                                                    / f"{a.name}.py").exists()]
    assert not missing, "\n".join(missing)
