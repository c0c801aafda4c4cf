"""The sans-I/O core of one peer link: WebSocket framing, hello, heartbeats and limits.

:class:`LinkCore` is fed the bytes that came out of the TLS stream and the current monotonic
time, and answers with actions (bytes to send, a peer that authenticated, messages, a close).
It never touches a socket or a clock, so the same code runs under the anyio shell in
:mod:`peer.mesh`, under tests that hand it crafted bytes, and under the simulator.

The TLS layer below has already proven the peer holds a key the store authority certified; the
hello on top binds that certificate to the terminal id and type the peer claims, against the
newest roster either side knows (see :func:`peer.admission.authorize`).  Framing is wsproto's;
we add a message size limit, a message-rate limit and heartbeats (WebSocket ping/pong).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from core.errors import INVALID_MESSAGE, RATE_LIMIT
from peer.wire import LINK_PATH, SUBPROTOCOL, WireError, decode_control, encode_control

#: Local-only code for a link that died without a close frame (heartbeat timeout, reset).
ABNORMAL = 1006
NORMAL = 1000


@dataclass(frozen=True, slots=True)
class Limits:
    #: Largest binary (sync) message; a full business day's step 2 must fit.
    max_message_bytes: int = 64 * 1024 * 1024
    #: Largest control (JSON) message; a roster of a few hundred terminals fits easily.
    max_control_bytes: int = 1024 * 1024
    #: A ping goes out this often; a link that hears nothing for ``dead_after`` is dead.
    heartbeat_interval: float = 1.0
    dead_after: float = 3.5
    #: The WebSocket upgrade and both hellos must be done within this.
    hello_timeout: float = 5.0
    #: Token bucket on received messages: sustained rate and burst.
    messages_per_second: float = 20_000.0
    message_burst: float = 50_000.0


class Refused(Exception):
    """The peer's hello does not authenticate it; close with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# -- actions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes


@dataclass(frozen=True, slots=True)
class Opened:
    """Both hellos are exchanged and the peer's was authorized."""

    hello: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Binary:
    data: bytes


@dataclass(frozen=True, slots=True)
class Control:
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A pong came back: ``rtt`` seconds after its ping."""

    rtt: float


@dataclass(frozen=True, slots=True)
class Closed:
    """The link is over; send what precedes this action, then drop the transport."""

    code: int
    reason: str
    by_peer: bool


Action = Send | Opened | Binary | Control | Heartbeat | Closed


class LinkCore:
    """One side of one link.  ``authorize(peer_hello)`` raises :class:`Refused` to refuse it.

    ``refuse``: the peer is refused already (its certificate is revoked): the link closes with
    that code as soon as the WebSocket is up, and nothing the peer sends is ever parsed.
    """

    def __init__(self, *, client: bool, hello: dict[str, Any], authorize: Callable[[dict[str, Any]], None],
                 now: float, limits: Limits = Limits(), host: str = "meshpos", refuse: Refused | None = None) -> None:
        self.client = client
        self._refuse = refuse
        self.limits = limits
        self._hello = hello
        self._authorize = authorize
        self._host = host
        self._ws = WSConnection(ConnectionType.CLIENT if client else ConnectionType.SERVER)
        self.state = "handshake"  # -> hello -> open -> closed
        self.peer_hello: dict[str, Any] | None = None
        self._started = now
        self._last_heard = now
        self._next_ping = now + limits.heartbeat_interval
        self._pings: dict[bytes, float] = {}
        self._ping_seq = 0
        self._parts: list[bytes | str] = []
        self._part_bytes = 0
        self._tokens = limits.message_burst
        self._tokens_at = now
        self.bytes_in = 0
        self.bytes_out = 0

    # -- driving -------------------------------------------------------------------------------

    def start(self) -> list[Action]:
        """The client's upgrade request; the server waits for it."""
        if not self.client:
            return []
        return [self._out(Request(host=self._host, target=LINK_PATH, subprotocols=[SUBPROTOCOL]))]

    def receive(self, data: bytes | None, now: float) -> list[Action]:
        """Feed bytes from the transport (``None``: the transport ended)."""
        if self.state == "closed":
            return []
        if data is not None:
            self.bytes_in += len(data)
            self._last_heard = now
        actions: list[Action] = []
        try:
            self._ws.receive_data(data)
            for event in self._ws.events():
                actions.extend(self._on_event(event, now))
                if self.state == "closed":
                    break
        except (RemoteProtocolError, h11.RemoteProtocolError, UnicodeError) as exc:
            # (wsproto decodes header values itself: a non-ASCII Host raised UnicodeDecodeError)
            actions.extend(self._abort(INVALID_MESSAGE, f"not a meshpos WebSocket handshake ({exc})"))
        except WireError as exc:
            actions.extend(self.close(exc.code, str(exc)))
        except Refused as exc:
            actions.extend(self.close(exc.code, exc.reason))
        if data is None and self.state != "closed":
            # The transport ended and the WebSocket layer made nothing of it (during the HTTP
            # upgrade it does not): the link is over, whatever state it was in.
            actions.extend(self._abort(ABNORMAL, "the peer hung up" + ("" if self.state == "open"
                                                                      else " before the hello")))
        return actions

    def send_binary(self, data: bytes) -> list[Action]:
        return [self._out(BytesMessage(data=data))] if self.state == "open" else []

    def send_control(self, message: dict[str, Any]) -> list[Action]:
        return [self._out(TextMessage(data=encode_control(message)))] if self.state == "open" else []

    def tick(self, now: float) -> list[Action]:
        """Heartbeats and timeouts; call at least every :meth:`next_deadline`."""
        if self.state == "closed":
            return []
        if self.state != "open" and now - self._started > self.limits.hello_timeout:
            return self._abort(INVALID_MESSAGE, f"no hello within {self.limits.hello_timeout:g} s")
        if now - self._last_heard > self.limits.dead_after:
            return self._abort(ABNORMAL, f"no heartbeat for {now - self._last_heard:.1f} s")
        if self.state == "open" and now >= self._next_ping:
            self._ping_seq += 1
            payload = self._ping_seq.to_bytes(8, "big")
            self._pings = {payload: now}  # only the newest ping's round trip matters
            self._next_ping = now + self.limits.heartbeat_interval
            return [self._out(Ping(payload=payload))]
        return []

    def next_deadline(self) -> float:
        if self.state == "open":
            return min(self._next_ping, self._last_heard + self.limits.dead_after)
        return min(self._started + self.limits.hello_timeout, self._last_heard + self.limits.dead_after)

    def close(self, code: int, reason: str) -> list[Action]:
        """Close with a code from the shared table; the reason travels in the close frame."""
        if self.state == "closed":
            return []
        actions: list[Action] = []
        if self._ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            actions.append(self._out(CloseConnection(code=code, reason=_clip(reason))))
        self.state = "closed"
        return [*actions, Closed(code, reason, by_peer=False)]

    # -- internals -----------------------------------------------------------------------------

    def _out(self, event: Any) -> Send:
        data = self._ws.send(event)
        self.bytes_out += len(data)
        return Send(data)

    def _abort(self, code: int, reason: str) -> list[Action]:
        """End without a close frame (the peer is gone or never spoke WebSocket)."""
        self.state = "closed"
        return [Closed(code, reason, by_peer=False)]

    def _on_event(self, event: Any, now: float) -> list[Action]:
        if isinstance(event, Request):
            if SUBPROTOCOL not in event.subprotocols or event.target != LINK_PATH:
                out = self._out(RejectConnection(status_code=400, has_body=False))
                self.state = "closed"
                return [out, Closed(INVALID_MESSAGE, f"not a meshpos link request ({event.target})", by_peer=False)]
            accepted = self._out(AcceptConnection(subprotocol=SUBPROTOCOL))
            if self._refuse is not None:
                return [accepted, *self.close(self._refuse.code, self._refuse.reason)]
            return [accepted, *self._send_hello()]
        if isinstance(event, AcceptConnection):
            if event.subprotocol != SUBPROTOCOL:
                return self.close(INVALID_MESSAGE, f"peer accepted subprotocol {event.subprotocol!r}")
            if self._refuse is not None:
                return self.close(self._refuse.code, self._refuse.reason)
            return self._send_hello()
        if isinstance(event, RejectConnection):
            self.state = "closed"
            return [Closed(INVALID_MESSAGE, f"peer rejected the upgrade (HTTP {event.status_code})", by_peer=True)]
        if isinstance(event, CloseConnection):
            if self._ws.state == ConnectionState.OPEN:  # wsproto could not parse a frame
                return self.close(INVALID_MESSAGE, f"invalid WebSocket frame: {event.reason}")
            actions: list[Action] = []
            if self._ws.state == ConnectionState.REMOTE_CLOSING:
                actions.append(self._out(event.response()))
            self.state = "closed"
            reason = event.reason or ("connection lost" if event.code == ABNORMAL else "")
            return [*actions, Closed(event.code, reason, by_peer=True)]
        if isinstance(event, Ping):
            return [self._out(event.response())]
        if isinstance(event, Pong):
            sent = self._pings.pop(bytes(event.payload), None)
            return [] if sent is None else [Heartbeat(now - sent)]
        if isinstance(event, BytesMessage | TextMessage):
            return self._on_message_part(event, now)
        return []

    def _on_message_part(self, event: BytesMessage | TextMessage, now: float) -> list[Action]:
        text = isinstance(event, TextMessage)
        limit = self.limits.max_control_bytes if text else self.limits.max_message_bytes
        self._part_bytes += len(event.data)  # characters for text, bytes for binary
        if self._part_bytes > limit:
            kind = "control" if text else "sync"
            raise WireError(f"{kind} message exceeds the {limit} byte limit")
        self._parts.append(event.data)
        if not event.message_finished:
            return []
        parts, self._parts, self._part_bytes = self._parts, [], 0
        self._tokens = min(self.limits.message_burst,
                           self._tokens + (now - self._tokens_at) * self.limits.messages_per_second)
        self._tokens_at = now
        self._tokens -= 1
        if self._tokens < 0:
            return self.close(RATE_LIMIT, f"more than {self.limits.messages_per_second:g} messages/s")
        if text:
            message = decode_control("".join(parts))  # type: ignore[arg-type]
            if self.state == "hello":
                return self._on_hello(message)
            if message["type"] == "hello":
                raise WireError("a second hello")
            return [Control(message)]
        if self.state != "open":
            raise WireError("a sync message before the hello")
        return [Binary(b"".join(parts))]  # type: ignore[arg-type]

    def _send_hello(self) -> list[Action]:
        self.state = "hello"
        return [self._out(TextMessage(data=encode_control(self._hello)))]

    def _on_hello(self, message: dict[str, Any]) -> list[Action]:
        if message["type"] != "hello":
            raise WireError(f"expected hello, got {message['type']!r}")
        self._authorize(message)  # raises Refused
        self.peer_hello = message
        self.state = "open"
        return [Opened(message)]


def _clip(reason: str) -> str:
    """Close reasons must fit a control frame (123 bytes of UTF-8)."""
    data = reason.encode()
    return reason if len(data) <= 123 else data[:120].decode(errors="ignore") + "..."
