"""Terminal configuration: defaults < TOML file < ``MESHPOS_*`` environment < command-line flags."""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.names import HQ_TYPE, ID_PATTERN, TERMINAL_TYPES, parse_address


@dataclass(slots=True)
class TerminalConfig:
    data_dir: Path
    terminal_id: str
    type: str = "pos"
    api_host: str = "127.0.0.1"
    api_port: int = 8700
    #: Bearer token every API caller must present, except a browser on this box served from an
    #: allowed origin (docs/operations.md, "Who may call the local API").  Required when
    #: ``api_host`` is not a loopback address.  Kept out of ``repr`` so it never lands in a log.
    api_token: str | None = field(default=None, repr=False)
    #: Browser origins besides the terminal's own UI (``scheme://host[:port]``) that may call the
    #: API; they also get CORS answers.
    api_allowed_origins: list[str] = field(default_factory=list)
    #: Host names besides the loopback ones (and ``api_host``) that requests may be addressed to.
    api_allowed_hosts: list[str] = field(default_factory=list)
    timezone: str = "UTC"
    day_rollover_hour: int = 4
    #: Events kept for reconnecting UIs; older cursors get a ``reset``.
    event_retention: int = 10_000
    #: Largest accepted HTTP request body, in bytes.
    max_body_bytes: int = 256 * 1024
    #: Peer links (enrolled terminals only): listen address and port, static peers to dial.
    peer_host: str = "0.0.0.0"
    peer_port: int = 8710
    peers: list[str] = field(default_factory=list)
    #: The chain's HQ over the WAN (``HOST:PORT``; more than one: each is dialled): the terminal
    #: uploads the store's documents and ledgers to it (docs/hq.md).  No mDNS across the WAN.
    hq: list[str] = field(default_factory=list)
    #: Largest sync message a peer may send (a whole business day's step 2 must fit).
    peer_max_message_bytes: int = 64 * 1024 * 1024
    #: mDNS discovery (enrolled terminals only): advertise ``_meshpos._tcp`` and dial what it finds.
    mdns: bool = True
    #: IPv4 addresses or interface names for mDNS; empty: ``peer_host`` if it is an address of
    #: this machine, else every non-loopback IPv4 address of the machine (loopback if none).
    mdns_interfaces: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> TerminalConfig:
        if not isinstance(self.terminal_id, str) or not ID_PATTERN.match(self.terminal_id):
            raise ConfigError(f"terminal_id {self.terminal_id!r} is invalid (letters, digits, . _ : -)")
        if self.type == HQ_TYPE:
            raise ConfigError("type 'hq' is an HQ enrollment: run it with `meshpos hq run` (docs/hq.md)")
        if self.type not in TERMINAL_TYPES:
            raise ConfigError(f"type {self.type!r} is invalid; one of {', '.join(TERMINAL_TYPES)}")
        for name in ("api_port", "peer_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigError(f"{name} {getattr(self, name)} is out of range")
        for name in ("peers", "hq"):
            for address in getattr(self, name):
                try:
                    parse_address(address)
                except ValueError as exc:
                    raise ConfigError(f"{name}: {exc}") from None
        if self.peer_max_message_bytes < 64 * 1024:
            raise ConfigError("peer_max_message_bytes must be at least 65536")
        if not 0 <= self.day_rollover_hour <= 23:
            raise ConfigError("day_rollover_hour must be 0..23")
        self.validate_api_access()
        return self

    def validate_api_access(self) -> None:
        """The API settings alone: :func:`meshpos.api_guard.ApiGuard` checks them again for a
        terminal built in code, whose config never went through :meth:`validate`."""
        if self.api_token is not None and not (isinstance(self.api_token, str) and _TOKEN.fullmatch(self.api_token)):
            raise ConfigError("api_token must be 16-512 printable ASCII characters without spaces "
                              "(e.g. the output of `openssl rand -hex 32`)")
        if not is_loopback_host(self.api_host) and not self.api_token:
            raise ConfigError(f"api_host {self.api_host} is not a loopback address: set api_token "
                              "(MESHPOS_API_TOKEN or --api-token-file) so that callers from the network need it")
        for origin in self.api_allowed_origins:
            if not _ORIGIN.fullmatch(origin):
                raise ConfigError(f"api_allowed_origins: {origin!r} is not an origin like http://host:port "
                                  "(no path, no '*', not 'null')")
        for host in self.api_allowed_hosts:
            if not _HOST_NAME.fullmatch(host):
                raise ConfigError(f"api_allowed_hosts: {host!r} is not a host name or address (without a port)")


def read_token(path: Path | None) -> str | None:
    """The token file's first line (a trailing newline is not part of the token)."""
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--api-token-file: cannot read {path}: {exc}") from None
    if not token:
        raise ConfigError(f"--api-token-file: {path} is empty")
    return token


_TOKEN = re.compile(r"[\x21-\x7e]{16,512}")
_ORIGIN = re.compile(r"https?://(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]{1,5})?/?")
_HOST_NAME = re.compile(r"\[?[0-9A-Fa-f:.]+\]?|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address: only processes on this box can reach it."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_ENV_PREFIX = "MESHPOS_"
_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def load_config(
    *, config_file: Path | None = None, overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None
) -> TerminalConfig:
    """Merge the sources; ``overrides`` are the CLI flags that were actually given (not None)."""
    env = os.environ if env is None else env
    names = {f.name: f for f in fields(TerminalConfig) if f.name != "extra"}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if config_file is not None:
        try:
            data = tomllib.loads(config_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from exc
        section = data.get("terminal", data)
        for key, value in section.items():
            key = key.replace("-", "_")
            if key not in names:
                raise ConfigError(f"{config_file}: unknown setting {key!r}")
            values[key] = value
            sources[key] = f"{key} in {config_file}"
    for name in names:
        raw = env.get(_ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = raw
            sources[name] = f"{_ENV_PREFIX}{name.upper()}"
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
            sources[name] = f"--{name.replace('_', '-')}"
    if "data_dir" in values:
        _identity_from_certificate(Path(values["data_dir"]), values, sources)
    for required in ("data_dir", "terminal_id"):
        if required not in values:
            raise ConfigError(
                f"{required} is required (--{required.replace('_', '-')}, {_ENV_PREFIX}{required.upper()} "
                "or the config file)"
            )
    for name, what in (("peers", "HOST:PORT strings"), ("hq", "HOST:PORT strings"),
                       ("mdns_interfaces", "addresses or interface names"),
                       ("api_allowed_origins", "origins"), ("api_allowed_hosts", "host names")):
        if isinstance(values.get(name), str):  # environment: comma-separated
            values[name] = [p.strip() for p in values[name].split(",") if p.strip()]
        elif name in values and not (isinstance(values[name], list | tuple)
                                     and all(isinstance(p, str) for p in values[name])):
            raise ConfigError(f"{sources[name]}: {name} must be a list of {what}")
        if name in values:
            values[name] = list(values[name])
    if "mdns" in values and not isinstance(values["mdns"], bool):
        flag = str(values["mdns"]).strip().lower()
        if flag not in _BOOLEANS:
            raise ConfigError(f"{sources['mdns']}: mdns must be true or false, not {values['mdns']!r}")
        values["mdns"] = _BOOLEANS[flag]
    for name in ("api_port", "peer_port", "day_rollover_hour", "event_retention", "max_body_bytes",
                 "peer_max_message_bytes"):
        if name in values:
            try:
                if isinstance(values[name], bool | float):
                    raise ValueError
                values[name] = int(values[name])
            except (TypeError, ValueError):
                raise ConfigError(f"{sources[name]}: {name} must be an integer, not {values[name]!r}") from None
    if "api_token" in values and not isinstance(values["api_token"], str):
        raise ConfigError(f"{sources['api_token']}: api_token must be a string")
    values["data_dir"] = Path(values["data_dir"])
    return TerminalConfig(**values).validate()


def _identity_from_certificate(data_dir: Path, values: dict[str, Any], sources: dict[str, str]) -> None:
    """An enrolled data directory names its terminal: the certificate wins, contradictions are errors."""
    if not (data_dir / "terminal.crt").exists():
        return
    from peer.identity import IdentityError, load_identity  # cryptography only when enrolled

    try:
        identity = load_identity(data_dir)
    except IdentityError as exc:
        raise ConfigError(f"{data_dir}: {exc}") from None
    match_certificate(identity, data_dir, values, sources)


def match_certificate(identity: Any, data_dir: Path, values: dict[str, Any], sources: dict[str, str]) -> None:
    """``terminal_id`` and ``type`` from the certificate of ``identity`` (a loaded
    :class:`peer.identity.TerminalIdentity`): a given value that differs is an error naming its
    source, a missing one is filled in."""
    for name, enrolled in (("terminal_id", identity.terminal_id), ("type", identity.type)):
        given = values.get(name)
        if given is not None and given != enrolled:
            raise ConfigError(
                f"{sources.get(name, name)}: {name} {given!r} contradicts the certificate in {data_dir} "
                f"({name} {enrolled!r}); omit it or fix it"
            )
        values[name] = enrolled
