"""Separate hosts on one machine: network namespaces on a bridge, for real multicast between them.

A *switch* namespace holds a bridge; each host is a namespace whose ``eth0`` is a veth pair
plugged into that bridge, with an address from 10.211.0.0/24 (a range that exists only inside
these namespaces).  Cutting a host's switch port is a Wi-Fi split the host itself does not
notice.  A host's local API (127.0.0.1 inside its namespace) is reached with ``ip netns exec``
and curl, so nothing outside the namespaces gets an address.

Namespaces are named ``mplab-<pid>-…``; :meth:`Lan.close` removes them, and a new lab removes
those a killed run left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from typing import Any

SUBNET = "10.211.0"
PREFIX = "mplab-"


class LabUnavailable(Exception):
    """This machine cannot host the lab (not root, no ``ip``, namespaces refused): skip, saying why."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=20)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _sweep_leftovers() -> None:
    """Remove namespaces of lab runs whose process is gone (a killed test run leaves them)."""
    listed = ip("netns", "list", check=False).stdout
    for name in re.findall(rf"^({PREFIX}(\d+)-\S+)", listed, re.M):
        full, pid = name
        if not os.path.exists(f"/proc/{pid}"):
            ip("netns", "del", full, check=False)


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
        _sweep_leftovers()
        self.prefix = f"{PREFIX}{os.getpid()}-"
        self.switch = f"{self.prefix}switch"
        self.hosts: list[Host] = []
        try:
            ip("netns", "add", self.switch)
        except RuntimeError as exc:
            raise LabUnavailable(f"cannot create network namespaces: {exc}") from None
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")

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

    def close(self) -> None:
        for ns in [h.ns for h in self.hosts] + [self.switch]:
            with contextlib.suppress(Exception):
                ip("netns", "del", ns, check=False)
        self.hosts = []
