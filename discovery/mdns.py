"""mDNS discovery: advertise this terminal as ``_meshpos._tcp`` and dial the store's others.

zeroconf is asyncio-only, and the terminal runs on asyncio or trio.  So zeroconf always gets its
own thread and event loop (it is created in a worker thread, where no loop is running), on both
backends alike; its blocking calls run in worker threads (:func:`anyio.to_thread.run_sync`), and
the browser's callbacks, which zeroconf fires from its thread, come back through a
:class:`~anyio.from_thread.BlockingPortal` that lives inside :meth:`Discovery.run` - so every
task discovery starts belongs to the terminal's task group and stops with it.

Decisions about what was seen live in :mod:`discovery.advert`; the links themselves in
:mod:`peer.mesh`.  Losing multicast never stops a terminal: discovery logs the error, shows it
in ``meshpos peers`` and the static ``--peer`` addresses keep working.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
from collections.abc import Callable, Collection
from typing import Any, Protocol

import anyio
import ifaddr
from anyio.from_thread import BlockingPortal
from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

from core.clock import Clock, iso
from core.errors import ConfigError
from core.ratelog import RateLimitedLog
from discovery.advert import (
    SERVICE_TYPE,
    BadAdvert,
    Sighting,
    host_name,
    instance_name,
    parse_advert,
    refusal_to_dial,
    txt_record,
)
from peer.identity import Roster, TerminalIdentity
from peer.wire import PROTOCOL_VERSION

log = logging.getLogger(__name__)
#: Whatever a stranger advertises is logged at most a few times a second, all adverts together.
_advert_log = RateLimitedLog(log)

#: How long one resolution of a seen service may take (its records usually came with the browse
#: answer and resolve from the cache at once).
RESOLVE_TIMEOUT_MS = 3000
#: Stopping: time for goodbye packets and zeroconf's own shutdown.
CLOSE_TIMEOUT = 5.0
#: How often the interface addresses (DHCP) and the roster (revocations) are looked at again.
RESCAN_SECONDS = 5.0
MAX_SIGHTINGS = 256


def mdns_addresses(choices: list[str], peer_host: str) -> list[str]:
    """The IPv4 addresses mDNS runs on (see ``mdns_interfaces`` in operations.md); empty while the
    chosen interfaces have no IPv4 address yet.  Unknown names and foreign addresses are errors."""
    interfaces: dict[str, list[str]] = {}
    for adapter in ifaddr.get_adapters():
        interfaces[adapter.nice_name] = [ip.ip for ip in adapter.ips if isinstance(ip.ip, str)]
    mine = [address for addresses in interfaces.values() for address in addresses]
    if not choices:
        if peer_host in mine:  # peer links bound to one address: discovery advertises that one
            return [peer_host]
        return [a for a in mine if not ipaddress.IPv4Address(a).is_loopback] or ["127.0.0.1"]
    out: list[str] = []
    for choice in choices:
        if choice in interfaces:  # one with no IPv4 address yet (DHCP pending) adds none for now
            out.extend(interfaces[choice])
            continue
        try:
            ipaddress.IPv4Address(choice)
        except ValueError:
            raise ConfigError(f"mdns_interfaces: {choice!r} is neither an interface of this machine "
                              f"({', '.join(sorted(interfaces))}) nor an IPv4 address") from None
        if choice not in mine:
            raise ConfigError(f"mdns_interfaces: {choice} is not an IPv4 address of this machine "
                              f"({', '.join(mine)})")
        out.append(choice)
    return list(dict.fromkeys(out))


def advertised_addresses(mdns: list[str], peer_host: str) -> list[str]:
    """What the advert says to dial: peer links bound to one address listen only there."""
    try:
        bound = ipaddress.IPv4Address(peer_host)
    except ValueError:  # a host name, or "" for every address
        return mdns
    return mdns if bound.is_unspecified else [peer_host]


class Dialler(Protocol):
    """What discovery tells and asks of the peer links (``peer.mesh.Mesh`` is one): discovery
    knows no more of the mesh than this, so it stands beside ``peer/`` instead of above it."""

    me: str
    identity: TerminalIdentity
    roster: Roster
    port: int
    links: Collection[str]
    clock: Clock

    def discovered(self, terminal_id: str, addresses: list[str]) -> None: ...

    def lost(self, terminal_id: str) -> None: ...

    def dial_addresses(self, terminal_id: str) -> list[str]: ...

    def why_not_linked(self, terminal_id: str, addresses: list[str]) -> str: ...


class Discovery:
    """Advertises the terminal and feeds what it sees to the mesh.  :meth:`run` in the terminal's
    task group.

    The interface addresses are looked at again every :data:`RESCAN_SECONDS`: a box that got (or
    changed) its DHCP lease after starting re-advertises on the new address, and a roster change
    (a revocation) re-decides whom to dial.
    """

    def __init__(self, mesh: Dialler, *, choices: list[str], peer_host: str) -> None:
        self.mesh = mesh
        self.choices, self.peer_host = choices, peer_host
        self.addresses = mdns_addresses(choices, peer_host)  # a bad choice stops the start
        #: Every meshpos service seen, by service name (kept after a goodbye: operators see it;
        #: bounded by :data:`MAX_SIGHTINGS`, the gone and the oldest dropped first).
        self.sightings: dict[str, Sighting] = {}
        #: Advertisements of our service type that are not a terminal's, newest last (bounded).
        self.bad_adverts: list[str] = []
        self.advertised_as: str | None = None
        self.error: str | None = None
        self._generation: dict[str, int] = {}
        self._stopping = False
        self._roster_version = mesh.roster.version

    def _now(self) -> str:
        return iso(self.mesh.clock())

    def _own_name(self) -> str:
        identity = self.mesh.identity
        return self.advertised_as or instance_name(identity.terminal_id, identity.store_id)

    def _service(self, addresses: list[str]) -> ServiceInfo:
        identity = self.mesh.identity
        return ServiceInfo(
            SERVICE_TYPE, instance_name(identity.terminal_id, identity.store_id),
            addresses=[socket.inet_aton(a) for a in advertised_addresses(addresses, self.peer_host)],
            port=self.mesh.port,
            properties=txt_record(store_id=identity.store_id, terminal_id=identity.terminal_id,
                                  terminal_type=identity.type, protocol=PROTOCOL_VERSION,
                                  fingerprint=identity.fingerprint),
            server=host_name(identity.terminal_id, identity.store_id),
        )

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Sessions of zeroconf on the current addresses; a new session when they change."""
        started = False

        def ready() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        while True:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch, tg.cancel_scope)
                if self.addresses:
                    await self._session(list(self.addresses), ready)
                else:
                    self.error = f"no IPv4 address on {', '.join(self.choices)} yet; waiting for one"
                    log.warning("mDNS: %s", self.error)
                    ready()
                await anyio.sleep_forever()  # until the watcher sees the addresses change

    async def _watch(self, session: anyio.CancelScope) -> None:
        """Every few seconds: new interface addresses end the session; a new roster re-decides."""
        while True:
            await anyio.sleep(RESCAN_SECONDS)
            if self.mesh.roster.version != self._roster_version:
                self._roster_version = self.mesh.roster.version
                for terminal_id in {s.terminal_id for s in self.sightings.values()}:
                    self._sync(terminal_id)
            try:
                addresses = mdns_addresses(self.choices, self.peer_host)
            except ConfigError as exc:
                addresses, self.error = [], str(exc)
            if addresses != self.addresses:
                log.warning("mDNS: addresses changed from %s to %s; advertising again",
                            ", ".join(self.addresses) or "none", ", ".join(addresses) or "none")
                self.addresses = addresses
                session.cancel()
                return

    async def _session(self, addresses: list[str], ready: Callable[[], None]) -> None:
        try:
            zc = await anyio.to_thread.run_sync(
                functools.partial(Zeroconf, interfaces=addresses, ip_version=IPVersion.V4Only))
        except OSError as exc:
            self.error = f"mDNS unavailable on {', '.join(addresses)}: {exc}"
            log.error("%s; only static peers will be dialled (trying again when the addresses change)",
                      self.error)
            ready()
            return
        self.error = None
        self._stopping = False
        browser: ServiceBrowser | None = None
        async with BlockingPortal() as portal:

            def on_change(zeroconf: Zeroconf, service_type: str, name: str,
                          state_change: ServiceStateChange) -> None:  # zeroconf's thread
                if not self._stopping:
                    portal.start_task_soon(self._changed, zc, name, state_change)

            try:
                async with anyio.create_task_group() as tg:
                    browser = await anyio.to_thread.run_sync(
                        functools.partial(ServiceBrowser, zc, SERVICE_TYPE, handlers=[on_change]))
                    tg.start_soon(self._advertise, zc, addresses)
                    ready()
                    await anyio.sleep_forever()
            finally:
                # Inside the portal: the browser may still call in until it is cancelled.  Bounded:
                # a zeroconf that hangs is abandoned after CLOSE_TIMEOUT rather than holding up the
                # terminal's stop (its threads are daemons and end with the process).
                self._stopping = True
                self.advertised_as = None
                with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
                    await anyio.to_thread.run_sync(self._close, zc, browser, abandon_on_cancel=True)

    async def _advertise(self, zc: Zeroconf, addresses: list[str]) -> None:
        """Register the service (zeroconf probes the name for ~1.2 s first; browsing runs meanwhile)."""
        info = self._service(addresses)
        try:
            # Not abandoned on cancel: a terminal stopped while probing waits (<= ~1.5 s) so that
            # its goodbye follows a complete registration instead of racing it.
            await anyio.to_thread.run_sync(functools.partial(zc.register_service, info, allow_name_change=True))
        except Exception as exc:  # noqa: BLE001 - the mesh still works through static peers
            self.error = f"could not advertise {info.name}: {type(exc).__name__}: {exc}"
            log.error("%s", self.error)
            return
        self.advertised_as = info.name
        log.info("advertising %s on %s port %d", info.name, ", ".join(addresses), self.mesh.port)

    @staticmethod
    def _close(zc: Zeroconf, browser: ServiceBrowser | None) -> None:
        """Say goodbye (peers drop this terminal at once instead of waiting out the records' TTL)."""
        if browser is not None:
            browser.cancel()
        zc.unregister_all_services()
        zc.close()

    # -- what the browser reports --------------------------------------------------------------

    async def _changed(self, zc: Zeroconf, name: str, change: ServiceStateChange) -> None:
        """One browser report; whatever a stranger advertises must never stop the terminal."""
        try:
            await self._handle(zc, name, change)
        except Exception as exc:  # noqa: BLE001
            _advert_log.log("mdns", logging.ERROR, "mDNS: could not handle %s of %s", change.name, name[:200],
                            exc_info=exc)

    async def _handle(self, zc: Zeroconf, name: str, change: ServiceStateChange) -> None:
        if name == self._own_name():
            return
        generation = self._generation[name] = self._generation.get(name, 0) + 1
        if change is ServiceStateChange.Removed:
            self._gone(name)
            return
        # Abandoned on cancel: a resolution ends by itself within RESOLVE_TIMEOUT_MS.
        info = await anyio.to_thread.run_sync(self._resolve, zc, name, abandon_on_cancel=True)
        if self._generation.get(name) != generation:
            return  # a newer change of this service is being handled
        if info is None:
            log.info("mDNS: %s did not resolve", name)
            return
        now = self._now()
        log.debug("mDNS: %s %s: %s port %s", change.name, name, info.parsed_addresses(IPVersion.V4Only), info.port)
        try:
            sighting = parse_advert(name, info.properties, info.parsed_addresses(IPVersion.V4Only),
                                    info.port or 0, at=now)
        except BadAdvert as exc:
            _advert_log.log("mdns", logging.WARNING, "mDNS: ignoring %s", str(exc)[:300])
            self.bad_adverts = [*self.bad_adverts[-19:], str(exc)]
            return
        previous = self.sightings.get(name)
        if previous is not None:
            sighting.first_seen = previous.first_seen
        self.sightings[name] = sighting
        why = self._why_not(sighting)
        if previous is None or previous.dial_addresses != sighting.dial_addresses or not previous.present:
            if why is None:
                log.info("mDNS: found %s (%s) at %s", sighting.terminal_id, sighting.type,
                         ", ".join(sighting.dial_addresses))
            else:
                log.info("mDNS: not dialling %s at %s: %s", sighting.terminal_id,
                         ", ".join(sighting.dial_addresses), why)
        self._sync(sighting.terminal_id)
        self._prune()

    @staticmethod
    def _resolve(zc: Zeroconf, name: str) -> ServiceInfo | None:
        info = ServiceInfo(SERVICE_TYPE, name)
        if info.load_from_cache(zc) or info.request(zc, RESOLVE_TIMEOUT_MS):
            return info
        return None

    def _why_not(self, sighting: Sighting) -> str | None:
        m = self.mesh
        return refusal_to_dial(sighting, me=m.me, store_id=m.identity.store_id, roster=m.roster,
                               protocol=PROTOCOL_VERSION)

    def _sync(self, terminal_id: str) -> None:
        """Tell the mesh where ``terminal_id`` is, from every live advert naming it (newest first).

        By terminal id, not by advert: a second advert claiming the same id (a forgery, a copied
        data directory) adds addresses to try - the TLS link sorts out who is who - and its
        goodbye does not stop the dialling of the first.
        """
        live = sorted((s for s in self.sightings.values() if s.terminal_id == terminal_id and s.present
                       and self._why_not(s) is None), key=lambda s: s.last_seen, reverse=True)
        if live:
            self.mesh.discovered(terminal_id, list(dict.fromkeys(a for s in live for a in s.dial_addresses)))
        else:
            self.mesh.lost(terminal_id)

    def _gone(self, name: str) -> None:
        sighting = self.sightings.get(name)
        if sighting is None:
            self._generation.pop(name, None)
            return
        sighting.present, sighting.gone_at = False, self._now()
        log.info("mDNS: %s said goodbye", sighting.terminal_id)
        self._sync(sighting.terminal_id)

    def _prune(self) -> None:
        """Forget the longest-gone (then the oldest) sightings beyond :data:`MAX_SIGHTINGS`."""
        excess = len(self.sightings) - MAX_SIGHTINGS
        if excess <= 0:
            return
        order = sorted(self.sightings.values(), key=lambda s: (s.present, s.gone_at or s.last_seen))
        for sighting in order[:excess]:
            del self.sightings[sighting.name]
            self._generation.pop(sighting.name, None)
            self._sync(sighting.terminal_id)

    # -- reporting -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What discovery sees and, for each terminal, whether it is linked and if not, why."""
        seen = []
        for sighting in sorted(self.sightings.values(), key=lambda s: (s.store_id, s.terminal_id, s.name)):
            entry = {k: getattr(sighting, k) for k in ("terminal_id", "type", "store_id", "addresses", "port",
                                                       "protocol", "fingerprint", "first_seen", "last_seen",
                                                       "present", "gone_at")}
            entry["service"] = sighting.name
            mine = sighting.store_id == self.mesh.identity.store_id
            entry["linked"] = mine and sighting.terminal_id in self.mesh.links
            entry["dialling"] = self.mesh.dial_addresses(sighting.terminal_id) if mine else []
            if entry["linked"]:
                entry["why_not_linked"] = None
            else:
                why = self._why_not(sighting)
                if why is None and not sighting.present:
                    why = f"gone: it said goodbye at {sighting.gone_at}"
                entry["why_not_linked"] = why or self.mesh.why_not_linked(sighting.terminal_id,
                                                                          sighting.dial_addresses)
            seen.append(entry)
        return {"enabled": True, "addresses": self.addresses,
                "advertised": advertised_addresses(self.addresses, self.peer_host),
                "advertised_as": self.advertised_as, "error": self.error, "seen": seen,
                "bad_adverts": self.bad_adverts}
