"""The npm side of the repository (``js/``): the packages the Node tests of the Yjs route and
the screens' bundle use, installed from ``js/package-lock.json`` with ``npm ci`` - exact
versions, from the npm registry, the first time they are needed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

JS_DIR = Path(__file__).resolve().parent.parent / "js"


def node_missing() -> str | None:
    """Why Node cannot run here, or ``None``."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not installed (Debian: apt-get install nodejs npm)" if missing else None


def ensure_node_modules() -> Path:
    """``js/node_modules``, installed by ``npm ci`` unless it matches the lock file already."""
    installed = JS_DIR / "node_modules" / ".package-lock.json"
    lock = JS_DIR / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=JS_DIR, check=True,
                       timeout=600)
    return JS_DIR / "node_modules"
