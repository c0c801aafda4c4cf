"""One peer port for the meshes of many stores: how an HQ process serves every store it holds.

An HQ holds one enrollment per store (each store's authority enrolled it), so it has one
certificate per store, and a store's terminals trust only the one their authority signed.  The
terminals name their store in the TLS handshake (SNI, :class:`peer.dialling.Dialler`), and the
front picks that store's certificate and trust before the handshake goes on - a store it does
not hold is refused in the handshake (alert ``unrecognized_name``, which the terminal reports as
4003 with that reason).  Once TLS is up, the peer's certificate is checked again against the
chosen store's authority (it must be issued by it and name that store), and the connection is
handed to that store's :class:`peer.mesh.Mesh`, which authorizes the hello against the store's
roster as every terminal does.  So a terminal of store A can only ever reach store A's mesh.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import ssl
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import anyio
from anyio.abc import ByteStream
from anyio.streams.tls import TLSAttribute, TLSStream

from core.errors import AUTHENTICATION_FAILED, RATE_LIMIT
from core.ratelog import RateLimitedLog
from peer.admission import Gate
from peer.driver import failure_of
from peer.identity import IdentityError, subject_of, verify_terminal_cert
from peer.mesh import Mesh
from peer.tls import peer_certificate
from peer.transport import Transport

log = logging.getLogger(__name__)

#: The store a connection's handshake named and this front does not hold (set by the SNI
#: callback, which runs inside the handshake, in the accepting task's context).
_unknown_store: contextvars.ContextVar[str | None] = contextvars.ContextVar("unknown_store", default=None)
#: A fatal TLS alert ``unrecognized_name`` (112) as a plaintext record: what OpenSSL queues when
#: the SNI callback refuses.  anyio drops a failed handshake's unsent bytes, so the front sends it
#: itself - the terminal then reports why (4003, "... unrecognized name") instead of a bare EOF.
UNRECOGNIZED_NAME_ALERT = bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112])
_refusal_log = RateLimitedLog(log)

#: ``(store id or None, address, close code, reason)`` of a connection the front turned away.
Refusal = Callable[[str | None, str, int, str], None]


class Front:
    """Accepts on ``transport`` for ``meshes`` (store id -> that store's mesh)."""

    def __init__(self, transport: Transport, meshes: Mapping[str, Mesh], *, hello_timeout: float = 10.0,
                 refused: Refusal | None = None, gate: Gate | None = None) -> None:
        self.transport = transport
        self.meshes = meshes
        self.hello_timeout = hello_timeout
        self.gate = gate or Gate()
        #: Recent refusals, newest last (status: who tried and why they were turned away).
        self.refusals: deque[dict[str, Any]] = deque(maxlen=100)
        self._refused = refused or (lambda *_: None)
        self._contexts = {store: mesh.server_ctx for store, mesh in meshes.items()}
        self._store_of = {id(ctx): store for store, ctx in self._contexts.items()}
        self.context = self._front_context()

    def _front_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.sni_callback = self._pick
        return ctx

    def _pick(self, sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> int | None:
        store_ctx = self._contexts.get(server_name or "")
        if store_ctx is None:
            _unknown_store.set(server_name or "(none)")
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sslobj.context = store_ctx
        return None

    async def serve(self) -> None:
        await self.transport.serve(self._accept)

    async def _accept(self, raw: ByteStream, address: str) -> None:
        release = self.gate.enter(address)
        if isinstance(release, str):
            self._refuse(None, address, RATE_LIMIT, release)
            await anyio.aclose_forcefully(raw)
            return
        accepted_at = anyio.current_time()
        try:
            try:
                with anyio.fail_after(self.hello_timeout):
                    stream = await TLSStream.wrap(raw, server_side=True, ssl_context=self.context,
                                                  standard_compatible=False)
            except Exception as exc:  # noqa: BLE001 - any handshake failure is one refused peer
                unknown = _unknown_store.get()
                if unknown is not None:
                    self._refuse(None, address, AUTHENTICATION_FAILED,
                                 f"store {unknown[:40]!r} is not enrolled at this HQ")
                    with contextlib.suppress(Exception):
                        with anyio.fail_after(1):
                            await raw.send(UNRECOGNIZED_NAME_ALERT)
                else:
                    code, reason = failure_of(exc)
                    self._refuse(None, address, code, reason)
                await anyio.aclose_forcefully(raw)
                return
            store = self._store_of.get(id(stream.extra(TLSAttribute.ssl_object).context))
            mesh = self.meshes.get(store or "")
            why = self._mismatch(stream, mesh)
            if mesh is None or why is not None:
                self._refuse(store, address, AUTHENTICATION_FAILED, why or "no store chosen in the handshake")
                await anyio.aclose_forcefully(stream)
                return
            await mesh.admit(stream, address, started=accepted_at, authenticated=release)
        finally:
            release()

    @staticmethod
    def _mismatch(stream: TLSStream, mesh: Mesh | None) -> str | None:
        """Why the peer's certificate does not belong to ``mesh``'s store (``None``: it does)."""
        if mesh is None:
            return None
        try:
            cert = peer_certificate(stream.extra(TLSAttribute.peer_certificate_binary))
            verify_terminal_cert(cert, mesh.identity.ca_cert)
            store = subject_of(cert)[2]
        except (IdentityError, ssl.SSLError, ValueError) as exc:
            return str(exc)
        if store != mesh.identity.store_id:
            return f"the certificate names store {store!r}, not {mesh.identity.store_id!r}"
        return None

    def _refuse(self, store: str | None, address: str, code: int, reason: str) -> None:
        self.refusals.append({"store_id": store, "address": address, "code": code, "reason": reason})
        _refusal_log.log(address.rpartition(":")[0], logging.WARNING, "refused %s (store %s): %d %s",
                         address, store or "?", code, reason)
        self._refused(store, address, code, reason)

    def status(self) -> dict[str, Any]:
        return {"listen": f"{self.transport.host}:{self.transport.port}", "authenticating": self.gate.pending,
                "refusals": list(self.refusals)[-10:]}


class BehindFront:
    """The transport of a mesh whose connections come through a :class:`Front`: it listens on
    nothing itself (the front does) and dials nobody (an HQ never dials a store)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    async def serve(self, handler: object) -> None:
        await anyio.sleep_forever()

    async def connect(self, host: str, port: int) -> ByteStream:
        raise OSError(f"a mesh behind a front does not dial ({host}:{port})")

    def close(self) -> None:
        pass
