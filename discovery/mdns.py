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
from typing import TYPE_CHECKING, Any

import anyio
import ifaddr
from anyio.from_thread import BlockingPortal
from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

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
from meshpos.clock import iso
from meshpos.config import ConfigError
from peer.wire import PROTOCOL_VERSION

if TYPE_CHECKING:
    from peer.mesh import Mesh

log = logging.getLogger(__name__)

#: How long one resolution of a seen service may take (its records usually came with the browse
#: answer and resolve from the cache at once).
RESOLVE_TIMEOUT_MS = 3000
#: Stopping: time for goodbye packets and zeroconf's own shutdown.
CLOSE_TIMEOUT = 5.0


def mdns_addresses(choices: list[str], peer_host: str) -> list[str]:
    """The IPv4 addresses mDNS runs on and advertises (see ``mdns_interfaces`` in operations.md)."""
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
        if choice in interfaces:
            if not interfaces[choice]:
                raise ConfigError(f"mdns_interfaces: interface {choice!r} has no IPv4 address (mDNS needs IPv4)")
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


class Discovery:
    """Advertises the terminal and feeds what it sees to the mesh.  :meth:`run` in the terminal's
    task group."""

    def __init__(self, mesh: Mesh, *, addresses: list[str]) -> None:
        self.mesh = mesh
        self.addresses = addresses
        #: Every meshpos service seen, by service name (kept after a goodbye: operators see it).
        self.sightings: dict[str, Sighting] = {}
        #: Advertisements of our service type that are not a terminal's, newest last (bounded).
        self.bad_adverts: list[str] = []
        self.advertised_as: str | None = None
        self.error: str | None = None
        self._generation: dict[str, int] = {}
        self._dialled: set[str] = set()
        self._stopping = False

    def _now(self) -> str:
        return iso(self.mesh.terminal.clock())

    def _own_name(self) -> str:
        identity = self.mesh.identity
        return self.advertised_as or instance_name(identity.terminal_id, identity.store_id)

    def _service(self) -> ServiceInfo:
        identity = self.mesh.identity
        return ServiceInfo(
            SERVICE_TYPE, instance_name(identity.terminal_id, identity.store_id),
            addresses=[socket.inet_aton(a) for a in self.addresses], port=self.mesh.port,
            properties=txt_record(store_id=identity.store_id, terminal_id=identity.terminal_id,
                                  terminal_type=identity.type, protocol=PROTOCOL_VERSION,
                                  fingerprint=identity.fingerprint),
            server=host_name(identity.terminal_id, identity.store_id),
        )

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            zc = await anyio.to_thread.run_sync(
                functools.partial(Zeroconf, interfaces=self.addresses, ip_version=IPVersion.V4Only))
        except OSError as exc:
            self.error = f"mDNS unavailable on {', '.join(self.addresses)}: {exc}"
            log.error("%s; only static peers will be dialled", self.error)
            task_status.started()
            return
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
                    tg.start_soon(self._advertise, zc)
                    task_status.started()
                    await anyio.sleep_forever()
            finally:
                # Inside the portal: the browser may still call in until it is cancelled.
                self._stopping = True
                with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
                    await anyio.to_thread.run_sync(self._close, zc, browser, abandon_on_cancel=True)

    async def _advertise(self, zc: Zeroconf) -> None:
        """Register the service (zeroconf probes the name for ~1.2 s first; browsing runs meanwhile)."""
        info = self._service()
        try:
            # Not abandoned on cancel: a terminal stopped while probing waits (<= ~1.5 s) so that
            # its goodbye follows a complete registration instead of racing it.
            await anyio.to_thread.run_sync(functools.partial(zc.register_service, info, allow_name_change=True))
        except Exception as exc:  # noqa: BLE001 - the mesh still works through static peers
            self.error = f"could not advertise {info.name}: {type(exc).__name__}: {exc}"
            log.error("%s", self.error)
            return
        self.advertised_as = info.name
        log.info("advertising %s on %s port %d", info.name, ", ".join(self.addresses), self.mesh.port)

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
        except Exception:  # noqa: BLE001
            log.exception("mDNS: could not handle %s of %s", change.name, name)

    async def _handle(self, zc: Zeroconf, name: str, change: ServiceStateChange) -> None:
        if name == self._own_name():
            return
        generation = self._generation[name] = self._generation.get(name, 0) + 1
        if change is ServiceStateChange.Removed:
            self._gone(name)
            return
        info = await anyio.to_thread.run_sync(self._resolve, zc, name, abandon_on_cancel=True)
        if self._generation[name] != generation:
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
            log.warning("mDNS: ignoring %s", exc)
            self.bad_adverts = [*self.bad_adverts[-19:], str(exc)]
            return
        previous = self.sightings.get(name)
        if previous is not None:
            sighting.first_seen = previous.first_seen
        self.sightings[name] = sighting
        self._consider(sighting, previous)

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

    def _consider(self, sighting: Sighting, previous: Sighting | None) -> None:
        why = self._why_not(sighting)
        if why is None:
            where = ", ".join(sighting.dial_addresses)
            if previous is None or previous.dial_addresses != sighting.dial_addresses or not previous.present:
                log.info("mDNS: found %s (%s) at %s", sighting.terminal_id, sighting.type, where)
            self._dialled.add(sighting.name)
            self.mesh.discovered(sighting.terminal_id, sighting.dial_addresses)
            return
        if previous is None:
            log.info("mDNS: not dialling %s at %s: %s", sighting.terminal_id, sighting.dial_addresses, why)
        if sighting.name in self._dialled:
            self._dialled.discard(sighting.name)
            self.mesh.lost(sighting.terminal_id)

    def _gone(self, name: str) -> None:
        sighting = self.sightings.get(name)
        if sighting is None:
            return
        sighting.present, sighting.gone_at = False, self._now()
        log.info("mDNS: %s said goodbye", sighting.terminal_id)
        if name in self._dialled:
            self._dialled.discard(name)
            self.mesh.lost(sighting.terminal_id)

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
            if entry["linked"]:
                entry["why_not_linked"] = None
            else:
                why = self._why_not(sighting)
                if why is None and not sighting.present:
                    why = f"gone: it said goodbye at {sighting.gone_at}"
                entry["why_not_linked"] = why or self.mesh.why_not_linked(sighting.terminal_id,
                                                                          sighting.dial_addresses)
            seen.append(entry)
        return {"enabled": True, "addresses": self.addresses, "advertised_as": self.advertised_as,
                "error": self.error, "seen": seen, "bad_adverts": self.bad_adverts}
