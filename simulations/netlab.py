"""Separate hosts on one machine: network namespaces on a bridge, for real multicast between them.

A *switch* namespace holds a bridge; each host is a namespace whose ``eth0`` is a veth pair
plugged into that bridge, with an address from 10.211.0.0/24 (a range that exists only inside
these namespaces).  Cutting a host's switch port is a Wi-Fi split the host itself does not
notice; :meth:`Lan.split` cuts the LAN into groups the same way.  A host's local API
(127.0.0.1 inside its namespace) is reached from inside its namespace - curl for one request,
an :class:`Agent` (this file run as ``python -m simulations.netlab agent PORT`` there) for many - so nothing
outside the namespaces gets an address.

Namespaces are named ``mplab-<pid>-…``; :meth:`Lan.close` removes them, and a new lab removes
those a killed run left behind.  Shared by tests/test_discovery_netns.py and simulations/netns.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from simulations.benchutil import module_command
from simulations.postgres import remove_cluster

SUBNET = "10.211.0"
WAN_SUBNET = "10.212.0"  # the internet side (:meth:`Lan.add_wan`): also only inside these namespaces
WAN_BRIDGE = "wan0"
PREFIX = "mplab-"


class LabUnavailable(Exception):
    """This machine cannot host the lab (not root, no ``ip``, namespaces refused): skip, saying why."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=20)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def pg_prefix() -> str:
    """The temporary-directory prefix of this process's PostgreSQL server (the HQ's), by which
    :func:`sweep_leftovers` finds it once this process is gone."""
    return f"{PREFIX}{os.getpid()}-pg-"


def sweep_leftovers() -> list[str]:
    """Remove what lab runs whose process is gone left behind (a SIGKILLed run cannot clean up):
    their namespaces and PostgreSQL servers; their names."""
    listed = ip("netns", "list", check=False).stdout
    removed = []
    for full, pid in re.findall(rf"^({PREFIX}(\d+)-\S+)", listed, re.M):
        if not os.path.exists(f"/proc/{pid}"):
            ip("netns", "del", full, check=False)
            removed.append(full)
    for root in Path(tempfile.gettempdir()).glob(f"{PREFIX}*-pg-*"):
        pid = root.name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            remove_cluster(root)
            removed.append(root.name)
    return removed


class Host:
    def __init__(self, lab: Lan, name: str, n: int) -> None:
        self.lab, self.name, self.n = lab, name, n
        self.ns = f"{lab.prefix}{name}"
        self.port = f"p{n}"  # its plug on the switch
        self.address = f"{SUBNET}.{10 + n}"

    def exec_args(self, *args: str) -> list[str]:
        """``args`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *args]

    def cut(self) -> None:
        """Unplug the host from the switch (it keeps its address and thinks its link is fine)."""
        ip("-n", self.lab.switch, "link", "set", self.port, "down")

    def plug(self) -> None:
        ip("-n", self.lab.switch, "link", "set", self.port, "up")

    def readdress(self, last_octet: int) -> None:
        """Move the host to another address (DHCP gave the box a new lease)."""
        ip("-n", self.ns, "addr", "flush", "dev", "eth0")
        self.address = f"{SUBNET}.{last_octet}"
        ip("-n", self.ns, "addr", "add", f"{self.address}/24", "dev", "eth0")

    async def agent(self, port: int) -> Agent:
        """A persistent HTTP client inside this host's namespace, for its ``127.0.0.1:port``."""
        agent = Agent(self)
        agent.proc = await anyio.open_process(self.exec_args(*module_command(__spec__.name, "agent", str(port))),
                                              stderr=subprocess.DEVNULL)
        agent.reader = BufferedByteReceiveStream(agent.proc.stdout)  # type: ignore[arg-type]
        return agent

    def http(self, method: str, url: str, body: Any = None) -> tuple[int, Any]:
        """One JSON request from inside the namespace (to its 127.0.0.1 API)."""
        args = ["curl", "-sS", "-m", "10", "-X", method, "-w", "\n%{http_code}", url]
        if body is not None:
            args += ["-H", "content-type: application/json", "--data-binary", json.dumps(body)]
        done = subprocess.run(self.exec_args(*args), capture_output=True, text=True, check=False, timeout=20)
        if done.returncode != 0:
            raise ConnectionError(f"{self.name}: curl {method} {url}: {done.stderr.strip()}")
        text, _, code = done.stdout.rpartition("\n")
        return int(code), json.loads(text) if text else None


class Lan:
    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise LabUnavailable("network namespaces need root")
        for tool in ("ip", "curl"):
            if shutil.which(tool) is None:
                raise LabUnavailable(f"{tool!r} is not installed")
        sweep_leftovers()
        self.prefix = f"{PREFIX}{os.getpid()}-"
        self.switch = f"{self.prefix}switch"
        self.hosts: list[Host] = []
        self.wan_host: Host | None = None
        try:
            ip("netns", "add", self.switch)
        except RuntimeError as exc:
            raise LabUnavailable(f"cannot create network namespaces: {exc}") from None
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        self.bridges = 1

    def add_host(self, name: str) -> Host:
        host = Host(self, name, len(self.hosts) + 1)
        ip("netns", "add", host.ns)
        self.hosts.append(host)
        ip("-n", host.ns, "link", "add", "eth0", "type", "veth", "peer", "name", host.port, "netns", self.switch)
        ip("-n", self.switch, "link", "set", host.port, "master", "br0", "up")
        ip("-n", host.ns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        ip("-n", host.ns, "link", "set", "eth0", "up")
        ip("-n", host.ns, "link", "set", "lo", "up")
        return host

    def add_wan(self, name: str) -> Host:
        """A host ``name`` across the internet (the chain's HQ), reached from every LAN host.

        Each LAN host gets an ``eth1`` on a second bridge (:data:`WAN_SUBNET`), as an *isolated*
        port: it reaches the WAN host and nothing else there, so a LAN split is not healed through
        the WAN and mDNS (kept to ``eth0`` by the terminals' ``mdns_interfaces``) does not cross.
        Every group of a split keeps its uplink, as a store's Wi-Fi split does; :meth:`wan` cuts
        the line itself.  Call it once, after the LAN hosts are added."""
        assert self.wan_host is None, "one WAN per lab"
        ip("-n", self.switch, "link", "add", WAN_BRIDGE, "type", "bridge")
        ip("-n", self.switch, "link", "set", WAN_BRIDGE, "up")
        for host in self.hosts:
            self._plug_wan(host.ns, "eth1", f"w{host.n}", f"{WAN_SUBNET}.{10 + host.n}", isolated=True)
        host = Host(self, name, 0)
        host.port, host.address = "w0", f"{WAN_SUBNET}.1"
        ip("netns", "add", host.ns)
        self.wan_host = host
        self._plug_wan(host.ns, "eth0", host.port, host.address, isolated=False)
        return host

    def _plug_wan(self, ns: str, dev: str, port: str, address: str, *, isolated: bool) -> None:
        ip("-n", ns, "link", "add", dev, "type", "veth", "peer", "name", port, "netns", self.switch)
        ip("-n", self.switch, "link", "set", port, "master", WAN_BRIDGE, "up")
        if isolated:
            ip("-n", self.switch, "link", "set", "dev", port, "type", "bridge_slave", "isolated", "on")
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", dev)
        ip("-n", ns, "link", "set", dev, "up")
        ip("-n", ns, "link", "set", "lo", "up")

    def wan(self, up: bool) -> None:
        """The internet line up or down (the WAN host's port); the LAN stays as it is."""
        assert self.wan_host is not None, "no WAN: add_wan first"
        if up:
            self.wan_host.plug()
        else:
            self.wan_host.cut()

    def split(self, groups: list[list[Host]]) -> None:
        """Cut the LAN into ``groups`` (the hosts not named stay together on the main switch): a
        lone host's port goes down; a larger group's ports move to a switch of their own, so its
        hosts still reach each other (and see each other's mDNS) but nobody else."""
        self.heal()
        for k, group in enumerate(groups, start=1):
            if len(group) == 1:
                group[0].cut()
                continue
            while self.bridges <= k:
                ip("-n", self.switch, "link", "add", f"br{self.bridges}", "type", "bridge")
                ip("-n", self.switch, "link", "set", f"br{self.bridges}", "up")
                self.bridges += 1
            for host in group:
                ip("-n", self.switch, "link", "set", host.port, "master", f"br{k}")

    def isolate(self, hosts: list[Host]) -> None:
        """Client isolation (what a Wi-Fi access point does for its guests): ``hosts``' switch
        ports become isolated bridge ports, which forward only to and from ports that are not
        (the bridge port's ``isolated`` flag; multicast included, so no mDNS between them)."""
        for host in hosts:
            ip("-n", self.switch, "link", "set", "dev", host.port, "type", "bridge_slave", "isolated", "on")

    def heal(self) -> None:
        """Every host back on the main switch, every port up, none isolated."""
        for host in self.hosts:
            ip("-n", self.switch, "link", "set", host.port, "master", "br0")
            ip("-n", self.switch, "link", "set", "dev", host.port, "type", "bridge_slave", "isolated", "off")
            host.plug()

    def close(self) -> None:
        wan = [self.wan_host.ns] if self.wan_host is not None else []
        for ns in [h.ns for h in self.hosts] + wan + [self.switch]:
            with contextlib.suppress(Exception):
                ip("netns", "del", ns, check=False)
        self.hosts, self.wan_host = [], None


class Agent:
    """Requests to one host's local API over one kept-alive connection, from inside its namespace
    (spawning curl per request costs ~10 ms; a workload makes thousands)."""

    proc: Process
    reader: BufferedByteReceiveStream

    def __init__(self, host: Host) -> None:
        self.host = host
        self._lock = anyio.Lock()

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """``(status, JSON body)``; status 0 when the terminal did not answer (down, restarting)."""
        # Shielded: a caller cancelled between the request and its answer would leave the answer
        # to be read as the next caller's.  The agent answers within its 60 s HTTP timeout.
        async with self._lock:
            with anyio.CancelScope(shield=True):
                assert self.proc.stdin is not None
                await self.proc.stdin.send((json.dumps([method, path, body]) + "\n").encode())
                line = await self.reader.receive_until(b"\n", 1 << 30)
        status, answer = json.loads(line)
        return status, answer

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.kill()
        await self.proc.aclose()


def _read_events(port: int, until: int) -> list[Any]:
    """The events WebSocket from cursor 0 until cursor ``until``: ``[cursor, type, at, order_id]``
    of each (``order_id`` ``None`` for events of other entities)."""
    import socket  # noqa: PLC0415 - only the agent process needs these

    from wsproto import ConnectionType, WSConnection  # noqa: PLC0415
    from wsproto.events import CloseConnection, Request, TextMessage  # noqa: PLC0415

    out: list[Any] = []
    if until <= 0:
        return out
    ws = WSConnection(ConnectionType.CLIENT)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(ws.send(Request(host=f"127.0.0.1:{port}", target="/api/v1/events?cursor=0")))
        text = ""
        while True:
            data = sock.recv(1 << 16)
            if not data:
                raise ConnectionError("the events WebSocket closed before the last event")
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, CloseConnection):
                    raise ConnectionError(f"events WebSocket closed: {event.code} {event.reason}")
                if isinstance(event, TextMessage):
                    text += event.data
                    if not event.message_finished:
                        continue
                    e, text = json.loads(text), ""
                    out.append([e.get("cursor"), e.get("type"), e.get("at"), e.get("order_id")])
                    if isinstance(e.get("cursor"), int) and e["cursor"] >= until:
                        return out


def _serve_agent(port: int) -> None:
    """The agent's side: JSON lines ``[method, path, body]`` in, ``[status, body]`` out.  The
    method ``EVENTS`` (``body``: the last cursor wanted) reads the events WebSocket instead
    (:func:`_read_events`)."""
    import http.client  # noqa: PLC0415 - only the agent process needs it

    conn: http.client.HTTPConnection | None = None
    for line in sys.stdin:
        method, path, body = json.loads(line)
        if method == "EVENTS":
            try:
                answer: list[Any] = [200, _read_events(port, int(body))]
            except (OSError, ValueError) as exc:
                answer = [0, {"code": 0, "message": f"{type(exc).__name__}: {exc}"}]
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
            continue
        data = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"} if data is not None else {}
        answer = [0, {"code": 0, "message": "no answer"}]
        for reused in (True, False):
            fresh = conn is None
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                answer = [resp.status, json.loads(raw) if raw else None]
                break
            except (OSError, http.client.HTTPException) as exc:
                if conn is not None:
                    conn.close()
                conn = None
                answer = [0, {"code": 0, "message": f"{type(exc).__name__}: {exc}"}]
                # A kept-alive connection the server closed while idle fails before the request
                # is read: retry that once on a new one.  A fresh connection's failure is the answer.
                stale = not fresh and isinstance(exc, http.client.RemoteDisconnected | BrokenPipeError
                                                 | ConnectionResetError)
                if not (reused and stale):
                    break
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    if sys.argv[1:2] == ["agent"]:
        _serve_agent(int(sys.argv[2]))
