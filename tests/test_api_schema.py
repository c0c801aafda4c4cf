"""The server against its own /openapi.json: schemathesis, every check, on a real ``meshpos run``.

Schemathesis generates requests from the published document - valid ones, which must not be
refused with 422, and invalid ones, which must be - and checks every answer against it: the
documented statuses and content types, ``Allow`` on a 405, no 5xx but the documented 503, the
token enforced when one is declared.  A handler rule the document does not state, a status it
does not list or a pattern it gets wrong fails here.

The run is bounded (a fixed seed, few examples per operation) to stay within CI's time; raise
``EXAMPLES`` or drop ``--seed`` to explore further.  This file is also the schemathesis hooks
module of that run (``SCHEMATHESIS_HOOKS``), for the one rule below.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis

from meshpos.documents.orders import MAX_ORDER_TOTAL_CENTS
from tests.procutil import Proc, clean_env

pytestmark = pytest.mark.slow

EXAMPLES = 20
SEED = 20261205
TOKEN = "schema-test-token-0123456789"
# A lone terminal has no cashier quorum: its drawer writes answer 503 (4009, "retry once the
# voters are back"), as documented.  That is the designed answer of the situation, not a crash,
# so 503 is added to what the not_a_server_error check accepts; any other 5xx still fails it.
CONFIG = """
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "503"]
"""


def _order_total(body: Any) -> int:
    """What the items of a generated body add up to, in cents (0 for a body that is no order)."""
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        return 0
    total = 0
    for item in body["items"]:
        if not isinstance(item, dict):
            return 0
        mods = [m.get("price_cents", 0) for m in item.get("modifiers", []) if isinstance(m, dict)]
        numbers = [item.get("qty"), item.get("unit_price_cents"), *mods]
        if not all(isinstance(n, int | float) and not isinstance(n, bool) for n in numbers):
            return 0
        total += int(item["qty"]) * (int(item["unit_price_cents"]) + int(sum(mods)))
    return total


@schemathesis.hook("filter_body").apply_to(method="POST", path_regex=r"^/api/v1/orders(/\{order_id\}/items)?$")
def within_the_order_cap(_: Any, body: Any) -> bool:
    """An order's total is capped (documents/orders.py); the cap bounds a sum over the items, which
    JSON Schema cannot state (the document says it in words), so such bodies are not generated."""
    return _order_total(body) <= MAX_ORDER_TOTAL_CENTS


def schemathesis_run(url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    args = [str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(config), "run",
            f"{url}/openapi.json", "--checks", "all", "--max-examples", str(EXAMPLES), "--seed", str(SEED),
            "--generation-database", "none", "--no-color", "--request-timeout", "20", *extra]
    # The hooks module imports ``tests.``: the repository's root must be importable in the child
    # even when the project is installed as a wheel (CI), not only in editable mode.
    root = str(Path(__file__).resolve().parents[1])
    env = {**clean_env(), "SCHEMATHESIS_HOOKS": os.path.abspath(__file__), "PYTHONPATH": root}
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                          timeout=240, check=False)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_server_answers_as_its_openapi_document_says(launch: Callable[..., Proc], tmp_path: Path,
                                                     backend: str) -> None:
    """asyncio without a token; trio with one (the document then declares it, and schemathesis
    checks that calls without it, or with a wrong one, are refused)."""
    extra = ["--api-port", "0"]
    auth: list[str] = []
    if backend == "trio":
        (tmp_path / "token").write_text(TOKEN + "\n")
        extra += ["--api-token-file", str(tmp_path / "token")]
        auth = ["--header", f"Authorization: Bearer {TOKEN}"]
    proc = launch(tmp_path / "data", backend=backend, extra=extra)
    result = schemathesis_run(proc.url, tmp_path, *auth)
    report = result.stdout[-30_000:] + result.stderr[-5_000:]
    assert result.returncode == 0, report
    operations = re.search(r"Operations:\s+(\d+) selected / (\d+) total", result.stdout)
    assert operations and operations[1] == operations[2] and int(operations[1]) > 30, report
    generated = re.search(r"(\d+) generated", result.stdout)
    assert generated and int(generated[1]) > 20 * int(operations[1]), report
