"""The bad days: scripts that split, heal, isolate, crash and skew a :class:`World` while the
workload runs.  The same scripts drive the real processes of simulations/netns.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


class World(Protocol):
    """What a scenario script acts on: this simulator, or simulations/netns.py's real processes."""

    root: Path
    kinds: list[tuple[str, str]]
    skew: dict[str, float]

    async def sleep(self, seconds: float) -> None: ...
    def split(self, *groups: list[str]) -> None: ...
    def isolate(self, tids: list[str]) -> None: ...
    def radio(self, tids: list[str], *, jitter: float, loss: float) -> None: ...
    def heal(self) -> None: ...
    def wan(self, up: bool) -> None: ...
    async def crash(self, tid: str) -> None: ...
    async def restart(self, tid: str) -> None: ...
    def mark(self, what: str, **data: Any) -> None: ...


@dataclass(frozen=True)
class Scenario:
    name: str
    about: str
    script: Callable[[World, list[str]], Awaitable[None]]
    rate: float = 0.5  # operations per virtual second per box
    #: The store has an HQ across the WAN (a real PostgreSQL server behind it); the WAN is up
    #: again after the service, and the checkers then look at what the HQ landed.
    hq: bool = False


def ids_of(sim: World, kind: str) -> list[str]:
    return [tid for tid, k in sim.kinds if k == kind]


async def lunch_rush_kitchen_split(sim: World, ids: list[str]) -> None:
    await sim.sleep(20)
    sim.split([t for t in ids if t.startswith("kds")])  # the kitchen's Wi-Fi drops
    await sim.sleep(60)
    sim.heal()


async def cashier_isolated(sim: World, ids: list[str]) -> None:
    await sim.sleep(15)
    cashier = ids_of(sim, "pos")[0]
    sim.split([cashier])  # one POS alone: it takes payments provisionally
    await sim.sleep(60)
    sim.heal()


async def flapping_wifi(sim: World, ids: list[str]) -> None:
    front = [t for t in ids if t.startswith("waiter")]
    sim.radio(front, jitter=0.03, loss=0.02)  # a poor signal all along: delay varies, segments are lost
    for _ in range(8):
        await sim.sleep(6)
        sim.split(front)
        await sim.sleep(4)
        sim.heal()


async def wifi_client_isolation(sim: World, ids: list[str]) -> None:
    # Someone applies the guest network's settings to the staff SSID: the access point's client
    # isolation. The handhelds still reach the wired boxes (POS, KDS) but no longer each other;
    # what one handheld writes reaches the others through the wired boxes' state-vector exchange.
    await sim.sleep(15)
    sim.isolate(ids_of(sim, "waiter"))
    await sim.sleep(60)
    sim.heal()


async def terminal_replaced_mid_service(sim: World, ids: list[str]) -> None:
    # A waiter's handheld dies; 30 s later a spare takes its place: same enrollment, an empty
    # database - everything comes back from the peers.  (A POS is a voter: replacing one with an
    # empty disk is a roster change, done with its drawers closed - docs/cashier.md.)
    await sim.sleep(20)
    victim = (ids_of(sim, "waiter") or ids_of(sim, "kds"))[-1]
    await sim.crash(victim)
    for path in (sim.root / victim).glob("meshpos.db*"):
        path.unlink()
    sim.mark("replaced", terminal=victim)
    await sim.sleep(30)
    await sim.restart(victim)
    await sim.sleep(20)  # the spare at work


async def wan_down_all_day(sim: World, ids: list[str]) -> None:
    # The internet is gone all day; the LAN is fine: service runs without a break, one box's clock
    # drifts two minutes (nothing may depend on it), and the kitchen reboots once.  The HQ hears
    # of the day only after close, when the WAN is back (the runner restores it).
    sim.wan(False)
    sim.skew[ids[-1]] = 120.0
    await sim.sleep(40)
    kds = ids_of(sim, "kds")
    if kds:
        await sim.crash(kds[0])
        await sim.sleep(5)
        await sim.restart(kds[0])
    await sim.sleep(40)


async def wan_flapping_evening_rush(sim: World, ids: list[str]) -> None:
    # The evening rush on a bad internet line: the WAN drops for 5 s of every 13, six times.  Each
    # time it is back every terminal links to the HQ and uploads at once - the same changes from
    # every box, the same ledger relays from every voter - and the HQ must land each once.
    for _ in range(6):
        await sim.sleep(8)
        sim.wan(False)
        await sim.sleep(5)
        sim.wan(True)


SCENARIOS = {s.name: s for s in [
    Scenario("lunch-rush-kitchen-split", "the KDS is cut off from the front for a minute of the rush",
             lunch_rush_kitchen_split, rate=0.8),
    Scenario("cashier-isolated", "one POS alone for a minute: provisional payments, reconciled after; the HQ "
             "stays reachable from both sides", cashier_isolated, hq=True),
    Scenario("flapping-wifi", "the handhelds' Wi-Fi drops 4 s of every 10, eight times, and loses 2% of segments",
             flapping_wifi),
    Scenario("wifi-client-isolation", "for a minute the handhelds reach the wired boxes but not each other",
             wifi_client_isolation),
    Scenario("terminal-replaced-mid-service", "a handheld dies; a spare with an empty disk replaces it 30 s later",
             terminal_replaced_mid_service),
    Scenario("wan-down-all-day", "no internet all day (the HQ gets it all after close); one clock skewed 2 min; "
             "the kitchen reboots once", wan_down_all_day, hq=True),
    Scenario("wan-flapping-evening-rush", "the WAN drops 5 s of every 13 during the rush; every box uploads "
             "at once each time it is back", wan_flapping_evening_rush, rate=0.8, hq=True),
]}
