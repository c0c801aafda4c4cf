"""The screens' committed bundles are what their source builds: js/build.mjs run again, with the
locked npm packages, into a temporary directory gives the same bytes (and the same licence file)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from meshpos.api_screens import SCREENS
from simulations.jsdeps import JS_DIR

BUILT = ("kds.bundle.js", "tables.bundle.js", "bundle-licenses.txt")


def test_the_committed_bundles_match_their_source(node_modules: None, tmp_path: Path) -> None:
    subprocess.run(["node", str(JS_DIR / "build.mjs"), str(tmp_path)], check=True, timeout=120)
    for name in BUILT:
        assert (tmp_path / name).read_bytes() == (SCREENS / name).read_bytes(), (
            f"meshpos/screens/{name} is not what js/ builds: run `npm ci && npm run build` in js/ and commit it")
    licences = (SCREENS / "bundle-licenses.txt").read_text()
    for package in ("yjs", "y-websocket", "y-protocols", "lib0"):
        assert f"==== {package} " in licences
