"""``meshpos`` commands that talk to a running terminal through its local API (status, peers,
the review queue, a roster hand-off).

They share one client call and one way to name the terminal (``--api``, its token), which is why
they sit together and apart from the commands that run a terminal or work on files offline.
"""

from __future__ import annotations

import functools
import os
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from core.codec import decode_json, encode_json_bytes, format_json
from core.errors import ConfigError
from meshpos.config import read_token

#: The largest answer read from a terminal (a review list of a long day is a few MB at most);
#: whatever answers at ``--api`` is read with a bound, like every input.
MAX_ANSWER_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Api:
    """Where a running terminal's API is, and the token it may require (docs/operations.md)."""

    url: str
    token: str | None

    def __str__(self) -> str:
        return self.url


def api_target(command: Callable[..., None]) -> Callable[..., None]:
    """``--api URL`` and ``--api-token-file PATH`` (or ``MESHPOS_API_TOKEN``) for a client command."""
    @functools.wraps(command)
    def wrapper(*args: Any, api: str, api_token_file: Path | None, **kwargs: Any) -> None:
        try:
            token = read_token(api_token_file) or os.environ.get("MESHPOS_API_TOKEN") or None
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        command(*args, api=Api(api, token), **kwargs)

    wrapper = click.option("--api-token-file", type=click.Path(dir_okay=False, path_type=Path),
                           envvar="MESHPOS_API_TOKEN_FILE",
                           help="file holding the terminal's API token (default: $MESHPOS_API_TOKEN)")(wrapper)
    return click.option("--api", default="http://127.0.0.1:8700", show_default=True,
                        help="terminal API address")(wrapper)


@click.command()
@api_target
def status(api: Api) -> None:
    """Print a running terminal's status."""
    click.echo(format_json(_api_call(api, "/api/v1/status")))


def _api_call(api: Api, path: str, body: bytes | None = None) -> dict:
    """One JSON call to a running terminal's local API; errors become one line."""
    import urllib.error  # here: ``meshpos run`` never needs an HTTP client (~1.5 MB, docs/performance.md)
    import urllib.request

    headers = {"content-type": "application/json"}
    if api.token is not None:
        headers["authorization"] = f"Bearer {api.token}"
    request = urllib.request.Request(f"{api.url}{path}", data=body, method="POST" if body is not None else "GET",
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            raw = resp.read(MAX_ANSWER_BYTES + 1)
    except urllib.error.HTTPError as exc:
        try:
            detail = decode_json(exc.read(MAX_ANSWER_BYTES))
            message = f"{detail['code']} {detail['message']}"
        except (ValueError, KeyError, TypeError):
            message = str(exc)
        raise click.ClickException(f"{api} refused: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise click.ClickException(f"no terminal answering at {api}: {exc}") from None
    if len(raw) > MAX_ANSWER_BYTES:
        raise click.ClickException(f"{api} answered more than {MAX_ANSWER_BYTES} bytes: not a meshpos terminal?")
    try:
        return decode_json(raw)
    except ValueError as exc:
        raise click.ClickException(f"{api} answered something that is not JSON ({exc}): not a meshpos terminal?") \
            from None


@click.command()
@api_target
@click.option("--json", "as_json", is_flag=True, help="print GET /api/v1/peers as it is")
def peers(api: Api, as_json: bool) -> None:
    """What a running terminal is linked to, what discovery sees, and why a seen terminal is not linked."""
    answer = _api_call(api, "/api/v1/peers")
    click.echo(format_json(answer) if as_json else peers_report(answer))


def peers_report(status: dict) -> str:
    """The operator's view of ``GET /api/v1/peers`` (one line per terminal)."""
    discovery = status.get("discovery") or {"enabled": False, "seen": []}
    lines = [f"{status['terminal_id']}: store {status['store_id']}, roster v{status['roster_version']}, "
             f"links on {status['listen']}"]
    if not discovery["enabled"]:
        lines.append("mDNS: off (--no-mdns); static peers: " + (", ".join(status["static_peers"]) or "none"))
    else:
        lines.append(f"mDNS: on {', '.join(discovery['addresses'])}, advertised as "
                     f"{discovery['advertised_as'] or '(not yet)'}" + (f"; ERROR {discovery['error']}"
                                                                      if discovery["error"] else ""))
    seen = {(s["store_id"], s["terminal_id"]): s for s in discovery["seen"]}
    lines.append("linked:")
    online = [p for p in status["peers"] if p["online"]]
    for p in online:
        lines.append(f"  {p['terminal_id']:<14} {p['type'] or '?':<8} {p['address'] or '?':<22} since "
                     f"{p['connected_since']}, rtt {p['rtt_ms']} ms, updates in/out "
                     f"{p['updates_in']}/{p['updates_out']}")
    if not online:
        lines.append("  (none)")
    lines.append("not linked:")
    count = len(lines)
    for p in status["peers"]:
        if p["online"]:
            continue
        sighting = seen.pop((status["store_id"], p["terminal_id"]), None)
        if sighting is not None:
            why, where = sighting["why_not_linked"], f"{','.join(sighting['addresses'])}:{sighting['port']}"
        elif p["revoked"]:
            why, where = "revoked", p["address"] or "-"
        elif p["last_error"]:
            why, where = f"{p['last_error']['code']} {p['last_error']['reason']}", p["address"] or "-"
        else:
            why, where = "not seen by discovery and not a static peer", "-"
        through = f" (its changes and votes come through {p['through']})" if p.get("through") else ""
        lines.append(f"  {p['terminal_id'] or '?':<14} {p['type'] or '?':<8} {where:<22} {why}{through}")
    for (store, tid), sighting in sorted(seen.items()):
        if store == status["store_id"] and sighting["linked"]:
            continue
        where = f"{','.join(sighting['addresses'])}:{sighting['port']}"
        lines.append(f"  {tid:<14} {sighting['type']:<8} {where:<22} {sighting['why_not_linked']}")
    if len(lines) == count:
        lines.append("  (none)")
    if status["refusals"]:
        lines.append("recent refusals:")
        for r in status["refusals"][-5:]:
            lines.append(f"  {r['at']} {r['direction']} {r['address']} ({r['terminal_id'] or '?'}): "
                         f"{r['code']} {r['reason']}")
    return "\n".join(lines)


@click.group()
def review() -> None:
    """The cashier's manual review queue: entries that could not be reconciled automatically."""


@review.command("list")
@api_target
@click.option("--all", "show_all", is_flag=True, help="resolved items too")
@click.option("--json", "as_json", is_flag=True, help="print GET /api/v1/review as it is")
def review_list(api: Api, show_all: bool, as_json: bool) -> None:
    """What waits for a person: each item with both sides and the reason."""
    items = _api_call(api, "/api/v1/review?status=" + ("all" if show_all else "open"))
    click.echo(format_json(items) if as_json else review_report(items))


def _money(cents: int | None) -> str:
    return "-" if cents is None else f"{cents / 100:.2f}"


def _describe(entry: dict) -> str:
    kind = entry["kind"]
    where = f"by {entry['terminal_id']} at {entry['at']}"
    if kind == "payment":
        what = f"payment {_money(entry['amount_cents'])} {entry['method']} for order {entry['order_id']}"
    elif kind == "drawer_opened":
        what = f"open with float {_money(entry['float_cents'])} ({entry['operator']})"
    elif kind == "drawer_closed":
        what = f"close counted {_money(entry['counted_cents'])}, expected {_money(entry['expected_cents'])}"
    elif kind == "cash_movement":
        what = f"cash {entry['direction']} {_money(entry['amount_cents'])} ({entry['reason']})"
    else:
        what = kind
    return f"#{entry['position']} {what} [op {entry['op_id']}] {where}"


def review_report(items: list[dict]) -> str:
    if not items:
        return "nothing to review"
    lines = []
    for item in items:
        lines.append(f"{item['id']}  {item['status'].upper()}  {item['reason']}")
        lines.append(f"    this side:  {_describe(item['entry'])}")
        for other in item["conflicts_with"]:
            lines.append(f"    other side: {_describe(other)}")
        if item["resolution"]:
            r = item["resolution"]
            lines.append(f"    resolved: {r['decision']} by {r['operator']} at {r['at']}: {r['note']}")
    return "\n".join(lines)


@review.command("resolve")
@click.argument("review_id")
@click.option("--decision", required=True, type=click.Choice(["accept", "reject", "adjust"]))
@click.option("--note", required=True, help="why (kept in the ledger)")
@click.option("--operator", required=True, help="who decides")
@click.option("--amount-cents", type=int, help="the corrected amount (with --decision adjust)")
@api_target
def review_resolve(review_id: str, decision: str, note: str, operator: str, amount_cents: int | None,
                   api: Api) -> None:
    """Record a decision on REVIEW_ID (as listed by 'meshpos review list'); needs the drawer's quorum."""
    body = {"decision": decision, "note": note, "operator": operator}
    if amount_cents is not None:
        body["amount_cents"] = amount_cents
    item = _api_call(api, f"/api/v1/review/{urllib.parse.quote(review_id)}/resolve", encode_json_bytes(body))
    click.echo(review_report([item]))


@click.group()
def roster() -> None:
    """Hand a roster to a running terminal (it travels to the others through the mesh)."""


@roster.command("push")
@click.argument("roster_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@api_target
def roster_push(roster_file: Path, api: Api) -> None:
    """Give ROSTER_FILE (e.g. AUTH_DIR/roster.json after 'meshpos store revoke') to one terminal."""
    answer = _api_call(api, "/api/v1/roster", roster_file.read_bytes())
    click.echo(answer["message"])
