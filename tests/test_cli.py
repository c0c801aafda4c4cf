"""The CLI's client commands read what answers at ``--api`` as hostile input: bounded, decoded by
the one codec, and every failure one line - never a traceback on an operator's screen."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from meshpos import cli_client
from meshpos.cli import main


class _Answer(BaseHTTPRequestHandler):
    """Answers every request with the server's ``status`` and ``body`` (what a test sets)."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        status, body = self.server.answer  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_terminal() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _status(server: ThreadingHTTPServer, status: int, body: bytes) -> tuple[int, str]:
    server.answer = (status, body)  # type: ignore[attr-defined]
    result = CliRunner().invoke(main, ["status", "--api", f"http://127.0.0.1:{server.server_address[1]}"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_status_prints_the_answer_as_indented_json(fake_terminal: ThreadingHTTPServer) -> None:
    answer = {"terminal_id": "pos-1", "nested": {"peers": [1, 2]}, "name": "Cantina Coração"}
    code, output = _status(fake_terminal, 200, json.dumps(answer).encode())
    assert code == 0
    assert json.loads(output) == answer
    assert '\n  "terminal_id"' in output  # indented for a person


@pytest.mark.parametrize(("body", "said"), [
    (b"<html>not json</html>", "not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "not JSON"),  # deeper than the codec takes: refused before parsing
])
def test_an_answer_that_is_not_ours_is_one_line(fake_terminal: ThreadingHTTPServer, body: bytes, said: str) -> None:
    code, output = _status(fake_terminal, 200, body)
    assert code == 1 and said in output and "Traceback" not in output


def test_an_oversized_answer_is_refused(fake_terminal: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_client, "MAX_ANSWER_BYTES", 1000)
    code, output = _status(fake_terminal, 200, json.dumps({"pad": "x" * 2000}).encode())
    assert code == 1 and "more than 1000 bytes" in output


@pytest.mark.parametrize(("body", "said"), [
    (json.dumps({"code": 4011, "message": "token required"}).encode(), "refused: 4011 token required"),
    (b"[1, 2]", "refused: HTTP Error 401"),  # not the documented {code, message}: the HTTP status
    (b"garbage", "refused: HTTP Error 401"),
])
def test_a_refusal_says_why(fake_terminal: ThreadingHTTPServer, body: bytes, said: str) -> None:
    code, output = _status(fake_terminal, 401, body)
    assert code == 1 and said in output
