"""The ``link`` target: WebSocket byte streams into ``LinkCore.receive``, both roles."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import random
import re
from typing import Any

from simulations.fuzz.documents import CrdtPool
from simulations.fuzz.peers import control_message, crdt_pool, hello
from simulations.fuzz.settings import DAY
from simulations.fuzz.target import Target
from simulations.fuzz.values import mutate_bytes, mutate_value

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_frame(rng: random.Random, opcode: int, payload: bytes, *, masked: bool, fin: bool = True,
             odd: bool = False) -> bytes:
    """One WebSocket frame by hand (RFC 6455); ``odd``: reserved bits, non-minimal or lying
    lengths, a mask where none belongs - what wsproto must refuse."""
    rsv = rng.choice([1, 2, 4, 7]) if odd and rng.random() < 0.3 else 0
    head = bytearray([(0x80 if fin else 0) | (rsv << 4) | (opcode & 0x0F)])
    n = len(payload)
    if odd and rng.random() < 0.3:
        masked = not masked
    form = rng.choice(["min", "16", "64", "lie"]) if odd and rng.random() < 0.5 else "min"
    mask_bit = 0x80 if masked else 0
    if form == "lie":
        n = rng.choice([n + 1, max(0, n - 1), 2**63 - 1, 2**62, 70_000])
        form = "min"
    if form == "min" and n < 126:
        head.append(mask_bit | n)
    elif (form == "min" and n < 65536) or form == "16":
        head.append(mask_bit | 126)
        head += (n & 0xFFFF).to_bytes(2, "big")
    else:
        head.append(mask_bit | 127)
        head += n.to_bytes(8, "big")
    if masked:
        key = rng.randbytes(4)
        head += key
        n = len(payload)
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes((key * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
    return bytes(head) + payload


class LinkTarget(Target):
    name = "link"

    def generate(self, index: int) -> dict[str, Any]:
        rng = self.rng(index)
        client = rng.random() < 0.5  # the side under test is the link's client (the peer is a server)
        masked = not client  # what the peer sends: a client masks, a server does not
        if rng.random() < 0.05:
            stream = rng.randbytes(rng.randint(0, 300))
        else:
            stream = self._head(rng, client) + self._frames(rng, masked, crdt_pool(self.seed))
            if rng.random() < 0.3:
                stream = mutate_bytes(stream, rng)
        cuts = sorted(rng.randint(0, len(stream)) for _ in range(rng.choice([0, 1, 2, 5, 20])))
        return {"client": client, "stream": stream, "cuts": cuts, "eof": rng.random() < 0.3,
                "tiny": rng.random() < 0.2, "refuse": rng.random() < 0.05,
                "gaps": [rng.choice([0.001, 0.001, 0.5, 4.0, 10.0]) for _ in range(len(cuts) + 1)]}

    @staticmethod
    def _head(rng: random.Random, client: bool) -> bytes:
        if client:  # the server's answer to our upgrade; {ACCEPT} becomes the right key at run time
            lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
                     "Sec-WebSocket-Accept: {ACCEPT}", "Sec-WebSocket-Protocol: meshpos.v1"]
            r = rng.random()
            if r < 0.05:
                lines[0] = rng.choice(["HTTP/1.1 400 Bad Request", "HTTP/1.1 200 OK", "HTTP/1.0 101 x", "HTTP/2 101"])
            elif r < 0.1:
                lines[4] = rng.choice(["Sec-WebSocket-Protocol: other", "X-Nothing: 1"])
            elif r < 0.13:
                lines[3] = "Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA="
            elif r < 0.16:
                lines.append("Sec-WebSocket-Extensions: permessage-deflate")
            elif r < 0.18:
                lines.append("Content-Length: 5")
        else:  # a peer's upgrade request
            key = base64.b64encode(rng.randbytes(16)).decode()
            lines = ["GET /meshpos/v1/link HTTP/1.1", "Host: meshpos", "Upgrade: websocket", "Connection: Upgrade",
                     f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Protocol: meshpos.v1"]
            r = rng.random()
            if r < 0.05:
                lines[0] = rng.choice(["GET / HTTP/1.1", "POST /meshpos/v1/link HTTP/1.1", "GET /meshpos/v1/link",
                                       "GET /meshpos/v1/link HTTP/1.0"])
            elif r < 0.1:
                lines[6] = rng.choice(["Sec-WebSocket-Protocol: chat", "Sec-WebSocket-Protocol: meshpos.v1, chat"])
            elif r < 0.13:
                lines[5] = "Sec-WebSocket-Version: 8"
            elif r < 0.15:
                lines.append("X-Big: " + "a" * rng.choice([10_000, 100_000]))
            elif r < 0.17:
                lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
            elif r < 0.19:
                del lines[rng.randrange(1, len(lines))]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    @staticmethod
    def _frames(rng: random.Random, masked: bool, pool: CrdtPool) -> bytes:
        out = bytearray()
        r = rng.random()
        first = hello(rng)
        if r < 0.1:
            first = mutate_value(first, rng)
        elif r < 0.13:
            first = control_message(rng)
        if rng.random() < 0.95:
            out += ws_frame(rng, 1, json.dumps(first).encode(), masked=masked)
        for _ in range(rng.choice([0, 1, 2, 3, 5, 10, 40])):
            odd = rng.random() < 0.1
            kind = rng.randint(0, 11)
            if kind <= 3:  # a sync frame
                from peer.wire import encode_sync  # noqa: PLC0415

                payload = rng.choice(pool.updates)
                frame = encode_sync(rng.choice(["tables", "inventory", f"orders/{DAY}", "nope"]), rng.choice([0, 1, 2]),
                                    payload if rng.random() < 0.7 else mutate_bytes(payload, rng))
                out += ws_frame(rng, 2, frame, masked=masked, odd=odd)
            elif kind <= 5:
                body = json.dumps(control_message(rng)).encode()
                out += ws_frame(rng, 1, body if rng.random() < 0.8 else mutate_bytes(body, rng), masked=masked,
                                odd=odd)
            elif kind == 6:
                out += ws_frame(rng, rng.choice([9, 10]), rng.randbytes(rng.choice([0, 8, 125, 126, 300])),
                                masked=masked, odd=odd)
            elif kind == 7:
                code = rng.choice([1000, 1001, 1005, 1006, 999, 4006, 5000, 65535])
                reason = rng.choice([b"", b"bye", b"\xff\xfe", "x" * 200]) if isinstance(code, int) else b""
                reason = reason.encode() if isinstance(reason, str) else reason
                payload = code.to_bytes(2, "big") + reason if rng.random() < 0.9 else b"\x03"
                out += ws_frame(rng, 8, payload, masked=masked, odd=odd)
            elif kind == 8:  # a fragmented message, perhaps with a ping between the fragments
                opcode = rng.choice([1, 2])
                body = json.dumps(control_message(rng)).encode() if opcode == 1 else rng.choice(pool.updates)
                cut = rng.randint(0, len(body))
                out += ws_frame(rng, opcode, body[:cut], masked=masked, fin=False)
                if rng.random() < 0.3:
                    out += ws_frame(rng, 9, b"p", masked=masked)
                out += ws_frame(rng, rng.choice([0, 0, 0, 1]), body[cut:], masked=masked, fin=rng.random() < 0.9)
            elif kind == 9:
                out += ws_frame(rng, rng.choice([0, 3, 7, 11, 15]), rng.randbytes(rng.randint(0, 20)), masked=masked,
                                fin=rng.random() < 0.8)
            elif kind == 10:
                out += ws_frame(rng, 1, rng.choice([b"\xff\xfe", b'{"type":"hello"\xc3', b"\xed\xa0\x80"]),
                                masked=masked)
            else:
                out += ws_frame(rng, 2, rng.randbytes(rng.choice([0, 10, 2000, 70_000])), masked=masked, odd=odd)
        return bytes(out)

    def run(self, inp: dict[str, Any]) -> str:
        from peer.link import Binary, Closed, Limits, LinkCore, Opened, Refused, Send  # noqa: PLC0415
        from peer.wire import WireError, decode_sync  # noqa: PLC0415

        def authorize(message: dict[str, Any]) -> None:
            if message.get("terminal_id") != "peer-1" or message.get("protocol") != 1:
                raise Refused(4003, "not the peer this test expects")

        limits = Limits(max_message_bytes=4096, max_control_bytes=512, heartbeat_interval=0.5, dead_after=2.0,
                        hello_timeout=1.0, messages_per_second=5.0, message_burst=4.0) if inp["tiny"] else Limits()
        core = LinkCore(client=inp["client"], hello={"type": "hello", "protocol": 1, "terminal_id": "me"},
                        authorize=authorize, now=0.0, limits=limits,
                        refuse=Refused(4003, "revoked") if inp["refuse"] else None)
        stream = inp["stream"]
        actions = core.start()
        if inp["client"]:
            request = actions[0].data if actions and isinstance(actions[0], Send) else b""
            key = re.search(rb"Sec-WebSocket-Key: ([A-Za-z0-9+/=]+)", request, re.IGNORECASE)
            accept = base64.b64encode(hashlib.sha1(key.group(1) + WS_GUID).digest()) if key else b""
            stream = stream.replace(b"{ACCEPT}", accept)
        opened = closed = False
        now, at = 0.0, 0
        cuts = [c for c in inp["cuts"] if c <= len(stream)] + [len(stream)]
        for cut, gap in zip(cuts, inp["gaps"], strict=False):
            now += gap
            chunk, at = stream[at:cut], max(at, cut)
            # Never b"": anyio streams do not return it (wsproto would take it for the end).
            actions = (core.receive(chunk, now) if chunk else []) + core.tick(now)
            closed_before = closed
            for action in actions:
                if closed_before:
                    raise AssertionError(f"an action after the link closed: {action!r}")
                if isinstance(action, Opened):
                    opened = True
                elif isinstance(action, Closed):
                    closed = True
                elif isinstance(action, Binary):
                    with contextlib.suppress(WireError):
                        decode_sync(action.data)
                elif isinstance(action, Send) and not isinstance(action.data, bytes):
                    raise AssertionError(f"Send of {type(action.data).__name__}")
        if inp["eof"]:
            core.receive(None, now + 0.01)
        if core.state == "closed" and core.receive(b"\x81\x00", now + 1) != []:
            raise AssertionError("a closed link produced actions")
        return "accepted" if opened else "refused"
