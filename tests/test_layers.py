"""The layer contract of pyproject.toml ([tool.importlinter]; docs/architecture.md, "Layers")
holds on the real import graph, and an import against it is caught."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("meshpos", "discovery", "peer", "storage", "core")
LINT = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT), "--config", str(tree / "pyproject.toml"), "--no-cache"], cwd=tree,
                          capture_output=True, text=True, check=False, timeout=120)


@pytest.fixture(scope="module", autouse=True)
def _lint_imports() -> None:
    if not LINT.exists():
        pytest.fail(f"lint-imports is not installed beside {sys.executable} (the [test] extra installs it)")


def test_the_layer_contract_holds() -> None:
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "3 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    # peer/ reaching up to the terminal, if only for a type: the coupling this contract removed
    ("peer/mesh.py", "if TYPE_CHECKING:\n    from meshpos.terminal import Terminal\n", "One way down"),
    ("storage/store.py", "from peer import wire\n", "One way down"),
    ("discovery/mdns.py", "from peer.mesh import Mesh\n", "Discovery knows"),
    ("meshpos/cashier/service.py", "from meshpos.terminal import Terminal\n", "terminal composes"),
    ("meshpos/documents/host.py", "from meshpos.cashier import ledger\n", "terminal composes"),
], ids=["peer->meshpos", "storage->peer", "discovery->mesh", "cashier->terminal", "documents->cashier"])
def test_an_import_against_the_contract_is_caught(tmp_path: Path, module: str, line: str, contract: str) -> None:
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / module
    text = target.read_text()
    head, sep, rest = text.partition("\nfrom __future__ import annotations\n")
    assert sep, f"{module} has no __future__ import to insert after"
    target.write_text(head + sep + "from typing import TYPE_CHECKING\n" + line + rest)
    done = lint(tmp_path)
    assert done.returncode == 1, done.stdout[-4000:]
    broken = [ln for ln in done.stdout.splitlines() if ln.endswith("BROKEN")]
    # peer reaching up to the terminal also puts the terminal under the HQ (which uses the mesh):
    # the contract named must be among the broken ones, and nothing unrelated
    assert any(contract in b for b in broken), done.stdout[-4000:]
    assert all(contract in b or "terminal composes" in b for b in broken), done.stdout[-4000:]
