"""What a plain ``pip install .`` must bring: every third-party module the product imports is a
declared dependency (a module that only the test extra pulled in once broke the README's first
command on a fresh machine; .ci/run also runs that command in its own venv)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("meshpos", "peer", "discovery", "storage", "core")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_modules() -> dict[str, str]:
    """Top-level module -> a file importing it, over every product package."""
    found: dict[str, str] = {}
    for package in PRODUCT:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_a_declared_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_norm(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]) for d in project["dependencies"]}
    assert set(project["scripts"]) == {"meshpos"}
    distributions = packages_distributions()
    undeclared = {}
    for module, where in _imported_modules().items():
        if module in PRODUCT or module in sys.stdlib_module_names or module == "__future__":
            continue
        dists = {_norm(d) for d in distributions.get(module, [module])}
        if not dists & declared:
            undeclared[module] = (where, sorted(dists))
    assert not undeclared, f"imported by the product but not in [project].dependencies: {undeclared}"


def test_the_wheel_ships_every_product_package() -> None:
    wheel = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert sorted(wheel["packages"]) == sorted(PRODUCT)
